"""Combine a refined mask into an existing label map, touching one label value only.

Modes (``value`` is the structure's label):

* ``"add"``: mask voxels that are background become ``value``;
* ``"subtract"``: mask voxels that hold ``value`` become background;
* ``"replace"``: the structure becomes exactly the mask: ``value`` voxels outside the mask
  become background, background voxels inside it become ``value``.

Voxels of *other* labels never change (a mask that overlaps another structure leaves that
structure's voxels as they were, and the count is logged), and with ``region`` a change is
confined to that region (e.g. the slices a propagation reached): everything outside keeps its
label. The input is never modified; a new label map is returned.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np

from lkseg.errors import GeometryMismatchError, InputError
from lkseg.volume import Volume

__all__ = ["CombineMode", "combine"]

log = logging.getLogger(__name__)

CombineMode = Literal["add", "subtract", "replace"]


def combine(
    label_map: Volume | np.ndarray,
    mask3d: np.ndarray | Volume,
    value: int,
    mode: CombineMode = "add",
    region: np.ndarray | None = None,
) -> Volume | np.ndarray:
    """Merge ``mask3d`` into ``label_map`` as label ``value`` (see module docstring).

    Args:
        label_map: integer label map (Volume or ZYX array).
        mask3d: bool mask of the same shape (a Volume must share the label map's grid).
        value: the label to edit (1..max of the dtype).
        mode: ``"add"``, ``"subtract"`` or ``"replace"``.
        region: optional bool mask; voxels outside it never change.

    Returns:
        A new label map of the same type, dtype and geometry.
    """
    if mode not in ("add", "subtract", "replace"):
        raise InputError(f"combine mode must be add, subtract or replace, got {mode!r}")
    labels = label_map.array if isinstance(label_map, Volume) else np.asarray(label_map)
    if isinstance(mask3d, Volume):
        if isinstance(label_map, Volume):
            label_map.grid.require_same(mask3d.grid, "refined mask")
        mask3d = mask3d.array
    mask = np.asarray(mask3d).astype(bool)
    if mask.shape != labels.shape:
        raise GeometryMismatchError(f"mask shape {mask.shape} differs from the label map {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"a label map must hold integers, got {labels.dtype}")
    value = int(value)
    if value <= 0 or value > np.iinfo(labels.dtype).max:
        raise InputError(
            f"label value {value} does not fit a {labels.dtype} label map (1..{np.iinfo(labels.dtype).max})"
        )
    if region is not None:
        region = np.asarray(region).astype(bool)
        if region.shape != labels.shape:
            raise GeometryMismatchError(f"region shape {region.shape} differs from the label map {labels.shape}")
    out = np.array(labels, copy=True)
    allowed = np.ones(labels.shape, dtype=bool) if region is None else region
    other = (labels != 0) & (labels != value)
    blocked = int(np.count_nonzero(mask & other & allowed))
    if blocked and mode != "subtract":
        log.info("combine: %d voxel(s) of the mask belong to other structures and were left unchanged", blocked)
    if mode == "add":
        out[mask & (labels == 0) & allowed] = value
    elif mode == "subtract":
        out[mask & (labels == value) & allowed] = 0
    else:
        out[(labels == value) & ~mask & allowed] = 0
        out[mask & (labels == 0) & allowed] = value
    if isinstance(label_map, Volume):
        return label_map.with_array(out)
    return out
