"""Which axial slices the hybrid stage encodes, and shape-based interpolation in between.

The prompt model's image encoder costs ~1.5 s per slice on a 2-core CPU, so on thin-slice CT the
hybrid stage (:mod:`lkseg.auto.hybrid`) encodes only *key slices*: every ``step``-th slice of a
grid shared by all organs (one encode serves every organ on that slice) and each organ piece's
first and last slice; the hybrid stage draws every slice of an interval where an organ's outline
changes fast between two key slices. The other slices get the signed-distance interpolation of
the two drawn slices around them.

All arrays here are canonical ``(k, j, i)`` stacks or single ``(j, i)`` slices of one volume;
slice indices are canonical ``k``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["interpolate_slices", "key_slices", "mask_dice", "signed_distance", "slice_step"]


def slice_step(sample_mm: float, slice_mm: float) -> int:
    """Key-slice step (in slices) for a sampling distance ``sample_mm``; ``<= 0`` means every slice."""
    if sample_mm <= 0 or slice_mm <= 0:
        return 1
    return max(1, round(sample_mm / slice_mm))


def key_slices(ranges: list[tuple[int, int]], step: int) -> list[int]:
    """The first key slices: every ``step``-th slice of one grid anchored at the lowest first slice,
    inside some range, plus every range's first and last slice (ranges are inclusive)."""
    if not ranges:
        return []
    base = min(r[0] for r in ranges)
    keys = set()
    for k0, k1 in ranges:
        keys.update((k0, k1))
        first = k0 + (-(k0 - base)) % step
        keys.update(range(first, k1 + 1, step))
    return sorted(keys)


def mask_dice(a: np.ndarray, b: np.ndarray) -> float:
    """2D Dice of two masks; 1.0 when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.count_nonzero(a & b)) / total


def signed_distance(mask: np.ndarray, sampling: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Signed distance to the mask's outline: negative inside (never 0), positive outside."""
    if not mask.any():
        return np.full(mask.shape, np.inf, dtype=np.float32)
    outside = ndimage.distance_transform_edt(~mask, sampling=sampling)
    inside = ndimage.distance_transform_edt(mask, sampling=sampling)
    return np.where(mask, -inside, outside).astype(np.float32)


def interpolate_slices(
    a: np.ndarray, b: np.ndarray, weights: list[float], sampling: tuple[float, float] = (1.0, 1.0)
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Shape-based interpolation between masks ``a`` (weight 0) and ``b`` (weight 1).

    Returns ``(mask, signed distance)`` for each weight; the distance lives on the bounding box
    of ``a | b`` (padded; ``+inf`` elsewhere) since the interpolated shape lies inside ``a | b``.
    An empty end contributes the other end's shape shrinking towards it (its distance is taken
    as the other end's outline distance plus the shape's radius). Identical ends give the same
    mask on every weight.
    """
    union = a | b
    out_empty = [(np.zeros(a.shape, bool), np.full(a.shape, np.inf, np.float32)) for _ in weights]
    if not union.any():
        return out_empty
    rows = np.flatnonzero(union.any(axis=1))
    cols = np.flatnonzero(union.any(axis=0))
    r0, r1 = max(0, rows[0] - 2), min(a.shape[0], rows[-1] + 3)
    c0, c1 = max(0, cols[0] - 2), min(a.shape[1], cols[-1] + 3)
    ca, cb = a[r0:r1, c0:c1], b[r0:r1, c0:c1]
    da, db = signed_distance(ca, sampling), signed_distance(cb, sampling)
    # an empty end: the shape vanishes at it (the present end's distance, lifted by its depth)
    if not ca.any():
        da = db - float(db.min()) + 1e-3
    elif not cb.any():
        db = da - float(da.min()) + 1e-3
    out = []
    for w in weights:
        d = (1.0 - w) * da + w * db
        full = np.full(a.shape, np.inf, dtype=np.float32)
        full[r0:r1, c0:c1] = d
        out.append((full < 0, full))
    return out
