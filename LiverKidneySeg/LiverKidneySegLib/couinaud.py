"""Couinaud segments in MRML: landmarks as markups point lists, segments as a segmentation node.

* :func:`landmarksFromMarkups` — a point list whose control points are labelled ``IVC...``,
  ``PB``, ``RHV...``, ``MHV...``, ``LHV...`` (world RAS, parent transforms applied) ->
  :class:`lkseg.planning.CouinaudLandmarks`;
* :func:`landmarksToMarkups` — the reverse, to show proposed landmarks for the user to move;
* :func:`landmarkTemplate` — a point list of unplaced, labelled landmarks that the user places
  in order (Slicer fills the next unplaced point on each click);
* :func:`transformLandmarks` — landmarks through a 4x4 RAS matrix (world <-> a volume's own RAS);
* :func:`proposeLandmarks` — landmarks proposed from ``hepatic_vein`` / ``portal_vein`` (and
  ``inferior_vena_cava``) segments, in the volume's own RAS;
* :func:`couinaudToSegmentation` — a :class:`lkseg.planning.CouinaudResult` label map -> one
  segment per Couinaud segment (coloured per segment) in a segmentation node.

The computation itself is the core's (:func:`lkseg.planning.couinaud_segments`,
:func:`lkseg.planning.propose_landmarks`). Point lists hold **world** RAS (parent transforms
applied); the core works in the **volume's own RAS** (its ``IJKToRAS``): convert with
:func:`transformLandmarks` and ``LiverKidneySegLib.volumes.parentTransformMatrix``.
"""

from __future__ import annotations

import logging

import numpy as np

from LiverKidneySegLib.markups import controlPointsWorld
from LiverKidneySegLib.segmentations import maskToOrientedImage, setReferenceGeometry
from lkseg.errors import InputError
from lkseg.planning.couinaud import SEGMENT_NAMES
from lkseg.planning.landmarks import CouinaudLandmarks

__all__ = [
    "LABEL_PREFIX",
    "VESSEL_STRUCTURES",
    "CouinaudLogicMixin",
    "checkCouinaudPlanning",
    "couinaudSegmentName",
    "couinaudToSegmentation",
    "hasVesselSegments",
    "landmarkTemplate",
    "landmarksFromMarkups",
    "landmarksToMarkups",
    "proposeLandmarks",
    "transformLandmarks",
]

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


def landmarkTemplate(pointListNode=None, *, scene=None, name: str = "Couinaud landmarks", pointsPerVein: int = 2):
    """Fill a point list (created in ``scene`` when not given) with **unplaced** control points
    labelled IVC-1, IVC-2, PB, RHV-1.., MHV-1.., LHV-1.. (vein points from the IVC outward): in
    place mode Slicer puts each click on the next unplaced point, so the user places them in
    order. Unplaced points are ignored by :func:`landmarksFromMarkups`."""
    if pointsPerVein < 1:
        raise InputError("each hepatic vein needs at least one landmark point")
    if pointListNode is None:
        if scene is None:
            raise InputError("give a point list node or a scene to create it in")
        pointListNode = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    labels = ["IVC-1", "IVC-2", "PB"]
    for prefix in ("RHV", "MHV", "LHV"):
        labels += [f"{prefix}-{n}" for n in range(1, pointsPerVein + 1)]
    wasModifying = pointListNode.StartModify()
    try:
        pointListNode.RemoveAllControlPoints()
        for label in labels:
            index = pointListNode.AddControlPoint(0.0, 0.0, 0.0, label)
            pointListNode.UnsetNthControlPointPosition(index)
    finally:
        pointListNode.EndModify(wasModifying)
    return pointListNode


