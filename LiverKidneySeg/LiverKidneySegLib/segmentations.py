"""Label map <-> segmentation node adapters (no Qt).

A core label map (:class:`~lkseg.volume.Volume` of integer labels + a
:class:`~lkseg.labels.LabelTable` naming each value) becomes one segment per structure, with the
structure's display name, colour and SNOMED CT terminology (:mod:`lkseg.labels`), and the
structure's machine name stored in the segment tag :data:`STRUCTURE_TAG`. The segmentation keeps
the label map's voxel grid as its reference geometry, so the way back is voxel-exact.

Existing segments are never overwritten silently: a segment of the same name is replaced only
with ``replaceExisting=True``; otherwise :class:`SegmentExistsError` names the conflicts (the
module asks the user and calls again). Segments with other names are kept.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import numpy as np

from lkseg.errors import InputError
from lkseg.labels import PRODUCT_LABELS, LabelTable, get_structure
from lkseg.volume import Grid, Volume

__all__ = [
    "STRUCTURE_TAG",
    "SegmentExistsError",
    "findSegmentId",
    "gridToOrientedImage",
    "labelMapToSegmentation",
    "maskToOrientedImage",
    "referenceGrid",
    "segmentChoices",
    "segmentMask",
    "segmentStructureName",
    "segmentTerminology",
    "segmentationToLabelMap",
    "setReferenceGeometry",
    "setSegmentMask",
    "setSegmentTerminology",
    "styleSegment",
]

log = logging.getLogger(__name__)

#: Segment tag holding the core structure name (``"kidney_right"``) of a segment.
STRUCTURE_TAG = "LiverKidneySeg.Structure"


class SegmentExistsError(InputError):
    """Segments with the names about to be written already exist in the segmentation.

    Attributes:
        names: the conflicting segment names.
    """

    def __init__(self, names: list[str], segmentationName: str):
        self.names = list(names)
        super().__init__(
            f"segmentation '{segmentationName}' already has segment(s) {', '.join(repr(n) for n in names)}; "
            "pass replaceExisting=True to replace them (segments with other names are kept)"
        )


# -- geometry ----------------------------------------------------------------------------------
def _ijkToRasVtk(grid: Grid):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    ijkToRas = grid.ijk_to_ras
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(ijkToRas[r, c]))
    return matrix


def gridToOrientedImage(grid: Grid, allocate: bool = False):
    """An empty ``vtkOrientedImageData`` with the grid's geometry (extent 0..n-1 on each axis)."""
    import slicer
    import vtk

    image = slicer.vtkOrientedImageData()
    ni, nj, nk = grid.size_ijk
    image.SetExtent(0, ni - 1, 0, nj - 1, 0, nk - 1)
    image.SetImageToWorldMatrix(_ijkToRasVtk(grid))
    if allocate:
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        image.GetPointData().GetScalars().Fill(0)
    return image


