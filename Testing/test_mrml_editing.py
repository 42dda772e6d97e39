"""Segment edits that respect the user's work (issue 10: undo keeps later edits, the module never
writes a segment it was not asked to edit, Segment Editor masking/overwrite settings, the
automatic result undoable). Expected masks are computed independently with numpy."""

from __future__ import annotations

import numpy as np
import pytest

from lkseg.volume import Volume

pytestmark = pytest.mark.mrml

SHAPE = (6, 30, 40)


@pytest.fixture
def case(headless_slicer, mrml_scene):
    """A CT with a "Liver" segment (a block) and an "Other" segment, a logic with the fake predictor."""
    import slicer_helpers

    from LiverKidneySegLib.logic import LiverKidneySegLogicBase
    from LiverKidneySegLib.refinement import RefineEngine
    from LiverKidneySegLib.segmentations import labelMapToSegmentation
    from LiverKidneySegLib.volumes import volumeToNode

    image = np.zeros(SHAPE, np.int16)
    image[:, :, 20:] = 100  # right half "bright"
    volume = Volume.from_array(image, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.diag([-1.0, -1.0, 1.0]))
    node = volumeToNode(volume, scene=mrml_scene, name="CT")
    fake = slicer_helpers.FakePromptPredictor(radius=4)
    logic = LiverKidneySegLogicBase(mrml_scene, RefineEngine(predictorFactory=lambda model, device: fake))
    seg = logic.newSegmentationNode(node)
    labels = np.zeros(SHAPE, np.uint8)
    labels[:, 5:12, 5:15] = 1
    labels[:, 14:20, 14:26] = 2
    labelMapToSegmentation(volume.with_array(labels), {1: "liver", 2: "Other"}, seg)
    yield volume, node, logic, seg, labels
    logic.cleanup()


def _mask(seg, name, grid):
    from LiverKidneySegLib.segmentations import findSegmentId, segmentMask

    return segmentMask(seg, findSegmentId(seg, name), grid)


def _ras(node, ijk):
    from LiverKidneySegLib.volumes import ijkToWorld

    return ijkToWorld(node, np.asarray(ijk, float).reshape(-1, 3))


