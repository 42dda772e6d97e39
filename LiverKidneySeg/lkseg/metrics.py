"""Segmentation accuracy metrics (overlap, volume and surface distances), distances in millimetres.

* Dice = 2|S∩G| / (|S| + |G|), Jaccard = |S∩G| / |S∪G|, VOE = 1 − Jaccard,
  RVD = (|S| − |G|) / |G| (S = segmentation, G = reference).
* Surface distances use the voxel spacing: the surface of a mask is its set of foreground voxels
  with at least one 6-connected background neighbour (the volume border counts as background); the
  distance from each surface voxel of one mask to the nearest surface voxel of the other is computed
  with an exact Euclidean distance transform in mm (anisotropic spacing respected; the direction
  matrix is a rotation, so it does not change distances).
* ASSD = mean of all distances of both directions; HD = maximum symmetric surface distance.
* HD95 (``hd95_mm``) = the larger of the two *directed* 95th percentiles,
  max(P95(d(S->G)), P95(d(G->S))): the convention of DeepMind's ``surface-distance``
  (``compute_robust_hausdorff``) and MONAI's ``compute_hausdorff_distance(percentile=95)``.
  MedPy's ``hd95`` instead pools both directions before the percentile,
  P95(d(S->G) ∪ d(G->S)); it is given as ``hd95_pooled_mm``. The two differ when one direction
  has many more surface points or much larger distances than the other. Percentiles use numpy's
  default linear interpolation (as MedPy, surface-distance and MONAI do).

Conventions for empty masks: both empty -> Dice 1, distances 0 (a correct "nothing there");
exactly one empty -> Dice 0 and distances ``inf``; RVD is ``nan`` when the reference is empty.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from lkseg.errors import InputError
from lkseg.volume import Volume

__all__ = [
    "Metrics",
    "compute_metrics",
    "dice",
    "format_metrics_table",
    "jaccard",
    "mask_metrics",
    "surface_distances",
]

_CROSS = ndimage.generate_binary_structure(3, 1)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean arrays of equal shape (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard index |A∩B| / |A∪B| (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = int(np.logical_or(a, b).sum())
    return 1.0 if union == 0 else int(np.logical_and(a, b).sum()) / union


def _surface(mask: np.ndarray) -> np.ndarray:
    eroded = ndimage.binary_erosion(mask, structure=_CROSS, border_value=0)
    return mask & ~eroded


def _spacing_zyx(spacing: Sequence[float]) -> tuple[float, float, float]:
    """Spacing is given in (i, j, k) order; numpy arrays are (k, j, i)."""
    s = tuple(float(v) for v in spacing)
    if len(s) != 3 or min(s) <= 0:
        raise InputError(f"spacing must be 3 positive numbers (i, j, k mm), got {spacing!r}")
    return (s[2], s[1], s[0])


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: (from each surface voxel of ``a`` to ``b``'s surface,
    from each surface voxel of ``b`` to ``a``'s surface).

    Args:
        a, b: boolean masks, ZYX, same shape.
        spacing: (si, sj, sk) voxel size in mm along i, j, k.

    Both masks must be non-empty. Work is restricted to the bounding box of the union (plus a
    margin), so large volumes with small structures are cheap.
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise InputError(f"masks differ in shape: {a.shape} vs {b.shape}")
    if not a.any() or not b.any():
        raise InputError("surface distances need two non-empty masks")
    union = a | b
    lo = [int(np.flatnonzero(union.any(axis=tuple(d for d in range(3) if d != ax))).min()) for ax in range(3)]
    hi = [int(np.flatnonzero(union.any(axis=tuple(d for d in range(3) if d != ax))).max()) + 1 for ax in range(3)]
    box = tuple(slice(low, high) for low, high in zip(lo, hi))
    # pad by one background voxel on each side: voxels on the volume border are surface voxels
    a_c = np.pad(a[box], 1)
    b_c = np.pad(b[box], 1)
    sampling = _spacing_zyx(spacing)
    surf_a, surf_b = _surface(a_c), _surface(b_c)
    dist_to_b = ndimage.distance_transform_edt(~surf_b, sampling=sampling)
    dist_to_a = ndimage.distance_transform_edt(~surf_a, sampling=sampling)
    return dist_to_b[surf_a].astype(np.float64), dist_to_a[surf_b].astype(np.float64)


@dataclass(frozen=True)
class Metrics:
    """Accuracy of one structure. Distances in mm, volumes in mL.

    ``hd95_mm`` is the max of the two directed 95th percentiles (surface-distance / MONAI);
    ``hd95_pooled_mm`` the 95th percentile of both directions pooled (MedPy's ``hd95``).
    """

    dice: float
    jaccard: float
    voe: float
    rvd: float
    assd_mm: float
    hd95_mm: float
    hd_mm: float
    pred_ml: float
    ref_ml: float
    hd95_pooled_mm: float = float("nan")

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def mask_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> Metrics:
    """All metrics for one pair of boolean ZYX masks with spacing (si, sj, sk) mm."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    if pred.shape != ref.shape:
        raise InputError(f"prediction and reference differ in shape: {pred.shape} vs {ref.shape}")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    n_pred, n_ref = int(pred.sum()), int(ref.sum())
    d, j = dice(pred, ref), jaccard(pred, ref)
    rvd = (n_pred - n_ref) / n_ref if n_ref else float("nan")
    if n_pred == 0 and n_ref == 0:
        assd = hd95 = hd = pooled = 0.0
    elif n_pred == 0 or n_ref == 0:
        assd = hd95 = hd = pooled = float("inf")
    else:
        d_ab, d_ba = surface_distances(pred, ref, spacing)
        both = np.concatenate([d_ab, d_ba])
        assd = float(both.mean())
        hd = float(both.max())
        hd95 = float(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)))  # directed (surface-distance/MONAI)
        pooled = float(np.percentile(both, 95))  # pooled (MedPy)
    return Metrics(d, j, 1.0 - j, rvd, assd, hd95, hd, n_pred * voxel_ml, n_ref * voxel_ml, pooled)