def transformLandmarks(landmarks: CouinaudLandmarks, matrix: np.ndarray, source: str | None = None):
    """``landmarks`` with every point mapped by the 4x4 RAS matrix ``matrix`` (identity: the same
    object). E.g. world -> a volume's own RAS: ``inv(parentTransformMatrix(volumeNode))``."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if np.allclose(matrix, np.eye(4)) and source is None:
        return landmarks
    data = landmarks.to_dict()

    def mapped(points):
        arr = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return (arr @ matrix[:3, :3].T + matrix[:3, 3]).tolist()

    for key in LABEL_PREFIX:
        data[key] = mapped(data[key])
    data["portal_bifurcation"] = data["portal_bifurcation"][0]
    if source is not None:
        data["source"] = source
    return CouinaudLandmarks.from_dict(data)


#: Segments from which landmarks can be proposed (the first two are needed).
VESSEL_STRUCTURES = ("hepatic_vein", "portal_vein", "inferior_vena_cava")


_VESSEL_ALIASES = {"inferior_vena_cava": {"inferior_vena_cava", "ivc", "vena_cava_inferior"}}


def _vesselSegmentId(segmentationNode, structure: str) -> str | None:
    """ID of the first segment that is ``structure`` (structure tag/name, or segment name such
    as "Inferior vena cava", "IVC"; case and spaces ignored)."""
    from LiverKidneySegLib.segmentations import segmentStructureName

    wanted = _VESSEL_ALIASES.get(structure, {structure})
    segmentation = segmentationNode.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        names = {segmentStructureName(segment), segment.GetName()}
        if {n.strip().lower().replace(" ", "_") for n in names} & wanted:
            return segmentation.GetNthSegmentID(index)
    return None


def hasVesselSegments(segmentationNode) -> bool:
    """True when the segmentation has hepatic_vein and portal_vein segments (to propose from)."""
    if segmentationNode is None:
        return False
    return all(_vesselSegmentId(segmentationNode, s) for s in VESSEL_STRUCTURES[:2])


def proposeLandmarks(volumeNode, segmentationNode) -> CouinaudLandmarks:
    """Landmarks proposed by the core from the segmentation's vessel segments, in the **volume's
    own RAS** (the frame :func:`lkseg.planning.run_plan` uses on this volume's grid).

    Raises:
        InputError: no hepatic_vein or portal_vein segment (or the core cannot find three veins).
    """
    from LiverKidneySegLib.segmentations import segmentMask
    from LiverKidneySegLib.volumes import gridFromNode
    from lkseg.planning import propose_landmarks

    if volumeNode is None or segmentationNode is None:
        raise InputError("select the CT and its segmentation to propose Couinaud landmarks")
    grid = gridFromNode(volumeNode)
    masks = {}
    for structure in VESSEL_STRUCTURES:
        segmentId = _vesselSegmentId(segmentationNode, structure)
        masks[structure] = segmentMask(segmentationNode, segmentId, grid) if segmentId else None
    missing = [s for s in VESSEL_STRUCTURES[:2] if masks[s] is None or not masks[s].any()]
    if missing:
        raise InputError(
            f"segmentation '{segmentationNode.GetName()}' has no (or an empty) {' and '.join(missing)} segment: "
            "place the Couinaud landmarks by hand (New landmark list) instead"
        )
    return propose_landmarks(grid, masks["hepatic_vein"], masks["portal_vein"], masks["inferior_vena_cava"])


def couinaudSegmentName(segment: int) -> str:
    """Segment name used for Couinaud segment ``segment`` (1-8)."""
    return f"Couinaud {segment} ({SEGMENT_NAMES[segment]})"


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
            name = couinaudSegmentName(seg)
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


class CouinaudLogicMixin:
    """The Couinaud part of the module's Logic (``LiverKidneySegLogicBase``; needs its ``scene``)."""

    def _writeCouinaud(self, result, segmentationNode, volumeNode, couinaudSegmentationNode=None):
        """Couinaud segments of a plan result into ``couinaudSegmentationNode`` (created when
        None); the node follows the volume's parent transform (the segments are in its RAS)."""
        node = couinaudSegmentationNode
        if node is None:
            node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{segmentationNode.GetName()} Couinaud")
        if volumeNode.GetParentTransformNode() is not None:  # the segments are in the volume's own RAS
            node.SetAndObserveTransformNodeID(volumeNode.GetParentTransformNode().GetID())
        couinaudToSegmentation(result.couinaud, node, volumeNode)
        return node

    def proposeLandmarks(self, volumeNode, segmentationNode, pointListNode=None):
        """Couinaud landmarks proposed from the segmentation's hepatic_vein and portal_vein (and
        inferior_vena_cava) segments, written into ``pointListNode`` (created when None) as
        labelled control points (world RAS) that the user can move; returns the point list.

        Raises:
            InputError: no vessel segments, or the core cannot find the three hepatic veins.
        """
        from LiverKidneySegLib.volumes import parentTransformMatrix

        local = proposeLandmarks(volumeNode, segmentationNode)
        world = transformLandmarks(local, parentTransformMatrix(volumeNode))
        node = landmarksToMarkups(world, pointListNode, scene=self.scene)
        node.SetDescription(world.source)
        return node


def checkCouinaudPlanning(logic, scene, seed: int = 7, size=(128, 128, 60), spacing=(3.2, 3.2, 4.2)) -> dict:
    """Self-test (module's *Reload and Test* and pytest): a phantom CT with organ and vessel
    segments; landmarks proposed from the vessels; a right hepatectomy (segments 5-8) planned
    through ``logic``; the Couinaud segments checked against the phantom's exact segments.

    Returns:
        ``{"dice": [8 per-segment Dice], "flr_percent": ..., "couinaudNode": node}``.

    Raises:
        AssertionError: a check failed (with what was found).
    """
    from LiverKidneySegLib.segmentations import labelMapToSegmentation, segmentMask
    from LiverKidneySegLib.volumes import volumeToNode
    from lkseg.labels import PRODUCT_LABELS, LabelTable
    from lkseg.phantom import DETAILED, PhantomConfig, generate_phantom
    from lkseg.phantom.couinaud import couinaud_truth

    phantom = generate_phantom(PhantomConfig(seed=seed, size_ijk=tuple(size), spacing=tuple(spacing), noise_sd=0.0))
    ct = volumeToNode(phantom.image, scene=scene, name=f"Couinaud phantom CT {seed}")
    vessels = {20: "hepatic_vein", 21: "portal_vein", 22: "inferior_vena_cava"}
    detailed = np.asarray(phantom.labels.array)
    labels = np.asarray(phantom.product_labels().array).copy()
    for value, name in vessels.items():
        labels[detailed == DETAILED[name]] = value
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Couinaud phantom")
    labelMapToSegmentation(
        phantom.labels.with_array(labels),
        LabelTable({**dict(PRODUCT_LABELS.items()), **vessels}),
        segmentation,
        referenceVolumeNode=ct,
        includeEmpty=False,
    )
    assert hasVesselSegments(segmentation), "vessel segments not recognised"
    points = logic.proposeLandmarks(ct, segmentation)
    found = sorted(points.GetNthControlPointLabel(i)[:2] for i in range(points.GetNumberOfControlPoints()))
    assert {"IV", "PB", "RH", "MH", "LH"} <= set(found), f"proposed landmark labels: {found}"
    result, table = logic.plan(ct, segmentation, landmarksNode=points, resectSegments="right_hepatectomy")
    node = logic.lastCouinaudSegmentation
    truth = np.asarray(couinaud_truth(phantom).array)
    dice = []
    for seg in range(1, 9):
        segmentId = node.GetSegmentation().GetSegmentIdBySegmentName(couinaudSegmentName(seg))
        assert segmentId, f"segment {seg} missing in '{node.GetName()}'"
        mask = segmentMask(node, segmentId, phantom.grid)
        dice.append(float(2 * (mask & (truth == seg)).sum() / max(1, mask.sum() + (truth == seg).sum())))
    assert np.mean(dice) >= 0.85, f"mean Dice of the Couinaud segments {np.mean(dice):.3f} < 0.85: {np.round(dice, 3)}"
    assert result.flr is not None and result.flr.to_dict()["resection"]["segments"] == [5, 6, 7, 8]
    assert table.GetNumberOfRows() > 8
    return {"dice": dice, "flr_percent": result.flr.flr_percent, "couinaudNode": node}
