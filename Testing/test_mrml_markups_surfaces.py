"""Markups <-> voxel prompts, closed surfaces, model nodes, STL/OBJ export, undo history (slicer-core)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import DIRECTIONS, rotation
from lkseg.volume import Volume

pytestmark = pytest.mark.mrml

SPACING = (0.8, 0.6, 2.0)
ORIGIN = (-40.0, 25.0, -300.0)


@pytest.fixture(scope="module")
def lib(headless_slicer):
    import slicer_helpers  # noqa: F401

    from LiverKidneySegLib import history, markups, segmentations, surfaces, volumes

    return type(
        "Lib",
        (),
        {
            "volumes": volumes,
            "markups": markups,
            "segmentations": segmentations,
            "surfaces": surfaces,
            "history": history,
        },
    )


def _ct(lib, scene, direction, shape=(20, 30, 40)):
    volume = Volume.from_array(np.zeros(shape, np.int16), SPACING, ORIGIN, direction)
    return volume, lib.volumes.volumeToNode(volume, scene=scene, name="CT")


def test_ras_markups_to_voxel_prompts_exact(lib, mrml_scene, direction):
    M = lib.markups
    volume, node = _ct(lib, mrml_scene, direction)
    ijk = np.array([[3.0, 4.0, 5.0], [10.25, 20.5, 5.0], [7.0, 8.0, 5.0], [1.0, 1.0, 9.0]])
    # place the points at the core's RAS positions of those voxels (independent of the adapter)
    ras = volume.grid.index_to_ras(ijk)
    positive = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "P")
    for p in ras[:2]:
        positive.AddControlPointWorld(*p)
    negative = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "N")
    for p in ras[2:]:
        negative.AddControlPointWorld(*p)
    points, labels = M.pointPrompts(node, positive, negative)
    np.testing.assert_allclose(points, ijk, atol=1e-9)
    np.testing.assert_array_equal(labels, [1, 1, 0, 0])
    # one slice: the last positive point's k slice; the point on k=9 is left out
    prompts = M.slicePrompts(node, 2, positive, negative)
    assert prompts.sliceIndex == 5 and prompts.axis == 2
    np.testing.assert_allclose(prompts.points, ijk[:3], atol=1e-9)
    np.testing.assert_array_equal(prompts.labels, [1, 1, 0])
    assert prompts.box is None


def test_roi_box_to_voxel_bounds(lib, mrml_scene, direction):
    M = lib.markups
    volume, node = _ct(lib, mrml_scene, direction)
    roi = M.boxToRoi(node, [2, 3, 4], [12, 13, 8])
    lo, hi = M.roiIjkBox(node, roi)
    np.testing.assert_allclose(lo, [2, 3, 4], atol=1e-4)  # ROI sizes are stored in float
    np.testing.assert_allclose(hi, [12, 13, 8], atol=1e-4)
    # the ROI's centre control point is the box centre in RAS
    np.testing.assert_allclose(roi.GetCenterWorld(), volume.grid.index_to_ras([7, 8, 6]), atol=1e-4)
    prompts = M.slicePrompts(node, 2, roiNode=roi)
    assert prompts.sliceIndex == 6 and prompts.box is not None and len(prompts.points) == 0


def test_axis_aligned_roi_from_ras_bounds(lib, mrml_scene):
    """An ROI drawn in RAS (Slicer's default, axis-aligned) maps to the expected voxel box."""
    M = lib.markups
    volume, node = _ct(lib, mrml_scene, DIRECTIONS["axial_lps"])
    roi = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    a, b = volume.grid.index_to_ras([5, 6, 2]), volume.grid.index_to_ras([15, 16, 7])
    roi.SetCenterWorld(*((a + b) / 2))
    roi.SetSize(*np.abs(b - a))
    lo, hi = M.roiIjkBox(node, roi)
    np.testing.assert_allclose(lo, [5, 6, 2], atol=1e-4)
    np.testing.assert_allclose(hi, [15, 16, 7], atol=1e-4)


def test_points_follow_the_volume_parent_transform(lib, mrml_scene):
    """World-RAS clicks on a transformed volume map to the voxel under the click."""
    import vtk

    M = lib.markups
    volume, node = _ct(lib, mrml_scene, DIRECTIONS["oblique"])
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = np.eye(4)
    matrix[:3, :3] = rotation("y", 25.0)
    matrix[:3, 3] = [10.0, -5.0, 3.0]
    vtk_matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            vtk_matrix.SetElement(r, c, matrix[r, c])
    transform.SetMatrixTransformToParent(vtk_matrix)
    node.SetAndObserveTransformNodeID(transform.GetID())
    ijk = np.array([[4.0, 9.0, 11.0]])
    world = (matrix @ np.r_[volume.grid.index_to_ras(ijk[0]), 1.0])[:3]
    points = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    points.AddControlPointWorld(*world)
    found, _ = M.pointPrompts(node, points)
    np.testing.assert_allclose(found, ijk, atol=1e-9)
    np.testing.assert_allclose(lib.volumes.ijkToWorld(node, ijk), [world], atol=1e-9)


def test_slice_axis_for_view_normals(lib, mrml_scene):
    M = lib.markups
    _, axial = _ct(lib, mrml_scene, DIRECTIONS["axial_lps"])
    assert M.sliceAxisForNormal(axial, [0, 0, 1]) == 2
    assert M.sliceAxisForNormal(axial, [1, 0, 0]) == 0
    assert M.sliceAxisForNormal(axial, [0, -1, 0]) == 1
    _, sagittal = _ct(lib, mrml_scene, DIRECTIONS["sagittal"])
    # sagittal storage: the k axis runs along L/R, so the red (axial) view cuts along j
    axis = M.sliceAxisForNormal(sagittal, [0, 0, 1])
    assert abs(DIRECTIONS["sagittal"][2, axis]) == 1.0
    _, oblique = _ct(lib, mrml_scene, DIRECTIONS["oblique"])
    assert M.sliceAxisForNormal(oblique, [0, 0, 1]) == 2


def test_prompt_errors_are_specific(lib, mrml_scene):
    from lkseg.errors import PromptError

    M = lib.markups
    _, node = _ct(lib, mrml_scene, DIRECTIONS["axial_lps"])
    with pytest.raises(PromptError, match="at least one point or a box"):
        M.slicePrompts(node, 2)
    with pytest.raises(PromptError, match="outside the volume"):
        M.slicePrompts(node, 2, M.pointsToMarkups(node, [[1, 1, 50]]))
    with pytest.raises(PromptError, match="axis"):
        M.slicePrompts(node, 3)


@pytest.fixture
def ball_segmentation(lib, mrml_scene):
    from slicer_helpers import sphere

    shape = (30, 40, 50)
    labels = np.zeros(shape, np.uint8)
    labels[sphere(shape, (15, 20, 25), 12)] = 1
    labels[sphere(shape, (15, 20, 25), 4)] = 2
    volume = Volume.from_array(labels, (1.0, 1.0, 1.5), (10.0, -20.0, 30.0), DIRECTIONS["oblique"])
    seg = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Ball")
    seg.CreateDefaultDisplayNodes()
    lib.segmentations.labelMapToSegmentation(volume, {1: "liver", 2: "liver_tumor"}, seg)
    return volume, seg


def _closed_volume_mm3(poly) -> float:
    import vtk

    tri = vtk.vtkTriangleFilter()
    tri.SetInputData(poly)
    mass = vtk.vtkMassProperties()
    mass.SetInputConnection(tri.GetOutputPort())
    mass.Update()
    return mass.GetVolume()


def test_closed_surface_created_and_encloses_the_voxels(lib, ball_segmentation):
    import slicer
    import vtk

    volume, seg = ball_segmentation
    assert lib.surfaces.createClosedSurface(seg, 0.0)
    assert seg.GetSegmentation().ContainsRepresentation("Closed surface")
    assert seg.GetDisplayNode().GetPreferredDisplayRepresentationName3D() == "Closed surface"
    poly = vtk.vtkPolyData()
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentClosedSurfaceRepresentation(seg, "liver", poly)
    # the liver is a shell around the tumour: its surface has an inner sheet, the enclosed volume
    # is the shell's voxel volume (unsmoothed surfaces enclose it within 1 %)
    voxels_mm3 = np.count_nonzero(volume.array == 1) * np.prod(volume.spacing)
    assert poly.GetNumberOfPoints() > 100
    assert _closed_volume_mm3(poly) == pytest.approx(voxels_mm3, rel=0.01)
    with pytest.raises(Exception, match="smoothing"):
        lib.surfaces.createClosedSurface(seg, 1.5)


def test_models_in_subject_hierarchy_folder(lib, mrml_scene, ball_segmentation):
    _, seg = ball_segmentation
    models = lib.surfaces.exportSegmentsToModels(seg, folderName="Ball models")
    assert [m.GetName() for m in models] == ["Liver", "Liver tumor"]
    sh = mrml_scene.GetSubjectHierarchyNode()
    folders = {sh.GetItemParent(sh.GetItemByDataNode(m)) for m in models}
    assert len(folders) == 1
    assert sh.GetItemName(folders.pop()) == "Ball models"
    assert all(m.GetPolyData().GetNumberOfPoints() > 100 for m in models)
    np.testing.assert_allclose(
        models[0].GetDisplayNode().GetColor(), seg.GetSegmentation().GetSegment("liver").GetColor(), atol=1e-6
    )


@pytest.mark.parametrize("fmt", ["STL", "OBJ"])
def test_models_exported_to_files_reload(lib, ball_segmentation, tmp_path, fmt):
    import vtk

    volume, seg = ball_segmentation
    files = lib.surfaces.exportSegmentsToFiles(seg, tmp_path, fmt)
    assert [f.name for f in files] == [f"Ball_Liver.{fmt.lower()}", f"Ball_Liver tumor.{fmt.lower()}"]
    reader = vtk.vtkSTLReader() if fmt == "STL" else vtk.vtkOBJReader()
    reader.SetFileName(str(files[0]))
    reader.Update()
    mesh = reader.GetOutput()
    assert mesh.GetNumberOfPoints() > 100
    # files are in LPS: the mesh centre is the ball centre in LPS
    center_lps = volume.grid.index_to_lps([25, 20, 15])
    bounds = np.array(mesh.GetBounds()).reshape(3, 2)
    np.testing.assert_allclose(bounds.mean(axis=1), center_lps, atol=1.5)
    voxels_mm3 = np.count_nonzero(volume.array == 1) * np.prod(volume.spacing)  # shell around the tumour
    assert _closed_volume_mm3(mesh) == pytest.approx(voxels_mm3, rel=0.06)  # default smoothing shrinks a little
    merged = lib.surfaces.exportSegmentsToFiles(seg, tmp_path / "merged", fmt, merge=True)
    assert [f.name for f in merged] == [f"Ball.{fmt.lower()}"]
    assert not list(tmp_path.glob("*.tmp*"))


def test_export_errors(lib, mrml_scene, ball_segmentation, tmp_path):
    from lkseg.errors import InputError

    _, seg = ball_segmentation
    with pytest.raises(InputError, match="unsupported mesh format"):
        lib.surfaces.exportSegmentsToFiles(seg, tmp_path, "PLY3")
    with pytest.raises(InputError, match="no segment"):
        lib.surfaces.exportSegmentsToFiles(seg, tmp_path, "STL", ["nope"])
    with pytest.raises(InputError, match="no segments selected"):
        lib.surfaces.exportSegmentsToFiles(seg, tmp_path, "STL", [])


def test_undo_redo_restores_exact_voxels(lib, mrml_scene, ball_segmentation):
    S, H = lib.segmentations, lib.history
    volume, seg = ball_segmentation
    history = H.EditHistory()
    original = S.segmentMask(seg, "liver", volume.grid)
    edited = original.copy()
    edited[10:12, :, :] = False
    edited[0, 0, 0] = True
    S.setSegmentMask(seg, "liver", edited, volume.grid)
    edit = history.record(seg, "liver", original, edited, volume.grid, "cut")
    assert edit.changedVoxels == int(np.count_nonzero(original != edited))
    assert history.record(seg, "liver", edited, edited, volume.grid, "nothing") is None
    assert history.undo(mrml_scene).description == "cut"
    np.testing.assert_array_equal(S.segmentMask(seg, "liver", volume.grid), original)
    np.testing.assert_array_equal(S.segmentMask(seg, "liver_tumor", volume.grid), volume.array == 2)  # untouched
    assert history.canRedo and not history.canUndo
    history.redo(mrml_scene)
    np.testing.assert_array_equal(S.segmentMask(seg, "liver", volume.grid), edited)
    assert history.undo(mrml_scene) is not None and history.undo(mrml_scene) is None
    seg.GetSegmentation().RemoveSegment("liver")
    with pytest.raises(RuntimeError, match="no longer exists"):
        history.redo(mrml_scene)


def test_slice_of_a_click_from_the_slice_views(lib, mrml_scene):
    """The view a point was placed in is the slice node whose plane passes through it."""
    import vtk

    M = lib.markups
    volume, node = _ct(lib, mrml_scene, DIRECTIONS["flipped_ras"])
    point_ijk = np.array([12.0, 7.0, 9.0])
    ras = volume.grid.index_to_ras(point_ijk)

    def slice_node(name, normal_axis, offset):
        sn = mrml_scene.AddNewNodeByClass("vtkMRMLSliceNode", name)
        axes = {
            "axial": ([1, 0, 0], [0, 1, 0], [0, 0, 1]),
            "sagittal": ([0, 1, 0], [0, 0, 1], [1, 0, 0]),
            "coronal": ([1, 0, 0], [0, 0, 1], [0, 1, 0]),
        }[normal_axis]
        matrix = vtk.vtkMatrix4x4()
        for c, column in enumerate(axes):
            for r in range(3):
                matrix.SetElement(r, c, column[r])
        origin = np.zeros(3)
        origin[{"axial": 2, "sagittal": 0, "coronal": 1}[normal_axis]] = offset
        for r in range(3):
            matrix.SetElement(r, 3, origin[r])
        sn.GetSliceToRAS().DeepCopy(matrix)
        sn.SetMappedInLayout(1)  # a view shown in the layout (hidden views are ignored)
        return sn

    views = [
        slice_node("Red", "axial", ras[2] + 20),
        slice_node("Yellow", "sagittal", ras[0]),
        slice_node("Green", "coronal", ras[1] - 7),
    ]
    axis, index = M.sliceForPoint(node, ras, views)
    assert axis == 0 and index == 12  # the sagittal view cuts this volume along i
    views[0] = slice_node("Red2", "axial", ras[2])
    views[1] = slice_node("Yellow2", "sagittal", ras[0] + 30)
    assert M.sliceForPoint(node, ras, views) == (2, 9)
    assert M.sliceForPoint(node, ras, []) == (2, 9)  # no views: k
    views[0].SetMappedInLayout(0)
    assert M.sliceForPoint(node, ras, views)[0] == 1  # the red view is hidden: green is the closest