def compute_metrics(
    pred: Volume | np.ndarray,
    ref: Volume | np.ndarray,
    labels: Mapping[int, str] | None = None,
    spacing: Sequence[float] | None = None,
    ref_labels: Mapping[int, str] | None = None,
    *,
    resample: bool = False,
) -> dict[str, Metrics]:
    """Per-structure metrics of a predicted label map against a reference label map.

    Args:
        pred, ref: label maps (Volumes on the same grid, or ZYX arrays with ``spacing``).
        labels: value -> structure name for ``pred`` (and ``ref`` unless ``ref_labels``); default:
            every non-zero value present in either map, named by its value.
        spacing: (si, sj, sk) mm, needed when arrays are given.
        ref_labels: value -> name for the reference when it uses other values (e.g. a
            TotalSegmentator mask with liver = 5). Structures are matched by name.
        resample: Volumes on different lattices are refused unless True (then ``pred`` is
            resampled onto ``ref``'s grid with nearest neighbour). Volumes on one lattice with
            other axis directions are reoriented exactly either way
            (:func:`lkseg.io.placement.place_label_map`).

    Returns:
        ``{name: Metrics}`` for every structure named in ``labels`` (or found).
    """
    if isinstance(pred, Volume) and isinstance(ref, Volume):
        from lkseg.io.placement import place_label_map

        pred = place_label_map(pred, ref, resample=resample, what="prediction")
        spacing = ref.spacing
        pred_arr, ref_arr = pred.array, ref.array
    else:
        pred_arr = pred.array if isinstance(pred, Volume) else np.asarray(pred)
        ref_arr = ref.array if isinstance(ref, Volume) else np.asarray(ref)
        spacing = spacing or (
            pred.spacing if isinstance(pred, Volume) else ref.spacing if isinstance(ref, Volume) else None
        )
        if spacing is None:
            raise InputError("spacing is required when label maps are given as arrays")
        if pred_arr.shape != ref_arr.shape:
            raise InputError(f"prediction and reference differ in shape: {pred_arr.shape} vs {ref_arr.shape}")
    if labels is None:
        values = sorted(({int(v) for v in np.unique(pred_arr)} | {int(v) for v in np.unique(ref_arr)}) - {0})
        labels = {v: str(v) for v in values}
    ref_by_name = {name: value for value, name in (ref_labels or labels).items()}
    results: dict[str, Metrics] = {}
    for value, name in labels.items():
        ref_value = ref_by_name.get(name)
        ref_mask = ref_arr == ref_value if ref_value is not None else np.zeros(ref_arr.shape, bool)
        results[name] = mask_metrics(pred_arr == int(value), ref_mask, spacing)
    return results


def format_metrics_table(results: Mapping[str, Metrics]) -> str:
    """A fixed-width text table of per-structure metrics."""
    header = f"{'structure':<16}{'Dice':>7}{'Jaccard':>9}{'VOE':>7}{'RVD':>8}{'ASSD mm':>9}{'HD95 mm':>9}{'HD mm':>8}{'pred mL':>10}{'ref mL':>10}"
    lines = [header, "-" * len(header)]

    def f(v: float, width: int, digits: int) -> str:
        return f"{v:>{width}.{digits}f}" if math.isfinite(v) else f"{'n/a' if math.isnan(v) else 'inf':>{width}}"

    for name, m in results.items():
        lines.append(
            f"{name:<16}{f(m.dice, 7, 4)}{f(m.jaccard, 9, 4)}{f(m.voe, 7, 4)}{f(m.rvd, 8, 3)}"
            f"{f(m.assd_mm, 9, 2)}{f(m.hd95_mm, 9, 2)}{f(m.hd_mm, 8, 2)}{f(m.pred_ml, 10, 1)}{f(m.ref_ml, 10, 1)}"
        )
    return "\n".join(lines)
