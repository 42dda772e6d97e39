"""Resampling of images, label maps and probability maps between voxel grids.

All functions work in physical (LPS) space through SimpleITK, so any direction (flipped,
permuted, oblique) is handled; arrays stay ZYX. Images are interpolated linearly (or with a
B-spline), label maps with nearest neighbour or "one-hot linear" (each label's indicator is
interpolated linearly and the largest wins: smoother boundaries than nearest neighbour, no label
ever invented), probability maps channel by channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from lkseg.errors import InputError
from lkseg.volume import Grid, Volume

__all__ = [
    "Interpolation",
    "grid_for_spacing",
    "resample_array_to_grid",
    "resample_labels_to_grid",
    "resample_probabilities_to_grid",
    "resample_to_grid",
    "resample_to_spacing",
]

Interpolation = Literal["linear", "nearest", "bspline", "label_linear"]


def grid_for_spacing(grid: Grid, spacing: Sequence[float]) -> Grid:
    """The grid covering the same physical extent as ``grid`` with a new spacing (i, j, k mm).

    The voxel *edges* of both grids are aligned at the low corner, so the extents match to within
    one new voxel; the direction is unchanged.
    """
    new_spacing = np.asarray(spacing, dtype=np.float64)
    if new_spacing.shape != (3,) or np.any(new_spacing <= 0):
        raise InputError(f"target spacing must be 3 positive numbers, got {spacing!r}")
    old_spacing = np.asarray(grid.spacing)
    extent = old_spacing * np.asarray(grid.size_ijk)
    new_size = np.maximum(1, np.round(extent / new_spacing).astype(int))
    shift = (new_spacing - old_spacing) / 2.0
    origin = np.asarray(grid.origin) + grid.direction @ shift
    return Grid(
        (int(new_size[2]), int(new_size[1]), int(new_size[0])), tuple(new_spacing), tuple(origin), grid.direction
    )


def sitk_reference(grid: Grid):
    """An empty SimpleITK image (uint8) with ``grid``'s size, spacing, origin and direction (LPS)."""
    import SimpleITK as sitk

    ref = sitk.Image([int(s) for s in grid.size_ijk], sitk.sitkUInt8)
    ref.SetSpacing(grid.spacing)
    ref.SetOrigin(grid.origin)
    ref.SetDirection(tuple(float(v) for v in grid.direction.reshape(-1)))
    return ref


def sitk_image(array: np.ndarray, grid: Grid):
    """A SimpleITK image of the ZYX ``array`` placed on ``grid`` (LPS geometry)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    img.SetSpacing(grid.spacing)
    img.SetOrigin(grid.origin)
    img.SetDirection(tuple(float(v) for v in grid.direction.reshape(-1)))
    return img


def resample_array_to_grid(
    array: np.ndarray,
    source: Grid,
    target: Grid,
    interpolation: Literal["linear", "nearest", "bspline"] = "linear",
    default_value: float = 0.0,
) -> np.ndarray:
    """Resample one ZYX array from ``source`` onto ``target``; returns a ZYX array of target shape.

    Linear and B-spline interpolation return float32 (input converted once); nearest keeps the
    dtype. Points of the target outside the source get ``default_value``.
    """
    import SimpleITK as sitk

    if array.shape != source.shape:
        raise InputError(f"array shape {array.shape} does not match its grid {source.shape}")
    if source.same_as(target, tol=1e-6):
        return np.array(array, copy=True) if interpolation == "nearest" else array.astype(np.float32, copy=True)
    interp = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}[
        interpolation
    ]
    src = array
    if interpolation != "nearest" and src.dtype != np.float32:
        src = src.astype(np.float32)
    if src.dtype == np.bool_:
        src = src.astype(np.uint8)
    img = sitk_image(src, source)
    out = sitk.Resample(img, sitk_reference(target), sitk.Transform(), interp, float(default_value), img.GetPixelID())
    result = sitk.GetArrayFromImage(out)
    return result.astype(array.dtype, copy=False) if array.dtype == np.bool_ else result


def resample_to_grid(
    volume: Volume, target: Grid, interpolation: Interpolation = "linear", default_value: float = 0.0
) -> Volume:
    """Resample a :class:`Volume` onto ``target``; labels should use ``nearest`` or ``label_linear``."""
    if interpolation == "label_linear":
        arr = resample_labels_to_grid(volume.array, volume.grid, target)
    else:
        arr = resample_array_to_grid(volume.array, volume.grid, target, interpolation, default_value)
    return Volume(arr, target, dict(volume.meta))


def resample_to_spacing(
    volume: Volume, spacing: Sequence[float], interpolation: Interpolation = "linear", default_value: float = 0.0
) -> Volume:
    """Resample to a new spacing (i, j, k mm) over the same physical extent."""
    return resample_to_grid(volume, grid_for_spacing(volume.grid, spacing), interpolation, default_value)


def resample_labels_to_grid(labels: np.ndarray, source: Grid, target: Grid) -> np.ndarray:
    """One-hot linear resampling of an integer label map (background 0); keeps the dtype.

    Each label's indicator is resampled linearly and every target voxel takes the arg-max of
    {background: 1 - sum of foreground, label 1, label 2, ...}. Labels never appear where they
    were absent, and thin structures survive better than with nearest neighbour.
    """
    if source.same_as(target, tol=1e-6):
        return np.array(labels, copy=True)
    values = [int(v) for v in np.unique(labels) if v != 0]
    out = np.zeros(target.shape, dtype=labels.dtype)
    best = np.zeros(target.shape, dtype=np.float32)
    fg_total = np.zeros(target.shape, dtype=np.float32)
    for value in values:
        prob = resample_array_to_grid((labels == value).astype(np.float32), source, target, "linear")
        fg_total += prob
        win = prob > best
        out[win] = value
        np.maximum(best, prob, out=best)
    out[(1.0 - fg_total) >= best] = 0
    return out


def resample_probabilities_to_grid(probs: np.ndarray, source: Grid, target: Grid) -> np.ndarray:
    """Resample a (C, Z, Y, X) float probability stack channel by channel (linear), float32."""
    if probs.ndim != 4 or probs.shape[1:] != source.shape:
        raise InputError(f"probabilities must be (C, {source.shape}), got {probs.shape}")
    out = np.empty((probs.shape[0], *target.shape), dtype=np.float32)
    for c in range(probs.shape[0]):
        out[c] = resample_array_to_grid(probs[c], source, target, "linear")
    return out
