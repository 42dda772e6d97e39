"""Kidney tumour metrics and the R.E.N.A.L. nephrometry score.

Scoring table from Kutikov A, Uzzo RG, "The R.E.N.A.L. nephrometry score", J Urol
2009;182:844-853 (copied in ``../shared/docs/clinical.md``):

====  ===================================  ==========================  ====================
      1                                    2                           3
====  ===================================  ==========================  ====================
R     max diameter <= 4 cm                 > 4 and < 7 cm              >= 7 cm
E     >= 50% exophytic                     < 50% exophytic             entirely endophytic
N     >= 7 mm to collecting system/sinus   > 4 and < 7 mm              <= 4 mm
L     entirely above the upper / below     crosses a polar line        > 50% across a polar line,
      the lower polar line                                             crosses the axial midline,
                                                                       or entirely between
====  ===================================  ==========================  ====================

A is a suffix (a anterior, p posterior, x neither), "h" when the tumour touches the main renal
artery or vein. Sum 4-6 low, 7-9 moderate, 10-12 high complexity.

How each part is measured here (our operationalisation, stated in the report):

* **Kidney of a tumour**: the kidney segment sharing the most voxel faces with it
  (:func:`lkseg.planning.lesions.find_lesions`); a tumour touching no kidney is not scored.
* **R**: largest 3D diameter of the tumour (mm) on its pixelated outline.
* **E**: exophytic fraction = share of tumour voxels whose centres lie outside the convex hull
  of the kidney segment (the kidney without its tumours). The hull bridges the defect the
  tumour leaves and the hilum, so tissue within the renal outline (including the sinus) counts
  as endophytic and only what bulges beyond the outline as exophytic. 0 -> E=3.
* **N**: shortest gap (mm) between the tumour and the collecting system / renal sinus segment
  (``renal_pelvis``, ``renal_sinus`` or ``collecting_system``) of that kidney. Without such a
  segment, the sinus is derived from the kidney's own shape (:mod:`lkseg.planning.sinus`:
  convex hull minus kidney, medial side); when the kidney segment includes its sinus (only a
  small hilar notch is left) and no enhanced CT shows it, the sinus is *estimated* from the
  kidney's shape (its convex hull shrunk about the hilum); ``sinus_source`` says which. When the
  kidney has no laterality (medial side unknown) N is *not available*.
* **L**: polar lines are the axial planes (RAS S) at the upper and lower limits of the renal
  sinus (segment or derived, as for N), where the sinus interrupts the medial lip of the
  parenchyma; the axial renal midline is the axial plane halfway between them.
* **A**: share of the tumour anterior to the kidney's coronal plane (through the kidney's
  centroid, normal RAS +y): >= 60% -> "a", <= 40% -> "p", otherwise "x".
* **h**: only when a ``renal_artery`` / ``renal_vein`` segment exists (touching -> "h");
  otherwise not assessed.

The total score and complexity are given only when R, E, N and L are all available.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError, cKDTree

from lkseg.planning._geometry import boundary_face_points, boundary_voxels, spacing_zyx, zyx_to_ras
from lkseg.planning._index import COLLECTING_SYSTEM_NAMES, LabelIndex, grow_box
from lkseg.planning.lesions import Lesion
from lkseg.planning.padua import PaduaScore, padua_size
from lkseg.planning.sinus import geometric_sinus
from lkseg.volume import Volume

__all__ = [
    "HILAR_VESSEL_NAMES",
    "RenalScore",
    "complexity_of",
    "nephrometry",
    "outside_hull",
    "score_e",
    "score_l",
    "score_n",
    "score_r",
]

log = logging.getLogger(__name__)

HILAR_VESSEL_NAMES = ("renal_artery", "renal_vein")
_ANTERIOR, _POSTERIOR = 0.6, 0.4  # share of tumour volume anterior to the kidney's coronal plane


def score_r(max_diameter_mm: float) -> int:
    """R: <= 4 cm -> 1, > 4 and < 7 cm -> 2, >= 7 cm -> 3 (Kutikov & Uzzo 2009)."""
    if max_diameter_mm <= 40.0:
        return 1
    return 2 if max_diameter_mm < 70.0 else 3


def score_e(exophytic_fraction: float) -> int:
    """E: >= 50% exophytic -> 1, < 50% -> 2, entirely endophytic (0%) -> 3."""
    if exophytic_fraction >= 0.5:
        return 1
    return 2 if exophytic_fraction > 0.0 else 3


def score_n(nearness_mm: float) -> int:
    """N: >= 7 mm -> 1, > 4 and < 7 mm -> 2, <= 4 mm -> 3."""
    if nearness_mm >= 7.0:
        return 1
    return 2 if nearness_mm > 4.0 else 3


def score_l(fraction_between: float, crosses_polar_line: bool, crosses_midline: bool) -> int:
    """L: entirely polar -> 1; crosses a polar line -> 2; > 50% between the polar lines, crossing
    the axial midline, or entirely between -> 3."""
    if fraction_between > 0.5 or crosses_midline:
        return 3
    return 2 if crosses_polar_line else 1


def complexity_of(total: int) -> str:
    """4-6 low, 7-9 moderate, 10-12 high (Kutikov & Uzzo 2009)."""
    if total <= 6:
        return "low"
    return "moderate" if total <= 9 else "high"


@dataclass
class RenalScore:
    """Metrics and R.E.N.A.L. score of one kidney tumour (None = not available, see ``notes``)."""

    tumour: str
    kidney: str | None
    volume_ml: float
    max_diameter_mm: float
    centroid_ras: tuple[float, float, float]
    exophytic_fraction: float | None = None
    nearness_mm: float | None = None
    polar_lines_ras_s_mm: tuple[float, float] | None = None
    fraction_above_upper: float | None = None
    fraction_between: float | None = None
    fraction_below_lower: float | None = None
    crosses_polar_line: bool | None = None
    crosses_midline: bool | None = None
    polar_location: str | None = None
    anterior_fraction: float | None = None
    anterior_posterior: str | None = None
    hilar: bool | None = None
    sinus_source: str | None = None
    padua: PaduaScore | None = None
    R: int | None = None
    E: int | None = None
    N: int | None = None
    L: int | None = None
    total: int | None = None
    complexity: str | None = None
    notation: str | None = None
    notes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = dict(self.__dict__)
        out["centroid_ras_mm"] = list(out.pop("centroid_ras"))
        out["not_available"] = out.pop("notes")
        out["padua"] = self.padua.to_dict() if self.padua is not None else None
        return out


def nephrometry(index: LabelIndex, tumours: Sequence[Lesion], image: Volume | None = None) -> list[RenalScore]:
    """Kidney tumour metrics and R.E.N.A.L. score for each tumour (from :func:`find_lesions`).

    ``image`` (the CT on the label map's grid) lets the derived sinus include the low-density
    sinus fat and urine inside an enhanced kidney segment (see :mod:`lkseg.planning.sinus`)."""
    grid = index.labels.grid
    sp = spacing_zyx(grid)
    cs_values = index.present(COLLECTING_SYSTEM_NAMES)
    vessel_values = index.present(HILAR_VESSEL_NAMES)
    hulls: dict[str, tuple] = {}
    out = []
    for tumour in tumours:
        score = RenalScore(tumour.label, tumour.organ, tumour.volume_ml, tumour.max_diameter_mm, tumour.centroid_ras)
        score.R = score_r(tumour.max_diameter_mm)
        out.append(score)
        if tumour.organ is None or tumour.mask is None or tumour.offset is None:
            reason = "not available: the tumour touches no kidney segment (outside its organ)"
            for key in ("exophytic_fraction", "nearness_mm", "polar_location", "anterior_posterior", "total"):
                score.notes[key] = reason
            continue
        if tumour.organ not in hulls:
            hulls[tumour.organ] = _kidney_geometry(index, tumour.organ, sp)
        kidney = hulls[tumour.organ]
        tum_zyx = np.argwhere(tumour.mask) + tumour.offset
        _exophytic(score, kidney, tum_zyx, sp)
        tum_ras = zyx_to_ras(grid, tum_zyx)
        _anterior(score, kidney, tum_ras)
        _collecting_system(score, index, tumour, kidney, cs_values, tum_ras, sp, image)
        _hilar(score, index, tumour, vessel_values)
        _padua(score, index, tumour, kidney, tum_ras, sp)
        if None not in (score.R, score.E, score.N, score.L):
            score.total = int(score.R + score.E + score.N + score.L)  # type: ignore[operator]
            score.complexity = complexity_of(score.total)
            suffix = (score.anterior_posterior or "") + ("h" if score.hilar else "")
            score.notation = f"{score.total}{suffix}"
        else:
            missing = [k for k in ("R", "E", "N", "L") if getattr(score, k) is None]
            score.notes["total"] = f"not available: component(s) {', '.join(missing)} not available"
    return out


def _kidney_geometry(index: LabelIndex, kidney: str, sp: np.ndarray) -> dict:
    """Convex hull (mm, ZYX-scaled), centroid (RAS) and box of one kidney segment."""
    values = index.present([kidney])
    box = grow_box(index.bbox(values), 1, index.labels.shape)  # type: ignore[arg-type]
    mask = index.mask(values, box)
    offset = np.array([s.start for s in box])
    pts = (boundary_face_points(mask) + offset) * sp
    hull = None
    try:
        hull = ConvexHull(pts)
    except (QhullError, ValueError) as exc:
        log.warning("cannot build the convex hull of %s: %s", kidney, exc)
    centroid = zyx_to_ras(index.labels.grid, np.argwhere(mask).mean(axis=0) + offset)[0]
    return {"name": kidney, "hull": hull, "centroid_ras": centroid, "box": box, "mask": mask, "offset": offset}


def _exophytic(score: RenalScore, kidney: dict, tum_zyx: np.ndarray, sp: np.ndarray) -> None:
    hull = kidney["hull"]
    if hull is None:
        score.notes["exophytic_fraction"] = "not available: the kidney segment is too small or flat for a convex hull"
        return
    outside = outside_hull(hull.equations, tum_zyx, sp)
    score.exophytic_fraction = float(outside.mean())
    score.E = score_e(score.exophytic_fraction)


def outside_hull(
    equations: np.ndarray, points_zyx: np.ndarray, spacing_zyx: np.ndarray, tol: float = 1e-6
) -> np.ndarray:
    """Which voxels (integer (k, j, i) indices, (N, 3)) have their centre outside the convex hull
    given by Qhull ``equations`` (F, 4) in mm (``normal . (idx x spacing) + offset <= 0`` inside).

    The hull is intersected once with each voxel row along i (an interval, the hull being
    convex) instead of testing every voxel against every facet: cost rows x facets.
    """
    eq = np.unique(np.round(equations, 9), axis=0)
    normal, offset = eq[:, :3], eq[:, 3]
    kj = points_zyx[:, :2].astype(np.int64)
    key = (kj[:, 0] - kj[:, 0].min()) * (int(kj[:, 1].max() - kj[:, 1].min()) + 1) + (kj[:, 1] - kj[:, 1].min())
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    rows = kj[first] * spacing_zyx[:2]
    lower = np.full(len(rows), -np.inf)
    upper = np.full(len(rows), np.inf)
    n2 = normal[:, 2]
    for start in range(0, len(rows), 4096):
        c = rows[start : start + 4096] @ normal[:, :2].T + offset  # normal . (row, x = 0) + offset
        with np.errstate(divide="ignore", invalid="ignore"):
            bound = -c / n2
        up = np.where(n2 > 1e-12, bound, np.inf).min(axis=1)
        lo = np.where(n2 < -1e-12, bound, -np.inf).max(axis=1)
        misses = np.where(np.abs(n2) <= 1e-12, c, -np.inf).max(axis=1) > tol
        lo[misses] = np.inf  # the row misses the hull entirely
        lower[start : start + 4096], upper[start : start + 4096] = lo, up
    x = points_zyx[:, 2] * spacing_zyx[2]
    inverse = inverse.reshape(-1)
    return (x < lower[inverse] - tol) | (x > upper[inverse] + tol)


def _anterior(score: RenalScore, kidney: dict, tum_ras: np.ndarray) -> None:
    frac = float((tum_ras[:, 1] > kidney["centroid_ras"][1]).mean())  # RAS +y = anterior
    score.anterior_fraction = frac
    score.anterior_posterior = "a" if frac >= _ANTERIOR else ("p" if frac <= _POSTERIOR else "x")


def _collecting_system(
    score, index: LabelIndex, tumour: Lesion, kidney: dict, cs_values, tum_ras, sp, image: Volume | None = None
) -> None:
    if cs_values:
        # the collecting system of this kidney: its voxels within the kidney's box (+ 5 voxels)
        box = grow_box(kidney["box"], 5, index.labels.shape)
        cs = index.mask(cs_values, box)
        offset = np.array([s.start for s in box])
        score.sinus_source = "segment: " + ", ".join(sorted({index.name_of(v) for v in cs_values}))
        if not cs.any():
            reason = f"not available: the collecting-system segment does not reach {kidney['name']}"
            score.notes["nearness_mm"] = reason
            score.notes["polar_location"] = reason
            return
    else:
        cs, offset, source = _geometric_sinus(index, kidney, sp, image)
        if cs is None:
            reason = (
                f"not available: no collecting-system segment ({', '.join(COLLECTING_SYSTEM_NAMES)}) and no renal "
                f"sinus derived from {kidney['name']}: {source}"
            )
            score.notes["nearness_mm"] = reason
            score.notes["polar_location"] = reason
            return
        score.sinus_source = source
    cs_zyx = np.argwhere(cs) + offset
    # N: gap between the tumour and the collecting system
    cs_b = (np.argwhere(boundary_voxels(cs)) + offset) * sp
    tum_b = (np.argwhere(boundary_voxels(tumour.mask)) + tumour.offset) * sp
    dist, idx = cKDTree(cs_b).query(tum_b, k=1)
    best = int(np.argmin(dist))
    vec = cs_b[idx[best]] - tum_b[best]
    score.nearness_mm = _gap(vec, sp)
    score.N = score_n(score.nearness_mm)
    # L: polar lines from the S extent of the collecting system
    z = zyx_to_ras(index.labels.grid, cs_zyx)[:, 2]
    upper, lower = float(z.max()), float(z.min())
    score.polar_lines_ras_s_mm = (upper, lower)
    tz = tum_ras[:, 2]
    above, below = tz > upper, tz < lower
    between = ~above & ~below
    score.fraction_above_upper = float(above.mean())
    score.fraction_below_lower = float(below.mean())
    score.fraction_between = float(between.mean())
    score.crosses_polar_line = bool((above.any() and not above.all()) or (below.any() and not below.all()))
    mid = 0.5 * (upper + lower)
    score.crosses_midline = bool((tz > mid).any() and (tz < mid).any())
    score.L = score_l(score.fraction_between, score.crosses_polar_line, score.crosses_midline)
    if above.all():
        score.polar_location = "upper pole (entirely above the upper polar line)"
    elif below.all():
        score.polar_location = "lower pole (entirely below the lower polar line)"
    elif between.all():
        score.polar_location = "interpolar (entirely between the polar lines)"
    else:
        score.polar_location = "crosses a polar line"


def _geometric_sinus(index: LabelIndex, kidney: dict, sp: np.ndarray, image: Volume | None):
    """The kidney's medial concavity (:mod:`lkseg.planning.sinus`), cached in ``kidney``."""
    if "sinus" not in kidney:
        name = kidney["name"]
        sign = {"kidney_right": -1.0, "kidney_left": 1.0}.get(name)
        kidney["sinus"] = (
            None,
            None,
            "the kidney has no laterality (kidney_right / kidney_left): its medial side is unknown",
        )
        if sign is None:
            log.warning("%s has no laterality: its medial side (renal sinus) is unknown", name)
            return kidney["sinus"]
        box = grow_box(kidney["box"], 3, index.labels.shape)
        offset = np.array([s.start for s in box])
        lesions = index.present(("kidney_tumor", "kidney_cyst"))
        own = index.mask(index.present([name]), box)
        region = own
        if lesions:  # the kidney's own lesions (touching it) count as kidney for the hull
            comps, _ = ndimage.label(own | index.mask(lesions, box), structure=np.ones((3, 3, 3), dtype=bool))
            keep = np.unique(comps[own])
            region = np.isin(comps, keep[keep > 0])
        grid = index.labels.grid
        hu = None if image is None else np.asarray(image.array[box])
        sinus, source = geometric_sinus(region, sp, lambda ix: zyx_to_ras(grid, ix + offset)[:, 0], sign, own, hu)
        kidney["sinus"] = (sinus, offset, source)
    return kidney["sinus"]


def _padua(score: RenalScore, index: LabelIndex, tumour: Lesion, kidney: dict, tum_ras: np.ndarray, sp) -> None:
    """PADUA (:mod:`lkseg.planning.padua`) from the R.E.N.A.L. measurements of ``score``."""
    p = PaduaScore(size=padua_size(score.max_diameter_mm), face=score.anterior_posterior)
    score.padua = p
    if score.exophytic_fraction is not None:
        p.exophytic = score_e(score.exophytic_fraction)
    if score.fraction_between is not None:
        p.polar = 2 if score.fraction_between > 0.5 else 1
    else:
        p.notes["polar"] = score.notes.get("polar_location", "not available: no polar lines")
    if score.nearness_mm is not None:
        p.sinus = 2 if score.nearness_mm <= 0.0 else 1
    else:
        p.notes["sinus"] = score.notes.get("nearness_mm", "not available: no renal sinus")
    sign = {"kidney_right": -1.0, "kidney_left": 1.0}.get(kidney["name"])
    if sign is None:
        p.notes["rim"] = "not available: the kidney has no laterality (medial side unknown)"
    else:
        p.medial_fraction = float(((tum_ras[:, 0] - kidney["centroid_ras"][0]) * sign > 0).mean())
        p.rim = 2 if p.medial_fraction > 0.5 else 1
    ucs = index.present(("collecting_system", "renal_pelvis"))
    if ucs:
        p.collecting_system = 2 if np.isin(_touching(index, tumour), ucs).any() else 1
    else:
        p.notes["collecting_system"] = (
            "not available: no collecting_system / renal_pelvis segment (a derived sinus does not separate urine from fat)"
        )
    p.finish()


def _gap(vec_mm: np.ndarray, sp: np.ndarray) -> float:
    """Gap between two objects whose nearest boundary voxel centres are ``vec_mm`` apart: the
    centre distance minus the half-voxel on each side along that direction."""
    d = float(np.linalg.norm(vec_mm))
    if d == 0:
        return 0.0
    u = np.abs(vec_mm) / d
    chord = min(s / c for s, c in zip(sp, u) if c > 1e-9)
    return max(0.0, d - chord)


def _hilar(score: RenalScore, index: LabelIndex, tumour: Lesion, vessel_values: list[int]) -> None:
    if not vessel_values:
        score.notes["hilar"] = "not assessed: no renal artery / renal vein segment in the label map"
        return
    score.hilar = bool(np.isin(_touching(index, tumour), vessel_values).any())


def _touching(index: LabelIndex, tumour: Lesion) -> np.ndarray:
    """Label values of the voxels that share a face with the tumour."""
    lo = tumour.offset
    box = tuple(slice(max(0, int(o) - 1), int(o) + n + 1) for o, n in zip(lo, tumour.mask.shape))
    crop = index.labels.array[box]
    mask = np.zeros(crop.shape, dtype=bool)
    start = [int(o) - b.start for o, b in zip(lo, box)]
    inner = tuple(slice(max(0, s), s + n) for s, n in zip(start, tumour.mask.shape))
    src = tuple(slice(max(0, -s), n) for s, n in zip(start, tumour.mask.shape))
    mask[inner] = tumour.mask[src]
    shell = ndimage.binary_dilation(mask) & ~mask
    return crop[shell]
