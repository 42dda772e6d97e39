"""DICOM image series: list, read (with checked geometry) and write CT series.

Reading sorts slices by their position along the slice normal (``cross(row, column)`` of
ImageOrientationPatient), so the result has i = row direction, j = column direction,
k = slice normal: a right-handed grid. Spacing along k comes from the positions, never from
SliceThickness; a missing slice, uneven spacing, duplicate positions, mixed orientations or a
gantry tilt raise :class:`~lkseg.errors.InputError` naming the files involved. Pixel values are
rescaled to HU with RescaleSlope/RescaleIntercept, exactly once. Compressed transfer syntaxes (JPEG
Lossless, JPEG-LS, JPEG 2000, RLE) are decoded by pydicom's pixel handlers (python-gdcm,
pylibjpeg-openjpeg, pyjpegls); only when none of them can decode a file is SimpleITK (GDCM) tried,
whose values are already in HU. Geometry is LPS exactly as DICOM stores it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lkseg.errors import InputError
from lkseg.io.dicom_write import write_dicom_series
from lkseg.volume import Grid, Volume

__all__ = [
    "DicomSeriesInfo",
    "is_dicom_file",
    "list_dicom_series",
    "load_series_headers",
    "read_dicom_series",
    "write_dicom_series",
]

log = logging.getLogger(__name__)

#: Modalities that never hold a stack of image slices.
NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTRECORD", "SR", "PR", "KO", "REG", "DOC", "RWV"}
_LIST_TAGS = [
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "SeriesDescription",
    "Modality",
    "Rows",
    "Columns",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "NumberOfFrames",
    "SOPClassUID",
    "SeriesNumber",
]


@dataclass
class DicomSeriesInfo:
    """One series found in a folder.

    Attributes:
        uid: SeriesInstanceUID.
        description: SeriesDescription ("" when absent).
        modality: Modality (CT, MR, SEG...).
        num_files: number of files of the series.
        size: (columns, rows, number of files) of an image series; None for non-image objects.
        study_uid: StudyInstanceUID.
        is_image: whether the series is a stack of image slices (not SEG, RTSTRUCT, SR...).
        files: the files, in the order found.
    """

    uid: str
    description: str
    modality: str
    num_files: int
    size: tuple[int, int, int] | None
    study_uid: str = ""
    is_image: bool = True
    files: list[Path] = field(default_factory=list, repr=False)

    def describe(self) -> str:
        size = "x".join(str(s) for s in self.size) if self.size else "no image"
        desc = self.description or "(no description)"
        return f"{self.uid}  {self.modality or '??'}  {desc!r}  {self.num_files} file(s), {size}"


def is_dicom_file(path: str | Path) -> bool:
    """Whether ``path`` is a DICOM Part 10 file (the ``DICM`` marker after the 128-byte preamble).

    Reads 132 bytes only; unreadable paths (folders, missing files, no permission) give False.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _iter_files(folder: Path):
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            yield Path(root) / name


def _scan(folder: Path) -> tuple[dict[str, list[tuple[Path, object]]], int]:
    """Group the DICOM files under ``folder`` by SeriesInstanceUID (headers only)."""
    import pydicom

    groups: dict[str, list[tuple[Path, object]]] = {}
    others = 0
    for path in _iter_files(folder):
        if not is_dicom_file(path):
            others += 1
            continue
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except Exception as exc:  # pydicom raises many types for damaged files
            log.warning("%s: unreadable DICOM file skipped (%s)", path, exc)
            others += 1
            continue
        uid = str(getattr(ds, "SeriesInstanceUID", "") or "(no SeriesInstanceUID)")
        groups.setdefault(uid, []).append((path, ds))
    return groups, others


def _is_image(ds) -> bool:
    modality = str(getattr(ds, "Modality", "")).upper()
    return (
        modality not in NON_IMAGE_MODALITIES
        and hasattr(ds, "ImagePositionPatient")
        and hasattr(ds, "ImageOrientationPatient")
        and hasattr(ds, "Rows")
    )


def _info(uid: str, items: list[tuple[Path, object]]) -> DicomSeriesInfo:
    ds = items[0][1]
    image = _is_image(ds)
    size = (int(ds.Columns), int(ds.Rows), len(items)) if image else None
    return DicomSeriesInfo(
        uid=uid,
        description=str(getattr(ds, "SeriesDescription", "") or ""),
        modality=str(getattr(ds, "Modality", "") or ""),
        num_files=len(items),
        size=size,
        study_uid=str(getattr(ds, "StudyInstanceUID", "") or ""),
        is_image=image,
        files=[p for p, _ in items],
    )


