"""Couinaud planning through the module's Logic, headless (slicer-core): landmarks from a point
list or proposed from vessel segments, segment resections, segments into a segmentation node,
per-segment volumes and FLR in the results table. Checked against the phantom's exact Couinaud
segments (from its own vessel anatomy) and against the core's own run on the same label map."""

from __future__ import annotations

import numpy as np
import pytest

from lkseg.errors import InputError
from lkseg.labels import PRODUCT_LABELS, LabelTable
from lkseg.phantom import DETAILED, PhantomConfig, generate_phantom
from lkseg.phantom.couinaud import couinaud_truth, exact_landmarks
from lkseg.planning import Patient, PlanOptions, Resection, run_plan

pytestmark = pytest.mark.mrml

VESSELS = {20: "hepatic_vein", 21: "portal_vein", 22: "inferior_vena_cava"}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


@pytest.fixture(scope="module")
def case(headless_slicer):
    """Phantom seed 6 (not used to tune the automatic landmarks) in a scene: CT, organ
    segmentation, and a second segmentation that also holds the vessel segments."""
    from LiverKidneySegLib.segmentations import labelMapToSegmentation
    from LiverKidneySegLib.volumes import volumeToNode

    scene = headless_slicer.scene
    ph = generate_phantom(PhantomConfig(seed=6, size_ijk=(128, 128, 60), spacing=(3.2, 3.2, 4.2), noise_sd=0.0))
    ct = volumeToNode(ph.image, scene=scene, name="Couinaud CT")
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Organs")
    labelMapToSegmentation(ph.product_labels(), PRODUCT_LABELS, seg, referenceVolumeNode=ct, includeEmpty=False)
    detailed = np.asarray(ph.labels.array)
    arr = np.asarray(ph.product_labels().array).copy()
    for value, name in VESSELS.items():
        arr[detailed == DETAILED[name]] = value
    table = LabelTable({**dict(PRODUCT_LABELS.items()), **VESSELS})
    vessels = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Organs and vessels")
    labelMapToSegmentation(ph.labels.with_array(arr), table, vessels, referenceVolumeNode=ct, includeEmpty=False)
    yield ph, ct, seg, vessels, ph.labels.with_array(arr), table
    headless_slicer.clear()


def _couinaudMasks(node, grid):
    from LiverKidneySegLib.couinaud import couinaudSegmentName
    from LiverKidneySegLib.segmentations import segmentMask

    segmentation = node.GetSegmentation()
    out = {}
    for s in range(1, 9):
        segmentId = segmentation.GetSegmentIdBySegmentName(couinaudSegmentName(s))
        out[s] = segmentMask(node, segmentId, grid) if segmentId else np.zeros(grid.shape_zyx, bool)
    return out


