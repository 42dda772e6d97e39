"""Markups (points and ROI boxes placed in slice views) <-> core voxel prompts (no Qt).

Markups report positions in **world RAS** mm. The prompt refiner works in voxel indices of the
image: a point becomes continuous ``(i, j, k)`` through the volume node's inverse ``IJKToRAS``
(parent transforms included), an ROI becomes the index-space bounding box of its 8 corners.

A 2D prompt lives on one slice of one index axis (``axis`` 0 = i, 1 = j, 2 = k). The slice view a
user clicks in is mapped to the index axis closest to the view's normal, so oblique volumes work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from LiverKidneySegLib.volumes import ijkToWorld, worldToIjk
from lkseg.errors import PromptError

__all__ = [
    "NEGATIVE",
    "POSITIVE",
    "SlicePrompts",
    "arrayPrompts",
    "boxToRoi",
    "checkPromptsInsideVolume",
    "controlPointsWorld",
    "createPromptNode",
    "pointPrompts",
    "pointsToMarkups",
    "roiCornersWorld",
    "roiIjkBox",
    "sliceAxisForNormal",
    "sliceAxisForPoint",
    "sliceForPoint",
    "slicePrompts",
]

log = logging.getLogger(__name__)

POSITIVE, NEGATIVE = 1, 0


@dataclass
class SlicePrompts:
    """Prompts on one slice, in voxel indices of the image.

    Attributes:
        axis: index axis normal to the slice: 0 = i, 1 = j, 2 = k (ZYX array axis ``2 - axis``).
        sliceIndex: index of the slice along ``axis``.
        points: (N, 3) continuous (i, j, k) indices of the points (all on the slice).
        labels: (N,) 1 for positive (include) and 0 for negative (exclude) points.
        box: ``(lo, hi)`` continuous (i, j, k) bounds of a box, or None.
    """

    axis: int
    sliceIndex: int
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))
    box: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def empty(self) -> bool:
        return len(self.points) == 0 and self.box is None


def controlPointsWorld(markupsNode, definedOnly: bool = True) -> np.ndarray:
    """(N, 3) world RAS mm of a markups node's control points (placed points only by default)."""
    if markupsNode is None:
        return np.zeros((0, 3))
    points = []
    for index in range(markupsNode.GetNumberOfControlPoints()):
        if definedOnly and markupsNode.GetNthControlPointPositionStatus(index) != markupsNode.PositionDefined:
            continue
        position = [0.0, 0.0, 0.0]
        markupsNode.GetNthControlPointPositionWorld(index, position)
        points.append(position)
    return np.array(points, dtype=np.float64).reshape(-1, 3)


