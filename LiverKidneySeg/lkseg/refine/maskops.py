"""Small 2D mask helpers shared by clicks, propagation and evaluation (display frame, bool arrays)."""

from __future__ import annotations

import numpy as np

__all__ = [
    "bbox",
    "component_at",
    "components_touching",
    "disk",
    "interior_point",
    "largest_component",
]


def bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Inclusive ``(r0, c0, r1, c1)`` of the True pixels, or None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def component_at(mask: np.ndarray, rc: tuple[int, int], connectivity: int = 1) -> np.ndarray:
    """The connected component of ``mask`` containing pixel ``rc`` (empty if ``rc`` is False)."""
    from scipy import ndimage

    r, c = rc
    if not mask[r, c]:
        return np.zeros_like(mask, dtype=bool)
    structure = ndimage.generate_binary_structure(2, connectivity)
    labels, _ = ndimage.label(mask, structure=structure)
    return labels == labels[r, c]


def components_touching(mask: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Union of the components of ``mask`` that overlap ``reference``."""
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    keep = np.unique(labels[reference & mask])
    keep = keep[keep > 0]
    return np.isin(labels, keep)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component (4-connected in 2D, 6 in 3D)."""
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask.astype(bool, copy=True)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def interior_point(mask: np.ndarray, spacing: tuple[float, ...] | None = None) -> tuple[int, ...]:
    """The pixel of ``mask`` farthest from its border (the "centre" of a region)."""
    from scipy import ndimage

    padded = np.pad(mask, 1)
    dist = ndimage.distance_transform_edt(padded, sampling=spacing)
    dist = dist[tuple(slice(1, -1) for _ in range(mask.ndim))]
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(dist)), mask.shape))


def disk(shape: tuple[int, int], rc: tuple[float, float], radius_rc: tuple[float, float]) -> np.ndarray:
    """An ellipse of radii ``radius_rc`` pixels (rows, cols) centred on ``rc``."""
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return ((rr - rc[0]) / max(radius_rc[0], 1e-6)) ** 2 + ((cc - rc[1]) / max(radius_rc[1], 1e-6)) ** 2 <= 1.0
