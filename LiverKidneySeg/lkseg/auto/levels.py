"""Body levels read from bone and air: where a scan shows the hip joints and where the chest.

A network trained on abdomen phantoms has never seen a pelvis or a chest and draws "organs" there
(on a real pelvis-only cut of ``example_ct`` it called bowel and muscle a liver and the iliac bone
kidneys). Two landmarks that need no training tell those levels apart on any CT:

* **the hip joints**: an axial slice that shows, on each side of the midline, one large, compact
  bone section (femoral head, acetabulum: at least ``hip_min_cm2``, its long axis at most
  ``hip_max_length_mm`` and at most ``hip_max_aspect`` times its short axis), the two mirror images
  of each other (their distances from the midline and their front-back positions within
  ``hip_symmetry_mm``), within the inner ``hip_max_rel`` of the body's half-width (not an arm lying
  beside the body) and not behind the body's front-back middle by more than ``hip_back_rel`` of its
  depth (not the shoulder blades, nor kidneys brighter than ``bone_hu`` in an arterial phase). Ribs
  are far smaller; iliac wings (phantom and real) are long thin plates. A run of such slices
  ``hip_min_run_mm`` to ``hip_max_run_mm`` long (a femoral head is about 50 mm tall; a longer run
  would be a vertical tube, e.g. both colons full of oral contrast) is the hip level, and
  ``hip_top_z`` is the top of the highest such run;
* **the lungs**: the fraction of the body's cross-section (holes filled) below ``air_hu``.

Slices are those of the scan reoriented to LPS by axis permutation and flips only
(:func:`lkseg.orientation.reorient_grid`), so any storage order works; an oblique scan keeps its tilt
(a slice's head-foot position is that of its centre). Heights are patient z in mm (LPS and RAS
agree on z: superior positive). The image is ZYX on ``grid``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lkseg.orientation import reorient_grid
from lkseg.volume import Grid

__all__ = ["BodyLevels", "LevelConfig", "body_levels"]


@dataclass(frozen=True)
class LevelConfig:
    """Thresholds of :func:`body_levels` (HU, cm², mm, fractions)."""

    body_hu: float = -500.0
    bone_hu: float = 200.0
    hip_min_cm2: float = 6.0
    hip_min_offset_mm: float = 50.0
    hip_max_rel: float = 0.75
    hip_back_rel: float = 0.05
    hip_max_aspect: float = 2.5
    hip_max_length_mm: float = 100.0
    hip_symmetry_mm: float = 25.0
    hip_min_run_mm: float = 10.0
    hip_max_run_mm: float = 80.0
    air_hu: float = -500.0
    pixel_mm: float = 2.0


@dataclass
class BodyLevels:
    """Per-slice landmarks of a scan (canonical LPS slices, inferior first).

    Attributes:
        slice_z: patient z (mm, superior positive) of each slice's centre.
        hip: True where the slice shows the hip-joint pair (before the run-length rule).
        air_fraction: fraction of the body's filled cross-section below ``air_hu`` (lungs, gas).
        hip_top_z: z of the highest slice of a hip run at least ``hip_min_run_mm`` long, or None.
    """

    slice_z: np.ndarray
    hip: np.ndarray
    air_fraction: np.ndarray
    hip_top_z: float | None

    def air_fraction_at(self, z: float) -> float:
        """Air fraction of the slice nearest to height ``z``."""
        return float(self.air_fraction[int(np.argmin(np.abs(self.slice_z - z)))])


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = ndimage.sum_labels(mask, lab, index=np.arange(1, n + 1))
    return lab == 1 + int(np.argmax(sizes))


def _hip_pair(sl: np.ndarray, body: np.ndarray, px: tuple[float, float], config: LevelConfig) -> bool:
    """Does one canonical slice (rows j: anterior -> posterior, columns i: right -> left) show the
    two hip joints? ``px`` = (row, column) pixel size in mm."""
    jj, ii = np.nonzero(body)
    mid_i = ii.mean()
    half_width_mm = (ii.max() - ii.min() + 1) * px[1] / 2.0
    j_back = (jj.min() + jj.max()) / 2.0 + config.hip_back_rel * (jj.max() - jj.min())
    bone = (sl > config.bone_hu) & body
    lab, n = ndimage.label(bone)
    if n == 0:
        return False
    index = np.arange(1, n + 1)
    area = ndimage.sum_labels(bone, lab, index=index) * px[0] * px[1] / 100.0
    cj, ci = (np.asarray(c) for c in zip(*ndimage.center_of_mass(bone, lab, index)))
    dx = (ci - mid_i) * px[1]
    ok = (
        (area >= config.hip_min_cm2)
        & (np.abs(dx) >= config.hip_min_offset_mm)
        & (np.abs(dx) <= config.hip_max_rel * half_width_mm)
        & (cj <= j_back)
    )
    for q in np.nonzero(ok)[0]:  # compact: second moments of the section (mm)
        rows, cols = np.nonzero(lab == q + 1)
        if len(rows) < 3:
            ok[q] = False
            continue
        ev = np.linalg.eigvalsh(np.cov(np.vstack([rows * px[0], cols * px[1]])))
        long_sd, short_sd = np.sqrt(max(ev[1], 0.0)), np.sqrt(max(ev[0], 1e-6))
        ok[q] = 4.0 * long_sd <= config.hip_max_length_mm and long_sd <= config.hip_max_aspect * short_sd
    best = {}
    for side in (-1.0, 1.0):  # -1: patient right (i toward the right), +1: patient left
        here = np.nonzero(ok & (np.sign(dx) == side))[0]
        if len(here) == 0:
            return False
        best[side] = here[np.argmax(area[here])]
    r, left = best[-1.0], best[1.0]
    return bool(
        abs(abs(dx[r]) - abs(dx[left])) <= config.hip_symmetry_mm
        and abs(cj[r] - cj[left]) * px[0] <= config.hip_symmetry_mm
    )


def body_levels(image: np.ndarray, grid: Grid, config: LevelConfig | None = None) -> BodyLevels:
    """Read the hip level and the air fraction of every axial slice of ``image`` (ZYX HU on ``grid``)."""
    config = config or LevelConfig()
    plan = reorient_grid(grid, "LPS")
    canon = plan.apply_array(np.asarray(image))
    cgrid = plan.reoriented
    si, sj, sk = cgrid.spacing
    step_i = max(1, round(config.pixel_mm / si))
    step_j = max(1, round(config.pixel_mm / sj))
    px = (sj * step_j, si * step_i)
    nk, nj, ni = canon.shape
    centre = np.array([[(ni - 1) / 2.0, (nj - 1) / 2.0, k] for k in range(nk)])
    slice_z = cgrid.index_to_lps(centre)[:, 2]
    hip = np.zeros(nk, dtype=bool)
    air = np.zeros(nk)
    for k in range(nk):
        sl = canon[k, ::step_j, ::step_i]
        body = sl > config.body_hu
        if body.sum() < 50:
            continue
        body = _largest(body)
        filled = ndimage.binary_fill_holes(body)
        air[k] = float(((sl < config.air_hu) & filled).sum()) / float(filled.sum())
        hip[k] = _hip_pair(sl, body, px, config)
    hip_top = None
    lab, _ = ndimage.label(hip)
    for run in ndimage.find_objects(lab):
        ks = np.arange(run[0].start, run[0].stop)
        if config.hip_min_run_mm <= len(ks) * sk <= config.hip_max_run_mm:
            top = float(slice_z[ks].max())
            hip_top = top if hip_top is None else max(hip_top, top)
    return BodyLevels(slice_z=slice_z, hip=hip, air_fraction=air, hip_top_z=hip_top)