def _require_folder(folder: Path) -> None:
    if not folder.exists():
        raise InputError("no such file or folder", folder)
    if not folder.is_dir():
        raise InputError("is not a folder", folder)


def list_dicom_series(folder: str | Path) -> list[DicomSeriesInfo]:
    """All DICOM series under ``folder`` (searched recursively), grouped by SeriesInstanceUID.

    Files that are not DICOM (no ``DICM`` marker) are ignored. Sorted by modality, description, uid.
    """
    folder = Path(folder)
    _require_folder(folder)
    groups, _ = _scan(folder)
    infos = [_info(uid, items) for uid, items in groups.items()]
    return sorted(infos, key=lambda s: (not s.is_image, s.modality, s.description, s.uid))


def _listing(infos: list[DicomSeriesInfo]) -> str:
    return "\n".join(f"  - {info.describe()}" for info in infos)


def _select_series(folder: Path, series_uid: str | None) -> tuple[DicomSeriesInfo, list[tuple[Path, object]]]:
    groups, others = _scan(folder)
    if not groups:
        extra = (
            f" ({others} other file(s); for a NIfTI/NRRD file pass the file itself)"
            if others
            else " (the folder is empty)"
        )
        raise InputError(f"no DICOM files found{extra}", folder)
    infos = {uid: _info(uid, items) for uid, items in groups.items()}
    ordered = sorted(infos.values(), key=lambda s: (not s.is_image, s.modality, s.description, s.uid))
    if series_uid is not None:
        if series_uid not in groups:
            raise InputError(
                f"no series with SeriesInstanceUID {series_uid}; the folder holds:\n{_listing(ordered)}", folder
            )
        chosen = infos[series_uid]
        if not chosen.is_image:
            raise InputError(
                f"series {series_uid} is a {chosen.modality or 'non-image'} object, not an image series", folder
            )
        return chosen, groups[series_uid]
    images = [info for info in ordered if info.is_image]
    if not images:
        raise InputError(
            f"holds no image series, only non-image DICOM objects (e.g. a segmentation):\n{_listing(ordered)}", folder
        )
    if len(images) > 1:
        raise InputError(
            f"holds {len(images)} image series; choose one with series_uid= (CLI: --series-uid):\n{_listing(ordered)}",
            folder,
        )
    return images[0], groups[images[0].uid]


@dataclass
class SeriesGeometry:
    """Sorted slices of one series and the grid they form (LPS).

    Attributes:
        grid: the voxel grid (k follows the slice normal).
        files: the files in k order.
        datasets: their headers (pixel data not read) in k order.
    """

    grid: Grid
    files: list[Path]
    datasets: list


def _vec(value, n: int, what: str, path: Path) -> np.ndarray:
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"malformed {what} {value!r}", path) from exc
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise InputError(f"malformed {what} {value!r}", path)
    return arr


