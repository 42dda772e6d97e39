"""Readers and writers: NIfTI, NRRD, DICOM series, Slicer .seg.nrrd, DICOM SEG. All writes atomic.

Everything returns or takes :class:`~lkseg.volume.Volume` (ZYX arrays, LPS geometry) or
:class:`~lkseg.segmentation.Segmentation`. Entry points: :func:`read_image` (any image, dispatch
by suffix or folder), :func:`read_label_map` / :func:`read_segmentation` (any label map or
segmentation file), :func:`~lkseg.io.placement.place_label_map` (a label map onto its image's
grid: exact reorientation on a shared lattice, else refusal or opt-in resampling), and the
format modules :mod:`lkseg.io.dicom`, :mod:`lkseg.io.segnrrd`, :mod:`lkseg.io.dicomseg`
(imported lazily, so ``import lkseg.io`` stays light).
"""

from __future__ import annotations

from lkseg.io.atomic import atomic_dir, atomic_path, atomic_write_bytes, atomic_write_text, full_suffix
from lkseg.io.image import (
    IMAGE_SUFFIXES,
    check_finite,
    read_image,
    read_label_map,
    read_segmentation,
    write_image,
    write_label_map,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "DicomSeriesInfo",
    "atomic_dir",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_finite",
    "full_suffix",
    "list_dicom_series",
    "place_label_map",
    "read_dicom_seg",
    "read_dicom_series",
    "read_image",
    "read_label_map",
    "read_seg_nrrd",
    "read_segmentation",
    "write_dicom_seg",
    "write_dicom_series",
    "write_image",
    "write_label_map",
    "write_seg_nrrd",
]

_LAZY = {
    "DicomSeriesInfo": "lkseg.io.dicom",
    "list_dicom_series": "lkseg.io.dicom",
    "read_dicom_series": "lkseg.io.dicom",
    "write_dicom_series": "lkseg.io.dicom",
    "place_label_map": "lkseg.io.placement",
    "read_seg_nrrd": "lkseg.io.segnrrd",
    "write_seg_nrrd": "lkseg.io.segnrrd",
    "read_dicom_seg": "lkseg.io.dicomseg",
    "write_dicom_seg": "lkseg.io.dicomseg",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lkseg.io' has no attribute {name!r}")
