"""Anatomical postprocessing of an automatic label map.

Rules (each can be switched off through :class:`PostprocessConfig`):

* **one organ, one piece**: the liver and the spleen keep their largest connected component;
  kidneys keep at most two components. Components are taken over the organ *and its lesions*
  together, so a tumour at the organ's border does not cut it in two, and components are ranked
  by their organ (not lesion) voxels. Pieces under ``min_organ_ml`` are dropped as noise.
* **lesions inside their organ**: a tumour or cyst component that does not touch a kept
  component of its organ is removed.
* **no lesion specks**: a tumour or cyst component smaller than a sphere of ``min_lesion_mm``
  diameter (default 5 mm, 0.065 mL) becomes the organ around it. Such specks are noise of the
  arg-max at the organ's texture (on held-out phantoms they were the false positives that put
  kidney tumours in the healthy kidney), and a lesion under 5 mm cannot be characterised on CT.
* **holes filled**: background voxels fully enclosed by an organ component become that organ.
* **kidney laterality by position**: with two kidney components, the one with the larger RAS x
  (toward the patient's right) is the right kidney; a single kidney keeps the side most of its
  voxels were given by the network. RAS x uses the grid's full direction, so any storage
  orientation works.

All functions work on ZYX label arrays holding :data:`lkseg.labels.PRODUCT_LABELS`-style values
named by a :class:`~lkseg.labels.LabelTable`; they never change a label's grid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lkseg.labels import LabelTable, get_structure
from lkseg.volume import Grid

__all__ = ["ORGAN_GROUPS", "PostprocessConfig", "components", "organ_groups", "postprocess_labels", "values_box"]

log = logging.getLogger(__name__)

#: Organ -> the structures that make one connected piece with it.
ORGAN_GROUPS = {
    "liver": ("liver",),
    "kidney": ("kidney_right", "kidney_left"),
    "spleen": ("spleen",),
}
_MAX_PIECES = {"liver": 1, "kidney": 2, "spleen": 1}


@dataclass(frozen=True)
class PostprocessConfig:
    """Switches of :func:`postprocess_labels`.

    Attributes:
        largest_component: keep one piece per organ (two for the kidneys).
        lesions_inside_organ: drop tumour/cyst pieces that do not touch their organ.
        fill_holes: fill background enclosed by an organ.
        laterality: assign left/right kidney by RAS x position.
        min_organ_ml: organ pieces smaller than this (mL) are noise.
        min_lesion_mm: tumour/cyst pieces smaller than a sphere of this diameter (mm) become the
            organ around them (0 keeps every piece).
    """

    largest_component: bool = True
    lesions_inside_organ: bool = True
    fill_holes: bool = True
    laterality: bool = True
    min_organ_ml: float = 5.0
    min_lesion_mm: float = 5.0


def _organ_of(name: str) -> str | None:
    for organ, members in ORGAN_GROUPS.items():
        if name in members:
            return organ
    s = get_structure(name)
    if s.organ is not None:
        return "kidney" if s.organ.startswith("kidney") else s.organ
    return None


def organ_groups(table: LabelTable) -> dict[str, tuple[list[int], list[int]]]:
    """Organ -> (organ label values, lesion label values) present in ``table``."""
    groups: dict[str, tuple[list[int], list[int]]] = {}
    for value, name in table.items():
        organ = _organ_of(name)
        if organ is None or organ not in ORGAN_GROUPS:
            continue
        organs, lesions = groups.setdefault(organ, ([], []))
        (organs if name in ORGAN_GROUPS[organ] else lesions).append(value)
    return {k: v for k, v in groups.items() if v[0]}


def components(mask: np.ndarray):
    """Yield ``(bounding box, piece)`` for each connected component of ``mask`` (face
    connectivity): the box as a tuple of slices, the piece a bool array of ``mask``'s full shape."""
    comp, n = ndimage.label(mask)
    for idx, sl in enumerate(ndimage.find_objects(comp)[:n], start=1):
        if sl is None:
            continue
        piece = np.zeros(mask.shape, dtype=bool)
        piece[sl] = comp[sl] == idx
        yield sl, piece


