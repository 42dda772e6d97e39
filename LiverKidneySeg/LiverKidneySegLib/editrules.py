"""Where a refinement may change voxels: Segment Editor's masking and overwrite settings, applied by
the module's own rules.

LiverKidneySeg writes **only the segment it was asked to edit**; other segments never change
(overlapping voxels go to separate label-map layers). On top of that, an edit is limited to the
editable area the user set in Segment Editor (read from a ``vtkMRMLSegmentEditorNode``):

* mask mode: everywhere, inside/outside all or visible segments, inside one segment;
* source-volume intensity range;
* overwrite mode: where Segment Editor would overwrite other (all / visible) segments,
  LiverKidneySeg instead leaves those voxels to them (no voxel is taken from another segment and
  no overlap is created); with "overwrite none" overlap is allowed.

Voxels outside the editable area keep their current value (neither added nor removed).
Masks are bool numpy ZYX on the CT's grid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MASK_MODES",
    "EditRules",
    "applyEditRules",
    "editableMask",
    "rulesForSegmentation",
    "rulesFromSegmentEditorNode",
]

log = logging.getLogger(__name__)

MASK_MODES = ("everywhere", "insideAll", "insideVisible", "outsideAll", "outsideVisible", "insideSegment")


@dataclass(frozen=True)
class EditRules:
    """The editable area of an edit.

    Attributes:
        maskMode: one of :data:`MASK_MODES`.
        maskSegmentId: the segment of ``maskMode="insideSegment"``.
        intensityRange: ``(low, high)`` HU of the CT where edits are allowed, or None.
        avoidOthers: None (overlap allowed), "all" or "visible": added voxels never lie in those
            other segments.
    """

    maskMode: str = "everywhere"
    maskSegmentId: str | None = None
    intensityRange: tuple[float, float] | None = None
    avoidOthers: str | None = None

    @property
    def unrestricted(self) -> bool:
        return self.maskMode == "everywhere" and self.intensityRange is None and self.avoidOthers is None


def rulesFromSegmentEditorNode(editorNode) -> EditRules:
    """The rules of Segment Editor's current masking/overwrite settings (its parameter node)."""
    import slicer

    if editorNode is None:
        return EditRules()
    seg = slicer.vtkMRMLSegmentationNode
    modes = {
        seg.EditAllowedEverywhere: "everywhere",
        seg.EditAllowedInsideAllSegments: "insideAll",
        seg.EditAllowedInsideVisibleSegments: "insideVisible",
        seg.EditAllowedOutsideAllSegments: "outsideAll",
        seg.EditAllowedOutsideVisibleSegments: "outsideVisible",
        seg.EditAllowedInsideSingleSegment: "insideSegment",
    }
    overwrite = {
        editorNode.OverwriteAllSegments: "all",
        editorNode.OverwriteVisibleSegments: "visible",
        editorNode.OverwriteNone: None,
    }.get(editorNode.GetOverwriteMode())
    intensity = None
    if editorNode.GetSourceVolumeIntensityMask():
        low, high = editorNode.GetSourceVolumeIntensityMaskRange()
        intensity = (float(low), float(high))
    return EditRules(
        modes.get(editorNode.GetMaskMode(), "everywhere"), editorNode.GetMaskSegmentID(), intensity, overwrite
    )


def rulesForSegmentation(scene, segmentationNode) -> EditRules | None:
    """The rules of the Segment Editor that edits ``segmentationNode`` (its parameter node in the
    scene), or None when no Segment Editor is set up on it (edits allowed everywhere)."""
    if scene is None or segmentationNode is None:
        return None
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentEditorNode")):
        editorNode = scene.GetNthNodeByClass(index, "vtkMRMLSegmentEditorNode")
        if editorNode.GetSegmentationNode() is segmentationNode:
            return rulesFromSegmentEditorNode(editorNode)
    return None


def _otherSegments(segmentationNode, segmentId: str, visibleOnly: bool) -> list[str]:
    segmentation = segmentationNode.GetSegmentation()
    display = segmentationNode.GetDisplayNode()
    ids = []
    for index in range(segmentation.GetNumberOfSegments()):
        other = segmentation.GetNthSegmentID(index)
        if other == segmentId:
            continue
        if visibleOnly and display is not None and not display.GetSegmentVisibility(other):
            continue
        ids.append(other)
    return ids


def _union(segmentationNode, segmentIds, grid) -> np.ndarray:
    from LiverKidneySegLib.segmentations import segmentMask

    out = np.zeros(grid.shape, dtype=bool)
    for other in segmentIds:
        out |= segmentMask(segmentationNode, other, grid)
    return out


def editableMask(rules: EditRules, segmentationNode, segmentId: str, volume) -> tuple[np.ndarray, np.ndarray | None]:
    """``(editable, protected)``: where the edit may change voxels, and where it may not add any
    (other segments it must not overlap; None when overlap is allowed). Bool ZYX on the volume grid."""
    from LiverKidneySegLib.segmentations import segmentMask

    grid = volume.grid
    editable = np.ones(grid.shape, dtype=bool)
    mode = rules.maskMode
    if mode in ("insideAll", "outsideAll", "insideVisible", "outsideVisible"):
        union = _union(segmentationNode, _otherSegments(segmentationNode, segmentId, "Visible" in mode), grid)
        editable &= union if mode.startswith("inside") else ~union
    elif mode == "insideSegment":
        if not rules.maskSegmentId or segmentationNode.GetSegmentation().GetSegment(rules.maskSegmentId) is None:
            editable[:] = False  # Segment Editor's rule: no mask segment, nothing editable
        else:
            editable &= segmentMask(segmentationNode, rules.maskSegmentId, grid)
    if rules.intensityRange is not None:
        low, high = rules.intensityRange
        image = np.asarray(volume.array)
        editable &= (image >= low) & (image <= high)
    protected = None
    if rules.avoidOthers is not None:
        protected = _union(
            segmentationNode, _otherSegments(segmentationNode, segmentId, rules.avoidOthers == "visible"), grid
        )
    return editable, protected


def applyEditRules(
    before: np.ndarray, after: np.ndarray, editable: np.ndarray, protected: np.ndarray | None
) -> np.ndarray:
    """``after`` limited to the editable area: voxels outside it keep ``before``; no voxel of
    ``protected`` is added."""
    out = np.where(editable, after, before)
    if protected is not None:
        out &= before | ~protected
    return out