def maskToOrientedImage(mask: np.ndarray, grid: Grid, crop: bool = True, region: tuple[slice, ...] | None = None):
    """A ``vtkOrientedImageData`` of a ZYX mask or label array on ``grid``.

    Args:
        mask: bool or integer ZYX array of ``grid.shape``. Bool/0-1 masks become uint8 0/1;
            integer label arrays keep their values (uint8, or uint16 above 255).
        grid: geometry of the array.
        crop: store only the bounding box of the non-zero voxels (an empty mask gets an empty
            extent), which is how Slicer stores segments.
        region: store exactly this ZYX box (zeros included) instead; overrides ``crop``.
    """
    import slicer
    import vtk
    from vtk.util import numpy_support

    mask = np.asarray(mask)
    if mask.shape != grid.shape:
        raise InputError(f"mask shape {mask.shape} does not match the grid shape {grid.shape} (ZYX)")
    image = slicer.vtkOrientedImageData()
    image.SetImageToWorldMatrix(_ijkToRasVtk(grid))
    if region is not None:
        (k0, k1), (j0, j1), (i0, i1) = (
            (r.start or 0, (r.stop if r.stop is not None else n) - 1) for r, n in zip(region, grid.shape)
        )
    elif crop:
        nonzero = np.nonzero(mask)
        if len(nonzero[0]) == 0:
            image.SetExtent(0, -1, 0, -1, 0, -1)
            return image
        k0, j0, i0 = (int(a.min()) for a in nonzero)
        k1, j1, i1 = (int(a.max()) for a in nonzero)
    else:
        (k0, j0, i0), (k1, j1, i1) = (0, 0, 0), (s - 1 for s in grid.shape)
    block = mask[k0 : k1 + 1, j0 : j1 + 1, i0 : i1 + 1]
    if block.dtype == np.bool_ or not np.issubdtype(block.dtype, np.integer):
        block, scalarType = (block != 0).astype(np.uint8), vtk.VTK_UNSIGNED_CHAR
    elif block.size and int(block.max()) > 255:
        block, scalarType = block.astype(np.uint16), vtk.VTK_UNSIGNED_SHORT
    else:
        block, scalarType = block.astype(np.uint8), vtk.VTK_UNSIGNED_CHAR
    image.SetExtent(i0, i1, j0, j1, k0, k1)
    image.AllocateScalars(scalarType, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = np.ascontiguousarray(block).reshape(-1)
    return image


def _orientedImageToMask(image, grid: Grid, labelValue: int | None = None) -> np.ndarray:
    """Bool ZYX mask on ``grid`` of an oriented image (voxels equal to ``labelValue``, or non-zero
    when None), resampled (nearest neighbour) if its geometry differs."""
    import slicer
    from vtk.util import numpy_support

    out = np.zeros(grid.shape, dtype=bool)
    extent = image.GetExtent()
    if (
        extent[1] < extent[0]
        or extent[3] < extent[2]
        or extent[5] < extent[4]
        or image.GetPointData().GetScalars() is None
    ):
        return out
    reference = gridToOrientedImage(grid)
    if not slicer.vtkOrientedImageDataResample.DoGeometriesMatch(reference, image):
        resampled = slicer.vtkOrientedImageData()
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            image, reference, resampled, False
        )
        image = resampled
        extent = image.GetExtent()
    dims = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    scalars = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims)
    block = scalars != 0 if labelValue is None else scalars == labelValue
    # clip the image extent to the grid
    lo = [max(extent[2 * a], 0) for a in range(3)]  # i, j, k
    hi = [min(extent[2 * a + 1], grid.size_ijk[a] - 1) for a in range(3)]
    if any(h < lo_ for lo_, h in zip(lo, hi)):
        return out
    out[lo[2] : hi[2] + 1, lo[1] : hi[1] + 1, lo[0] : hi[0] + 1] = block[
        lo[2] - extent[4] : hi[2] - extent[4] + 1,
        lo[1] - extent[2] : hi[1] - extent[2] + 1,
        lo[0] - extent[0] : hi[0] - extent[0] + 1,
    ]
    return out


def setReferenceGeometry(segmentationNode, grid: Grid, referenceVolumeNode=None) -> None:
    """Make ``grid`` the segmentation's reference geometry (and reference the volume node, if given)."""
    import slicer

    if referenceVolumeNode is not None:
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
        return
    converter = slicer.vtkSegmentationConverter
    geometry = converter.SerializeImageGeometry(gridToOrientedImage(grid))
    segmentationNode.GetSegmentation().SetConversionParameter(
        converter.GetReferenceImageGeometryParameterName(), geometry
    )


def referenceGrid(segmentationNode) -> Grid | None:
    """The segmentation's reference image geometry as a core :class:`Grid` (None when unset)."""
    import slicer

    converter = slicer.vtkSegmentationConverter
    text = segmentationNode.GetSegmentation().GetConversionParameter(converter.GetReferenceImageGeometryParameterName())
    if not text:
        return None
    image = slicer.vtkOrientedImageData()
    if not converter.DeserializeImageGeometry(text, image, False):
        return None
    extent = image.GetExtent()
    import vtk

    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    ijkToRas = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    # shift the origin so that the grid starts at the extent's first voxel
    ijkToRas[:3, 3] = ijkToRas[:3, :3] @ np.array([extent[0], extent[2], extent[4]], float) + ijkToRas[:3, 3]
    spacing = np.linalg.norm(ijkToRas[:3, :3], axis=0)
    shape = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    flip = np.diag([-1.0, -1.0, 1.0])
    return Grid(shape, tuple(spacing), tuple(flip @ ijkToRas[:3, 3]), flip @ (ijkToRas[:3, :3] / spacing))


