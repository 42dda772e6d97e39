"""MRML adapters of the Slicer module against a real ``vtkMRMLScene`` (slicer-core).

Volume node <-> Volume (oblique, anisotropic), label map <-> segmentation node (voxel-exact,
names/colours/SNOMED terminology, reference geometry), interoperability with Slicer's own
import/export and .seg.nrrd storage, tables.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import DIRECTIONS
from lkseg.labels import PRODUCT_LABELS, STRUCTURES
from lkseg.volume import Volume

pytestmark = pytest.mark.mrml

SPACING = (0.7, 0.9, 2.5)
ORIGIN = (12.5, -30.0, 45.0)


@pytest.fixture(scope="module")
def lib(headless_slicer):
    import slicer_helpers  # noqa: F401 - puts LiverKidneySegLib on sys.path

    from LiverKidneySegLib import segmentations, tables, volumes

    return type("Lib", (), {"volumes": volumes, "segmentations": segmentations, "tables": tables})


def _labels(shape=(9, 11, 13)) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[1:6, 2:8, 3:10] = 1  # liver
    lab[2:4, 3:5, 4:6] = 2  # tumour inside
    lab[6:8, 1:4, 1:3] = 3  # right kidney
    lab[7, 8:10, 10:12] = 4  # left kidney
    return lab


def _vtk_to_numpy(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def test_volume_node_round_trip_is_exact(lib, mrml_scene, direction):
    rng = np.random.default_rng(1)
    array = rng.integers(-1024, 2000, size=(7, 9, 11)).astype(np.int16)
    volume = Volume.from_array(array, SPACING, ORIGIN, direction, {"name": "CT"})
    node = lib.volumes.volumeToNode(volume, scene=mrml_scene)
    import vtk

    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    np.testing.assert_allclose(_vtk_to_numpy(ijk_to_ras), volume.grid.ijk_to_ras, atol=1e-12)
    assert node.GetImageData().GetDimensions() == volume.grid.size_ijk
    back = lib.volumes.volumeFromNode(node)
    assert back.dtype == np.int16
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_allclose(back.spacing, SPACING, atol=1e-12)
    np.testing.assert_allclose(back.origin, ORIGIN, atol=1e-12)
    np.testing.assert_allclose(back.direction, direction, atol=1e-12)
    assert back.meta["nodeID"] == node.GetID()
    # a voxel's RAS position from Slicer equals the core's
    ijk = np.array([3.0, 5.0, 2.0])
    np.testing.assert_allclose(
        (_vtk_to_numpy(ijk_to_ras) @ np.r_[ijk, 1.0])[:3], volume.grid.index_to_ras(ijk), atol=1e-9
    )


def test_volume_from_node_rejects_bad_input(lib, mrml_scene):
    from lkseg.errors import InputError

    with pytest.raises(InputError, match="no input volume"):
        lib.volumes.volumeFromNode(None)
    empty = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Empty")
    with pytest.raises(InputError, match="no image data"):
        lib.volumes.volumeFromNode(empty)
    model = mrml_scene.AddNewNodeByClass("vtkMRMLModelNode", "M")
    with pytest.raises(InputError, match="scalar volume"):
        lib.volumes.volumeFromNode(model)


def test_label_map_segmentation_round_trip_is_voxel_exact(lib, mrml_scene, direction):
    S = lib.segmentations
    labels = Volume.from_array(_labels(), SPACING, ORIGIN, direction)
    ct = lib.volumes.volumeToNode(labels.astype(np.int16), scene=mrml_scene, name="CT")
    seg = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Seg")
    ids = S.labelMapToSegmentation(labels, PRODUCT_LABELS, seg, referenceVolumeNode=ct)
    segmentation = seg.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == len(PRODUCT_LABELS) == len(ids)
    names = [segmentation.GetSegment(i).GetName() for i in ids]
    assert names == [STRUCTURES[n].display for n in PRODUCT_LABELS.values()]
    assert S.referenceGrid(seg).same_as(labels.grid, 1e-6)
    back, table = S.segmentationToLabelMap(seg, labels.grid)
    np.testing.assert_array_equal(back.array, labels.array)
    assert dict(table) == dict(PRODUCT_LABELS)  # product structures keep their values
    # the default grid is the segmentation's reference geometry
    again, _ = S.segmentationToLabelMap(seg)
    np.testing.assert_array_equal(again.array, labels.array)


def test_segments_carry_names_colours_and_snomed_terminology(lib, mrml_scene):
    S = lib.segmentations
    labels = Volume.from_array(_labels(), SPACING, ORIGIN, DIRECTIONS["oblique"])
    seg = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    S.labelMapToSegmentation(labels, PRODUCT_LABELS, seg, includeEmpty=False)
    segmentation = seg.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 4  # empty structures were not created
    tumour = segmentation.GetSegment(S.findSegmentId(seg, "liver_tumor"))
    assert tumour.GetName() == "Liver tumor"
    np.testing.assert_allclose(tumour.GetColor(), STRUCTURES["liver_tumor"].color, atol=1e-6)
    terminology = tumour.GetTerminology()
    assert "SCT^108369006^Neoplasm" in terminology  # type
    assert "SCT^49755003^Morphologically Altered Structure" in terminology  # category
    assert "SCT^10200004^Liver" in terminology  # anatomic region
    assert S.segmentStructureName(tumour) == "liver_tumor"
    right = segmentation.GetSegment(S.findSegmentId(seg, "Right kidney"))
    assert "SCT^9846003^Right kidney" in right.GetTerminology()


def test_existing_segments_are_kept_and_same_names_need_confirmation(lib, mrml_scene):
    S = lib.segmentations
    grid_labels = _labels()
    labels = Volume.from_array(grid_labels, SPACING, ORIGIN, DIRECTIONS["sagittal"])
    seg = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    # a user segment of another name, and a user "Liver"
    user = np.zeros(grid_labels.shape, bool)
    user[0, 0:3, 0:3] = True
    S.labelMapToSegmentation(labels.with_array(user.astype(np.uint8)), {1: "Vessel of interest"}, seg)
    S.labelMapToSegmentation(labels.with_array(user.astype(np.uint8)), {1: "liver"}, seg)
    before, _ = S.segmentationToLabelMap(seg, labels.grid, table={1: "Vessel of interest", 2: "liver"})
    with pytest.raises(S.SegmentExistsError) as info:
        S.labelMapToSegmentation(labels, PRODUCT_LABELS, seg)
    assert info.value.names == ["Liver"]
    after, _ = S.segmentationToLabelMap(seg, labels.grid, table={1: "Vessel of interest", 2: "liver"})
    np.testing.assert_array_equal(after.array, before.array)  # nothing was modified
    assert seg.GetSegmentation().GetNumberOfSegments() == 2
    S.labelMapToSegmentation(labels, PRODUCT_LABELS, seg, replaceExisting=True)
    assert seg.GetSegmentation().GetNumberOfSegments() == 1 + len(PRODUCT_LABELS)
    liver = S.segmentMask(seg, S.findSegmentId(seg, "liver"), labels.grid)
    np.testing.assert_array_equal(liver, grid_labels == 1)  # replaced, not merged
    vessel = S.segmentMask(seg, S.findSegmentId(seg, "Vessel of interest"), labels.grid)
    np.testing.assert_array_equal(vessel, user)  # kept


def test_reads_segments_made_by_slicer_itself(lib, mrml_scene):
    """Segments imported by Slicer's own logic read back exactly; ours export exactly through Slicer."""
    import slicer
    import vtk

    S = lib.segmentations
    labels = Volume.from_array(_labels(), SPACING, ORIGIN, DIRECTIONS["oblique"])
    label_node = lib.volumes.volumeToNode(labels, scene=mrml_scene, labelMap=True, name="lab")
    seg = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label_node, seg)
    back, table = S.segmentationToLabelMap(seg, labels.grid)
    # Slicer names the segments by label value; the painting order is the value order
    remapped = np.zeros_like(back.array)
    for value in table:
        remapped[back.array == value] = sorted(table).index(value) + 1
    np.testing.assert_array_equal(remapped, labels.array)

    ours = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    S.labelMapToSegmentation(labels, PRODUCT_LABELS, ours, referenceVolumeNode=label_node, includeEmpty=False)
    exported = mrml_scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    for name in ("liver", "liver_tumor", "kidney_right", "kidney_left"):
        ids.InsertNextValue(S.findSegmentId(ours, name))
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(ours, ids, exported, label_node)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(exported), labels.array)


