"""Volume node <-> core :class:`~lkseg.volume.Volume` adapters (no Qt).

Geometry is carried exactly: Slicer's ``IJKToRAS`` matrix equals the core's
:attr:`~lkseg.volume.Grid.ijk_to_ras`, so the core's LPS origin and direction are the node's RAS
ones with the x and y signs flipped. Arrays are numpy **ZYX** (``array[k, j, i]``) on both sides.

Parent transforms are not hardened: :func:`volumeFromNode` returns the node's own (local)
geometry, and results written back (segmentations) get the same parent transform. Use
:func:`worldToIjk` for points given in world RAS coordinates (markups).
"""

from __future__ import annotations

import logging

import numpy as np

from lkseg.errors import InputError
from lkseg.volume import LPS_TO_RAS, Grid, Volume

__all__ = [
    "gridFromNode",
    "ijkToRasMatrix",
    "ijkToWorld",
    "parentTransformMatrix",
    "setNodeGeometry",
    "volumeFromNode",
    "volumeToNode",
    "worldToIjk",
]

log = logging.getLogger(__name__)

_SCALAR_CLASSES = ("vtkMRMLScalarVolumeNode", "vtkMRMLLabelMapVolumeNode")


def _matrixToNumpy(vtkMatrix) -> np.ndarray:
    return np.array([[vtkMatrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def _numpyToMatrix(array: np.ndarray):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def ijkToRasMatrix(volumeNode) -> np.ndarray:
    """The node's 4x4 ``IJKToRAS`` matrix (local coordinates, mm) as numpy."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return _matrixToNumpy(matrix)


def parentTransformMatrix(node) -> np.ndarray:
    """4x4 local-to-world matrix of the node's parent transforms (identity when none).

    Raises:
        InputError: the node is under a non-linear transform (harden it first).
    """
    transformNode = node.GetParentTransformNode()
    if transformNode is None:
        return np.eye(4)
    if not transformNode.IsTransformToWorldLinear():
        raise InputError(
            f"'{node.GetName()}' is under the non-linear transform '{transformNode.GetName()}'; harden it first"
        )
    import vtk

    matrix = vtk.vtkMatrix4x4()
    transformNode.GetMatrixTransformToWorld(matrix)
    return _matrixToNumpy(matrix)


def gridFromNode(volumeNode) -> Grid:
    """The core :class:`Grid` (ZYX shape, LPS origin/direction) of a volume node's local geometry."""
    image = volumeNode.GetImageData() if volumeNode is not None else None
    if image is None:
        name = volumeNode.GetName() if volumeNode is not None else "None"
        raise InputError(f"volume node '{name}' has no image data")
    dims = image.GetDimensions()
    ijkToRas = ijkToRasMatrix(volumeNode)
    linear = ijkToRas[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0):
        raise InputError(f"volume node '{volumeNode.GetName()}' has a zero spacing: {spacing.tolist()}")
    directionRas = linear / spacing
    return Grid(
        (dims[2], dims[1], dims[0]),
        tuple(spacing),
        tuple(LPS_TO_RAS @ ijkToRas[:3, 3]),
        LPS_TO_RAS @ directionRas,
    )


def volumeFromNode(volumeNode, meta: dict | None = None) -> Volume:
    """Copy a scalar or label-map volume node into a core :class:`Volume`.

    Args:
        volumeNode: ``vtkMRMLScalarVolumeNode`` or ``vtkMRMLLabelMapVolumeNode``.
        meta: extra metadata; ``name`` and ``nodeID`` are always added.

    Returns:
        Volume with a ZYX copy of the voxels and the node's exact local geometry (LPS).

    Raises:
        InputError: no node, no image data, a vector/tensor volume, or non-orthonormal axes.
    """
    if volumeNode is None:
        raise InputError("no input volume node given")
    if not any(volumeNode.IsA(name) for name in _SCALAR_CLASSES):
        raise InputError(f"'{volumeNode.GetName()}' is a {volumeNode.GetClassName()}; a scalar volume is needed")
    grid = gridFromNode(volumeNode)
    image = volumeNode.GetImageData()
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(
            f"'{volumeNode.GetName()}' has {image.GetNumberOfScalarComponents()} components; a scalar CT is needed"
        )
    from vtk.util import numpy_support

    array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(grid.shape).copy()
    info = {"name": volumeNode.GetName(), "nodeID": volumeNode.GetID()}
    info.update(meta or {})
    return Volume(array, grid, info)


def setNodeGeometry(volumeNode, grid: Grid) -> None:
    """Set a volume node's ``IJKToRAS`` from a core :class:`Grid` (exact, oblique included)."""
    volumeNode.SetIJKToRASMatrix(_numpyToMatrix(grid.ijk_to_ras))


def volumeToNode(volume: Volume, volumeNode=None, *, scene=None, name: str | None = None, labelMap: bool = False):
    """Write a core :class:`Volume` into a volume node (created when ``volumeNode`` is None).

    Args:
        volume: the image (ZYX array, LPS geometry).
        volumeNode: an existing scalar or label-map volume node to overwrite.
        scene: scene for a new node (default ``slicer.mrmlScene``).
        name: name of a new node (default ``volume.meta["name"]`` or "Volume").
        labelMap: create a ``vtkMRMLLabelMapVolumeNode`` instead of a scalar volume node.

    Returns:
        The volume node, with display nodes.
    """
    import slicer

    if volumeNode is None:
        scene = scene or slicer.mrmlScene
        className = "vtkMRMLLabelMapVolumeNode" if labelMap else "vtkMRMLScalarVolumeNode"
        volumeNode = scene.AddNewNodeByClass(className, name or volume.meta.get("name", "Volume"))
    array = np.ascontiguousarray(volume.array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    slicer.util.updateVolumeFromArray(volumeNode, array)
    setNodeGeometry(volumeNode, volume.grid)
    if volumeNode.GetScene() is not None and volumeNode.GetDisplayNode() is None:
        volumeNode.CreateDefaultDisplayNodes()
    return volumeNode


def worldToIjk(volumeNode, rasWorld: np.ndarray) -> np.ndarray:
    """Map world RAS points (N, 3) or (3,) in mm to the node's continuous (i, j, k) indices.

    World coordinates are what markups report (``GetNthControlPointPositionWorld``); the parent
    transform of the volume node, if any, is undone first.
    """
    pts = np.asarray(rasWorld, dtype=np.float64)
    flat = pts.reshape(-1, 3)
    worldToIjkMatrix = np.linalg.inv(parentTransformMatrix(volumeNode) @ ijkToRasMatrix(volumeNode))
    homogeneous = np.c_[flat, np.ones(len(flat))]
    return (homogeneous @ worldToIjkMatrix.T)[:, :3].reshape(pts.shape)


def ijkToWorld(volumeNode, ijk: np.ndarray) -> np.ndarray:
    """Map continuous (i, j, k) indices (N, 3) or (3,) to world RAS mm (inverse of :func:`worldToIjk`)."""
    pts = np.asarray(ijk, dtype=np.float64)
    flat = pts.reshape(-1, 3)
    matrix = parentTransformMatrix(volumeNode) @ ijkToRasMatrix(volumeNode)
    homogeneous = np.c_[flat, np.ones(len(flat))]
    return (homogeneous @ matrix.T)[:, :3].reshape(pts.shape)
