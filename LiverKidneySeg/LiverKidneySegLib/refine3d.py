"""3D clicks and boxes on a segment through the logic: "a click is a click" in the Slicer module,
the web front end and the CLI (the core's :class:`lkseg.refine.InteractiveSegment` does the edit).

* A positive click or a box on a slice the segment does not reach seeds a propagation from there
  in both directions until it meets the segment; a negative click on a leaked slice ends the
  structure there; any other click edits its slice and follows its error into the next slices.
* The worker thread of the :class:`~LiverKidneySegLib.refinement.RefineEngine` keeps one
  ``InteractiveSegment`` per (volume, segment, view axis): a click on an already encoded slice
  costs only the prompt decoder and the edit.
* The session is re-read from the segment whenever the segment was changed by anything else
  since the logic's last write (another edit, undo, the automatic result, Segment Editor):
  :func:`segmentFingerprint` (the segment's label-map object and its modification time) is
  compared before every click. Nothing is ever overwritten silently: only the voxels the click
  changed are written, in their bounding box, as ONE undo step of the logic's
  :class:`~LiverKidneySegLib.history.EditHistory`; other segments are never written, and the
  edit rules (:mod:`LiverKidneySegLib.editrules`) limit where voxels may change.

Geometry: clicks and box corners are world RAS mm (what markups and slice views give); they are
mapped to continuous ``(i, j, k)`` through the volume node's own IJKToRAS and its parent
transforms (:func:`~LiverKidneySegLib.volumes.worldToIjk`); masks are numpy ZYX on the CT's grid.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from LiverKidneySegLib.refinement import Edit3DOutcome, Edit3DRequest, RefineResult
from LiverKidneySegLib.segmentations import segmentMask, segmentStructureName, setSegmentMask
from LiverKidneySegLib.volumes import worldToIjk
from lkseg.errors import PromptError

__all__ = ["Refine3DLogicMixin", "segmentFingerprint"]

log = logging.getLogger(__name__)

_LABELMAP = "Binary labelmap"


def segmentFingerprint(segmentationNode, segmentId: str):
    """A cheap value that changes whenever the segment's voxels may have changed: the label value
    and the identity and modification time of the label-map object that holds it (VTK's
    modification times increase monotonically, so an equal value means "not modified since").
    A segment without a label-map representation gets a value equal to nothing (always re-read)."""
    segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
    if segment is None:
        return object()
    labelmap = segment.GetRepresentation(_LABELMAP)
    if labelmap is None:
        return object()
    return (segment.GetLabelValue(), labelmap.__this__, labelmap.GetMTime())


def _insideOrRaise(volumeNode, ijk: np.ndarray, what: str) -> None:
    size = np.array(volumeNode.GetImageData().GetDimensions(), dtype=float)
    if np.any(ijk < -0.5) or np.any(ijk > size - 0.5):
        raise PromptError(
            f"the {what} lies outside the volume '{volumeNode.GetName()}' (voxel {np.round(ijk, 1).tolist()}, "
            f"size {size.astype(int).tolist()}): nothing was changed"
        )


class Refine3DLogicMixin:
    """``click3D`` and ``box3D`` of :class:`~LiverKidneySegLib.logic.LiverKidneySegLogicBase`
    (expects its ``volume``, ``_volumeKey``, ``_segmentId``, ``refiner``, ``history`` and
    ``editRules``)."""

    def click3D(
        self,
        volumeNode,
        segmentationNode,
        segmentName: str,
        pointRAS,
        *,
        positive: bool = True,
        axis: int = 2,
        waitForCompletion: bool = True,
        progressCallback: Callable[[float, str], None] | None = None,
    ):
        """One click that edits the segment in 3D (see the module docstring).

        Args:
            volumeNode: the CT.
            segmentationNode: the segmentation to edit.
            segmentName: segment name or structure name (created empty when missing).
            pointRAS: the click, ``(3,)`` world RAS mm.
            positive: True = the voxel belongs to the structure (add), False = it does not.
            axis: index axis normal to the slice view clicked in (0 = i, 1 = j, 2 = k; see
                :func:`~LiverKidneySegLib.markups.sliceAxisForNormal`).
            waitForCompletion: when False, returns a :class:`~LiverKidneySegLib.logic.PendingEdit`
                (``done()``, ``cancel()``, ``finish()`` on the main thread).
            progressCallback: ``progress(fraction, message)`` from the worker thread (a click that
                fills unreached slices propagates).

        Returns:
            :class:`~LiverKidneySegLib.refinement.RefineResult` (``warnings``: e.g. a click on air
            was ignored; ``region``: the changed box) or a ``PendingEdit``.

        Raises:
            PromptError: the click lies outside the volume (nothing is changed).
        """
        point = np.asarray(pointRAS, dtype=np.float64).reshape(-1)
        if point.shape != (3,) or not np.all(np.isfinite(point)):
            raise PromptError(f"a click is one world RAS point (3 finite numbers), got {pointRAS!r}")
        ijk = worldToIjk(volumeNode, point)
        _insideOrRaise(volumeNode, ijk, "click")
        sliceIndex = int(np.rint(ijk[axis]))
        description = f"{'+' if positive else '-'} click in 3D on {'ijk'[axis]}={sliceIndex}"
        return self._edit3D(
            volumeNode,
            segmentationNode,
            segmentName,
            dict(axis=axis, point=ijk, positive=bool(positive)),
            description,
            waitForCompletion,
            progressCallback,
        )

    def box3D(
        self,
        volumeNode,
        segmentationNode,
        segmentName: str,
        cornersRAS,
        *,
        axis: int = 2,
        waitForCompletion: bool = True,
        progressCallback: Callable[[float, str], None] | None = None,
    ):
        """A box on one slice that segments the structure there and propagates it in 3D (on a slice
        the segment does not reach: only through the empty slices, until it meets the segment).

        Args:
            cornersRAS: ``(2, 3)`` opposite corners (or the ``(8, 3)`` corners of an oriented box)
                in world RAS mm, or a markups ROI node. The box lies on the slice of its centre
                along ``axis``; a box larger than the volume is clipped to it (with a warning).
            Other arguments and the result: see :meth:`click3D`.

        Raises:
            PromptError: the box lies outside the volume or is less than 2 voxels wide.
        """
        from LiverKidneySegLib.markups import roiCornersWorld

        if hasattr(cornersRAS, "GetNumberOfControlPoints"):
            if cornersRAS.GetNumberOfControlPoints() == 0:
                raise PromptError("the box (ROI) has not been placed")
            corners = roiCornersWorld(cornersRAS)
        else:
            corners = np.asarray(cornersRAS, dtype=np.float64)
            if corners.ndim != 2 or corners.shape[1] != 3 or len(corners) < 2 or not np.all(np.isfinite(corners)):
                raise PromptError(f"a box is (2, 3) opposite corners in world RAS mm, got shape {corners.shape}")
        ijk = worldToIjk(volumeNode, corners)
        lo, hi = ijk.min(axis=0), ijk.max(axis=0)
        size = np.array(volumeNode.GetImageData().GetDimensions(), dtype=float)
        sliceIndex = int(np.rint((lo[axis] + hi[axis]) / 2))
        if np.any(hi < -0.5) or np.any(lo > size - 0.5) or not 0 <= sliceIndex < size[axis]:
            raise PromptError(f"the box lies outside the volume '{volumeNode.GetName()}': nothing was changed")
        warnings = []
        inplane = [a for a in range(3) if a != axis]
        clippedLo, clippedHi = np.maximum(lo, 0.0), np.minimum(hi, size - 1.0)
        if np.any(clippedLo[inplane] != lo[inplane]) or np.any(clippedHi[inplane] != hi[inplane]):
            warnings.append("the box reached beyond the volume and was clipped to it")
        lo, hi = clippedLo, clippedHi
        if np.any(np.rint(hi[inplane]) - np.rint(lo[inplane]) < 1):
            raise PromptError("the box is less than 2 voxels wide on its slice: drag two opposite corners")
        lo[axis] = hi[axis] = sliceIndex
        description = f"box in 3D on {'ijk'[axis]}={sliceIndex}"
        return self._edit3D(
            volumeNode,
            segmentationNode,
            segmentName,
            dict(axis=axis, box=np.stack([lo, hi]), sliceIndex=sliceIndex),
            description,
            waitForCompletion,
            progressCallback,
            warnings,
        )

    # -- the common path ----------------------------------------------------------------------
    def _edit3D(
        self, volumeNode, segmentationNode, segmentName, prompt: dict, description, wait, progress, warnings=()
    ):
        from LiverKidneySegLib.logic import PendingEdit
        from lkseg.progress import CancelToken

        if prompt["axis"] not in (0, 1, 2):
            raise PromptError(f"axis must be 0 (i), 1 (j) or 2 (k), got {prompt['axis']!r}")
        # a 3D edit ends any one-slice interaction: the next one-slice prompt combines with the
        # segment as this edit leaves it, never with the slice as it was before its first prompt
        self.endRefineInteraction()
        volume = self.volume(volumeNode)
        volumeKey = self._volumeKey(volumeNode)
        segmentId = self._segmentId(segmentationNode, segmentName)
        structure = segmentStructureName(segmentationNode.GetSegmentation().GetSegment(segmentId))
        refiner = self.refiner
        engine = refiner.engine
        key = (segmentationNode.GetID(), segmentId, structure, prompt["axis"])
        pending = self._pending3D.get(key)
        if pending is not None and pending.result is None and not pending.done():
            raise RuntimeError(f"a 3D edit of '{segmentName}' is still running: wait for it (or cancel it) first")
        engine.noteVolume(volumeKey)  # a new volume drops the sessions (before they are looked up)
        states = engine.sessionStates
        fingerprint = segmentFingerprint(segmentationNode, segmentId)
        known = states.pop(key, None)  # unknown while this edit runs: a failed edit re-reads next time
        initial = (
            None
            if known is not None and known == fingerprint
            else segmentMask(segmentationNode, segmentId, volume.grid)
        )
        drop = []
        while len(states) >= engine.maxSessions:
            drop.append(states.popitem(last=False)[0])
        cancel = CancelToken()
        request = Edit3DRequest(
            key, structure=structure, initial=initial, drop=tuple(drop), progress=progress, cancel=cancel, **prompt
        )

        def apply(outcome: Edit3DOutcome) -> RefineResult:
            return self._apply3D(segmentationNode, segmentId, volume, key, fingerprint, outcome, description, warnings)

        pending = PendingEdit(engine.edit3D(volume, volumeKey, request), apply, cancel)
        self._pending3D[key] = pending
        return pending.finish() if wait else pending

    def _apply3D(
        self, segmentationNode, segmentId, volume, key, submitted, outcome: Edit3DOutcome, description, warnings
    ) -> RefineResult:
        """Main thread: write the click's changed voxels into the segment as one undo step."""
        states = self.refiner.engine.sessionStates
        warnings = [*warnings, *outcome.warnings]
        unchanged = segmentFingerprint(segmentationNode, segmentId) == submitted
        if outcome.region is None:
            if unchanged:
                states[key] = submitted
            if not outcome.warnings:
                warnings.append("the click changed nothing")
            return RefineResult(segmentId, 0, description, warnings, None)
        region = outcome.region
        grid = volume.grid
        current = segmentMask(segmentationNode, segmentId, grid)
        block = current[region].copy()
        changed = outcome.before != outcome.after
        newBlock = block.copy()
        newBlock[changed] = outcome.after[changed]  # voxels this click did not change keep their value
        if not unchanged:
            warnings.append(
                "the segment was edited while the click was computed: only the voxels it changed were written"
            )
        rules = self.editRules
        if rules is not None and not rules.unrestricted:
            from LiverKidneySegLib.editrules import applyEditRules, editableMask

            editable, protected = editableMask(rules, segmentationNode, segmentId, volume)
            newBlock = applyEditRules(
                block, newBlock, editable[region], None if protected is None else protected[region]
            )
        edit = self.history.recordRegion(segmentationNode, segmentId, region, block, newBlock, grid, description)
        if edit is not None:
            current[region] = newBlock
            setSegmentMask(segmentationNode, segmentId, current, grid, region=edit.region)  # only what changed
        if unchanged and np.array_equal(newBlock, outcome.after):
            states[key] = segmentFingerprint(segmentationNode, segmentId)  # segment == the worker's session
        return RefineResult(segmentId, 0 if edit is None else edit.changedVoxels, description, warnings, region)