def test_segment_resection_from_a_point_list_matches_truth_and_core(headless_slicer, case):
    from LiverKidneySegLib.couinaud import landmarksToMarkups
    from LiverKidneySegLib.logic import LiverKidneySegLogicBase
    from LiverKidneySegLib.tables import rowsFromTable

    ph, ct, seg, _, _, _ = case
    scene = headless_slicer.scene
    exact = exact_landmarks(ph)
    points = landmarksToMarkups(exact, scene=scene, name="Landmarks")
    logic = LiverKidneySegLogicBase(scene)
    result, table = logic.plan(
        ct, seg, heightCm=175.0, weightKg=80.0, landmarksNode=points, resectSegments="right_hepatectomy"
    )
    # the exact Couinaud truth of the phantom: every segment found
    truth = np.asarray(couinaud_truth(ph).array)
    masks = _couinaudMasks(logic.lastCouinaudSegmentation, ph.grid)
    scores = [dice(masks[s], truth == s) for s in range(1, 9)]
    assert min(scores) >= 0.85 and np.mean(scores) >= 0.90, np.round(scores, 3)
    # the core on the same label map and landmarks: the same segments, voxel for voxel, same FLR
    expected = run_plan(
        ph.product_labels(),
        PRODUCT_LABELS,
        PlanOptions(
            resection=Resection(segments=(5, 6, 7, 8)),
            patient=Patient(175.0, 80.0),
            surfaces=False,
            landmarks=exact,
        ),
    )
    for s in range(1, 9):
        assert np.array_equal(masks[s], np.asarray(expected.couinaud.labels.array) == s), s
    got, want = result.flr.to_dict(), expected.flr.to_dict()
    for key in ("tlv_ml", "resected_ml", "flr_ml", "flr_percent", "sflr_percent"):
        assert got[key] == pytest.approx(want[key], rel=1e-9), key
    assert got["verdict"] == want["verdict"] and got["verdict"]
    # FLR of a right hepatectomy = the left liver (segments 1-4) of the truth, within 2 %
    vox = ph.grid.voxel_volume_ml
    left = np.isin(truth, [1, 2, 3, 4]).sum() * vox
    assert got["flr_ml"] == pytest.approx(left, rel=0.02)
    # the results table: per-segment volumes and FLR/FLR%/sFLR/verdict rows
    rows = rowsFromTable(table)
    seg_rows = {r["name"]: r for r in rows if r["kind"] == "couinaud_segment"}
    assert sorted(seg_rows) == [f"segment_{s}" for s in range(1, 9)]
    for s in range(1, 9):
        assert seg_rows[f"segment_{s}"]["volume_ml"] == pytest.approx(masks[s].sum() * vox, rel=1e-3)
        assert ("resected" in seg_rows[f"segment_{s}"]["note"]) == (s >= 5)
    measures = {r["name"]: r for r in rows if r["kind"] == "measure"}
    assert float(measures["flr_percent"]["value"]) == pytest.approx(want["flr_percent"], abs=0.01)
    assert float(measures["sflr_percent"]["value"]) == pytest.approx(want["sflr_percent"], abs=0.01)
    assert measures["verdict"]["value"] == want["verdict"]
    # planning again writes into the same node, replaces (never duplicates), and Couinaud
    # segments in the organ segmentation are never read as organs
    node = logic.lastCouinaudSegmentation
    again, _ = logic.plan(ct, seg, landmarksNode=points, couinaudSegmentationNode=node, resectSegments="2,3")
    assert node.GetSegmentation().GetNumberOfSegments() == 8
    assert again.flr.to_dict()["resection"]["segments"] == [2, 3]
    # Couinaud segments written into the organ segmentation itself are results, not organs
    logic.plan(ct, seg, landmarksNode=points, couinaudSegmentationNode=seg)
    assert seg.GetSegmentation().GetNumberOfSegments() == 8 + len(result.volumes)
    third, _ = logic.plan(ct, seg, landmarksNode=points, couinaudSegmentationNode=node)
    assert sorted(third.volumes) == sorted(result.volumes)
    assert third.volumes["liver"].volume_ml == pytest.approx(result.volumes["liver"].volume_ml, rel=1e-12)
    for s in range(1, 9):
        seg.GetSegmentation().RemoveSegment(f"couinaud_{s}")
    assert seg.GetSegmentation().GetNumberOfSegments() == len(result.volumes)
    scene.RemoveNode(points)


def test_landmarks_follow_a_parent_transform(headless_slicer, case):
    """The CT and the landmarks moved together by a transform: the same segments (the points
    are brought into the CT's own RAS). The organ segmentation stays untransformed here; the
    case with all three under one transform is :func:`test_segmentation_under_the_same_transform`."""
    import vtk

    from LiverKidneySegLib.couinaud import landmarksToMarkups
    from LiverKidneySegLib.logic import LiverKidneySegLogicBase

    ph, ct, seg, _, _, _ = case
    scene = headless_slicer.scene
    logic = LiverKidneySegLogicBase(scene)
    exact = exact_landmarks(ph)
    points = landmarksToMarkups(exact, scene=scene, name="Landmarks")
    reference, _ = logic.plan(ct, seg, landmarksNode=points)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 25.0)
    matrix.SetElement(2, 3, -12.0)
    transform.SetMatrixTransformToParent(matrix)
    for node in (ct, points):
        node.SetAndObserveTransformNodeID(transform.GetID())
    try:
        moved, _ = logic.plan(ct, seg, landmarksNode=points)
        assert np.array_equal(moved.couinaud.labels.array, reference.couinaud.labels.array)
        assert logic.lastCouinaudSegmentation.GetParentTransformNode() is transform
        # the landmarks left behind (not transformed): different segments, not a silent match
        points.SetAndObserveTransformNodeID(None)
        with pytest.raises(InputError):
            logic.plan(ct, seg, landmarksNode=points)
    finally:
        for node in (ct, points):
            node.SetAndObserveTransformNodeID(None)
        scene.RemoveNode(points)


