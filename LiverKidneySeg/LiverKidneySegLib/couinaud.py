"""Couinaud segments in MRML: landmarks as markups point lists, segments as a segmentation node.

* :func:`landmarksFromMarkups` — a point list whose control points are labelled ``IVC...``,
  ``PB``, ``RHV...``, ``MHV...``, ``LHV...`` (world RAS, parent transforms applied) ->
  :class:`lkseg.planning.CouinaudLandmarks`;
* :func:`landmarksToMarkups` — the reverse, to show proposed landmarks for the user to move;
* :func:`couinaudToSegmentation` — a :class:`lkseg.planning.CouinaudResult` label map -> one
  segment per Couinaud segment (coloured per segment) in a segmentation node.

The computation itself is the core's (:func:`lkseg.planning.couinaud_segments`).
"""

from __future__ import annotations

import logging

import numpy as np

from LiverKidneySegLib.markups import controlPointsWorld
from LiverKidneySegLib.segmentations import maskToOrientedImage, setReferenceGeometry
from lkseg.errors import InputError
from lkseg.planning.couinaud import SEGMENT_NAMES
from lkseg.planning.landmarks import CouinaudLandmarks

__all__ = ["LABEL_PREFIX", "couinaudToSegmentation", "landmarksFromMarkups", "landmarksToMarkups"]

log = logging.getLogger(__name__)

#: landmark key -> control point label prefix
LABEL_PREFIX = {
    "ivc": "IVC",
    "portal_bifurcation": "PB",
    "right_hepatic_vein": "RHV",
    "middle_hepatic_vein": "MHV",
    "left_hepatic_vein": "LHV",
}


def landmarksFromMarkups(pointListNode) -> CouinaudLandmarks:
    """Couinaud landmarks from one point list node, by control point label prefix.

    Raises:
        InputError: a point without a known prefix, a missing landmark, several PB points.
    """
    if pointListNode is None:
        raise InputError("no Couinaud landmark point list selected")
    positions = controlPointsWorld(pointListNode, definedOnly=False)
    grouped: dict[str, list] = {key: [] for key in LABEL_PREFIX}
    unknown = []
    for index in range(pointListNode.GetNumberOfControlPoints()):
        label = pointListNode.GetNthControlPointLabel(index).strip()
        if pointListNode.GetNthControlPointPositionStatus(index) != pointListNode.PositionDefined:
            continue
        key = next((k for k, p in LABEL_PREFIX.items() if label.upper().startswith(p)), None)
        if key is None:
            unknown.append(label)
            continue
        grouped[key].append(positions[index].tolist())
    if unknown:
        raise InputError(
            f"point(s) {unknown} of '{pointListNode.GetName()}' have no landmark label (IVC, PB, RHV, MHV, LHV)"
        )
    if len(grouped["portal_bifurcation"]) > 1:
        raise InputError(
            f"'{pointListNode.GetName()}' has {len(grouped['portal_bifurcation'])} PB points: give exactly one"
        )
    data = {"coordinate_system": "RAS", "source": f"user (Slicer point list '{pointListNode.GetName()}')", **grouped}
    data["portal_bifurcation"] = grouped["portal_bifurcation"][0] if grouped["portal_bifurcation"] else []
    return CouinaudLandmarks.from_dict(data)


def landmarksToMarkups(
    landmarks: CouinaudLandmarks, pointListNode=None, *, scene=None, name: str = "Couinaud landmarks"
):
    """Write landmarks into a point list (created in ``scene`` when not given), labelled by prefix."""
    if pointListNode is None:
        if scene is None:
            raise InputError("give a point list node or a scene to create it in")
        pointListNode = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    pointListNode.RemoveAllControlPoints()
    for key, prefix in LABEL_PREFIX.items():
        points = [landmarks.portal_bifurcation] if key == "portal_bifurcation" else list(getattr(landmarks, key))
        for n, point in enumerate(points, start=1):
            label = prefix if key == "portal_bifurcation" else f"{prefix}-{n}"
            pointListNode.AddControlPointWorld(*[float(v) for v in point], label)
    return pointListNode


def couinaudToSegmentation(result, segmentationNode, referenceVolumeNode=None) -> list[str]:
    """One segment per non-empty Couinaud segment ("Couinaud 1 (caudate lobe)", ...) sharing
    one labelmap layer; existing segments of the same names are replaced. Returns segment IDs."""
    import slicer

    from lkseg.surfaces.segments import segment_color

    labels = result.labels
    array = np.asarray(labels.array)
    segmentation = segmentationNode.GetSegmentation()
    if referenceVolumeNode is not None or segmentation.GetNumberOfSegments() == 0:
        setReferenceGeometry(segmentationNode, labels.grid, referenceVolumeNode)
    layer = maskToOrientedImage(array, labels.grid, crop=True)
    representation = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    ids = []
    wasModifying = segmentationNode.StartModify()
    try:
        for seg in range(1, 9):
            if not np.any(array == seg):
                continue
            name = f"Couinaud {seg} ({SEGMENT_NAMES[seg]})"
            old = segmentation.GetSegmentIdBySegmentName(name)
            if old:
                segmentation.RemoveSegment(old)
            segment = slicer.vtkSegment()
            segment.SetName(name)
            segment.SetColor(*segment_color(seg))
            segment.SetLabelValue(seg)
            segment.AddRepresentation(representation, layer)
            if not segmentation.AddSegment(segment, f"couinaud_{seg}"):
                raise RuntimeError(f"could not add segment {name!r} to '{segmentationNode.GetName()}'")
            ids.append(segmentation.GetSegmentIdBySegment(segment))
    finally:
        segmentationNode.EndModify(wasModifying)
    if segmentationNode.GetDisplayNode() is None and segmentationNode.GetScene() is not None:
        segmentationNode.CreateDefaultDisplayNodes()
    log.info(
        "wrote %d Couinaud segment(s) into '%s' (landmarks: %s)",
        len(ids),
        segmentationNode.GetName(),
        result.landmarks.source,
    )
    return ids
