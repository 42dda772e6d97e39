"""Volumetry: volume of every structure of a label map, in mL.

Volume (mL) = voxel count x (si x sj x sk) mm^3 / 1000 (``../shared/docs/clinical.md``,
"Volumetry"). The closed-surface volume of :mod:`lkseg.surfaces` is attached afterwards as a
cross-check (:func:`attach_mesh_volumes`); the two must agree within ~2% on organs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from lkseg.errors import InputError
from lkseg.labels import LabelTable, get_structure
from lkseg.planning._index import LabelIndex
from lkseg.volume import Volume

__all__ = [
    "MESH_AGREEMENT_PERCENT",
    "StructureVolume",
    "attach_mesh_volumes",
    "structure_volumes",
]

log = logging.getLogger(__name__)

#: Largest accepted difference between voxel and mesh volume of an organ, in percent
#: (clinical.md: "check both agree within ~2% on large structures").
MESH_AGREEMENT_PERCENT = 2.0
#: Structures smaller than this (mL) are not held to the 2% agreement (surface/volume ratio).
_SMALL_ML = 20.0


@dataclass
class StructureVolume:
    """Volume of one structure.

    Attributes:
        name: structure name (``"liver"``); value: its label value.
        display: display name; color: RGB in [0, 1].
        voxels: voxel count; volume_ml: voxel volume in mL.
        touches_border: the structure reaches the edge of the image (may be truncated).
        mesh_volume_ml: volume enclosed by its closed surface (mL), when surfaces were built.
        mesh_difference_percent: (mesh - voxel) / voxel x 100.
        notes: reasons for fields that are not available, warnings.
    """

    name: str
    value: int
    display: str
    color: tuple[float, float, float]
    voxels: int
    volume_ml: float
    touches_border: bool = False
    mesh_volume_ml: float | None = None
    mesh_difference_percent: float | None = None
    notes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["color"] = list(self.color)
        return out


def structure_volumes(labels: Volume | LabelIndex, table: LabelTable | None = None) -> dict[str, StructureVolume]:
    """Voxel volume of every structure of ``table`` (absent ones get 0 mL and a note).

    Args:
        labels: the integer label map (ZYX with geometry), or a prebuilt :class:`LabelIndex`.
        table: label value -> structure name (required with a Volume).

    Returns:
        structure name -> :class:`StructureVolume`, in label-value order.

    Raises:
        InputError: the label map holds none of the table's structures (empty label map).
    """
    index = labels if isinstance(labels, LabelIndex) else LabelIndex.build(labels, _need(table))
    out: dict[str, StructureVolume] = {}
    voxel_ml = index.labels.grid.voxel_volume_ml
    for value, name in index.table.items():
        structure = get_structure(name)
        count = index.counts.get(value, 0)
        vol = StructureVolume(name, value, structure.display, structure.color, count, count * voxel_ml)
        if count == 0:
            vol.notes["volume_ml"] = "structure absent from the label map (0 voxels)"
        elif index.touches_border([value]):
            vol.touches_border = True
            vol.notes["touches_border"] = "reaches the edge of the image: the volume may be truncated"
            log.warning("%s reaches the edge of the image; its volume may be truncated", name)
        out[name] = vol
    if not any(v.voxels for v in out.values()):
        raise InputError(
            f"the label map is empty: none of the structures {list(index.table.values())} has a voxel "
            f"(values present: {sorted(index.counts) or 'none'})"
        )
    return out


def attach_mesh_volumes(volumes: Mapping[str, StructureVolume], mesh_volumes_ml: Mapping[str, float]) -> list[str]:
    """Store closed-surface volumes next to the voxel volumes; return warnings for organs whose
    two volumes differ by more than :data:`MESH_AGREEMENT_PERCENT`."""
    warnings = []
    for name, mesh_ml in mesh_volumes_ml.items():
        vol = volumes.get(name)
        if vol is None or vol.volume_ml <= 0:
            continue
        vol.mesh_volume_ml = float(mesh_ml)
        vol.mesh_difference_percent = 100.0 * (mesh_ml - vol.volume_ml) / vol.volume_ml
        if abs(vol.mesh_difference_percent) > MESH_AGREEMENT_PERCENT and vol.volume_ml >= _SMALL_ML:
            msg = (
                f"{name}: surface volume {mesh_ml:.1f} mL differs from voxel volume {vol.volume_ml:.1f} mL "
                f"by {vol.mesh_difference_percent:+.1f}% (limit {MESH_AGREEMENT_PERCENT}%)"
            )
            vol.notes["mesh_volume_ml"] = msg
            warnings.append(msg)
    return warnings


def _need(table: LabelTable | None) -> LabelTable:
    if table is None:
        raise TypeError("a LabelTable is required when passing a label Volume")
    return table