def test_segmentation_under_the_same_transform(headless_slicer, case):
    """CT, segmentation and landmarks under one parent transform: the same segments as without it
    (segments were read with the parent transform applied but placed on the CT's local grid)."""
    import vtk

    from LiverKidneySegLib.couinaud import landmarksToMarkups
    from LiverKidneySegLib.logic import LiverKidneySegLogicBase

    ph, ct, seg, _, _, _ = case
    scene = headless_slicer.scene
    logic = LiverKidneySegLogicBase(scene)
    points = landmarksToMarkups(exact_landmarks(ph), scene=scene, name="Landmarks")
    reference, _ = logic.plan(ct, seg, landmarksNode=points)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 25.0)
    transform.SetMatrixTransformToParent(matrix)
    for node in (ct, seg, points):
        node.SetAndObserveTransformNodeID(transform.GetID())
    try:
        moved, _ = logic.plan(ct, seg, landmarksNode=points)
        assert np.array_equal(moved.couinaud.labels.array, reference.couinaud.labels.array)
    finally:
        for node in (ct, seg, points):
            node.SetAndObserveTransformNodeID(None)
        scene.RemoveNode(points)


def test_proposed_landmarks_from_vessel_segments(headless_slicer, case):
    from LiverKidneySegLib.couinaud import landmarksFromMarkups
    from LiverKidneySegLib.logic import LiverKidneySegLogicBase
    from lkseg.planning import LabelIndex, couinaud_segments, propose_landmarks

    ph, ct, _, vessels, labels, table = case
    logic = LiverKidneySegLogicBase(headless_slicer.scene)
    points = logic.proposeLandmarks(ct, vessels)
    labelsOf = [points.GetNthControlPointLabel(i) for i in range(points.GetNumberOfControlPoints())]
    assert labelsOf.count("PB") == 1 and any(x.startswith("RHV") for x in labelsOf)
    # the same landmarks as the core proposes from the phantom's own vessel masks
    arr = np.asarray(labels.array)
    core = propose_landmarks(ph.grid, arr == 20, arr == 21, arr == 22)
    back = landmarksFromMarkups(points)
    assert np.allclose(back.portal_bifurcation, core.portal_bifurcation, atol=1e-3)
    assert np.allclose(back.right_hepatic_vein, core.right_hepatic_vein, atol=1e-3)
    result, _ = logic.plan(ct, vessels, landmarksNode=points, resectSegments="left_lateral_sectionectomy")
    truth = np.asarray(couinaud_truth(ph).array)
    scores = [dice(np.asarray(result.couinaud.labels.array) == s, truth == s) for s in range(1, 9)]
    assert np.mean(scores) >= 0.85, np.round(scores, 3)
    assert np.array_equal(
        result.couinaud.labels.array, couinaud_segments(LabelIndex.build(labels, table), core).labels.array
    )
    # planning with autoLandmarks and no point list gives the same segments
    auto, _ = logic.plan(ct, vessels, autoLandmarks=True, resectSegments="2,3")
    assert np.array_equal(auto.couinaud.labels.array, result.couinaud.labels.array)
    # the user moves a point: the plan uses the moved point (and says the landmarks are the user's)
    pb = labelsOf.index("PB")
    moved = np.add(core.portal_bifurcation, (0.0, 0.0, -6.0))
    points.SetNthControlPointPositionWorld(pb, *moved)
    after, _ = logic.plan(ct, vessels, landmarksNode=points)
    assert np.allclose(after.couinaud.landmarks.portal_bifurcation, moved)
    assert after.couinaud.landmarks.source.startswith("user")
    assert not np.array_equal(after.couinaud.labels.array, result.couinaud.labels.array)
    headless_slicer.scene.RemoveNode(points)


def test_bad_landmark_input_is_refused_clearly(headless_slicer, case):
    from LiverKidneySegLib.couinaud import landmarkTemplate
    from LiverKidneySegLib.logic import LiverKidneySegLogicBase

    ph, ct, seg, _, _, _ = case
    scene = headless_slicer.scene
    logic = LiverKidneySegLogicBase(scene)
    before = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    with pytest.raises(InputError, match="needs the segments"):  # segments without landmarks
        logic.plan(ct, seg, resectSegments="5,6,7,8")
    with pytest.raises(InputError, match="hepatic_vein"):  # no vessel segments to propose from
        logic.proposeLandmarks(ct, seg)
    with pytest.raises(InputError, match="hepatic_vein"):
        logic.plan(ct, seg, autoLandmarks=True)
    with pytest.raises(InputError, match="numbered 1 to 8"):
        logic.plan(ct, seg, resectSegments="5,9")
    template = landmarkTemplate(scene=scene)
    assert template.GetNumberOfControlPoints() == 9 and template.GetNumberOfDefinedControlPoints() == 0
    assert template.GetNthControlPointLabel(2) == "PB"
    with pytest.raises(InputError, match="no placed point"):
        logic.plan(ct, seg, landmarksNode=template)
    # half placed: the missing landmarks are named
    exact = exact_landmarks(ph)
    template.SetNthControlPointPositionWorld(0, *exact.ivc[0])
    template.SetNthControlPointPositionWorld(2, *exact.portal_bifurcation)
    with pytest.raises(InputError, match="right_hepatic_vein"):
        logic.plan(ct, seg, landmarksNode=template)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == before  # nothing written
    scene.RemoveNode(template)