def test_seg_nrrd_written_by_slicer_reads_in_the_core(lib, mrml_scene, tmp_path):
    import slicer

    from lkseg.io.segnrrd import read_seg_nrrd

    S = lib.segmentations
    labels = Volume.from_array(_labels(), SPACING, ORIGIN, DIRECTIONS["coronal_flipped"])
    seg = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Case")
    S.labelMapToSegmentation(labels, PRODUCT_LABELS, seg, includeEmpty=False)
    storage = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    path = tmp_path / "case.seg.nrrd"
    storage.SetFileName(str(path))
    assert storage.WriteData(seg)
    core = read_seg_nrrd(path, reference=labels.grid)
    assert sorted(core.names) == sorted(["Liver", "Liver tumor", "Right kidney", "Left kidney"])
    for name in ("liver", "liver_tumor", "kidney_right", "kidney_left"):
        np.testing.assert_array_equal(
            core.mask(STRUCTURES[name].display), labels.array == PRODUCT_LABELS.value_of(name)
        )
    assert {s.structure for s in core.segments} == {"liver", "liver_tumor", "kidney_right", "kidney_left"}
    _ = slicer


def test_segment_mask_resamples_other_geometry_nearest(lib, mrml_scene):
    """A segment stored on a 2x finer grid reads back on the coarse grid by nearest neighbour."""
    S = lib.segmentations
    coarse = Volume.from_array(np.zeros((6, 8, 10), np.uint8), (2.0, 2.0, 2.0), (0, 0, 0))
    fine_grid = Volume.from_array(np.zeros((12, 16, 20), np.uint8), (1.0, 1.0, 1.0), (-0.5, -0.5, -0.5))
    fine = np.zeros(fine_grid.shape, np.uint8)
    fine[4:8, 6:10, 8:14] = 1  # exactly coarse voxels k 2..3, j 3..4, i 4..6
    seg = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    S.labelMapToSegmentation(fine_grid.with_array(fine), {1: "liver"}, seg)
    mask = S.segmentMask(seg, "liver", coarse.grid)
    expected = np.zeros(coarse.shape, bool)
    expected[2:4, 3:5, 4:7] = True
    np.testing.assert_array_equal(mask, expected)


