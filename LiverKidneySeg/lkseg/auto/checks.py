"""Sanity checks of an input image before automatic segmentation.

Fatal problems raise :class:`~lkseg.errors.InputError` with a message naming the value; doubtful
inputs return warnings that travel with the result. Rules:

* not CT: ``meta["modality"]`` is another modality (MR, PT, US...), or no voxel is below about
  0 HU (MR images, CT stored without its rescale intercept, images scaled to [0, 1]), or
  fewer than 0.5 % of voxels are below 0 HU and none reaches air (-500 HU);
* too small: fewer than 8 voxels or less than 30 mm along an axis (2D images, thin slabs);
* NaN or infinite voxels;
* huge: more than 1000 slices (warning: slower, more memory);
* almost no air (0.5th percentile above -500 HU): a tightly cropped image (warning; also when
  only a few voxels, e.g. bowel gas, are negative);
* values far outside the CT range (warning).
"""

from __future__ import annotations

import numpy as np

from lkseg.errors import InputError
from lkseg.volume import Volume

__all__ = ["MAX_SLICES", "check_ct_volume"]

MAX_SLICES = 1000
_MIN_VOXELS = 8
_MIN_EXTENT_MM = 30.0
_NON_CT_MODALITIES = {"MR", "PT", "NM", "US", "XA", "CR", "DX", "MG", "OT_MR"}


def _sample(array: np.ndarray, max_voxels: int = 2_000_000) -> np.ndarray:
    step = max(1, round((array.size / max_voxels) ** (1 / 3)))
    return array[::step, ::step, ::step]


def check_ct_volume(volume: Volume, name: str = "image") -> list[str]:
    """Check that ``volume`` looks like an abdominal CT in HU; returns warnings.

    Raises:
        InputError: not a CT, too small, NaN/inf voxels.
    """
    warnings: list[str] = []
    modality = str(volume.meta.get("modality", "") or "").upper()
    if modality in _NON_CT_MODALITIES:
        raise InputError(f"{name} is a {modality} image; the automatic models segment CT only")
    sizes = volume.grid.size_ijk
    extent = [n * s for n, s in zip(sizes, volume.grid.spacing)]
    if min(sizes) < _MIN_VOXELS or min(extent) < _MIN_EXTENT_MM:
        raise InputError(
            f"{name} is too small for 3D segmentation: size {sizes[0]}x{sizes[1]}x{sizes[2]} voxels, "
            f"extent {extent[0]:.0f}x{extent[1]:.0f}x{extent[2]:.0f} mm (needs >= {_MIN_VOXELS} voxels and "
            f">= {_MIN_EXTENT_MM:.0f} mm along every axis)"
        )
    arr = volume.array
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise InputError(f"{name} contains {bad} NaN or infinite voxel(s); fix or mask them first")
    if not (np.issubdtype(arr.dtype, np.number) and arr.dtype != np.bool_):
        raise InputError(f"{name} has voxel type {arr.dtype}; a CT in Hounsfield units is needed")
    sample = _sample(arr)
    low, high = (float(v) for v in np.percentile(sample, [0.5, 99.9]))
    vmin, vmax = float(arr.min()), float(arr.max())
    not_hu = "it is not a CT in Hounsfield units (an MR image, a CT stored without its rescale intercept, or a normalised image)"
    if vmin >= -10.0:
        raise InputError(
            f"{name} has no voxel below {0 if vmin >= 0 else -10} HU (lowest {vmin:g}, highest {vmax:g}): {not_hu}"
        )
    if low >= 0 and vmin > -500:
        negative = float(np.mean(sample < 0))
        raise InputError(
            f"{name} has almost no voxel below 0 HU ({negative:.2%} of voxels, lowest {vmin:g}) and none at air "
            f"(-500 HU or lower): {not_hu}"
        )
    if low > -500:
        air = float(np.mean(sample <= -500))
        warnings.append(
            f"{name} shows no air or almost none ({air:.2%} of voxels at -500 HU or lower, lowest {vmin:g}; 0.5th "
            f"percentile {low:.0f} HU): a tightly cropped volume? results may be poor"
        )
    if vmin < -3000 or vmax > 40000 or high > 5000:
        warnings.append(f"{name} values {vmin:g}..{vmax:g} are outside the usual CT range (-1024..3071 HU)")
    slice_axis = int(np.argmax(np.abs(volume.grid.direction[2, :])))  # index axis closest to S-I
    n_slices = sizes[slice_axis]
    if n_slices > MAX_SLICES:
        warnings.append(
            f"{name} has {n_slices} slices ({sizes[0]}x{sizes[1]}x{sizes[2]} voxels, {arr.nbytes / 1e9:.1f} GB): segmentation "
            "will be slower and need more memory"
        )
    return warnings
