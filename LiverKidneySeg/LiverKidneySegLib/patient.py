"""Patient height and weight from the DICOM tags of a loaded series (for BSA-standardised FLR).

DICOM stores Patient's Size (0010,1020) in **metres** and Patient's Weight (0010,1030) in **kg**;
this module returns height in **cm** and weight in **kg**, or None where a tag is absent, empty or
implausible. Inside 3D Slicer a volume loaded from the DICOM database carries the attribute
``DICOM.instanceUIDs``; the first instance's file is read (header only).
"""

from __future__ import annotations

import logging
from pathlib import Path

__all__ = ["heightWeightFromDataset", "heightWeightFromFile", "heightWeightFromNode"]

log = logging.getLogger(__name__)

_HEIGHT_CM = (30.0, 260.0)
_WEIGHT_KG = (2.0, 400.0)


def _plausible(value, bounds: tuple[float, float]) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if bounds[0] <= number <= bounds[1] else None


def heightWeightFromDataset(dataset) -> tuple[float | None, float | None]:
    """``(height_cm, weight_kg)`` from a pydicom dataset (None for missing/implausible values)."""
    size = getattr(dataset, "PatientSize", None)
    height = _plausible(float(size) * 100.0, _HEIGHT_CM) if size not in (None, "") else None
    weight = getattr(dataset, "PatientWeight", None)
    weight = _plausible(weight, _WEIGHT_KG) if weight not in (None, "") else None
    return height, weight


def heightWeightFromFile(path: str | Path) -> tuple[float | None, float | None]:
    """``(height_cm, weight_kg)`` of one DICOM file (header only)."""
    import pydicom

    try:
        dataset = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["PatientSize", "PatientWeight"])
    except Exception as exc:
        log.warning("cannot read patient size/weight from %s: %s", path, exc)
        return None, None
    return heightWeightFromDataset(dataset)


def heightWeightFromNode(volumeNode, dicomDatabase=None) -> tuple[float | None, float | None]:
    """``(height_cm, weight_kg)`` of the DICOM series a volume node was loaded from.

    Args:
        volumeNode: a volume node with the ``DICOM.instanceUIDs`` attribute (space-separated).
        dicomDatabase: object with ``fileForInstance(uid) -> path`` (default ``slicer.dicomDatabase``).

    Returns:
        ``(None, None)`` when the node does not come from DICOM or the tags are absent.
    """
    if volumeNode is None:
        return None, None
    uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
    if not uids:
        return None, None
    if dicomDatabase is None:
        import slicer

        dicomDatabase = getattr(slicer, "dicomDatabase", None)
        if dicomDatabase is None:
            return None, None
    path = dicomDatabase.fileForInstance(uids[0])
    if not path:
        return None, None
    return heightWeightFromFile(path)