# -- segments ----------------------------------------------------------------------------------
def segmentStructureName(segment) -> str:
    """Core structure name of a ``vtkSegment``: its :data:`STRUCTURE_TAG`, else the structure
    whose machine or display name matches the segment name (case/space-insensitive), else the one
    its terminology codes name, else the segment name itself."""
    import vtk

    from lkseg.segmentation import find_structure, parse_terminology

    tag = vtk.reference("")
    if segment.GetTag(STRUCTURE_TAG, tag) and str(tag):
        return str(tag)
    name = segment.GetName()
    found = find_structure(name)
    terminology = segmentTerminology(segment)
    if found is None and terminology:
        codes = parse_terminology(terminology)
        generic = codes.get("type") is None or codes["type"].value == "85756007"  # "Tissue" says nothing
        found = None if generic else find_structure(None, codes.get("type"), codes.get("region"))
    return found or name


def findSegmentId(segmentationNode, name: str) -> str | None:
    """ID of the segment called ``name`` (segment name, or core structure / display name)."""
    from lkseg.segmentation import find_structure

    segmentation = segmentationNode.GetSegmentation()
    structure = find_structure(name)
    for index in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segmentId)
        if segment.GetName() == name or (structure is not None and segmentStructureName(segment) == structure):
            return segmentId
    return None


def segmentChoices(segmentationNode, structures: Iterable[str] = PRODUCT_LABELS.values()) -> list[tuple[str, bool]]:
    """Names to offer in a segment picker: ``(name, exists)`` for every existing segment, then the
    display names of ``structures`` that do not exist yet (created on first use)."""
    names = []
    if segmentationNode is not None:
        segmentation = segmentationNode.GetSegmentation()
        names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    missing = [get_structure(s).display for s in structures if get_structure(s).display not in names]
    return [(n, True) for n in names] + [(n, False) for n in missing]


def segmentMask(segmentationNode, segmentId: str, grid: Grid) -> np.ndarray:
    """Bool ZYX mask of one segment on ``grid`` (nearest-neighbour resampling when the
    segmentation's own geometry differs).

    ``grid`` is read in the segmentation node's own (local) coordinates, the frame that
    :func:`setSegmentMask` writes in (Slicer's ``SetBinaryLabelmapToSegment`` modifies the
    segmentation in its local frame); the parent transform is therefore NOT applied here, so a CT
    and its segmentation moved together under one transform still line up voxel for voxel."""
    import slicer

    segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
    if segment is None:
        raise InputError(f"segmentation '{segmentationNode.GetName()}' has no segment with ID {segmentId!r}")
    image = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        segmentationNode, segmentId, image, False
    )
    # segments may share one labelmap layer: keep only this segment's label value
    return _orientedImageToMask(image, grid, segment.GetLabelValue())


def setSegmentMask(
    segmentationNode, segmentId: str, mask: np.ndarray, grid: Grid, region: tuple[slice, ...] | None = None
) -> None:
    """Replace a segment's voxels with ``mask`` (bool ZYX on ``grid``); other segments untouched.

    Args:
        region: only this ZYX box changes (e.g. the slice of a refinement; much faster on large
            volumes); voxels of the segment outside it are kept. None: the whole grid.
    """
    import slicer

    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if region is not None:
        # MODE_REPLACE would clear the segment outside the extent; min then max, both limited to
        # the region, clear and set exactly the region's voxels
        image = maskToOrientedImage(np.asarray(mask, bool), grid, region=region)
        extent = list(image.GetExtent())
        _ownLayer(segmentationNode, segmentId)
        for mode in (logic.MODE_MERGE_MIN, logic.MODE_MERGE_MAX):
            if not logic.SetBinaryLabelmapToSegment(image, segmentationNode, segmentId, mode, extent):
                raise RuntimeError(f"could not write segment {segmentId!r} of '{segmentationNode.GetName()}'")
        return
    image = maskToOrientedImage(np.asarray(mask, bool), grid, crop=True)
    if image.GetPointData().GetScalars() is None:  # empty: a zero image over the whole grid clears it
        image = gridToOrientedImage(grid, allocate=True)
    ni, nj, nk = grid.size_ijk
    extent = [0, ni - 1, 0, nj - 1, 0, nk - 1]
    if not logic.SetBinaryLabelmapToSegment(image, segmentationNode, segmentId, logic.MODE_REPLACE, extent):
        raise RuntimeError(f"could not write segment {segmentId!r} of '{segmentationNode.GetName()}'")


