"""One pass over a label map: voxel counts and bounding boxes per label value, name lookup.

Every planning function starts from a :class:`LabelIndex` so that the (possibly 50-million
voxel) label map is scanned once; all later work happens in small crops around structures.
Arrays are numpy **ZYX** (``array[k, j, i]``); bounding boxes are tuples of three slices in
the same order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from lkseg.errors import InputError
from lkseg.labels import LabelTable, get_structure
from lkseg.volume import Volume

__all__ = [
    "COLLECTING_SYSTEM_NAMES",
    "KIDNEY_NAMES",
    "LIVER_LESION_NAMES",
    "LIVER_VESSEL_NAMES",
    "Box",
    "LabelIndex",
    "crop_padded",
    "grow_box",
    "union_box",
]

log = logging.getLogger(__name__)

Box = tuple[slice, slice, slice]

#: Organ segments that count as a kidney (laterality from the name).
KIDNEY_NAMES = ("kidney_right", "kidney_left", "kidney")
#: Liver lesions: they count in the total liver volume (TLV) and are non-functional tissue.
LIVER_LESION_NAMES = ("liver_tumor", "liver_cyst")
#: Intrahepatic vessels: used only to close the liver when finding its outer surface.
LIVER_VESSEL_NAMES = ("portal_vein", "hepatic_vein")
#: Segments accepted as the renal collecting system / sinus for R.E.N.A.L. "N" and polar lines.
COLLECTING_SYSTEM_NAMES = ("renal_pelvis", "renal_sinus", "collecting_system")

_CHUNK = 8  # slices per bincount chunk (bounds temporary memory to ~8 slices of int64)


@dataclass
class LabelIndex:
    """Counts and bounding boxes of every label value of a label map, plus its table.

    Attributes:
        labels: the integer label map (ZYX, with geometry).
        table: label value -> structure name.
        counts: label value -> number of voxels (values present in the map only).
        boxes: label value -> bounding box (three slices, ZYX) of its voxels.
        unknown: values present in the map but missing from the table (ignored, reported).
    """

    labels: Volume
    table: LabelTable
    counts: dict[int, int]
    boxes: dict[int, Box]
    unknown: dict[int, int] = field(default_factory=dict)

    @classmethod
    def build(cls, labels: Volume, table: LabelTable) -> LabelIndex:
        """Scan ``labels`` once. Raises :class:`InputError` for non-integer or negative maps."""
        arr = labels.array
        if arr.dtype == np.bool_:
            arr = arr.view(np.uint8)
        if not np.issubdtype(arr.dtype, np.integer):
            raise InputError(f"a label map must hold integers, got {arr.dtype}")
        if np.issubdtype(arr.dtype, np.signedinteger) and arr.size and int(arr.min()) < 0:
            raise InputError(f"the label map holds negative values (min {int(arr.min())})")
        total = np.zeros(1, dtype=np.int64)
        for start in range(0, arr.shape[0], _CHUNK):
            part = np.bincount(arr[start : start + _CHUNK].ravel())
            if part.size > total.size:
                part[: total.size] += total
                total = part
            else:
                total[: part.size] += part
        present = {int(v): int(c) for v, c in enumerate(total) if v > 0 and c > 0}
        boxes: dict[int, Box] = {}
        if present:
            found = ndimage.find_objects(arr, max_label=max(present))
            boxes = {v: found[v - 1] for v in present if found[v - 1] is not None}
        unknown = {v: c for v, c in present.items() if v not in table}
        for value, count in unknown.items():
            log.warning(
                "label value %d (%d voxels) is not in the label table %s; it is ignored", value, count, dict(table)
            )
        return cls(labels, table, present, boxes, unknown)

    # -- lookup ------------------------------------------------------------------------------
    def values(self, names: Iterable[str] | str) -> list[int]:
        """Label values (from the table) of the given structure names, present or not."""
        wanted = {names} if isinstance(names, str) else set(names)
        return [v for v, n in self.table.items() if n in wanted]

    def present(self, names: Iterable[str] | str) -> list[int]:
        """Label values of the given names that have at least one voxel."""
        return [v for v in self.values(names) if self.counts.get(v, 0) > 0]

    def name_of(self, value: int) -> str:
        return self.table[value]

    def organ_of(self, name: str) -> str | None:
        """The organ a lesion structure belongs to (``"liver"``/``"kidney"``), else None."""
        return get_structure(name).organ

    def count(self, values: Iterable[int]) -> int:
        return int(sum(self.counts.get(v, 0) for v in values))

    def volume_ml(self, values: Iterable[int]) -> float:
        """Voxel volume in mL of the voxels with any of ``values``."""
        return self.count(values) * self.labels.grid.voxel_volume_ml

    def bbox(self, values: Iterable[int], pad: int = 0) -> Box | None:
        """Union bounding box of ``values`` (ZYX slices), grown by ``pad`` voxels and clipped to
        the volume; None when none of the values is present."""
        boxes = [self.boxes[v] for v in values if v in self.boxes]
        if not boxes:
            return None
        shape = self.labels.shape
        return tuple(
            slice(max(0, min(b[a].start for b in boxes) - pad), min(shape[a], max(b[a].stop for b in boxes) + pad))
            for a in range(3)
        )  # type: ignore[return-value]

    def touches_border(self, values: Iterable[int]) -> bool:
        """True when the structure reaches the first or last voxel of any axis (truncated FOV)."""
        box = self.bbox(values)
        if box is None:
            return False
        shape = self.labels.shape
        return any(box[a].start == 0 or box[a].stop == shape[a] for a in range(3))

    def mask(self, values: Iterable[int], box: Box) -> np.ndarray:
        """Boolean mask (ZYX) of ``values`` inside ``box``."""
        values = list(values)
        crop = self.labels.array[box]
        if not values:
            return np.zeros(crop.shape, dtype=bool)
        if len(values) == 1:
            return crop == values[0]
        return self.lut(values)[crop]

    def lut(self, values: Iterable[int]) -> np.ndarray:
        """Boolean lookup table over label values: ``index.lut(v)[array]`` == ``np.isin(array, v)``
        (several times faster on large crops)."""
        size = max(max(self.counts, default=0), max(self.table, default=0)) + 1
        table = np.zeros(size, dtype=bool)
        table[[v for v in values if 0 <= v < size]] = True
        return table


def union_box(a: Box | None, b: Box | None) -> Box | None:
    """Smallest box holding both (None-aware)."""
    if a is None:
        return b
    if b is None:
        return a
    return tuple(slice(min(a[i].start, b[i].start), max(a[i].stop, b[i].stop)) for i in range(3))  # type: ignore[return-value]


def grow_box(box: Box, pad: int, shape: tuple[int, int, int]) -> Box:
    return tuple(slice(max(0, box[a].start - pad), min(shape[a], box[a].stop + pad)) for a in range(3))  # type: ignore[return-value]


def crop_padded(mask: np.ndarray, box: Box, pad: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``mask`` to ``box`` grown by ``pad`` voxels, padding with False beyond the array edge.

    Returns:
        (crop, offset): the cropped boolean array and the ZYX index of ``crop[0, 0, 0]`` in
        ``mask`` (may be negative where padding was added).
    """
    shape = mask.shape
    lo = [box[a].start - pad for a in range(3)]
    hi = [box[a].stop + pad for a in range(3)]
    inner = tuple(slice(max(0, lo[a]), min(shape[a], hi[a])) for a in range(3))
    before = [max(0, -lo[a]) for a in range(3)]
    after = [max(0, hi[a] - shape[a]) for a in range(3)]
    crop = mask[inner]
    if any(before) or any(after):
        crop = np.pad(crop, list(zip(before, after)), constant_values=False)
    return crop, np.array(lo, dtype=np.int64)