def values_box(objects: list, values: list[int], shape: tuple[int, ...]) -> tuple[slice, ...] | None:
    """The bounding box, one voxel wider on each side (within ``shape``), of the voxels holding
    ``values`` in a label array whose ``ndimage.find_objects`` is ``objects``; None without any."""
    found = [objects[v - 1] for v in values if 0 < v <= len(objects) and objects[v - 1] is not None]
    if not found:
        return None
    lo = [min(s[d].start for s in found) for d in range(3)]
    hi = [max(s[d].stop for s in found) for d in range(3)]
    return tuple(slice(max(0, a - 1), min(n, b + 1)) for a, b, n in zip(lo, hi, shape))


def postprocess_labels(
    labels: np.ndarray, grid: Grid, table: LabelTable, config: PostprocessConfig | None = None
) -> list[str]:
    """Clean ``labels`` in place (ZYX integer array on ``grid``); returns notes on what changed.

    Args:
        labels: writable ZYX label array (values of ``table``).
        grid: its grid (spacing for volumes in mL, direction for RAS x).
        table: label value -> structure name.
        config: which rules to apply.
    """
    config = config or PostprocessConfig()
    notes: list[str] = []
    if labels.size == 0 or not labels.any():
        return notes
    objects = ndimage.find_objects(labels)
    voxel_ml = grid.voxel_volume_ml
    for organ, (organ_values, lesion_values) in organ_groups(table).items():
        values = organ_values + lesion_values
        box = values_box(objects, values, labels.shape)
        if box is None:
            continue
        view = labels[box]
        group = np.isin(view, values)
        is_organ = np.isin(view, organ_values)
        comp, n = ndimage.label(group)
        if n == 0:
            continue
        organ_counts = np.bincount(comp[is_organ], minlength=n + 1)[1:]
        order = np.argsort(organ_counts)[::-1]
        keep: list[int] = []
        for idx in order:
            if organ_counts[idx] == 0:
                break
            if organ_counts[idx] * voxel_ml < config.min_organ_ml:
                continue
            if config.largest_component and len(keep) >= _MAX_PIECES[organ]:
                break
            keep.append(int(idx) + 1)
        if not config.largest_component:
            keep = [int(i) + 1 for i in range(n) if organ_counts[i] * voxel_ml >= config.min_organ_ml]
        if not config.lesions_inside_organ:
            keep_mask = np.isin(comp, keep) | (group & ~is_organ)
        else:
            keep_mask = np.isin(comp, keep)
        dropped = group & ~keep_mask
        if dropped.any():
            notes.append(f"{organ}: removed {dropped.sum() * voxel_ml:.1f} mL outside the main piece(s)")
            view[dropped] = 0
        if not keep:
            notes.append(f"{organ}: nothing larger than {config.min_organ_ml:g} mL found")
            continue
        if config.min_lesion_mm > 0 and lesion_values:
            _absorb_specks(view, organ_values, lesion_values, grid, config.min_lesion_mm, notes, organ, table)
        if organ == "kidney" and config.laterality:
            _assign_laterality(view, comp, keep, box, grid, table, notes)
        if config.fill_holes:
            _fill_holes(view, comp, keep, organ_values, notes, organ, voxel_ml)
    return notes


