"""Writing a :class:`~lkseg.volume.Volume` as a CT DICOM series (re-exported by :mod:`lkseg.io.dicom`).

One file per k slice, CT Image Storage, int16 with RescaleSlope/RescaleIntercept, exact LPS
geometry (ImagePositionPatient / ImageOrientationPatient from the grid), written atomically.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lkseg.errors import InputError
from lkseg.io.atomic import atomic_dir
from lkseg.volume import Grid, Volume

__all__ = ["write_dicom_series"]

log = logging.getLogger("lkseg.io.dicom")


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters) as precise as fits."""
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value))


def _encoding(arr: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) to store ``arr`` as int16."""
    lo, hi = float(arr.min()), float(arr.max())
    is_integral = np.issubdtype(arr.dtype, np.integer) or np.array_equal(arr, np.round(arr))
    if is_integral and lo >= -32768 and hi <= 32767:
        return 1.0, 0.0
    if hi == lo:
        return 1.0, lo
    slope = (hi - lo) / 65534.0
    return slope, lo + 32767.0 * slope


def write_dicom_series(
    volume: Volume,
    folder: str | Path,
    *,
    patient: Mapping[str, object] | None = None,
    series_description: str = "LiverKidneySeg",
    modality: str = "CT",
    study_uid: str | None = None,
) -> list[Path]:
    """Write a Volume as a CT DICOM series (one file per k slice), atomically.

    The whole folder is built beside ``folder`` and renamed at the end: a failure leaves no
    partial series (and an existing folder is replaced only by a complete new one).

    Args:
        volume: image in HU (any numeric dtype; stored as int16, with RescaleSlope/Intercept
            when the values are not integers in the int16 range). Any direction is written;
            note that readers sort slices along ``cross(i, j)``, so a left-handed grid is read
            back with k reversed (same voxels at the same positions).
        folder: output folder.
        patient: optional ``name``, ``id``, ``birth_date`` (YYYYMMDD), ``sex``, ``age``,
            ``height_cm`` and ``weight_kg`` (written as PatientSize in m and PatientWeight);
            height/weight default to ``volume.meta``.
        series_description: SeriesDescription.
        modality: only ``"CT"`` is supported (CT Image Storage).
        study_uid: StudyInstanceUID to join an existing study; a new one by default.

    Returns:
        The written files, in k order.
    """
    from pydicom.uid import CTImageStorage, generate_uid

    if modality != "CT":
        raise InputError(f"only CT series can be written, got modality {modality!r}")
    arr = volume.array
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        raise InputError("the volume holds NaN or infinite voxels; they cannot be written to DICOM")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.int16)
    patient = dict(patient or {})
    for key in ("height_cm", "weight_kg"):
        if patient.get(key) is None and volume.meta.get(key) is not None:
            patient[key] = volume.meta[key]
    slope, intercept = _encoding(arr)
    now = datetime.datetime.now()
    uids = {
        "study": study_uid or generate_uid(),
        "series": generate_uid(),
        "frame": generate_uid(),
    }
    base = _base_dataset(volume.grid, patient, series_description, uids, now)
    folder = Path(folder)
    written: list[Path] = []
    with atomic_dir(folder) as tmp:
        for k in range(volume.grid.shape[0]):
            sop_uid = generate_uid()
            ds = _slice_dataset(base, volume.grid, k, sop_uid, CTImageStorage)
            stored = np.rint((arr[k].astype(np.float64) - intercept) / slope)
            stored = np.clip(stored, -32768, 32767).astype(np.int16)
            ds.RescaleSlope = _ds(slope)
            ds.RescaleIntercept = _ds(intercept)
            ds.PixelData = np.ascontiguousarray(stored).tobytes()
            name = f"slice_{k + 1:04d}.dcm"
            ds.save_as(str(tmp / name), enforce_file_format=True)
            written.append(folder / name)
    log.info("wrote %d DICOM slices to %s", len(written), folder)
    return written


def _base_dataset(grid: Grid, patient: Mapping[str, object], description: str, uids: dict, now: datetime.datetime):
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.PatientName = str(patient.get("name", "Anonymous"))
    ds.PatientID = str(patient.get("id", "LKSEG-0001"))
    ds.PatientBirthDate = str(patient.get("birth_date", ""))
    ds.PatientSex = str(patient.get("sex", ""))
    if patient.get("age"):
        ds.PatientAge = str(patient["age"])
    if patient.get("height_cm"):
        ds.PatientSize = _ds(float(patient["height_cm"]) / 100.0)
    if patient.get("weight_kg"):
        ds.PatientWeight = _ds(float(patient["weight_kg"]))
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.PositionReferenceIndicator = ""
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.SeriesDescription = description[:64]
    ds.Manufacturer = "LiverKidneySeg"
    ds.BodyPartExamined = "ABDOMEN"
    ds.KVP = ""
    ds.AcquisitionNumber = 1
    direction = grid.direction
    ds.ImageOrientationPatient = [_ds(v) for v in (*direction[:, 0], *direction[:, 1])]
    ds.PixelSpacing = [_ds(grid.spacing[1]), _ds(grid.spacing[0])]
    ds.SliceThickness = _ds(grid.spacing[2])
    ds.SpacingBetweenSlices = _ds(grid.spacing[2])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = grid.shape[1]
    ds.Columns = grid.shape[2]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    return ds


def _slice_dataset(base, grid: Grid, k: int, sop_uid: str, sop_class: str):
    import copy

    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    ds = copy.deepcopy(base)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = k + 1
    position = grid.index_to_lps([0.0, 0.0, float(k)])
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.SliceLocation = _ds(float(position @ np.cross(grid.direction[:, 0], grid.direction[:, 1])))
    return ds
