"""Segment-based (Couinaud) planning of the web page, without a browser (trame-slicer scene).

Truth: a phantom with exact labels and exact Couinaud landmarks (``lkseg.phantom.couinaud``), and
``lkseg plan --resect right_hepatectomy --landmarks ...`` run as a separate process on the same
masks and landmarks file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("trame_slicer", reason="the web extra is not installed (pip install 'liverkidneyseg[web]')")
pytestmark = pytest.mark.mrml

ROOT = Path(__file__).resolve().parents[1]
VESSELS = {20: "hepatic_vein", 21: "portal_vein", 22: "inferior_vena_cava"}


@pytest.fixture(scope="module")
def app():
    from trame_slicer.core import SlicerApp

    from lkseg.web.views import blockTriton

    blockTriton()
    return SlicerApp()


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """Phantom CT, its product masks (.seg.nrrd), the masks with vessel segments, exact landmarks."""
    from lkseg.io import write_seg_nrrd
    from lkseg.labels import PRODUCT_LABELS, LabelTable
    from lkseg.phantom import DETAILED, PhantomConfig, generate_phantom, write_phantom
    from lkseg.phantom.couinaud import exact_landmarks
    from lkseg.segmentation import Segmentation

    out = tmp_path_factory.mktemp("web-couinaud")
    ph = generate_phantom(PhantomConfig(seed=6, size_ijk=(128, 128, 60), spacing=(3.2, 3.2, 4.2), noise_sd=0.0))
    write_phantom(ph, out)
    detailed = np.asarray(ph.labels.array)
    arr = np.asarray(ph.product_labels().array).copy()
    for value, name in VESSELS.items():
        arr[detailed == DETAILED[name]] = value
    table = LabelTable({**dict(PRODUCT_LABELS.items()), **VESSELS})
    write_seg_nrrd(Segmentation.from_label_volume(ph.labels.with_array(arr), table), out / "vessels.seg.nrrd")
    landmarks = exact_landmarks(ph)
    landmarks.save(out / "landmarks.json")
    return out, ph, landmarks


def _session(app, tmp_path, folder):
    from lkseg.web.session import WebSession

    session = WebSession(app, tmp_path / "work")
    session.openVolume(folder / "ct.nii.gz")
    return session


def _cli_plan(folder: Path, out: Path, *extra: str) -> dict:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "lkseg",
            "plan",
            str(folder / "labels.seg.nrrd"),
            "--image",
            str(folder / "ct.nii.gz"),
            "-o",
            str(out),
            "--no-surfaces",
            "--no-render",
            "--reports",
            "json",
            *extra,
        ],
        check=True,
        capture_output=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "LiverKidneySeg")},
    )
    return json.loads((out / "report.json").read_text())["result"]


def test_right_hepatectomy_by_segments_equals_lkseg_plan(app, case, tmp_path):
    from LiverKidneySegLib.segmentations import findSegmentId, segmentMask
    from lkseg.io import read_label_map

    folder, ph, _ = case
    session = _session(app, tmp_path, folder)
    cou = session.couinaud
    names = cou.openSegmentation(folder / "labels.seg.nrrd")
    assert "liver" in names and session.logic.canUndo  # one undo step
    landmarks, check = cou.readLandmarks(folder / "landmarks.json")
    assert check is not None and check().volumes_ml[7] > 0  # the worker-thread check labels the liver
    cou.setLandmarks(landmarks)
    assert cou.definedPoints() == len(landmarks.ivc) + 1 + sum(
        len(landmarks.vein(k)) for k in ("right_hepatic_vein", "middle_hepatic_vein", "left_hepatic_vein")
    )
    cou.setResection("segments", (5, 6, 7, 8))
    result, _table = session.startPlan(None).finish(120)
    t0 = time.perf_counter()
    page = cou.planDone(result)  # on the scene's thread: the segments node and its 3D surfaces
    print(f"\nplan result applied (Couinaud segments node + 3D surfaces) in {time.perf_counter() - t0:.2f} s")

    cli = _cli_plan(
        folder, tmp_path / "cli", "--resect", "right_hepatectomy", "--landmarks", str(folder / "landmarks.json")
    )
    flr = result.flr
    assert flr.resection == {"kind": "segments", "segments": [5, 6, 7, 8]} == cli["flr"]["resection"]
    for key in ("flr_percent", "flr_ml", "resected_ml", "tlv_ml"):
        assert getattr(flr, key) == pytest.approx(cli["flr"][key], abs=1e-4), key  # report rounding
    assert page["remnant_ml"] == pytest.approx(cli["flr"]["flr_ml"], abs=0.01)
    assert [r["segment"] for r in page["segments"] if r["resected"]] == [5, 6, 7, 8]
    cliVolumes = {row["segment"]: row["volume_ml"] for row in cli["couinaud"]["segments"]}
    assert {r["segment"]: r["volume_ml"] for r in page["segments"]} == pytest.approx(cliVolumes, abs=1e-3)
    # the Couinaud segments node, voxel for voxel the CLI's segment map
    node = cou.couinaudNode
    assert node is not None and node.GetScene() is session.scene
    cliSegments = np.asarray(read_label_map(tmp_path / "cli" / "couinaud_segments.nii.gz").array)
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 8
    for i in range(8):
        segment = segmentation.GetNthSegment(i)
        seg = int(segment.GetName().split()[1])
        mask = segmentMask(node, segmentation.GetNthSegmentID(i), ph.grid)
        assert np.array_equal(mask, cliSegments == seg), segment.GetName()
    # 3D: coloured surfaces of the segments, the liver surface hidden meanwhile; and back
    display = session.segmentationNode.GetDisplayNode()
    liverId = findSegmentId(session.segmentationNode, "liver")
    assert node.GetDisplayNode().GetVisibility3D() and not display.GetSegmentVisibility3D(liverId)
    assert segmentation.ContainsRepresentation("Closed surface")
    cou.show3D(False)
    assert not node.GetDisplayNode().GetVisibility3D() and display.GetSegmentVisibility3D(liverId)
    cou.show3D(True)
    # the download reproduces the assignment: the landmarks used and the segments
    from lkseg.io import read_seg_nrrd
    from lkseg.planning import CouinaudLandmarks

    saved, segFile = cou.exportJob()()
    back = CouinaudLandmarks.load(saved)
    for key in ("ivc", "right_hepatic_vein", "middle_hepatic_vein", "left_hepatic_vein", "portal_bifurcation"):
        assert np.allclose(getattr(back, key), getattr(landmarks, key), atol=1e-4), key
    exported = read_seg_nrrd(segFile, reference=ph.image)
    assert all(np.array_equal(exported.mask(f"couinaud_{s}"), cliSegments == s) for s in range(1, 9))
    # liver lesions -> their segments (the CLI's table)
    assert {r["lesion"] for r in page["lesions"]} == set(cli["couinaud"]["lesion_segments"])
    # "both": a plane far outside the liver resects nothing more than the segments
    cou.setResection("both", (2, 3))
    session.movePlane(origin=(500.0, 0.0, 0.0), normal=(1.0, 0.0, 0.0))
    both, _ = session.startPlan(None).finish(120)
    left = _cli_plan(folder, tmp_path / "cli-llc", "--resect", "2,3", "--landmarks", str(folder / "landmarks.json"))
    assert both.flr.flr_percent == pytest.approx(left["flr"]["flr_percent"], abs=1e-4)
    session.closeCase()
    assert cou.landmarksNode is None and node.GetScene() is None


def test_propose_from_vessels_and_clear_messages(app, case, tmp_path):
    from lkseg.errors import InputError

    folder, _, _ = case
    session = _session(app, tmp_path, folder)
    cou = session.couinaud
    cou.openSegmentation(folder / "labels.seg.nrrd")
    with pytest.raises(InputError, match="no hepatic_vein and portal_vein segments"):
        cou.proposeLandmarks()
    cou.setResection("segments", (2, 3))
    with pytest.raises(InputError, match="needs the Couinaud landmarks"):
        session.startPlan(None)
    cou.setResection("segments", ())
    with pytest.raises(InputError, match="choose the Couinaud segments"):
        cou.planOptions()
    names = cou.openSegmentation(folder / "vessels.seg.nrrd")
    assert {"hepatic_vein", "portal_vein", "inferior_vena_cava"} <= set(names)
    t0 = time.perf_counter()
    n = cou.proposeLandmarks()
    print(f"\nlandmarks proposed from the vessel segments in {time.perf_counter() - t0:.2f} s (128 x 128 x 60 phantom)")
    kinds = {p["label"].split("-")[0] for p in cou.points()}
    assert n == len(cou.points()) and kinds == {"IVC", "PB", "RHV", "MHV", "LHV"}, cou.points()
    cou.setResection("segments", (2, 3))
    t0 = time.perf_counter()
    result, _ = session.startPlan(None).finish(120)
    print(f"left lateral sectionectomy planned (segments labelled, FLR) in {time.perf_counter() - t0:.2f} s")
    assert result.flr.resection["segments"] == [2, 3] and 50 < result.flr.flr_percent < 100
    session.closeCase()


def test_bad_landmarks_are_refused_and_nothing_is_lost(app, case, tmp_path):
    from lkseg.errors import InputError
    from lkseg.web.couinaud import save_landmarks_upload

    folder, _, landmarks = case
    session = _session(app, tmp_path, folder)
    cou = session.couinaud
    cou.openSegmentation(folder / "labels.seg.nrrd")
    cou.setLandmarks(landmarks)
    before = cou.points()
    segmentsBefore = session.segments()
    # a vein point 120 mm anterior of the liver; an LPS file read as RAS; a missing landmark
    far = [*landmarks.middle_hepatic_vein[:-1], tuple(np.add(landmarks.middle_hepatic_vein[-1], (0.0, 120.0, 0.0)))]
    replace(landmarks, middle_hepatic_vein=far).save(tmp_path / "far.json")
    (tmp_path / "lps.json").write_text(json.dumps({**landmarks.to_dict(), "coordinate_system": "LPS"}))
    (tmp_path / "nopb.json").write_text(
        json.dumps({k: v for k, v in landmarks.to_dict().items() if k != "portal_bifurcation"})
    )
    for name, words in (("far.json", "outside the liver"), ("lps.json", r"outside the liver|contradictory")):
        _, check = cou.readLandmarks(tmp_path / name)
        with pytest.raises(InputError, match=words):
            check()
    with pytest.raises(InputError, match="missing: portal_bifurcation"):
        cou.readLandmarks(tmp_path / "nopb.json")
    with pytest.raises(InputError, match="not a JSON landmarks file"):
        save_landmarks_upload("notes.json", b"IVC here", tmp_path / "up")
    assert not (tmp_path / "up").exists() or not any((tmp_path / "up").iterdir())
    assert cou.points() == before and session.segments() == segmentsBefore
    # landmarks set anyway (e.g. moved in a view): planning refuses with the reason, the masks stay
    cou.setLandmarks(replace(landmarks, middle_hepatic_vein=far))
    cou.setResection("segments", (5, 6, 7, 8))
    with pytest.raises(InputError, match="outside the liver"):
        session.startPlan(None).finish(120)
    assert session.segments() == segmentsBefore
    # a segmentation on another grid is refused before anything changes
    from lkseg.io import write_label_map
    from lkseg.volume import Volume

    write_label_map(Volume.from_array(np.ones((4, 5, 6), np.uint8), spacing=(1.0, 1.0, 1.0)), tmp_path / "other.nii.gz")
    with pytest.raises(InputError):
        cou.openSegmentation(tmp_path / "other.nii.gz")
    assert session.segments() == segmentsBefore
    session.closeCase()


def test_placing_a_landmark_replaces_the_point_of_that_label(app, case, tmp_path):
    folder, _, landmarks = case
    session = _session(app, tmp_path, folder)
    cou = session.couinaud
    cou.setLandmarks(landmarks)
    assert "PB" not in cou.labelChoices() or any(p["label"] == "PB" for p in cou.points())
    assert f"RHV-{len(landmarks.right_hepatic_vein) + 1}" in cou.labelChoices()
    events = []
    cou.onLandmarksChanged = events.append
    cou.startPlacing("PB")
    interaction = session.scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
    assert interaction.GetCurrentInteractionMode() == interaction.Place
    # what Slicer's place widget does on a click: a new point at the clicked position
    target = np.add(landmarks.portal_bifurcation, (3.0, 0.0, 0.0))
    cou.landmarksNode.AddControlPointWorld(*target)
    pb = [p for p in cou.points() if p["label"] == "PB"]
    assert len(pb) == 1 and np.allclose(pb[0]["ras"], target, atol=0.01), cou.points()
    assert events == ["landmark PB placed"] and cou.placing is None
    assert cou.nextLabel("PB") == "PB"  # every kind has points: the same landmark again
    # from an empty list, the picker walks through the missing kinds
    cou.clearLandmarks()
    for label, expected in (
        ("IVC-1", "PB"),
        ("PB", "RHV-1"),
        ("RHV-1", "MHV-1"),
        ("MHV-1", "LHV-1"),
        ("LHV-1", "LHV-1"),
    ):
        cou.startPlacing(label)
        cou.landmarksNode.AddControlPointWorld(*target)
        assert cou.nextLabel(cou.lastPlaced) == expected, (label, cou.points())
    # armed, then a file is loaded instead of clicking: its points are not taken for the click
    cou.startPlacing("LHV-1")
    cou.setLandmarks(landmarks)
    assert cou.placing is None and interaction.GetCurrentInteractionMode() != interaction.Place
    assert [p["label"] for p in cou.points()].count("LHV-1") == 1 and len(events) == 6
    session.closeCase()


def test_vein_plane_that_misses_the_liver_is_refused_on_load(app, tmp_path):
    """A liver filling only the quadrant right-anterior of the IVC; a landmarks file whose left
    hepatic vein (just outside the liver, within the point tolerance) leaves the left lateral
    section empty: loading it gives the core's message and the points already shown stay."""
    from lkseg.errors import InputError
    from lkseg.io import write_image, write_label_map
    from lkseg.planning import CouinaudLandmarks
    from lkseg.volume import Volume

    arr = np.zeros((24, 30, 30), np.uint8)  # ZYX
    arr[2:22, 2:28, 2:28] = 1
    labels = Volume.from_array(arr, spacing=(2.0, 2.0, 3.0), origin=(10.0, -20.0, -30.0))
    write_image(labels.with_array(np.where(arr > 0, 60, -100).astype(np.int16)), tmp_path / "ct.nii.gz")
    write_label_map(labels, tmp_path / "liver.nii.gz")
    ras = labels.grid.index_to_ras(np.argwhere(arr)[:, ::-1].astype(float))
    r0, a0, s_mid = ras[:, 0].min(), ras[:, 1].min(), float(np.median(ras[:, 2]))

    def vein(deg):
        t = np.radians(deg)
        return [(r0 + d * np.cos(t), a0 + d * np.sin(t), s_mid + 10.0) for d in (20.0, 30.0)]

    def landmarks(left_deg):
        return CouinaudLandmarks(
            ivc=((r0, a0, s_mid - 30.0), (r0, a0, s_mid + 30.0)),
            portal_bifurcation=(r0 + 15.0, a0 + 15.0, s_mid),
            right_hepatic_vein=vein(10.0),
            middle_hepatic_vein=vein(45.0),
            left_hepatic_vein=vein(left_deg),
        )

    landmarks(70.0).save(tmp_path / "good.json")
    landmarks(100.0).save(tmp_path / "misses.json")
    session = _session(app, tmp_path, tmp_path)
    cou = session.couinaud
    assert cou.openSegmentation(tmp_path / "liver.nii.gz") == ["liver"]
    good, check = cou.readLandmarks(tmp_path / "good.json")
    check()
    cou.setLandmarks(good)
    before = cou.points()
    _, check = cou.readLandmarks(tmp_path / "misses.json")
    with pytest.raises(InputError, match=r"left lateral \(2, 3\) section: a hepatic vein plane misses the liver"):
        check()
    assert cou.points() == before
    session.closeCase()