def _absorb_specks(
    view: np.ndarray,
    organ_values: list[int],
    lesion_values: list[int],
    grid: Grid,
    min_mm: float,
    notes: list[str],
    organ: str,
    table: LabelTable,
) -> None:
    """Relabel lesion components under a ``min_mm`` sphere to the organ value that surrounds
    them most (background when no organ voxel touches them)."""
    min_mm3 = np.pi / 6.0 * min_mm**3
    voxel_mm3 = float(np.prod(grid.spacing))
    structure = ndimage.generate_binary_structure(3, 1)
    objects = ndimage.find_objects(view)
    for value in lesion_values:
        if value > len(objects) or objects[value - 1] is None:
            continue
        # the lesion's bounding box, one voxel wider (the shell around a speck at its edge)
        box = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in objects[value - 1])
        sub = view[box]
        comp, n = ndimage.label(sub == value, structure=np.ones((3, 3, 3), bool))
        if n == 0:
            continue
        sizes = np.bincount(comp.ravel(), minlength=n + 1)[1:]
        small = np.flatnonzero(sizes * voxel_mm3 < min_mm3) + 1
        if small.size == 0:
            continue
        slices = ndimage.find_objects(comp)
        for idx in small:
            sl = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in slices[idx - 1])
            piece = comp[sl] == idx
            shell = ndimage.binary_dilation(piece, structure) & ~piece
            around = sub[sl][shell]
            organ_around = around[np.isin(around, organ_values)]
            sub[sl][piece] = np.bincount(organ_around).argmax() if organ_around.size else 0
        notes.append(
            f"{organ}: {small.size} {table[value]} speck(s) under {min_mm:g} mm "
            f"({sizes[small - 1].sum() * voxel_mm3 / 1000.0:.2f} mL) given to the organ"
        )


def _fill_holes(
    view: np.ndarray,
    comp: np.ndarray,
    keep: list[int],
    organ_values: list[int],
    notes: list[str],
    organ: str,
    voxel_ml: float,
) -> None:
    filled_total = 0
    boxes = ndimage.find_objects(comp)
    for c in keep:
        sl = boxes[c - 1]
        sub = comp[sl] == c
        holes = ndimage.binary_fill_holes(sub) & ~sub & (view[sl] == 0)
        if holes.any():
            sub_view = view[sl]
            organ_here = sub_view[np.isin(sub_view, organ_values)]
            value = int(np.bincount(organ_here).argmax()) if organ_here.size else organ_values[0]
            sub_view[holes] = value
            filled_total += int(holes.sum())
    if filled_total:
        notes.append(f"{organ}: filled {filled_total * voxel_ml:.2f} mL of enclosed holes")


def _assign_laterality(
    view: np.ndarray,
    comp: np.ndarray,
    keep: list[int],
    box: tuple[slice, ...],
    grid: Grid,
    table: LabelTable,
    notes: list[str],
) -> None:
    try:
        right, left = table.value_of("kidney_right"), table.value_of("kidney_left")
    except KeyError:
        return
    offset = np.array([box[2].start, box[1].start, box[0].start], dtype=np.float64)  # (i, j, k)
    info = []
    for c in keep:
        piece = comp == c
        kz, kj, ki = (float(np.mean(a)) for a in np.nonzero(piece))
        ras_x = float(grid.index_to_ras(offset + np.array([ki, kj, kz]))[0])
        votes_right = int(np.count_nonzero(view[piece] == right))
        votes_left = int(np.count_nonzero(view[piece] == left))
        info.append((c, ras_x, votes_right, votes_left))
    if len(info) == 2:
        (c1, x1, *_), (c2, x2, *_) = info
        sides = {c1: right if x1 > x2 else left, c2: left if x1 > x2 else right}
    else:
        c, _, vr, vl = info[0]
        sides = {c: right if vr >= vl else left}
    for c, _, vr, vl in info:
        side = sides[c]
        piece = comp == c
        organ_vox = piece & ((view == right) | (view == left))
        wrong = int(np.count_nonzero(view[organ_vox] != side))
        if wrong:
            view[organ_vox] = side
            name = "right" if side == right else "left"
            notes.append(f"kidney: {wrong} voxels relabelled as the {name} kidney by position")
        log.debug("kidney piece %d: RAS x %.1f mm, votes right %d left %d", c, _, vr, vl)