def test_module_planning_choices_to_logic_arguments(headless_slicer, case):
    """What the module's planning widgets turn into (``planArguments``, used by the widget), run
    through the Logic: a Couinaud preset resects the preset's segments."""
    from LiverKidneySegLib.couinaud import hasVesselSegments, landmarksToMarkups, landmarkTemplate
    from LiverKidneySegLib.logic import LiverKidneySegLogicBase
    from LiverKidneySegLib.planning import planArguments, presetChoices
    from lkseg.planning import PRESETS

    ph, ct, seg, vessels, labels, _ = case
    scene = headless_slicer.scene
    assert not hasVesselSegments(seg) and hasVesselSegments(vessels)
    choices = dict((label.split(" (")[0], text) for label, text in presetChoices())
    assert choices["Right hepatectomy"] == "5,6,7,8" and choices["Left lateral sectionectomy"] == "2,3"
    assert len(choices) == len(PRESETS)
    template = landmarkTemplate(scene=scene)
    plane = scene.AddNewNodeByClass("vtkMRMLMarkupsPlaneNode")
    # an unplaced landmark list does not block plane planning; the other modes' choices are ignored
    args = planArguments(
        "plane", resectionPlaneNode=plane, resectionSegmentName="Liver", couinaudResection="2,3", landmarksNode=template
    )
    assert args["resectionPlaneNode"] is plane and args["landmarksNode"] is None
    assert args["resectionSegmentName"] is None and args["resectSegments"] is None and not args["autoLandmarks"]
    args = planArguments("segment", resectionPlaneNode=plane, resectionSegmentName="Liver", heightCm=0.0)
    assert args["resectionSegmentName"] == "Liver" and args["resectionPlaneNode"] is None and args["heightCm"] is None
    with pytest.raises(InputError, match="Couinaud segments to resect"):
        planArguments("couinaud", couinaudResection="  ")
    # Couinaud mode: an unplaced list is passed on (and refused by the Logic with a clear message)
    assert planArguments("couinaud", couinaudResection="2,3", landmarksNode=template)["landmarksNode"] is template
    # no list, vessel segments present: proposed automatically
    args = planArguments("couinaud", couinaudResection=choices["Left lateral sectionectomy"], vesselsPresent=True)
    assert args["autoLandmarks"] and args["landmarksNode"] is None
    logic = LiverKidneySegLogicBase(scene)
    result, _ = logic.plan(ct, vessels, **args)
    assert result.flr.to_dict()["resection"]["segments"] == [2, 3]
    # liver parenchyma of the label map planned on (the vessel segments are not liver) in segments 2-3
    parenchyma = np.asarray(labels.array) == PRODUCT_LABELS.value_of("liver")
    inside = np.isin(np.asarray(result.couinaud.labels.array), [2, 3]) & parenchyma
    resected = inside.sum() * ph.grid.voxel_volume_ml
    assert result.flr.resected_ml == pytest.approx(resected, rel=0.02)
    # placed landmarks in Couinaud mode are used as given
    points = landmarksToMarkups(exact_landmarks(ph), scene=scene)
    args = planArguments("couinaud", couinaudResection="7", landmarksNode=points, vesselsPresent=True)
    assert args["landmarksNode"] is points and not args["autoLandmarks"]
    for node in (template, plane, points):
        scene.RemoveNode(node)


def test_module_self_test_check(headless_slicer):
    """The check the module's *Reload and Test* runs in Slicer (phantom seed 7: proposed landmarks)."""
    from LiverKidneySegLib.couinaud import checkCouinaudPlanning
    from LiverKidneySegLib.logic import LiverKidneySegLogicBase

    logic = LiverKidneySegLogicBase(headless_slicer.scene)
    try:
        outcome = checkCouinaudPlanning(logic, headless_slicer.scene)
    finally:
        logic.cleanup()
        headless_slicer.clear()
    assert len(outcome["dice"]) == 8 and min(outcome["dice"]) > 0.5
    assert outcome["couinaudNode"].GetSegmentation().GetNumberOfSegments() == 8