def test_undo_keeps_edits_made_since_by_other_tools(case):
    """Undo of a click must not rewrite its whole bounding box (which would erase Segment Editor
    edits made after it inside that box)."""
    from LiverKidneySegLib.segmentations import findSegmentId, setSegmentMask

    volume, node, logic, seg, _labels = case
    grid = volume.grid
    start = _mask(seg, "liver", grid)
    logic.refine(node, seg, "liver", positive=_ras(node, [[32, 25, 3]]), axis=2, mode="add")  # disk r=4 on k=3
    clicked = _mask(seg, "liver", grid)
    changed = clicked != start
    assert changed.any() and changed[3].sum() == changed.sum()
    rows, cols = np.nonzero(changed[3])
    # another tool paints inside the click's bounding box, on voxels the click did not change
    painted = clicked.copy()
    box = np.zeros(SHAPE, bool)
    box[3, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
    extra = box & ~changed & ~clicked
    assert extra.any()
    painted |= extra
    setSegmentMask(seg, findSegmentId(seg, "liver"), painted, grid)
    logic.undo()
    np.testing.assert_array_equal(_mask(seg, "liver", grid), start | extra)
    logic.redo()
    np.testing.assert_array_equal(_mask(seg, "liver", grid), clicked | extra)


def test_only_the_edited_segment_is_written(case):
    volume, node, logic, seg, labels = case
    grid = volume.grid
    other = _mask(seg, "Other", grid)
    # a box over both segments: "liver" grows into "Other"'s voxels, "Other" must not change
    logic.refine(node, seg, "liver", box=_ras(node, [[4, 4, 2.5], [30, 22, 3.5]]), axis=2, mode="add")
    np.testing.assert_array_equal(_mask(seg, "Other", grid), other)
    expected = labels == 1
    expected[3, 4:23, 4:31] = True
    np.testing.assert_array_equal(_mask(seg, "liver", grid), expected)


def test_segment_editor_masking_and_overwrite_settings(case, mrml_scene):
    import slicer

    from LiverKidneySegLib.editrules import rulesFromSegmentEditorNode
    from LiverKidneySegLib.segmentations import findSegmentId

    volume, node, logic, seg, labels = case
    grid = volume.grid
    from LiverKidneySegLib.editrules import rulesForSegmentation

    assert rulesForSegmentation(mrml_scene, seg) is None  # no Segment Editor on it: no restriction
    editor = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor.SetAndObserveSegmentationNode(seg)
    editor.SetSourceVolumeIntensityMask(True)
    editor.SetSourceVolumeIntensityMaskRange(50.0, 200.0)  # only the bright half
    editor.SetOverwriteMode(editor.OverwriteAllSegments)  # do not take "Other"'s voxels
    logic.editRules = rulesForSegmentation(mrml_scene, seg)  # what the widget does before each edit
    assert logic.editRules == rulesFromSegmentEditorNode(editor)
    assert logic.editRules.intensityRange == (50.0, 200.0) and logic.editRules.avoidOthers == "all"
    other = _mask(seg, "Other", grid)
    logic.refine(node, seg, "liver", box=_ras(node, [[4, 4, 2.5], [30, 22, 3.5]]), axis=2, mode="add")
    box = np.zeros(SHAPE, bool)
    box[3, 4:23, 4:31] = True
    bright = np.asarray(volume.array) >= 50
    expected = (labels == 1) | (box & bright & ~other)
    np.testing.assert_array_equal(_mask(seg, "liver", grid), expected)
    np.testing.assert_array_equal(_mask(seg, "Other", grid), other)
    # inside one segment only: a subtract outside "Other" removes nothing there
    editor.SetSourceVolumeIntensityMask(False)
    editor.SetOverwriteMode(editor.OverwriteNone)
    editor.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    editor.SetMaskSegmentID(findSegmentId(seg, "Other"))
    logic.editRules = rulesFromSegmentEditorNode(editor)
    before = _mask(seg, "liver", grid)
    logic.endRefineInteraction()
    logic.refine(node, seg, "liver", box=_ras(node, [[4, 4, 2.5], [30, 22, 3.5]]), axis=2, mode="subtract")
    np.testing.assert_array_equal(_mask(seg, "liver", grid), before & ~(box & other))


def test_automatic_result_is_one_undo_step(case):
    """The imported automatic result (a replaced and a created segment) undoes and redoes exactly."""
    from LiverKidneySegLib.history import SegmentsEdit
    from LiverKidneySegLib.segmentations import findSegmentId, labelMapToSegmentation

    volume, node, logic, seg, labels = case
    grid = volume.grid
    segmentation = seg.GetSegmentation()
    names = lambda: [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]  # noqa: E731
    oldLiver = _mask(seg, "liver", grid)
    result = np.zeros(SHAPE, np.uint8)
    result[:, 2:9, 2:30] = 1
    result[:, 22:28, 5:12] = 3
    replaced = [findSegmentId(seg, "liver")]
    before = SegmentsEdit.snapshot(seg, replaced, grid)
    ids = labelMapToSegmentation(volume.with_array(result), {1: "liver", 3: "kidney_right"}, seg, replaceExisting=True)
    allIds = list(dict.fromkeys(replaced + ids))
    after = SegmentsEdit.snapshot(seg, allIds, grid)
    logic.history.recordSegments(SegmentsEdit(seg.GetID(), grid, {i: before.get(i) for i in allIds}, after, "auto"))
    assert names() == ["Liver", "Other", "Right kidney"]
    logic.refine(node, seg, "kidney_right", positive=_ras(node, [[30, 25, 2]]), axis=2, mode="add")
    logic.undo()  # the click
    logic.undo()  # the automatic result
    assert sorted(names()) == ["Liver", "Other"]
    np.testing.assert_array_equal(_mask(seg, "liver", grid), oldLiver)
    liver = segmentation.GetSegment(findSegmentId(seg, "liver"))
    assert "SCT^10200004^Liver" in liver.GetTerminology()  # metadata restored too
    logic.redo()
    assert sorted(names()) == ["Liver", "Other", "Right kidney"]
    np.testing.assert_array_equal(_mask(seg, "liver", grid), result == 1)
    np.testing.assert_array_equal(_mask(seg, "kidney_right", grid), result == 3)
    np.testing.assert_array_equal(_mask(seg, "Other", grid), labels == 2)


def test_a_new_segment_next_to_the_automatic_result_gets_its_voxels(case):
    """A region edit of a new (empty) segment that shares a label-map layer with others went to
    another segment of the layer (or was lost); now exactly this segment changes."""
    from LiverKidneySegLib.segmentations import findSegmentId, segmentMask, setSegmentMask

    volume, node, logic, seg, labels = case
    grid = volume.grid
    segmentation = seg.GetSegmentation()
    spleen = segmentation.AddEmptySegment("spleen", "Spleen", [0.5, 0.5, 0.5])
    shared = []
    segmentation.GetSegmentIDsSharingBinaryLabelmapRepresentation(spleen, shared, False)
    assert shared, "the scenario needs a shared layer"
    mask = np.zeros(SHAPE, bool)
    mask[2, 22:27, 30:36] = True  # outside the layer's current extent
    setSegmentMask(seg, spleen, mask, grid, region=(slice(2, 3), slice(None), slice(None)))
    np.testing.assert_array_equal(segmentMask(seg, spleen, grid), mask)
    np.testing.assert_array_equal(_mask(seg, "liver", grid), labels == 1)
    np.testing.assert_array_equal(_mask(seg, "Other", grid), labels == 2)
    inside = np.zeros(SHAPE, bool)
    inside[3, 6:9, 6:9] = True  # on the liver's voxels: overlap, the liver keeps them
    logic.refine(node, seg, "spleen", box=_ras(node, [[6, 6, 3], [8, 8, 3]]), axis=2, mode="add")
    np.testing.assert_array_equal(segmentMask(seg, findSegmentId(seg, "spleen"), grid), mask | inside)
    np.testing.assert_array_equal(_mask(seg, "liver", grid), labels == 1)