def _ownLayer(segmentationNode, segmentId: str) -> None:
    """Move the segment to a label-map layer of its own when it shares one with other segments.

    ``SetBinaryLabelmapToSegment``'s merge modes on a shared layer can lose the edit (an empty
    segment edited outside the layer's extent) or change the other segments' voxels (an empty
    segment edited inside it); in a layer of its own only this segment can change.
    """
    segmentation = segmentationNode.GetSegmentation()
    shared = []
    segmentation.GetSegmentIDsSharingBinaryLabelmapRepresentation(segmentId, shared, False)
    if shared:
        segmentation.SeparateSegmentLabelmap(segmentId)


def styleSegment(segment, structureName: str, name: str | None = None) -> None:
    """Name (default: the structure's display name), colour, terminology and structure tag of a segment."""
    structure = get_structure(structureName)
    segment.SetName(name or structure.display)
    segment.SetColor(*structure.color)
    segment.SetTag(STRUCTURE_TAG, structure.name)
    setSegmentTerminology(segment, structure.terminology_string())


def segmentTerminology(segment) -> str:
    """The segment's terminology entry string ("" when none).

    ``vtkSegment.GetTerminology`` exists from Slicer 5.10; older Slicer stores the same string in
    the tag named ``vtkSegment.GetTerminologyEntryTagName()``, which every version reads.
    """
    if hasattr(segment, "GetTerminology"):
        return segment.GetTerminology() or ""
    import vtk

    value = vtk.reference("")
    return str(value) if segment.GetTag(segment.GetTerminologyEntryTagName(), value) else ""


def setSegmentTerminology(segment, terminology: str) -> None:
    """Set the segment's terminology entry (``SetTerminology`` on Slicer 5.10+, the tag API before)."""
    if hasattr(segment, "SetTerminology"):
        segment.SetTerminology(terminology)
    else:
        segment.SetTag(segment.GetTerminologyEntryTagName(), terminology)