def _series_geometry(folder: Path, items: list[tuple[Path, object]]) -> SeriesGeometry:
    first_path, first = items[0]
    if int(getattr(first, "NumberOfFrames", 1) or 1) > 1:
        raise InputError(
            f"{first_path.name} is a multi-frame (enhanced) DICOM image; convert it to a classic series "
            "or NIfTI first (e.g. with dcm2niix or 3D Slicer)",
            folder,
        )
    iop = _vec(first.ImageOrientationPatient, 6, "ImageOrientationPatient", first_path)
    spacing_rc = _vec(getattr(first, "PixelSpacing", None) or [1.0, 1.0], 2, "PixelSpacing", first_path)
    rows, cols = int(first.Rows), int(first.Columns)
    for path, ds in items[1:]:
        if int(ds.Rows) != rows or int(ds.Columns) != cols:
            raise InputError(
                f"the series mixes image sizes ({first_path.name}: {cols}x{rows}, {path.name}: {ds.Columns}x{ds.Rows}); "
                "a localizer may be in the series",
                folder,
            )
        if not np.allclose(_vec(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", path), iop, atol=1e-4):
            raise InputError(
                f"the series mixes slice orientations ({first_path.name} and {path.name}); a localizer may be in the series",
                folder,
            )
        other = getattr(ds, "PixelSpacing", None) or [1.0, 1.0]
        if not np.allclose(_vec(other, 2, "PixelSpacing", path), spacing_rc, atol=1e-4):
            raise InputError(f"the series mixes pixel spacings ({first_path.name} and {path.name})", folder)
    row_dir = iop[:3] / np.linalg.norm(iop[:3])
    col_dir = iop[3:] / np.linalg.norm(iop[3:])
    if abs(row_dir @ col_dir) > 1e-3:
        raise InputError(f"ImageOrientationPatient {iop.tolist()} is not orthogonal", first_path)
    col_dir = col_dir - (row_dir @ col_dir) * row_dir
    col_dir /= np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)
    positions = np.array([_vec(ds.ImagePositionPatient, 3, "ImagePositionPatient", p) for p, ds in items])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    positions, along = positions[order], along[order]
    files = [items[i][0] for i in order]
    datasets = [items[i][1] for i in order]
    n = len(items)
    if n > 1:
        steps = np.diff(along)
        dup = int(np.argmin(steps))
        if steps[dup] < 1e-3:
            raise InputError(
                f"two slices lie at the same position ({files[dup].name} and {files[dup + 1].name}, "
                f"{along[dup]:.3f} mm along the normal): the series holds several acquisitions or duplicate files",
                folder,
            )
        step = float(np.median(steps))
        bad = np.flatnonzero(np.abs(steps - step) > max(0.01, 0.02 * step))
        if bad.size:
            b = int(bad[0])
            missing = round(steps[b] / step) - 1
            hint = f"; about {missing} slice(s) missing" if missing >= 1 else ""
            raise InputError(
                f"uneven slice spacing: {steps[b]:.3f} mm between {files[b].name} and {files[b + 1].name} "
                f"(at {along[b]:.2f} and {along[b + 1]:.2f} mm along the slice normal), expected {step:.3f} mm{hint}",
                folder,
            )
        sk = float((along[-1] - along[0]) / (n - 1))
        shift = (positions[-1] - positions[0]) - normal * (along[-1] - along[0])
        if np.linalg.norm(shift) > 1e-2 + 1e-4 * (along[-1] - along[0]):
            raise InputError(
                f"slice positions drift sideways by {np.linalg.norm(shift):.2f} mm (gantry tilt or sheared stack); "
                "resample the series in 3D Slicer first",
                folder,
            )
    else:
        sk = float(getattr(first, "SpacingBetweenSlices", 0) or getattr(first, "SliceThickness", 0) or 1.0)
    direction = np.column_stack([row_dir, col_dir, normal])
    grid = Grid((n, rows, cols), (float(spacing_rc[1]), float(spacing_rc[0]), abs(sk)), tuple(positions[0]), direction)
    return SeriesGeometry(grid, files, datasets)


def load_series_headers(folder: str | Path, series_uid: str | None = None) -> SeriesGeometry:
    """Select one image series in ``folder`` and return its sorted headers and grid (no pixels).

    Same selection rules and checks as :func:`read_dicom_series`.
    """
    folder = Path(folder)
    if folder.is_file():
        series_uid = series_uid or _series_uid_of(folder)
        folder = folder.parent
    _require_folder(folder)
    _, items = _select_series(folder, series_uid)
    return _series_geometry(folder, items)


def _series_uid_of(path: Path) -> str | None:
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "Modality"])
    except Exception as exc:
        raise InputError(f"not a readable DICOM file ({exc})", path) from exc
    if str(getattr(ds, "Modality", "")).upper() in NON_IMAGE_MODALITIES:
        raise InputError(f"is a DICOM {ds.Modality} object, not an image", path)
    return getattr(ds, "SeriesInstanceUID", None)


