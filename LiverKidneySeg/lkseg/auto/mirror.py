"""A kidney the U-Net missed, looked for at the mirror image of the other one (hybrid mode).

The kidneys lie nearly symmetric about the body's midline: same level within a few centimetres
(the right one usually 1-2 cm lower), same distance from the midline and from the spine, similar
size. When the U-Net and both locators found one kidney and not the other (on a real 20- or
40-slice slab of ``example_ct`` the phantom-trained network missed an 82-93 mL right kidney
beside a left kidney it found), :func:`find_mirrored_kidney` asks the prompt model for the
missing one on each slice of the found kidney, with that slice's box reflected across the
midline and widened by ``MirrorConfig.margin_mm``. A slice's answer counts only when it looks
like the kidney it mirrors on that slice:

* its area lies within ``area_ratio`` of the found kidney's there;
* its median HU lies within ``hu_sd`` robust standard deviations (1.4826 x the median absolute
  deviation, at least 15 HU) of the found kidney's median: a kidney and its twin enhance alike (a
  first version compared means with plain standard deviations, which the fat in a drawn kidney
  inflated to 67-108 HU: it took a kidney-shaped block of fat for a kidney);
* it does not reach two sides of its box (then the organ is larger than a kidney: liver, bowel);
* at most ``max_overlap`` of it lies on another organ the U-Net labelled.

The missing kidney is kept when at least ``min_slices`` of the slices (and three) count, its
largest 3D piece holds at least ``min_volume_ratio`` of the found kidney's volume in the scan,
and the position checks (:func:`lkseg.auto.plausibility.refuse_implausible_positions`: not on the
midline, not behind the spine, not in the pelvis) keep it. It fills empty voxels only; the hybrid
stage then draws it like any other kidney. Every decision is a note. A missing kidney may be
missing for real (nephrectomy, agenesis, an ectopic or transplanted kidney): on ``example_ct``
with a kidney replaced by fat the answers must fail these tests (``bench_localise_real.py``'s
organ-removed variants).

Arrays are numpy ZYX (``(k, j, i)``) on the volume's grid unless named canonical (the prompt
model's LPS frame, :class:`lkseg.refine.slices.VolumeSlicer`).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np

from lkseg.auto.keyslices import interpolate_slices, slice_step
from lkseg.auto.plausibility import BodyFacts, refuse_implausible_positions
from lkseg.labels import LabelTable, get_structure
from lkseg.progress import CancelToken, ProgressCallback, report
from lkseg.refine.maskops import largest_component
from lkseg.volume import Volume

__all__ = ["MirrorConfig", "find_mirrored_kidney"]

log = logging.getLogger(__name__)

_SIDES = ("kidney_right", "kidney_left")


@dataclass(frozen=True)
class MirrorConfig:
    """Tests of :func:`find_mirrored_kidney` (module docstring); set before measuring.

    ``sample_mm``: the prompt model is asked on every round(sample_mm / slice thickness)-th slice of
    the found kidney (the hybrid's key slices, ``HybridConfig.sample_mm``, whose encodings the hybrid
    stage then reuses), and the slices between two accepted ones are interpolated.
    """

    margin_mm: float = 12.0
    area_ratio: tuple[float, float] = (0.33, 3.0)
    hu_sd: float = 2.0
    max_overlap: float = 0.2
    min_slices: float = 0.5
    min_volume_ratio: float = 0.25
    min_found_ml: float = 20.0
    sample_mm: float = 4.0


def _mirror_column(slicer, mid_x: float, k: int, j: int) -> float | None:
    """The canonical column (float) where RAS x equals ``mid_x`` on row ``j`` of slice ``k``."""
    grid = slicer.canonical.grid
    a, b = grid.index_to_ras(np.array([[0.0, j, k], [1.0, j, k]]))[:, 0]
    if abs(b - a) < 1e-6:
        return None  # columns do not run right-left (not an axial-like grid)
    return (mid_x - a) / (b - a)


def find_mirrored_kidney(
    predictor,
    volume: Volume,
    labels: np.ndarray,
    table: LabelTable,
    body: BodyFacts,
    config: MirrorConfig | None = None,
    cancel: CancelToken | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[list[str], str | None]:
    """Look for the kidney missing from ``labels`` (ZYX, ``volume``'s grid) at the mirror image of
    the one present; write it into empty voxels of ``labels`` (in place) when it passes the tests of
    the module docstring. Returns the notes (none when both or neither kidney is present) and the
    structure name of the kidney added (None when none was)."""
    config = config or MirrorConfig()
    value_of = {n: v for v, n in table.items()}
    if not all(s in value_of for s in _SIDES):
        return [], None
    ml = volume.grid.voxel_volume_ml
    counts = {s: int(np.count_nonzero(labels == value_of[s])) for s in _SIDES}
    present = [s for s in _SIDES if counts[s] * ml >= config.min_found_ml]
    absent = [s for s in _SIDES if counts[s] == 0]
    if len(present) != 1 or len(absent) != 1 or body.mid_x is None:
        return [], None
    found, missing = present[0], absent[0]
    name, other = (get_structure(s).display.lower() for s in (missing, found))  # "right kidney"
    if getattr(predictor, "_slicer", None) is None or predictor.volume is not volume:
        predictor.set_volume(volume, check_ct_values=False)
    slicer = predictor.slicer
    canon = slicer.user_volume_to_canonical(labels)
    kidney = largest_component(canon == value_of[found])
    hu = slicer.array
    sample = hu[kidney].astype(np.float32)
    hu_med = float(np.median(sample))
    hu_sd = max(1.4826 * float(np.median(np.abs(sample - hu_med))), 15.0)  # robust: the drawn kidney holds some fat
    others = (canon > 0) & ~kidney
    row_mm, col_mm = slicer.pixel_mm("axial")
    margin = (config.margin_mm / row_mm, config.margin_mm / col_mm)
    zs = np.flatnonzero(kidney.any(axis=(1, 2)))
    step = slice_step(config.sample_mm, slicer.slice_mm("axial"))
    zs = sorted({*zs[::step].tolist(), int(zs[-1])})
    drawn = np.zeros(canon.shape, dtype=bool)
    tried = accepted = 0
    reasons: dict[str, int] = {}
    h, w = canon.shape[1:]
    for i, k in enumerate(zs):
        if cancel is not None:
            cancel.raise_if_cancelled()
        report(progress, i / len(zs), f"looking for the {name} at the mirror image of the {other}")
        piece = kidney[k]
        rows = np.flatnonzero(piece.any(axis=1))
        cols = np.flatnonzero(piece.any(axis=0))
        mid = _mirror_column(slicer, body.mid_x, int(k), int((rows[0] + rows[-1]) // 2))
        if mid is None:
            return [], None
        c0, c1 = 2.0 * mid - cols[-1], 2.0 * mid - cols[0]
        box = (
            max(0, int(rows[0] - margin[0])),
            max(0, int(np.floor(c0 - margin[1]))),
            min(h - 1, int(rows[-1] + margin[0])),
            min(w - 1, int(np.ceil(c1 + margin[1]))),
        )
        if box[1] >= w - 1 or box[3] <= 0 or box[3] - box[1] < 3:
            continue  # the mirror image lies outside the field of view
        tried += 1
        logits, _ = predictor.slice_context("axial", int(k), structure=missing).decode(box_rc=box)
        mask = largest_component(logits > 0)
        reason = _slice_reason(mask, piece, box, hu[k], hu_med, hu_sd, others[k], config)
        if reason:
            reasons[reason] = reasons.get(reason, 0) + 1
            continue
        accepted += 1
        drawn[k] = mask
    if tried == 0:
        return [f"kidney mirror: the mirror image of the {other} lies outside the scan"], None
    why = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items(), key=lambda x: -x[1]))
    summary = f"{accepted} of {tried} mirrored slice(s) kidney-like" + (f" (refused: {why})" if why else "")
    if accepted < max(3, config.min_slices * tried):
        return [f"kidney mirror: no {name} at the mirror image of the {other}: {summary}"], None
    done = [int(k) for k in np.flatnonzero(drawn.any(axis=(1, 2)))]
    for ka, kb in itertools.pairwise(done):
        if 1 < kb - ka <= step:
            weights = [(k - ka) / (kb - ka) for k in range(ka + 1, kb)]
            for k, (mask, _) in zip(
                range(ka + 1, kb), interpolate_slices(drawn[ka], drawn[kb], weights, (row_mm, col_mm))
            ):
                drawn[k] = mask
    drawn = largest_component(drawn)
    if drawn.sum() < config.min_volume_ratio * kidney.sum():
        return [
            f"kidney mirror: the {name} drawn at the mirror image is too small ({drawn.sum() * ml:.1f} mL): {summary}"
        ], None
    free = (labels == 0) & slicer.canonical_volume_to_user(drawn)
    trial = labels.copy()
    trial[free] = value_of[missing]
    # the position checks with the other organs present (the kidney's level against the liver's)
    checks = refuse_implausible_positions(trial, volume.array, volume.grid, table, body=body)
    kept = free & (trial == value_of[missing])
    if kept.sum() < 0.5 * free.sum():
        return [f"kidney mirror: the {name} drawn at the mirror image was refused: {'; '.join(checks)}"], None
    labels[kept] = value_of[missing]
    return [
        f"kidney mirror: {name} ({int(kept.sum()) * ml:.1f} mL) found by the prompt model at the mirror image of the "
        f"{other} across the body's midline; {summary}"
    ], missing


def _slice_reason(mask, piece, box, hu, hu_med, hu_sd, others, config: MirrorConfig) -> str | None:
    """Why the prompt model's answer on one slice does not look like the kidney it mirrors (None: it does)."""
    area, ref = int(mask.sum()), int(piece.sum())
    if area == 0:
        return "empty"
    lo, hi = config.area_ratio
    if not lo * ref <= area <= hi * ref:
        return "area"
    r0, c0, r1, c1 = box
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    sides = (rows[0] <= r0) + (rows[-1] >= r1) + (cols[0] <= c0) + (cols[-1] >= c1)
    if sides >= 2:
        return "larger than its box"
    if abs(float(np.median(hu[mask])) - hu_med) > config.hu_sd * hu_sd:
        return "HU"
    if (mask & others).sum() > config.max_overlap * area:
        return "on another organ"
    return None
