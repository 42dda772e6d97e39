"""Readers and writers: NIfTI, NRRD, DICOM series, Slicer .seg.nrrd, DICOM SEG. All writes atomic."""

from __future__ import annotations

from lkseg.io.atomic import atomic_dir, atomic_path, atomic_write_bytes, atomic_write_text, full_suffix
from lkseg.io.image import IMAGE_SUFFIXES, check_finite, read_image, read_label_map, write_image, write_label_map

__all__ = [
    "IMAGE_SUFFIXES",
    "atomic_dir",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_finite",
    "full_suffix",
    "read_image",
    "read_label_map",
    "write_image",
    "write_label_map",
]
