"""Segments -> closed surfaces, model nodes in a subject-hierarchy folder, and mesh files (no Qt).

Surfaces are made by Slicer's own binary-labelmap -> closed-surface converter (smoothing factor
0..1), so what is exported is exactly what the 3D view shows. Files are written in LPS (the
convention of STL/OBJ files from Slicer) or RAS on request.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from lkseg.errors import InputError

__all__ = [
    "createClosedSurface",
    "ensureSubjectHierarchyItem",
    "exportSegmentsToFiles",
    "exportSegmentsToModels",
    "segmentIdsOf",
]

log = logging.getLogger(__name__)

CLOSED_SURFACE = "Closed surface"
_FORMATS = {"STL": ".stl", "OBJ": ".obj"}


def segmentIdsOf(segmentationNode, segmentIds: Iterable[str] | None = None) -> list[str]:
    """The given segment IDs (checked to exist), or all segment IDs in order."""
    segmentation = segmentationNode.GetSegmentation()
    if segmentIds is None:
        return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    ids = list(segmentIds)
    missing = [s for s in ids if segmentation.GetSegment(s) is None]
    if missing:
        raise InputError(f"segmentation '{segmentationNode.GetName()}' has no segment(s) {missing}")
    return ids


def _stringArray(values: Iterable[str]):
    import vtk

    array = vtk.vtkStringArray()
    for value in values:
        array.InsertNextValue(value)
    return array


def createClosedSurface(segmentationNode, smoothingFactor: float | None = 0.5) -> bool:
    """Create (or recreate) the closed-surface representation of all segments.

    Args:
        segmentationNode: source segmentation (binary labelmap source representation).
        smoothingFactor: 0 (none) .. 1 (strong); None keeps the segmentation's setting.

    Returns:
        True when the representation exists afterwards.
    """
    segmentation = segmentationNode.GetSegmentation()
    if smoothingFactor is not None:
        if not 0.0 <= smoothingFactor <= 1.0:
            raise InputError(f"smoothing factor must be in 0..1, got {smoothingFactor}")
        segmentation.SetConversionParameter("Smoothing factor", str(float(smoothingFactor)))
        segmentation.RemoveRepresentation(CLOSED_SURFACE)  # rebuild with the new factor
    ok = bool(segmentationNode.CreateClosedSurfaceRepresentation())
    if segmentationNode.GetDisplayNode() is not None:
        segmentationNode.GetDisplayNode().SetPreferredDisplayRepresentationName3D(CLOSED_SURFACE)
    return ok and segmentation.ContainsRepresentation(CLOSED_SURFACE)


def ensureSubjectHierarchyItem(node) -> int:
    """The subject-hierarchy item of ``node``, created under the scene item when missing
    (slicer-core has no Qt plugins that would create it)."""
    scene = node.GetScene()
    shNode = scene.GetSubjectHierarchyNode()
    itemId = shNode.GetItemByDataNode(node)
    if not itemId:
        itemId = shNode.CreateItem(shNode.GetSceneItemID(), node)
    return itemId


def exportSegmentsToModels(
    segmentationNode, segmentIds: Iterable[str] | None = None, folderName: str | None = None
) -> list:
    """Export segments as model nodes into a new subject-hierarchy folder.

    Args:
        segmentationNode: source segmentation.
        segmentIds: segments to export (default all).
        folderName: name of the folder (default "<segmentation name> models").

    Returns:
        The created ``vtkMRMLModelNode`` s, in segment order.
    """
    import slicer

    ids = segmentIdsOf(segmentationNode, segmentIds)
    if not ids:
        raise InputError(f"segmentation '{segmentationNode.GetName()}' has no segments to export")
    createClosedSurface(segmentationNode, None)
    scene = segmentationNode.GetScene()
    shNode = scene.GetSubjectHierarchyNode()
    parentItem = shNode.GetItemParent(ensureSubjectHierarchyItem(segmentationNode)) or shNode.GetSceneItemID()
    folderItem = shNode.CreateFolderItem(parentItem, folderName or f"{segmentationNode.GetName()} models")
    before = {
        scene.GetNthNodeByClass(i, "vtkMRMLModelNode").GetID()
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLModelNode"))
    }
    if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToModels(
        segmentationNode, _stringArray(ids), folderItem
    ):
        raise RuntimeError(f"exporting segments of '{segmentationNode.GetName()}' to models failed")
    created = [
        node
        for node in (
            scene.GetNthNodeByClass(i, "vtkMRMLModelNode")
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLModelNode"))
        )
        if node.GetID() not in before
    ]
    for node in created:  # without Slicer's Qt plugins the model nodes have no items yet
        itemId = shNode.GetItemByDataNode(node)
        if not itemId:
            shNode.CreateItem(folderItem, node)
        elif shNode.GetItemParent(itemId) != folderItem:
            shNode.SetItemParent(itemId, folderItem)
    names = [segmentationNode.GetSegmentation().GetSegment(s).GetName() for s in ids]
    created.sort(key=lambda node: names.index(node.GetName()) if node.GetName() in names else len(names))
    return created


def _safeFileName(text: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_. " else "_" for c in text).strip()
    return cleaned or "segment"


def _segmentPolyData(segmentationNode, segmentId: str, lps: bool):
    import slicer
    import vtk

    polyData = vtk.vtkPolyData()
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentClosedSurfaceRepresentation(
        segmentationNode, segmentId, polyData, True
    )
    if not lps:
        return polyData
    transform = vtk.vtkTransform()
    transform.Scale(-1.0, -1.0, 1.0)  # RAS -> LPS is a 180 degree rotation: triangle winding is kept
    transformer = vtk.vtkTransformPolyDataFilter()
    transformer.SetTransform(transform)
    transformer.SetInputData(polyData)
    transformer.Update()
    return transformer.GetOutput()


def _writeMesh(polyData, path: Path, fmt: str) -> None:
    import vtk

    from lkseg.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        writer = vtk.vtkSTLWriter() if fmt == "STL" else vtk.vtkOBJWriter()
        if fmt == "STL":
            writer.SetFileTypeToBinary()
        writer.SetFileName(str(tmp))
        writer.SetInputData(polyData)
        if not writer.Write() or not tmp.exists():
            raise RuntimeError(f"could not write {path}")


def exportSegmentsToFiles(
    segmentationNode,
    folder: str | Path,
    fileFormat: str = "STL",
    segmentIds: Iterable[str] | None = None,
    *,
    lps: bool = True,
    merge: bool = False,
) -> list[Path]:
    """Write segments' closed surfaces as STL or OBJ files into ``folder`` (atomically).

    Files are named ``<segmentation>_<segment>.<ext>`` (``<segmentation>.<ext>`` when merged).

    Args:
        segmentationNode: source segmentation.
        folder: output folder (created).
        fileFormat: "STL" or "OBJ".
        segmentIds: segments to write (default all; an empty selection is an error).
        lps: write LPS coordinates (Slicer's default for mesh files) instead of RAS.
        merge: one file with all segments instead of one file per segment.

    Returns:
        The written files.
    """
    import vtk

    fmt = fileFormat.upper()
    if fmt not in _FORMATS:
        raise InputError(f"unsupported mesh format {fileFormat!r}; use STL or OBJ")
    ids = segmentIdsOf(segmentationNode, segmentIds)
    if not ids:
        raise InputError(f"no segments selected to export from '{segmentationNode.GetName()}'")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not createClosedSurface(segmentationNode, None):
        raise RuntimeError(f"no closed surface could be made for '{segmentationNode.GetName()}'")
    base = _safeFileName(segmentationNode.GetName())
    segmentation = segmentationNode.GetSegmentation()
    meshes = [(segmentation.GetSegment(s).GetName(), _segmentPolyData(segmentationNode, s, lps)) for s in ids]
    written = []
    if merge:
        append = vtk.vtkAppendPolyData()
        for _, polyData in meshes:
            append.AddInputData(polyData)
        append.Update()
        meshes = [(None, append.GetOutput())]
    for name, polyData in meshes:
        path = folder / (f"{base}{_FORMATS[fmt]}" if name is None else f"{base}_{_safeFileName(name)}{_FORMATS[fmt]}")
        _writeMesh(polyData, path, fmt)
        written.append(path)
    log.info("wrote %d %s file(s) to %s", len(written), fmt, folder)
    return written
