"""Boxes for the two-stage cascade: where the fine network has to run.

The coarse network labels the whole scan at low resolution (e.g. 6 mm); each organ it finds gives
a box, padded by a margin in mm, in the index space of the fine grid. Boxes whose merge costs no
more voxels than running them separately are merged; the rest may overlap and are blended.

Boxes are half-open index ranges in **ZYX** array order (``lo`` inclusive, ``hi`` exclusive).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lkseg.auto.postprocess import PostprocessConfig, organ_groups, postprocess_labels
from lkseg.labels import LabelTable
from lkseg.volume import Grid

__all__ = ["Box", "bounding_box", "covering_box", "expand_to_multiple", "find_organ_boxes", "merge_boxes", "sub_grid"]


@dataclass(frozen=True)
class Box:
    """A half-open ZYX index box ``[lo, hi)`` with the organs it was made for."""

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]
    organs: tuple[str, ...] = ()

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(h - lo for lo, h in zip(self.lo, self.hi))  # type: ignore[return-value]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.lo, self.hi))  # type: ignore[return-value]

    def union(self, other: Box) -> Box:
        lo = tuple(min(a, b) for a, b in zip(self.lo, other.lo))
        hi = tuple(max(a, b) for a, b in zip(self.hi, other.hi))
        organs = tuple(dict.fromkeys(self.organs + other.organs))
        return Box(lo, hi, organs)  # type: ignore[arg-type]


def expand_to_multiple(box: Box, multiple: int = 16) -> Box:
    """``box`` grown symmetrically so each side is a multiple of ``multiple`` voxels (it may then
    reach outside its grid; samples there are air). The network's total stride needs such sizes,
    and real context beats zero padding."""
    lo, hi = [], []
    for a, b in zip(box.lo, box.hi):
        extra = (-(b - a)) % multiple
        lo.append(a - extra // 2)
        hi.append(b + extra - extra // 2)
    return Box(tuple(lo), tuple(hi), box.organs)  # type: ignore[arg-type]


def sub_grid(grid: Grid, box: Box) -> Grid:
    """The grid of ``box`` inside ``grid``: same spacing and direction, shifted origin."""
    origin = grid.index_to_lps([box.lo[2], box.lo[1], box.lo[0]])
    return Grid(box.shape, grid.spacing, tuple(origin), grid.direction)


def covering_box(src: Grid, box: Box, dst: Grid, margin_mm: float = 0.0) -> Box | None:
    """The box of ``dst`` voxels covering ``box`` of ``src`` (voxel edges, plus ``margin_mm``),
    clipped to ``dst``; ``None`` if it falls outside."""
    lo_edge = [box.lo[2] - 0.5, box.lo[1] - 0.5, box.lo[0] - 0.5]
    hi_edge = [box.hi[2] - 0.5, box.hi[1] - 0.5, box.hi[0] - 0.5]
    corners = np.array(list(itertools.product(*zip(lo_edge, hi_edge))), dtype=np.float64)  # (8, 3) ijk
    idx = dst.lps_to_index(src.index_to_lps(corners))
    margin = np.array([margin_mm / s for s in dst.spacing])
    lo_ijk = np.floor(idx.min(axis=0) - margin).astype(int)
    hi_ijk = np.ceil(idx.max(axis=0) + margin).astype(int) + 1
    size = np.array(dst.size_ijk)
    lo_ijk = np.clip(lo_ijk, 0, size)
    hi_ijk = np.clip(hi_ijk, 0, size)
    if np.any(hi_ijk <= lo_ijk):
        return None
    return Box(
        (int(lo_ijk[2]), int(lo_ijk[1]), int(lo_ijk[0])), (int(hi_ijk[2]), int(hi_ijk[1]), int(hi_ijk[0])), box.organs
    )


def find_organ_boxes(
    coarse_labels: np.ndarray,
    coarse_grid: Grid,
    table: LabelTable,
    organs: list[str] | None = None,
    min_organ_ml: float = 5.0,
) -> list[Box]:
    """One box per organ piece the coarse network found, in coarse ZYX index space.

    Args:
        coarse_labels: ZYX labels of the coarse stage (values of ``table``); not modified.
        coarse_grid: their grid.
        table: coarse label value -> structure name.
        organs: organ groups to box (``"liver"``, ``"kidney"``, ``"spleen"``); all when None.
        min_organ_ml: pieces smaller than this are ignored.
    """
    labels = np.array(coarse_labels, copy=True)
    postprocess_labels(
        labels, coarse_grid, table, PostprocessConfig(fill_holes=False, laterality=False, min_organ_ml=min_organ_ml)
    )
    boxes: list[Box] = []
    for organ, (organ_values, lesion_values) in organ_groups(table).items():
        if organs is not None and organ not in organs:
            continue
        comp, n = ndimage.label(np.isin(labels, organ_values + lesion_values))
        for sl in ndimage.find_objects(comp)[:n]:
            if sl is None:
                continue
            boxes.append(Box(tuple(s.start for s in sl), tuple(s.stop for s in sl), (organ,)))  # type: ignore[arg-type]
    return boxes


def merge_boxes(boxes: list[Box], slack: float = 1.0) -> list[Box]:
    """Merge pairs of boxes whose union has at most ``slack`` x their summed voxels (repeat until
    stable). Boxes that remain may overlap; overlaps are blended by the caller."""
    boxes = list(boxes)
    changed = True
    while changed and len(boxes) > 1:
        changed = False
        best = None
        for a, b in itertools.combinations(range(len(boxes)), 2):
            merged = boxes[a].union(boxes[b])
            cost = merged.size - slack * (boxes[a].size + boxes[b].size)
            if cost <= 0 and (best is None or cost < best[0]):
                best = (cost, a, b, merged)
        if best is not None:
            _, a, b, merged = best
            boxes = [bx for n, bx in enumerate(boxes) if n not in (a, b)] + [merged]
            changed = True
    return boxes


def bounding_box(boxes: list[Box]) -> Box:
    """The smallest box containing all ``boxes``."""
    out = boxes[0]
    for b in boxes[1:]:
        out = out.union(b)
    return out


def ceil_to(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)
