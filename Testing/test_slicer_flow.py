"""A radiologist's session through the module Logic, headless (issue 10): load a CT phantom,
automatic segmentation, box a missed lesion, two positive and one negative click, undo twice,
redo once, plan, export; every segment checked voxel for voxel
(:func:`LiverKidneySegLib.selftest.checkRadiologistFlow`, which the module's self-test runs in
Slicer too). The refinement uses the deterministic stand-in predictor so that every voxel is known."""

from __future__ import annotations

import time

import numpy as np
import pytest
from slicer_helpers import FakePromptPredictor

pytestmark = [pytest.mark.mrml, pytest.mark.usefixtures("private_onnx_cache")]

#: a small phantom: the whole session stays within a few seconds (CI budget)
SIZE, SPACING = (64, 64, 24), (4.5, 4.5, 8.0)


@pytest.fixture
def session(headless_slicer, mrml_scene):
    from LiverKidneySegLib.logic import LiverKidneySegLogicBase
    from LiverKidneySegLib.refinement import RefineEngine
    from LiverKidneySegLib.selftest import phantomVolumeNode

    phantom, node = phantomVolumeNode(mrml_scene, seed=7, size=SIZE, spacing=SPACING)
    logic = LiverKidneySegLogicBase(mrml_scene, RefineEngine(predictorFactory=lambda m, d: FakePromptPredictor()))
    yield logic, node, phantom
    logic.cleanup()


def _names(node) -> list[str]:
    segmentation = node.GetSegmentation()
    return sorted(segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments()))


def test_radiologist_flow_with_the_stand_in_automatic_step(session, tmp_path):
    """What the self-test runs on machines without the packages: the phantom's labels as the
    automatic result (imported through the same undoable path)."""
    from LiverKidneySegLib.selftest import checkRadiologistFlow, standInAutomatic
    from lkseg.labels import PRODUCT_LABELS

    logic, node, phantom = session
    t0 = time.monotonic()
    outcome = checkRadiologistFlow(logic, node, phantom, tmp_path, automatic=standInAutomatic())
    print(f"radiologist flow (stand-in automatic): {time.monotonic() - t0:.1f} s")
    seg = outcome["segmentationNode"]
    assert _names(seg) == ["Left kidney", "Liver", "Liver tumor", "Right kidney", "Spleen"]
    truth = np.asarray(phantom.product_labels().array)
    np.testing.assert_array_equal(outcome["expected"]["liver"], truth == PRODUCT_LABELS.value_of("liver"))
    # the automatic result itself is undoable after the session's edits
    while logic.canUndo:
        logic.undo()
    assert _names(seg) == ["Liver tumor", "Spleen"]  # created by refinement, now empty
    from LiverKidneySegLib.segmentations import findSegmentId, segmentMask

    assert not segmentMask(seg, findSegmentId(seg, "spleen"), phantom.image.grid).any()


@pytest.mark.slow
def test_radiologist_flow_with_the_real_automatic_segmentation(session, tmp_path):
    from LiverKidneySegLib.selftest import checkRadiologistFlow
    from lkseg.models import list_models

    demo = [m for m in list_models().models if "liver" in m.structures]
    if not demo:
        pytest.skip("no automatic model package installed")
    logic, node, phantom = session
    t0 = time.monotonic()
    outcome = checkRadiologistFlow(logic, node, phantom, tmp_path, modelId=demo[0].id, device="cpu")
    print(f"radiologist flow (automatic model {demo[0].id}): {time.monotonic() - t0:.1f} s")
    assert {"Liver", "Right kidney", "Left kidney", "Liver tumor", "Spleen"} <= set(_names(outcome["segmentationNode"]))
