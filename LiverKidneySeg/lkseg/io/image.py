"""Reading and writing scalar images (CT) and label maps: NIfTI, NRRD, MetaImage, DICOM series.

Every reader returns a :class:`~lkseg.volume.Volume` with its full geometry (LPS) and checks what a
clinical tool must not accept silently: missing paths, unsupported extensions, corrupt or
truncated files, 2D or 4D images, NaN voxels. Every writer is atomic.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from lkseg.errors import InputError
from lkseg.io.atomic import atomic_path, full_suffix
from lkseg.volume import Volume

__all__ = [
    "IMAGE_SUFFIXES",
    "check_finite",
    "read_image",
    "read_label_map",
    "write_image",
    "write_label_map",
]

log = logging.getLogger(__name__)

#: File suffixes read and written through SimpleITK.
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def _require_exists(path: Path) -> None:
    if not path.exists():
        raise InputError("no such file or folder", path)


def _read_sitk(path: Path):
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"cannot read the header, the file is corrupt or not a {full_suffix(path)} image ({_first_line(exc)})", path) from exc
    dim = reader.GetDimension()
    size = reader.GetSize()
    if dim == 4 and size[3] == 1:
        pass  # a 4D file with a single time point is a 3D image
    elif dim > 3:
        raise InputError(f"is a {dim}D image of size {size}; a single 3D volume is needed (split the time series or channels first)", path)
    elif dim < 3:
        raise InputError(f"is a {dim}D image of size {size}; a 3D volume is needed", path)
    if reader.GetNumberOfComponents() != 1:
        raise InputError(f"has {reader.GetNumberOfComponents()} components per voxel (colour or vector image); a scalar CT is needed", path)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"the voxel data is corrupt or truncated ({_first_line(exc)})", path) from exc
    if image.GetDimension() == 4:
        import SimpleITK as sitk

        image = sitk.Extract(image, [*image.GetSize()[:3], 0], [0, 0, 0, 0])
    return image


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if "error" in ln.lower() or "exception" in ln.lower() or "cannot" in ln.lower()]
    text = (useful or lines or [type(exc).__name__])[-1]
    return text[:200]


def check_finite(volume: Volume, path: Path | str | None = None) -> None:
    """Raise :class:`InputError` if a float volume holds NaN or infinite voxels."""
    if np.issubdtype(volume.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(volume.array)))
        if bad:
            raise InputError(f"contains {bad} NaN or infinite voxel(s); fix or mask them before segmentation", path)


def _check_3d_extent(volume: Volume, path: Path) -> None:
    if 1 in volume.shape:
        raise InputError(f"is a single-slice (2D) image of size {volume.grid.size_ijk}; a 3D volume is needed", path)


def read_image(path: str | Path, *, series_uid: str | None = None, allow_nonfinite: bool = False) -> Volume:
    """Read a CT (or any scalar 3D image) from NIfTI, NRRD, MetaImage or a DICOM series folder.

    Args:
        path: file, or folder holding one DICOM series (or several: then ``series_uid`` picks one).
        series_uid: SeriesInstanceUID to read from a folder with several series.
        allow_nonfinite: accept NaN/inf voxels (otherwise an :class:`InputError`).

    Returns:
        The image with geometry; ``meta`` holds ``source``, ``format`` and, when known,
        ``modality``, patient ``height_cm`` / ``weight_kg`` and DICOM identifiers.
    """
    path = Path(path)
    _require_exists(path)
    if path.is_dir():
        from lkseg.io.dicom import read_dicom_series

        volume = read_dicom_series(path, series_uid=series_uid)
    else:
        suffix = full_suffix(path)
        if suffix == ".seg.nrrd":
            raise InputError("is a segmentation (.seg.nrrd), not an image; use it as a label map", path)
        if suffix == ".dcm":
            from lkseg.io.dicom import read_dicom_series

            volume = read_dicom_series(path.parent, series_uid=series_uid)
        elif suffix not in IMAGE_SUFFIXES:
            raise InputError(
                f"unsupported file type {suffix or '(no extension)'!r}; use NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), "
                "MetaImage (.mha, .mhd) or a DICOM folder",
                path,
            )
        else:
            volume = Volume.from_sitk(_read_sitk(path), meta={"source": str(path), "format": suffix.lstrip(".")})
    _check_3d_extent(volume, path)
    if not allow_nonfinite:
        check_finite(volume, path)
    return volume


def read_label_map(path: str | Path, reference: Volume | None = None) -> Volume:
    """Read a label map (NIfTI, NRRD, ``.seg.nrrd`` or DICOM SEG) as an integer Volume.

    A ``.seg.nrrd`` or DICOM SEG is flattened to one label map (overlaps: later segments win; use
    :mod:`lkseg.io.segnrrd` for full access). If ``reference`` is given, the label map must share its
    grid exactly (else :class:`~lkseg.errors.GeometryMismatchError`).
    """
    path = Path(path)
    _require_exists(path)
    suffix = full_suffix(path)
    if suffix == ".seg.nrrd":
        from lkseg.io.segnrrd import read_seg_nrrd

        volume = read_seg_nrrd(path).to_label_volume()
    elif suffix == ".dcm" and _is_dicom_seg(path):
        from lkseg.io.dicomseg import read_dicom_seg

        volume = read_dicom_seg(path).to_label_volume()
    elif suffix in IMAGE_SUFFIXES:
        volume = Volume.from_sitk(_read_sitk(path), meta={"source": str(path), "format": suffix.lstrip(".")})
    else:
        raise InputError(f"unsupported label-map type {suffix or '(no extension)'!r}; use .nii(.gz), .nrrd, .seg.nrrd or a DICOM SEG .dcm", path)
    arr = volume.array
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise InputError("label map contains NaN or infinite values", path)
        if not np.array_equal(arr, np.round(arr)):
            raise InputError("label map holds non-integer values; is this an image rather than a label map?", path)
    if arr.min() < 0:
        raise InputError(f"label map holds negative values (min {arr.min()}); is this an image rather than a label map?", path)
    if arr.max() > 65535:
        raise InputError(f"label map holds values up to {arr.max()}, too many labels", path)
    dtype = np.uint8 if arr.max() < 256 else np.uint16
    volume = volume.with_array(arr.astype(dtype, copy=False))
    if reference is not None:
        try:
            reference.grid.require_same(volume.grid, "label map")
        except InputError as exc:
            raise type(exc)(str(exc), path) from exc
    return volume


def _is_dicom_seg(path: Path) -> bool:
    try:
        import pydicom

        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["Modality"])
        return getattr(ds, "Modality", "") == "SEG"
    except Exception:  # noqa: BLE001 - any unreadable file is simply "not a SEG"
        return False


def write_image(volume: Volume, path: str | Path, *, compress: bool = True) -> Path:
    """Write a Volume to NIfTI, NRRD or MetaImage (chosen by extension), atomically.

    Geometry is written exactly as stored (LPS); NIfTI gets qform and sform from SimpleITK.
    """
    import SimpleITK as sitk

    path = Path(path)
    suffix = full_suffix(path)
    if suffix == ".seg.nrrd":
        raise InputError("use lkseg.io.segnrrd.write_seg_nrrd for .seg.nrrd segmentations", path)
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(f"cannot write {suffix or '(no extension)'!r}; use .nii, .nii.gz, .nrrd, .nhdr, .mha or .mhd", path)
    if suffix in (".nhdr", ".mhd"):
        # detached headers write two files; the data file name is derived from the header name,
        # so write directly (the header is written last by ITK).
        sitk.WriteImage(volume.to_sitk(), str(path), compress)
        return path
    with atomic_path(path) as tmp:
        sitk.WriteImage(volume.to_sitk(), str(tmp), compress)
    return path


def write_label_map(labels: Volume, path: str | Path, *, compress: bool = True) -> Path:
    """Write an integer label map (uint8/uint16) to NIfTI/NRRD, atomically."""
    arr = labels.array
    if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
        raise InputError(f"a label map must be integer, got {arr.dtype}", path)
    dtype = np.uint8 if arr.max(initial=0) < 256 else np.uint16
    return write_image(labels.with_array(arr.astype(dtype, copy=False)), path, compress=compress)