def pointPrompts(volumeNode, positiveNode=None, negativeNode=None) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative point lists -> ``(ijk (N, 3) float, labels (N,) int)`` (positives first)."""
    positive = worldToIjk(volumeNode, controlPointsWorld(positiveNode))
    negative = worldToIjk(volumeNode, controlPointsWorld(negativeNode))
    labels = np.r_[np.full(len(positive), POSITIVE), np.full(len(negative), NEGATIVE)].astype(np.int64)
    return np.vstack([positive, negative]).reshape(-1, 3), labels


def roiCornersWorld(roiNode) -> np.ndarray:
    """(8, 3) world RAS mm corners of a markups ROI (its orientation included)."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    matrix.DeepCopy(roiNode.GetObjectToWorldMatrix())
    objectToWorld = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    radius = np.array(roiNode.GetSize(), dtype=np.float64) / 2.0
    corners = np.array([[sx, sy, sz, 1.0] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    corners[:, :3] *= radius
    return (corners @ objectToWorld.T)[:, :3]


def roiIjkBox(volumeNode, roiNode) -> tuple[np.ndarray, np.ndarray]:
    """Continuous (i, j, k) bounds ``(lo, hi)`` of an ROI's corners in the volume's index space."""
    if roiNode is None or roiNode.GetNumberOfControlPoints() == 0:
        raise PromptError("the box (ROI) has not been placed")
    ijk = worldToIjk(volumeNode, roiCornersWorld(roiNode))
    return ijk.min(axis=0), ijk.max(axis=0)


def sliceAxisForNormal(volumeNode, normalRas) -> int:
    """Index axis (0 = i, 1 = j, 2 = k) most parallel to a slice view's normal (world RAS)."""
    from LiverKidneySegLib.volumes import ijkToRasMatrix, parentTransformMatrix

    axes = (parentTransformMatrix(volumeNode) @ ijkToRasMatrix(volumeNode))[:3, :3]
    axes = axes / np.linalg.norm(axes, axis=0)
    normal = np.asarray(normalRas, dtype=np.float64)
    return int(np.argmax(np.abs(normal @ axes)))


def sliceAxisForPoint(volumeNode, rasWorld, sliceNodes, default: int = 2) -> int:
    """Index axis of the slice view a point was placed in.

    The view is the slice node (``vtkMRMLSliceNode``, visible in the layout when that is known)
    whose plane passes closest to the point; its normal is mapped with
    :func:`sliceAxisForNormal`. ``default`` when no slice node is given.
    """
    point = np.asarray(rasWorld, dtype=np.float64).reshape(3)
    best, bestDistance = None, np.inf
    for sliceNode in sliceNodes:
        if hasattr(sliceNode, "IsMappedInLayout") and not sliceNode.IsMappedInLayout():
            continue
        matrix = sliceNode.GetSliceToRAS()
        sliceToRas = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
        normal = sliceToRas[:3, 2] / np.linalg.norm(sliceToRas[:3, 2])
        distance = abs(float(np.dot(point - sliceToRas[:3, 3], normal)))
        if distance < bestDistance:
            best, bestDistance = normal, distance
    return default if best is None else sliceAxisForNormal(volumeNode, best)


def sliceForPoint(volumeNode, rasWorld, sliceNodes, default: int = 2) -> tuple[int, int]:
    """``(axis, sliceIndex)`` of the slice a point was placed on (see :func:`sliceAxisForPoint`)."""
    axis = sliceAxisForPoint(volumeNode, rasWorld, sliceNodes, default)
    return axis, int(np.rint(worldToIjk(volumeNode, np.asarray(rasWorld, dtype=np.float64).reshape(3))[axis]))


def slicePrompts(
    volumeNode,
    axis: int,
    positiveNode=None,
    negativeNode=None,
    roiNode=None,
    sliceIndex: int | None = None,
) -> SlicePrompts:
    """Collect the prompts of one slice.

    Args:
        volumeNode: the image the prompts refer to.
        axis: index axis normal to the slice (see :func:`sliceAxisForNormal`).
        positiveNode, negativeNode: point lists (``vtkMRMLMarkupsFiducialNode``), or None.
        roiNode: a ``vtkMRMLMarkupsROINode`` box, or None.
        sliceIndex: the slice; default: the slice of the last point placed (positive list last
            point, else negative), else the ROI centre's slice.

    Returns:
        :class:`SlicePrompts` with only the points lying on that slice (others are ignored).

    Raises:
        PromptError: no prompt at all, or the slice lies outside the volume.
    """
    if axis not in (0, 1, 2):
        raise PromptError(f"axis must be 0 (i), 1 (j) or 2 (k), got {axis!r}")
    ijk, labels = pointPrompts(volumeNode, positiveNode, negativeNode)
    box = roiIjkBox(volumeNode, roiNode) if roiNode is not None and roiNode.GetNumberOfControlPoints() else None
    if sliceIndex is None:
        lastPositive = worldToIjk(volumeNode, controlPointsWorld(positiveNode))
        lastNegative = worldToIjk(volumeNode, controlPointsWorld(negativeNode))
        if len(lastPositive):
            sliceIndex = int(np.rint(lastPositive[-1, axis]))
        elif len(lastNegative):
            sliceIndex = int(np.rint(lastNegative[-1, axis]))
        elif box is not None:
            sliceIndex = int(np.rint((box[0][axis] + box[1][axis]) / 2))
        else:
            raise PromptError("place at least one point or a box first")
    size = volumeNode.GetImageData().GetDimensions()
    if not 0 <= sliceIndex < size[axis]:
        raise PromptError(f"slice {sliceIndex} is outside the volume (0..{size[axis] - 1} along axis {'ijk'[axis]})")
    onSlice = np.rint(ijk[:, axis]) == sliceIndex if len(ijk) else np.zeros(0, dtype=bool)
    if len(ijk) and not onSlice.all():
        log.debug("ignoring %d point(s) not on slice %d", int((~onSlice).sum()), sliceIndex)
    if box is not None and not box[0][axis] - 0.5 <= sliceIndex <= box[1][axis] + 0.5:
        box = None
    return SlicePrompts(axis, int(sliceIndex), ijk[onSlice], labels[onSlice], box)


def arrayPrompts(volumeNode, positive, negative, box, axis: int, sliceIndex: int | None = None) -> SlicePrompts:
    """Prompts of one slice from (N, 3) world-RAS point arrays and a box given as world-RAS corners
    ((2, 3) opposite corners or the (8, 3) corners of an oriented box); see :func:`slicePrompts`."""
    if axis not in (0, 1, 2):
        raise PromptError(f"axis must be 0 (i), 1 (j) or 2 (k), got {axis!r}")

    def ijk(points):
        return worldToIjk(
            volumeNode, np.asarray(points if points is not None else np.zeros((0, 3)), float).reshape(-1, 3)
        )

    pos, neg = ijk(positive), ijk(negative)
    boxIjk = None
    if box is not None:
        corners = ijk(box)
        if len(corners) < 2:
            raise PromptError("a box needs two opposite corners")
        boxIjk = (corners.min(axis=0), corners.max(axis=0))
    points = np.vstack([pos, neg])
    labels = np.r_[np.full(len(pos), POSITIVE), np.full(len(neg), NEGATIVE)].astype(np.int64)
    if sliceIndex is None:
        if len(points):
            sliceIndex = int(np.rint(points[len(pos) - 1 if len(pos) else -1, axis]))
        elif boxIjk is not None:
            sliceIndex = int(np.rint((boxIjk[0][axis] + boxIjk[1][axis]) / 2))
        else:
            raise PromptError("give at least one point or a box")
    if boxIjk is not None and not boxIjk[0][axis] - 0.5 <= sliceIndex <= boxIjk[1][axis] + 0.5:
        boxIjk = None  # the box lies on other slices
    onSlice = np.rint(points[:, axis]) == sliceIndex
    return SlicePrompts(axis, int(sliceIndex), points[onSlice], labels[onSlice], boxIjk)


def checkPromptsInsideVolume(volumeNode, prompts: SlicePrompts) -> None:
    """A clear error for a prompt outside the volume (e.g. placed on another volume's slice)."""
    size = np.array(volumeNode.GetImageData().GetDimensions(), dtype=float)
    if not 0 <= prompts.sliceIndex < size[prompts.axis]:
        raise PromptError(
            f"the prompt lies on slice {prompts.sliceIndex}, outside the volume "
            f"(0..{int(size[prompts.axis]) - 1} along axis {'ijk'[prompts.axis]})"
        )
    outside = [p for p in prompts.points if np.any(p < -0.5) or np.any(p > size - 0.5)]
    if outside:
        raise PromptError(f"{len(outside)} point(s) lie outside the volume '{volumeNode.GetName()}'")
    if prompts.box is not None:
        lo, hi = prompts.box
        if np.any(hi < -0.5) or np.any(lo > size - 0.5):
            raise PromptError(f"the box lies outside the volume '{volumeNode.GetName()}'")


#: Prompt roles -> (markups class, node name, colour RGB 0..1).
PROMPT_ROLES = {
    "positivePoints": ("vtkMRMLMarkupsFiducialNode", "LKS positive", (0.1, 0.9, 0.2)),
    "negativePoints": ("vtkMRMLMarkupsFiducialNode", "LKS negative", (0.95, 0.15, 0.15)),
    "promptBox": ("vtkMRMLMarkupsROINode", "LKS box", (1.0, 0.85, 0.1)),
}


def createPromptNode(scene, role: str):
    """A new, coloured point list ("positivePoints", "negativePoints") or ROI ("promptBox")."""
    className, name, color = PROMPT_ROLES[role]
    node = scene.AddNewNodeByClass(className, name)
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is not None:
        display.SetSelectedColor(color)
        display.SetColor(color)
    return node


def pointsToMarkups(volumeNode, ijk: np.ndarray, markupsNode=None, *, scene=None, name: str = "Points"):
    """Put (N, 3) (i, j, k) indices of ``volumeNode`` into a point list (world RAS); returns the node."""
    import slicer

    if markupsNode is None:
        scene = scene or volumeNode.GetScene() or slicer.mrmlScene
        markupsNode = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    for ras in ijkToWorld(volumeNode, np.asarray(ijk, dtype=np.float64).reshape(-1, 3)):
        markupsNode.AddControlPointWorld(*[float(v) for v in ras])
    return markupsNode


def boxToRoi(volumeNode, lo, hi, roiNode=None, *, scene=None, name: str = "Box"):
    """A markups ROI covering the (i, j, k) box ``lo..hi``, oriented along the volume's axes."""
    import slicer
    import vtk

    from LiverKidneySegLib.volumes import ijkToRasMatrix, parentTransformMatrix

    if roiNode is None:
        scene = scene or volumeNode.GetScene() or slicer.mrmlScene
        roiNode = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", name)
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    matrix = parentTransformMatrix(volumeNode) @ ijkToRasMatrix(volumeNode)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    rotation = matrix[:3, :3] / spacing
    center = ijkToWorld(volumeNode, (lo + hi) / 2)
    objectToNode = np.eye(4)
    objectToNode[:3, :3] = rotation
    objectToNode[:3, 3] = center
    vtkMatrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            vtkMatrix.SetElement(r, c, float(objectToNode[r, c]))
    roiNode.GetObjectToNodeMatrix().DeepCopy(vtkMatrix)
    roiNode.SetSize(*[float(v) for v in np.abs(hi - lo) * spacing])
    return roiNode
