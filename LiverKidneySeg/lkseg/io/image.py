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
from lkseg.io.dicom import is_dicom_file
from lkseg.volume import Volume

__all__ = [
    "IMAGE_SUFFIXES",
    "check_finite",
    "read_image",
    "read_label_map",
    "read_segmentation",
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
        raise InputError(
            f"cannot read the header, the file is corrupt or not a {full_suffix(path)} image ({_first_line(exc)})", path
        ) from exc
    dim = reader.GetDimension()
    size = reader.GetSize()
    if dim == 4 and size[3] == 1:
        pass  # a 4D file with a single time point is a 3D image
    elif dim > 3:
        raise InputError(
            f"is a {dim}D image of size {size}; a single 3D volume is needed (split the time series or channels first)",
            path,
        )
    elif dim < 3:
        raise InputError(f"is a {dim}D image of size {size}; a 3D volume is needed", path)
    if reader.GetNumberOfComponents() != 1:
        raise InputError(
            f"has {reader.GetNumberOfComponents()} components per voxel (colour or vector image); a scalar CT is needed",
            path,
        )
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"the voxel data is corrupt or truncated ({_first_line(exc)})", path) from exc
    if image.GetDimension() == 4:
        import SimpleITK as sitk

        image = sitk.Extract(image, [*image.GetSize()[:3], 0], [0, 0, 0, 0])
    return image


_NIFTI_FLOATS = {16: "f4", 64: "f8"}


def _verify_nifti(path: Path) -> int:
    """Check that a NIfTI file holds all its voxel bytes and count its non-finite float voxels.

    ITK zero-fills the missing part of a truncated ``.nii``/``.nii.gz`` and reads NaN as 0, both
    silently; this streams the voxel data once (decompressing ``.nii.gz``) to catch both.

    Returns:
        The number of NaN/inf voxels (0 for integer data).

    Raises:
        InputError: truncated or corrupt file.
    """
    import gzip
    import struct
    import zlib

    opener = gzip.open if full_suffix(path) == ".nii.gz" else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(540)
            info = _nifti_layout(head)
            if info is None:
                return 0  # not a header we know; ITK accepted it, nothing more to check
            endian, dims, datatype, bitpix, vox_offset = info
            expected = int(np.prod(dims, dtype=np.int64)) * bitpix // 8
            kind = _NIFTI_FLOATS.get(datatype)
            if kind is None and _stored_size(path, opener is gzip.open) in (
                vox_offset + expected,
                (vox_offset + expected) % (1 << 32),
            ):
                return 0  # complete integer data: no need to stream it
            skip = vox_offset - len(head)
            if skip > 0:
                fh.read(skip)
            data_head = head[vox_offset:] if skip < 0 else b""
            dtype = np.dtype(endian + kind) if kind else None
            total, bad, pending = 0, 0, data_head
            while total < expected:
                chunk = pending or fh.read(min(1 << 23, expected - total))
                pending = b""
                if not chunk:
                    break
                chunk = chunk[: expected - total]
                total += len(chunk)
                if dtype is not None:
                    usable = len(chunk) - len(chunk) % dtype.itemsize
                    bad += int(np.count_nonzero(~np.isfinite(np.frombuffer(chunk[:usable], dtype=dtype))))
    except (EOFError, OSError, zlib.error, struct.error) as exc:
        raise InputError(f"the file is truncated or corrupt ({exc})", path) from exc
    if total < expected:
        raise InputError(
            f"the file is truncated: it holds {total} of the {expected} voxel bytes its header announces", path
        )
    return bad


def _stored_size(path: Path, gzipped: bool) -> int:
    """Uncompressed size of a file: its size, or for gzip the ISIZE trailer (size mod 2**32),
    which a truncated file almost never matches."""
    import os
    import struct

    size = os.path.getsize(path)
    if not gzipped:
        return size
    if size < 18:
        return -1
    with open(path, "rb") as fh:
        fh.seek(-4, os.SEEK_END)
        return struct.unpack("<I", fh.read(4))[0]