def _pixels(path: Path):
    """Pixel values of one slice (rows, cols) with the slope and intercept still to apply.

    pydicom returns stored values (slope and intercept from the header are returned to be applied
    once). When pydicom has no decoder for the transfer syntax, SimpleITK/GDCM reads the slice;
    ITK applies RescaleSlope/Intercept itself, so slope 1 and intercept 0 are returned then.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
        photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
        if int(getattr(ds, "SamplesPerPixel", 1)) != 1 or not photometric.startswith("MONOCHROME"):
            raise InputError(f"is a colour image ({photometric}); a greyscale CT is needed", path)
        try:
            arr = ds.pixel_array
        except Exception as exc:  # no decoder for a compressed transfer syntax: try GDCM through SimpleITK
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            log.warning(
                "%s: pydicom cannot decode %s (%s); reading it with SimpleITK (already in HU)",
                path,
                getattr(syntax, "name", syntax),
                exc,
            )
            return _sitk_slice_hu(path), 1.0, 0.0
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read the pixel data, the file is corrupt or truncated ({exc})", path) from exc
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    return arr, slope, intercept


def _sitk_slice_hu(path: Path) -> np.ndarray:
    """One slice read by SimpleITK (GDCM), (rows, cols), **already rescaled** to HU by ITK."""
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    return arr[0] if arr.ndim == 3 else arr


def _optional_float(ds, key: str) -> float | None:
    value = getattr(ds, key, None)
    try:
        value = float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return value if value and np.isfinite(value) and value > 0 else None


def read_dicom_series(folder: str | Path, series_uid: str | None = None) -> Volume:
    """Read one DICOM image series as a Volume in HU with its exact LPS geometry.

    Args:
        folder: folder searched recursively (or one file of the series).
        series_uid: SeriesInstanceUID to read when the folder holds several image series.

    Returns:
        Volume (ZYX; int16 when the rescaled values are integers that fit, else float32).
        ``meta``: ``source``, ``format`` ("dicom"), ``modality``, ``series_uid``, ``study_uid``,
        ``frame_of_reference_uid``, ``series_description``, ``sop_instance_uids`` and ``files``
        in slice (k) order, ``height_cm`` (PatientSize m -> cm) and ``weight_kg`` (PatientWeight)
        or None.

    Raises:
        InputError: empty folder, no image series, several series without ``series_uid`` (the
            message lists them), missing slice / uneven spacing, duplicates, mixed sizes.
    """
    src = Path(folder)
    geo = load_series_headers(src, series_uid)
    folder = src.parent if src.is_file() else src
    nk, nj, ni = geo.grid.shape
    slices, slopes, intercepts = [], [], []
    for path in geo.files:
        arr, slope, intercept = _pixels(path)
        if arr.shape != (nj, ni):
            raise InputError(f"pixel data of shape {arr.shape} does not match Rows x Columns {(nj, ni)}", path)
        slices.append(arr)
        slopes.append(slope)
        intercepts.append(intercept)
    integral = (
        all(np.issubdtype(a.dtype, np.integer) for a in slices)  # SimpleITK returns HU as float for float slopes
        and all(float(s).is_integer() for s in slopes)
        and all(float(b).is_integer() for b in intercepts)
    )
    if integral:
        ends = [
            (int(a.min()) * int(s) + int(b), int(a.max()) * int(s) + int(b))
            for a, s, b in zip(slices, slopes, intercepts)
        ]
        lo, hi = min(min(e) for e in ends), max(max(e) for e in ends)
        integral = lo >= -32768 and hi <= 32767
    out = np.empty(geo.grid.shape, dtype=np.int16 if integral else np.float32)
    for k, (arr, slope, intercept) in enumerate(zip(slices, slopes, intercepts)):
        if integral:
            out[k] = arr.astype(np.int32) * int(slope) + int(intercept)
        else:
            out[k] = arr.astype(np.float64) * slope + intercept
        slices[k] = None  # free the raw slice
    ds = geo.datasets[0]
    height = _optional_float(ds, "PatientSize")
    meta = {
        "source": str(folder),
        "format": "dicom",
        "modality": str(getattr(ds, "Modality", "") or ""),
        "series_uid": str(getattr(ds, "SeriesInstanceUID", "") or ""),
        "study_uid": str(getattr(ds, "StudyInstanceUID", "") or ""),
        "frame_of_reference_uid": str(getattr(ds, "FrameOfReferenceUID", "") or ""),
        "series_description": str(getattr(ds, "SeriesDescription", "") or ""),
        "sop_instance_uids": [str(d.SOPInstanceUID) for d in geo.datasets],
        "files": [str(p) for p in geo.files],
        "height_cm": round(height * 100.0, 3) if height else None,
        "weight_kg": _optional_float(ds, "PatientWeight"),
    }
    log.info("read DICOM series %s (%d slices) from %s", meta["series_uid"], nk, folder)
    return Volume(out, geo.grid, meta)