def labelMapToSegmentation(
    labels: Volume,
    table: Mapping[int, str],
    segmentationNode,
    *,
    referenceVolumeNode=None,
    replaceExisting: bool = False,
    includeEmpty: bool = True,
) -> list[str]:
    """Write a label map into a segmentation node, one segment per structure of ``table``.

    Args:
        labels: integer label map (ZYX, with its geometry).
        table: label value -> core structure name (e.g. :data:`~lkseg.labels.PRODUCT_LABELS`).
        segmentationNode: target ``vtkMRMLSegmentationNode`` (new or existing).
        referenceVolumeNode: source image; becomes the segmentation's reference geometry.
        replaceExisting: replace segments of the same names instead of raising.
        includeEmpty: also create segments for structures absent from ``labels``.

    Returns:
        The segment IDs written, in label-value order.

    Raises:
        SegmentExistsError: a segment of the same name exists and ``replaceExisting`` is False
            (nothing is modified then).
    """
    import slicer

    table = LabelTable(table) if not isinstance(table, LabelTable) else table
    array = np.asarray(labels.array)
    if not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"a label map must hold integers, got {array.dtype}")
    present = set(np.unique(array).tolist())
    items = [(value, name) for value, name in table.items() if includeEmpty or value in present]
    existing = {name: findSegmentId(segmentationNode, name) for _, name in items}
    conflicts = [get_structure(name).display for name, segmentId in existing.items() if segmentId]
    if conflicts and not replaceExisting:
        raise SegmentExistsError(conflicts, segmentationNode.GetName())
    segmentation = segmentationNode.GetSegmentation()
    if (
        referenceVolumeNode is not None
        or referenceGrid(segmentationNode) is None
        or segmentation.GetNumberOfSegments() == 0
    ):
        setReferenceGeometry(segmentationNode, labels.grid, referenceVolumeNode)
    written = {}
    newItems = [(value, name) for value, name in items if existing[name] is None]
    wasModifying = segmentationNode.StartModify()
    try:
        if newItems:
            # new segments share one labelmap layer holding their label values, as Slicer stores them
            values = [value for value, _ in newItems]
            layer = maskToOrientedImage(np.where(np.isin(array, values), array, 0), labels.grid, crop=True)
            representation = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
            for value, name in newItems:
                segment = slicer.vtkSegment()
                styleSegment(segment, name)
                segment.SetLabelValue(int(value))
                segment.AddRepresentation(representation, layer)
                wantedId = get_structure(name).name if segmentation.GetSegment(get_structure(name).name) is None else ""
                if not segmentation.AddSegment(segment, wantedId):
                    raise RuntimeError(f"could not add segment {name!r} to '{segmentationNode.GetName()}'")
                written[value] = segmentation.GetSegmentIdBySegment(segment)
        for value, name in items:
            segmentId = existing[name]
            if segmentId is not None:  # replaceExisting: keep the segment (ID, display), new voxels
                styleSegment(segmentation.GetSegment(segmentId), name)
                setSegmentMask(segmentationNode, segmentId, array == value, labels.grid)
                written[value] = segmentId
    finally:
        segmentationNode.EndModify(wasModifying)
    written = [written[value] for value, _ in items]
    if segmentationNode.GetDisplayNode() is None and segmentationNode.GetScene() is not None:
        segmentationNode.CreateDefaultDisplayNodes()
    log.info("wrote %d segment(s) into '%s'", len(written), segmentationNode.GetName())
    return written


def segmentationToLabelMap(
    segmentationNode,
    grid: Grid | None = None,
    segmentIds: Iterable[str] | None = None,
    table: Mapping[int, str] | None = None,
) -> tuple[Volume, LabelTable]:
    """Collapse segments into one label map on ``grid``.

    Args:
        segmentationNode: source segmentation node.
        grid: output geometry (default: the segmentation's reference geometry).
        segmentIds: segments to export, in painting order (default: all, in segmentation order);
            where segments overlap, the later one wins.
        table: value -> structure name for the output; default: :data:`PRODUCT_LABELS` values for
            known product structures, then the next free values in segment order.

    Returns:
        ``(labels, table)``: uint8 (or uint16 beyond 255 labels) ZYX label volume and its table.
    """
    if grid is None:
        grid = referenceGrid(segmentationNode)
        if grid is None:
            raise InputError(f"segmentation '{segmentationNode.GetName()}' has no reference geometry; pass a grid")
    segmentation = segmentationNode.GetSegmentation()
    ids = (
        list(segmentIds)
        if segmentIds is not None
        else [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    )
    names = {segmentId: segmentStructureName(segmentation.GetSegment(segmentId)) for segmentId in ids}
    if table is None:
        mapping: dict[int, str] = {}
        for name in names.values():
            if name in PRODUCT_LABELS.values() and name not in mapping.values():
                mapping[PRODUCT_LABELS.value_of(name)] = name
        nextValue = max([*mapping, max(PRODUCT_LABELS)]) + 1
        for name in names.values():
            if name not in mapping.values():
                mapping[nextValue] = name
                nextValue += 1
        table = LabelTable(mapping)
    elif not isinstance(table, LabelTable):
        table = LabelTable(table)
    dtype = np.uint8 if max(table, default=0) < 256 else np.uint16
    out = np.zeros(grid.shape, dtype=dtype)
    for segmentId in ids:
        name = names[segmentId]
        try:
            value = table.value_of(name)
        except KeyError:
            log.warning("segment %r (%s) is not in the label table; skipped", segmentId, name)
            continue
        out[segmentMask(segmentationNode, segmentId, grid)] = value
    return Volume(out, grid, {"name": segmentationNode.GetName()}), table