def _nifti_layout(head: bytes) -> tuple[str, list[int], int, int, int] | None:
    """(byte order, dims, datatype, bitpix, vox_offset) of a NIfTI-1 or NIfTI-2 header."""
    import struct

    if len(head) < 348:
        return None
    for endian in ("<", ">"):
        size = struct.unpack(endian + "i", head[:4])[0]
        if size == 348:
            dim = struct.unpack(endian + "8h", head[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
            vox_offset = int(struct.unpack(endian + "f", head[108:112])[0])
            break
        if size == 540 and len(head) >= 540:
            datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
            dim = struct.unpack(endian + "8q", head[16:80])
            vox_offset = int(struct.unpack(endian + "q", head[168:176])[0])
            break
    else:
        return None
    ndim = int(dim[0])
    if not 1 <= ndim <= 7 or bitpix <= 0:
        return None
    return endian, [max(1, int(d)) for d in dim[1 : ndim + 1]], int(datatype), int(bitpix), max(vox_offset, 348)


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
    """Read a CT (or any scalar 3D image) from NIfTI, NRRD, MetaImage or a DICOM series.

    Args:
        path: file, folder holding one DICOM series (or several: then ``series_uid`` picks one),
            or one file of a DICOM series (``.dcm`` or any file with the DICOM marker).
        series_uid: SeriesInstanceUID to read from a folder with several series.
        allow_nonfinite: accept NaN/inf voxels (otherwise an :class:`InputError`).

    Returns:
        The image (ZYX array, LPS geometry); ``meta`` holds ``source``, ``format`` and, for DICOM,
        ``modality``, patient ``height_cm`` / ``weight_kg`` and the DICOM identifiers.

    Raises:
        InputError: missing path, unsupported extension, corrupt or truncated file, 2D or 4D
            image, colour image, NaN voxels, DICOM problems (see :mod:`lkseg.io.dicom`).
    """
    path = Path(path)
    _require_exists(path)
    suffix = full_suffix(path)
    if path.is_dir():
        from lkseg.io.dicom import read_dicom_series

        volume = read_dicom_series(path, series_uid=series_uid)
    elif suffix == ".seg.nrrd":
        raise InputError("is a segmentation (.seg.nrrd), not an image; use it as a label map", path)
    elif suffix == ".dcm" or (suffix not in IMAGE_SUFFIXES and is_dicom_file(path)):
        if _is_dicom_seg(path):
            raise InputError("is a DICOM segmentation (SEG), not an image; use it as a label map", path)
        from lkseg.io.dicom import read_dicom_series

        volume = read_dicom_series(path, series_uid=series_uid)
    elif suffix not in IMAGE_SUFFIXES:
        raise InputError(
            f"unsupported file type {suffix or '(no extension)'!r}; use NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), "
            "MetaImage (.mha, .mhd) or a DICOM folder",
            path,
        )
    else:
        volume = Volume.from_sitk(_read_sitk(path), meta={"source": str(path), "format": suffix.lstrip(".")})
        if suffix in (".nii", ".nii.gz"):
            nonfinite = _verify_nifti(path)
            if nonfinite and not allow_nonfinite:
                raise InputError(
                    f"contains {nonfinite} NaN or infinite voxel(s); fix or mask them before segmentation", path
                )
            if nonfinite:
                log.warning("%s: %d NaN/inf voxels in the file (ITK reads them as 0)", path, nonfinite)
    _check_3d_extent(volume, path)
    if not allow_nonfinite:
        check_finite(volume, path)
    return volume


def read_label_map(path: str | Path, reference: Volume | None = None, *, resample: bool = False) -> Volume:
    """Read a label map (NIfTI, NRRD, ``.seg.nrrd`` or DICOM SEG) as an integer Volume.

    A ``.seg.nrrd`` or DICOM SEG is flattened to one label map (overlaps: the segment of the
    higher layer wins; use :func:`read_segmentation` to keep names, colours and layers). With a
    ``reference`` image, a DICOM SEG is reconstructed on its grid and a ``.seg.nrrd`` cropped by
    Slicer is padded back onto it. A label map on the reference's voxel lattice but with other
    axis directions (e.g. a NIfTI with a flipped y axis beside a DICOM series) is reoriented onto
    the reference grid exactly (no interpolation, logged); one on another lattice is refused,
    or resampled with nearest neighbour when ``resample`` is True (see
    :func:`lkseg.io.placement.place_label_map`; ``meta["grid_placement"]`` says what was done).

    Returns:
        uint8 or uint16 Volume (ZYX).

    Raises:
        InputError: missing, unsupported, corrupt, negative or non-integer labels.
        GeometryMismatchError: the grid does not share ``reference``'s voxel lattice and
            ``resample`` is False (message names the file and the first difference: size,
            spacing, origin or direction).
    """
    path = Path(path)
    _require_exists(path)
    suffix = full_suffix(path)
    if path.is_dir():
        raise InputError(
            "is a folder; a label map must be a file (.nii.gz, .nrrd, .seg.nrrd or a DICOM SEG .dcm)", path
        )
    if (
        suffix in (".seg.nrrd", ".dcm")
        or (suffix == ".nrrd" and _is_seg_nrrd(path))
        or (suffix not in IMAGE_SUFFIXES and is_dicom_file(path))
    ):
        seg = read_segmentation(path, reference=reference, resample=resample)
        volume = seg.to_label_volume()
        # keep the value -> structure names so callers (metrics, planning) can match by name
        volume = volume.with_array(volume.array, meta={**volume.meta, "label_table": seg.label_table().to_json()})
    elif suffix in IMAGE_SUFFIXES:
        volume = Volume.from_sitk(_read_sitk(path), meta={"source": str(path), "format": suffix.lstrip(".")})
        if suffix in (".nii", ".nii.gz") and _verify_nifti(path):
            raise InputError("label map contains NaN or infinite values", path)
    else:
        raise InputError(
            f"unsupported label-map type {suffix or '(no extension)'!r}; use .nii(.gz), .nrrd, .seg.nrrd or a DICOM SEG .dcm",
            path,
        )
    arr = volume.array
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise InputError("label map contains NaN or infinite values", path)
        if not np.array_equal(arr, np.round(arr)):
            raise InputError("label map holds non-integer values; is this an image rather than a label map?", path)
    if arr.min() < 0:
        raise InputError(
            f"label map holds negative values (min {arr.min()}); is this an image rather than a label map?", path
        )
    if arr.max() > 65535:
        raise InputError(f"label map holds values up to {arr.max()}, too many labels", path)
    dtype = np.uint8 if arr.max() < 256 else np.uint16
    volume = volume.with_array(arr.astype(dtype, copy=False))
    if reference is not None:
        from lkseg.io.placement import place_label_map

        try:
            volume = place_label_map(volume, reference, resample=resample)
        except InputError as exc:
            raise type(exc)(str(exc), path) from exc
    return volume


def read_segmentation(path: str | Path, reference: Volume | None = None, table=None, *, resample: bool = False):
    """Read any segmentation file as a :class:`~lkseg.segmentation.Segmentation`.

    ``.seg.nrrd`` and DICOM SEG keep their segment names, colours, terminology and layers; a plain
    label map (NIfTI/NRRD) gets one segment per value, named through ``table`` (a
    :class:`~lkseg.labels.LabelTable` or mapping value -> structure name) or ``"Label <v>"``.
    ``reference`` and ``resample`` as in :func:`read_label_map`.
    """
    from lkseg.segmentation import Segmentation

    path = Path(path)
    _require_exists(path)
    suffix = full_suffix(path)
    if suffix == ".seg.nrrd" or (suffix == ".nrrd" and _is_seg_nrrd(path)):
        from lkseg.io.segnrrd import read_seg_nrrd

        return read_seg_nrrd(path, reference=reference, resample=resample)
    if suffix == ".dcm" or (suffix not in IMAGE_SUFFIXES and path.is_file() and is_dicom_file(path)):
        if not _is_dicom_seg(path):
            raise InputError("is a DICOM image, not a segmentation (SEG)", path)
        from lkseg.io.dicomseg import read_dicom_seg

        return read_dicom_seg(path, reference=reference)
    volume = read_label_map(path, reference=reference, resample=resample)
    return Segmentation.from_label_volume(volume, table if table is not None else {})


def _is_seg_nrrd(path: Path) -> bool:
    try:
        import nrrd

        from lkseg.io.segnrrd import is_seg_nrrd_header

        return is_seg_nrrd_header(nrrd.read_header(str(path)))
    except Exception:  # unreadable headers are reported by the reader itself
        return False


def _is_dicom_seg(path: Path) -> bool:
    try:
        import pydicom

        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["Modality"])
        return getattr(ds, "Modality", "") == "SEG"
    except Exception:
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
        raise InputError(
            f"cannot write {suffix or '(no extension)'!r}; use .nii, .nii.gz, .nrrd, .nhdr, .mha or .mhd", path
        )
    if suffix in (".nhdr", ".mhd"):
        return _write_detached(volume, path, compress)
    with atomic_path(path) as tmp:
        sitk.WriteImage(volume.to_sitk(), str(tmp), compress)
    return path


def _write_detached(volume: Volume, path: Path, compress: bool) -> Path:
    """Write a detached header (.nhdr/.mhd) and its data file in a temporary folder beside
    ``path``, then move the data file and, last, the header into place."""
    import os
    import tempfile

    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.tmp-") as tmp:
        sitk.WriteImage(volume.to_sitk(), str(Path(tmp) / path.name), compress)
        for item in sorted(Path(tmp).iterdir(), key=lambda p: p.name == path.name):  # header last
            os.replace(item, path.parent / item.name)
    return path


def write_label_map(labels: Volume, path: str | Path, *, compress: bool = True) -> Path:
    """Write an integer label map (uint8/uint16) to NIfTI/NRRD, atomically."""
    arr = labels.array
    if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
        raise InputError(f"a label map must be integer, got {arr.dtype}", path)
    dtype = np.uint8 if arr.max(initial=0) < 256 else np.uint16
    return write_image(labels.with_array(arr.astype(dtype, copy=False)), path, compress=compress)
