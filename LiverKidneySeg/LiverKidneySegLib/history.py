"""Undo / redo of segment edits (refinement clicks, boxes, 3D propagation).

Each edit stores only the bounding box of the voxels it changed, bit-packed, before and after,
so hundreds of edits of a 512 x 512 x 300 segment take little memory. Undo and redo write back
only the voxels the edit changed (through :func:`~LiverKidneySegLib.segmentations.setSegmentMask`,
limited to the box), so edits made since with other tools elsewhere in the box survive.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from LiverKidneySegLib.segmentations import segmentMask, setSegmentMask
from lkseg.volume import Grid

__all__ = ["EditHistory", "SegmentEdit", "SegmentState", "SegmentsEdit"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentEdit:
    """One recorded change of one segment.

    Attributes:
        segmentationNodeId: MRML ID of the segmentation node.
        segmentId: ID of the edited segment.
        grid: voxel grid of the masks.
        region: ZYX slices of the changed bounding box.
        before, after: bit-packed voxels of the region (``np.packbits`` of the bool block).
        description: shown to the user ("add point", "propagate"...).
    """

    segmentationNodeId: str
    segmentId: str
    grid: Grid
    region: tuple[slice, slice, slice]
    before: np.ndarray
    after: np.ndarray
    description: str

    @property
    def regionShape(self) -> tuple[int, int, int]:
        return tuple(s.stop - s.start for s in self.region)  # type: ignore[return-value]

    def block(self, which: str) -> np.ndarray:
        packed = self.before if which == "before" else self.after
        count = int(np.prod(self.regionShape))
        return np.unpackbits(packed, count=count).astype(bool).reshape(self.regionShape)

    @property
    def changedVoxels(self) -> int:
        return int(np.count_nonzero(self.block("before") != self.block("after")))


@dataclass(frozen=True)
class SegmentState:
    """One segment as it was: metadata (name, colour, tags, terminology) and bit-packed voxels."""

    metadata: object  # a vtkSegment without representations
    index: int
    packed: np.ndarray


@dataclass(frozen=True)
class SegmentsEdit:
    """A change of whole segments (the automatic result: segments created or replaced).

    Attributes:
        before, after: ``{segmentId: SegmentState or None}`` (None: the segment did not exist).
    """

    segmentationNodeId: str
    grid: Grid
    before: dict
    after: dict
    description: str

    @staticmethod
    def snapshot(segmentationNode, segmentIds, grid: Grid) -> dict:
        """``{segmentId: SegmentState or None}`` of the segments now."""
        import slicer

        segmentation = segmentationNode.GetSegmentation()
        states = {}
        for segmentId in segmentIds:
            segment = segmentation.GetSegment(segmentId)
            if segment is None:
                states[segmentId] = None
                continue
            metadata = slicer.vtkSegment()
            metadata.DeepCopyMetadata(segment)
            packed = np.packbits(segmentMask(segmentationNode, segmentId, grid))
            states[segmentId] = SegmentState(metadata, segmentation.GetSegmentIndex(segmentId), packed)
        return states

    def restore(self, which: str, scene) -> None:
        node = scene.GetNodeByID(self.segmentationNodeId)
        if node is None:
            raise RuntimeError(f"cannot undo/redo '{self.description}': the segmentation no longer exists")
        segmentation = node.GetSegmentation()
        states = self.before if which == "before" else self.after
        for segmentId, state in states.items():
            if segmentation.GetSegment(segmentId) is not None:
                segmentation.RemoveSegment(segmentId)
            if state is None:
                continue
            newId = segmentation.AddEmptySegment(segmentId, state.metadata.GetName(), list(state.metadata.GetColor()))
            segment = segmentation.GetSegment(newId)
            labelValue = segment.GetLabelValue()  # its value in the layer it was given, not the old one
            segment.DeepCopyMetadata(state.metadata)
            segment.SetLabelValue(labelValue)
            mask = np.unpackbits(state.packed, count=int(np.prod(self.grid.shape))).astype(bool)
            setSegmentMask(node, newId, mask.reshape(self.grid.shape), self.grid)
            segmentation.SetSegmentIndex(newId, min(state.index, segmentation.GetNumberOfSegments() - 1))


class EditHistory:
    """A linear undo/redo stack of :class:`SegmentEdit`\\ s (a new edit clears the redo side).

    Args:
        maxEdits: oldest edits are dropped beyond this count.
    """

    def __init__(self, maxEdits: int = 100):
        self.maxEdits = maxEdits
        self._undo: list[SegmentEdit | SegmentsEdit] = []
        self._redo: list[SegmentEdit | SegmentsEdit] = []

    @property
    def canUndo(self) -> bool:
        return bool(self._undo)

    @property
    def canRedo(self) -> bool:
        return bool(self._redo)

    def __len__(self) -> int:
        return len(self._undo)

    def clear(self) -> None:
        self._undo.clear()
        self._redo.clear()

    def record(
        self,
        segmentationNode,
        segmentId: str,
        before: np.ndarray,
        after: np.ndarray,
        grid: Grid,
        description: str,
        within: tuple[slice, ...] | None = None,
    ) -> SegmentEdit | None:
        """Record that a segment changed from ``before`` to ``after`` (bool ZYX on ``grid``).

        Args:
            within: a ZYX box outside which ``before`` and ``after`` are known to be equal (e.g.
                the slice of a click): only it is compared, instead of the whole volume.

        Returns:
            The edit, or None when nothing changed (nothing is recorded then).
        """
        box = tuple(slice(*s.indices(n)[:2]) for s, n in zip(within or (slice(None),) * 3, grid.shape))
        before, after = np.asarray(before, bool), np.asarray(after, bool)
        changed = before[box] != after[box]
        if not changed.any():
            return None
        nonzero = np.nonzero(changed)
        region = tuple(slice(int(a.min()) + b.start, int(a.max()) + 1 + b.start) for a, b in zip(nonzero, box))
        edit = SegmentEdit(
            segmentationNode.GetID(),
            segmentId,
            grid,
            region,  # type: ignore[arg-type]
            np.packbits(before[region]),
            np.packbits(after[region]),
            description,
        )
        self._push(edit)
        return edit

    def recordRegion(
        self,
        segmentationNode,
        segmentId: str,
        region: tuple[slice, slice, slice],
        before: np.ndarray,
        after: np.ndarray,
        grid: Grid,
        description: str,
    ) -> SegmentEdit | None:
        """Record a change known to lie in the ZYX box ``region``: ``before``/``after`` are the bool
        blocks of the segment there (no full-volume array needed). None when nothing changed."""
        before, after = np.asarray(before, bool), np.asarray(after, bool)
        changed = before != after
        if not changed.any():
            return None
        nonzero = np.nonzero(changed)
        local = tuple(slice(int(a.min()), int(a.max()) + 1) for a in nonzero)
        edit = SegmentEdit(
            segmentationNode.GetID(),
            segmentId,
            grid,
            tuple(slice(r.start + s.start, r.start + s.stop) for r, s in zip(region, local)),  # type: ignore[arg-type]
            np.packbits(before[local]),
            np.packbits(after[local]),
            description,
        )
        self._push(edit)
        return edit

    def _push(self, edit) -> None:
        self._undo.append(edit)
        del self._undo[: -self.maxEdits]
        self._redo.clear()

    def recordSegments(self, edit: SegmentsEdit) -> SegmentsEdit:
        """Record a whole-segment change (e.g. the automatic result) as one undo step."""
        self._push(edit)
        return edit

    def _apply(self, edit, which: str, scene) -> None:
        """Write back only the voxels this edit changed: edits made since by other tools (Segment
        Editor) elsewhere in the edit's bounding box are kept."""
        if isinstance(edit, SegmentsEdit):
            edit.restore(which, scene)
            return
        node = scene.GetNodeByID(edit.segmentationNodeId)
        if node is None or node.GetSegmentation().GetSegment(edit.segmentId) is None:
            raise RuntimeError(
                f"cannot undo/redo '{edit.description}': the segment {edit.segmentId!r} no longer exists"
            )
        mask = segmentMask(node, edit.segmentId, edit.grid)
        before, after = edit.block("before"), edit.block("after")
        changed = before != after
        block = mask[edit.region]
        block[changed] = (before if which == "before" else after)[changed]
        mask[edit.region] = block
        setSegmentMask(node, edit.segmentId, mask, edit.grid, region=edit.region)  # only the edited box

    def undo(self, scene) -> SegmentEdit | None:
        """Restore the state before the last edit; returns it (None when there is nothing to undo)."""
        if not self._undo:
            return None
        edit = self._undo.pop()
        self._apply(edit, "before", scene)
        self._redo.append(edit)
        log.info("undo: %s", edit.description)
        return edit

    def redo(self, scene) -> SegmentEdit | None:
        """Re-apply the last undone edit; returns it (None when there is nothing to redo)."""
        if not self._redo:
            return None
        edit = self._redo.pop()
        self._apply(edit, "after", scene)
        self._undo.append(edit)
        log.info("redo: %s", edit.description)
        return edit