def test_table_node_values(lib, mrml_scene, tmp_path):
    T = lib.tables
    rows = [
        {"Structure": "Liver", "Volume": 1523.25, "Lesions": 3},
        {"Structure": "Right kidney", "Volume": 151.5, "Lesions": 0},
        {"Structure": "Left kidney", "Volume": None, "Lesions": 1},
    ]
    node = T.tableFromRows(rows, scene=mrml_scene, units={"Volume": "mL"}, descriptions={"Lesions": "count"})
    assert node.GetNumberOfRows() == 3 and node.GetNumberOfColumns() == 3
    assert node.GetColumnUnitLabel("Volume") == "mL"
    assert node.GetColumnDescription("Lesions") == "count"
    assert node.GetTable().GetColumnByName("Lesions").IsA("vtkIntArray")
    back = T.rowsFromTable(node)
    assert back[0] == {"Structure": "Liver", "Volume": 1523.25, "Lesions": 3}
    assert back[1]["Structure"] == "Right kidney" and back[1]["Volume"] == 151.5
    assert np.isnan(back[2]["Volume"])
    # refill the same node: old columns go away
    T.tableFromRows([{"A": "x"}], node)
    assert node.GetNumberOfColumns() == 1 and T.rowsFromTable(node) == [{"A": "x"}]
    # and it saves as a .tsv Slicer can read
    storage = mrml_scene.AddNewNodeByClass("vtkMRMLTableStorageNode")
    T.tableFromRows(rows, node)
    storage.SetFileName(str(tmp_path / "t.tsv"))
    assert storage.WriteData(node)
    lines = (tmp_path / "t.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["Structure", "Volume", "Lesions"]
    assert lines[1].split("\t")[:2] == ["Liver", "1523.25"]


def test_region_edit_changes_only_the_region(lib, mrml_scene):
    """A slice edit (refinement, undo) rewrites exactly that slice; the rest and the segments
    sharing the labelmap layer are untouched."""
    S = lib.segmentations
    labels = Volume.from_array(_labels(), SPACING, ORIGIN, DIRECTIONS["oblique"])
    seg = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    S.labelMapToSegmentation(labels, PRODUCT_LABELS, seg, includeEmpty=False)
    liver = S.segmentMask(seg, "liver", labels.grid)
    edited = liver.copy()
    edited[3] = False
    edited[3, 0:2, 0:3] = True  # new voxels outside the old liver, on the same slice
    edited[4, 8, 12] = True  # a voxel on another slice, outside the region: must not appear
    region = (slice(3, 4), slice(None), slice(None))
    S.setSegmentMask(seg, "liver", edited, labels.grid, region=region)
    expected = liver.copy()
    expected[3] = edited[3]
    np.testing.assert_array_equal(S.segmentMask(seg, "liver", labels.grid), expected)
    for name in ("liver_tumor", "kidney_right", "kidney_left"):
        np.testing.assert_array_equal(
            S.segmentMask(seg, name, labels.grid), labels.array == PRODUCT_LABELS.value_of(name)
        )
