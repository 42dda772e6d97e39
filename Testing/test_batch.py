"""Batch runner: discovery, outputs, summary, failures, resume, cancellation, kill safety, CLI.

Runs with a cheap threshold engine (``test_batch_support.ThresholdEngine``) on small synthetic
cases whose exact label maps are known, so every output is checked voxel by voxel.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_batch_support import SPACING, ThresholdEngine, expected_ml, make_case, make_cohort

from lkseg.batch import BatchOptions, CaseInput, discover_cases, engine_identity, run_batch
from lkseg.batch.discovery import safe_case_id
from lkseg.batch.engine import EngineResult
from lkseg.batch.options import parse_plan_options
from lkseg.errors import InputError, ModelError
from lkseg.io import read_label_map, write_image
from lkseg.progress import CancelToken

FAST = BatchOptions(outputs=("seg_nrrd", "nifti", "dicom_seg"))


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


# -- discovery ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("cohort")
    return root, make_cohort(root)


def test_discovery_finds_files_and_dicom_series(cohort, tmp_path):
    root, _ = cohort
    cases = discover_cases(root)
    by_id = {c.case_id: c for c in cases}
    assert sorted(by_id) == ["broken", "case0", "case1", "case2", "dicom__patA", "dicom__patB"]
    pat_a = by_id["dicom__patA"]
    assert pat_a.kind == "dicom" and pat_a.modality == "CT" and len(pat_a.files) == 12 and pat_a.series_uid
    assert by_id["dicom__patB"].modality == "MR"
    assert by_id["case1"].kind == "image" and by_id["case1"].path == root / "case1.nii.gz"
    # stable: the same ids on a second scan
    assert [c.case_id for c in discover_cases(root)] == [c.case_id for c in cases]


def test_discovery_nested_two_series_in_one_folder_and_exclusions(tmp_path):
    vol, _ = make_case(1)
    from test_batch_support import write_dicom_case

    write_dicom_case(vol, tmp_path / "in" / "study", prefix="a_")
    write_dicom_case(make_case(2)[0], tmp_path / "in" / "study", prefix="b_")
    write_image(vol, tmp_path / "in" / "sub" / "deep" / "x.nrrd")
    (tmp_path / "in" / "sub" / "notes.txt").write_text("not an image")
    (tmp_path / "in" / ".hidden.nii.gz").write_bytes(b"x")
    write_image(vol, tmp_path / "in" / "out" / "cases" / "old" / "prev.nii.gz")  # the output folder
    cases = discover_cases(tmp_path / "in", exclude=tmp_path / "in" / "out")
    dicom = [c for c in cases if c.kind == "dicom"]
    assert len(dicom) == 2 and len({c.series_uid for c in dicom}) == 2
    assert all(len(c.files) == 12 and c.path == tmp_path / "in" / "study" for c in dicom)
    # both series carry SeriesNumber 1, so the UID tells them apart
    expected = sorted(["sub__deep__x"] + [f"study__{c.series_uid[-8:].replace('.', '_')}" for c in dicom])
    assert sorted(c.case_id for c in cases) == expected


def test_discovery_csv_list(tmp_path, cohort):
    root, _ = cohort
    lst = tmp_path / "list.csv"
    lst.write_text(
        f"path,case_id,height_cm,weight_kg\n{root / 'case0.nii.gz'},first,180,80\n{root / 'dicom'}/patA,,165,\n"
    )
    cases = discover_cases(lst)
    assert [c.case_id for c in cases] == ["first", "patA"]
    assert cases[0].meta == {"height_cm": "180", "weight_kg": "80"} and cases[1].meta == {"height_cm": "165"}
    assert cases[1].kind == "dicom"
    rel = tmp_path / "rel.csv"
    shutil.copy(root / "case1.nii.gz", tmp_path / "c1.nii.gz")
    rel.write_text("path\nc1.nii.gz\n")
    assert discover_cases(rel)[0].path == tmp_path / "c1.nii.gz"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file\nx.nii.gz\n", "'path' column"),
        ("path\nmissing.nii.gz\n", "line 2: no such file"),
        ("path\nlist.txt\n", "unsupported"),
    ],
)
def test_discovery_csv_errors(tmp_path, text, message):
    (tmp_path / "list.txt").write_text("x")
    lst = tmp_path / "cases.csv"
    lst.write_text(text)
    with pytest.raises(InputError, match=message):
        discover_cases(lst)


def test_discovery_empty_and_missing(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(InputError, match="no NIfTI/NRRD image or DICOM"):
        discover_cases(tmp_path)
    with pytest.raises(InputError, match="no such file"):
        discover_cases(tmp_path / "nope")


def test_safe_case_id():
    assert safe_case_id("a/b c/x") == "a__b_c__x"
    assert safe_case_id(".hidden") == "_hidden"
    long = safe_case_id("x" * 300)
    assert len(long) <= 96 and long != safe_case_id("x" * 299)


# -- options and engine identity -------------------------------------------------------------------
def test_options_validation():
    with pytest.raises(InputError, match="unknown output"):
        BatchOptions(outputs=("seg_nrrd", "pdf"))
    with pytest.raises(InputError, match="unknown mesh format"):
        BatchOptions(mesh_formats=("fbx",))
    with pytest.raises(InputError, match="liver_quality"):
        parse_plan_options("liver_quality=bad")
    with pytest.raises(InputError, match="unknown planning setting"):
        parse_plan_options("age=3")
    with pytest.raises(InputError, match="must be a number"):
        parse_plan_options("height_cm=tall")
    assert parse_plan_options("height-cm=180, weight_kg=75") == {"height_cm": "180", "weight_kg": "75"}
    opts = BatchOptions(outputs=("nifti", "seg_nrrd"), plan={"liver_quality": "cirrhosis"})
    assert opts.outputs == ("seg_nrrd", "nifti")
    # per-case CSV values override; options that do not shape outputs are not in the fingerprint
    fp = opts.fingerprint({"height_cm": "170", "other": "x"})
    assert fp["plan"] == {} and "workers" not in fp  # planning output not requested
    fp = BatchOptions(plan={"liver_quality": "cirrhosis"}).fingerprint({"height_cm": "170"})
    assert fp["plan"] == {"height_cm": "170", "liver_quality": "cirrhosis"}
    assert BatchOptions(workers=3, ray="auto").fingerprint() == BatchOptions().fingerprint()


def test_engine_identity():
    class Manifest:
        id, version, weights = "m", "2.1", {"fine.pt": "ab" * 32}

    class LikeAuto:
        manifest = Manifest()

        def predict(self, volume, **kw):
            raise AssertionError

    ident = engine_identity(LikeAuto())
    assert ident["model_id"] == "m" and ident["model_version"] == "2.1" and len(ident["weights"]) == 16
    assert engine_identity(ThresholdEngine("3"))["model_version"] == "3"

    class NoId:
        def predict(self, volume, **kw):
            raise AssertionError

    with pytest.raises(ModelError, match="no model id"):
        engine_identity(NoId())


# -- one full run: outputs, summary, failures ------------------------------------------------------
@pytest.fixture(scope="module")
def first_run(cohort, tmp_path_factory):
    root, expected = cohort
    out = tmp_path_factory.mktemp("out")
    engine = ThresholdEngine()
    seen = []
    report = run_batch(root, out, engine, options=FAST, on_case=seen.append)
    return report, engine, out, expected, seen


def test_run_statuses_and_failures(first_run):
    report, engine, out, _, seen = first_run
    status = {r.case_id: r.status for r in report.results}
    assert status == {
        "broken": "failed",
        "case0": "done",
        "case1": "done",
        "case2": "done",
        "dicom__patA": "done",
        "dicom__patB": "failed",
    }
    assert engine.calls == 4 and engine.threads == {"MainThread"}  # inference on the calling thread only
    assert sorted(r.case_id for r in seen) == sorted(status)
    failures = {row["case_id"]: row for row in read_csv(out / "failures.csv")}
    assert set(failures) == {"broken", "dicom__patB"}
    assert failures["broken"]["stage"] == "read" and "corrupt" in failures["broken"]["error"]
    assert (
        "modality is MR" in failures["dicom__patB"]["error"] and failures["dicom__patB"]["error_type"] == "InputError"
    )
    assert "FAILED during read" in Path(failures["broken"]["log"]).read_text()
    assert not (out / "cases" / "broken").exists()
    run = json.loads((out / "batch.json").read_text())
    assert run["counts"]["done"] == 4 and run["counts"]["failed"] == 2 and run["model"]["model_id"] == "test-threshold"


def test_run_label_outputs_exact(first_run):
    from lkseg.io.segnrrd import read_seg_nrrd

    report, _, _, expected, _ = first_run
    for cid, labels in expected.items():
        res = report.result(cid)
        nifti = read_label_map(res.outputs["nifti"])
        src = res.input.split(" [")[0]
        from lkseg.io import read_image

        image = read_image(src)
        assert nifti.grid.same_as(image.grid), cid
        # DICOM readers may sort k differently from the writer: compare through geometry
        ref = labels if cid.startswith("case") else _dicom_expected(image, labels)
        np.testing.assert_array_equal(nifti.array, ref)
        seg = read_seg_nrrd(res.outputs["seg_nrrd"])
        assert "Liver" in seg.names and "Right kidney" in seg.names
        assert seg.segment("Liver").color == pytest.approx((221 / 255, 130 / 255, 101 / 255), abs=1e-3)
        np.testing.assert_array_equal(seg.mask("Liver"), ref == 1)
        np.testing.assert_array_equal(seg.mask("Liver tumor"), ref == 2)


def _dicom_expected(image, labels) -> np.ndarray:
    # the image was built from make_case(7): the labels follow its HU values exactly
    a = image.array
    out = np.zeros(a.shape, np.uint8)
    out[(a > 20) & (a <= 60)] = 2
    out[(a > 60) & (a < 140)] = 1
    out[a >= 140] = 3
    assert sorted(np.unique(out)) == sorted(np.unique(labels))
    assert (out > 0).sum() == (labels > 0).sum()
    return out


def test_run_dicom_seg_references_source(first_run):
    import pydicom

    from lkseg.io import read_image
    from lkseg.io.dicomseg import read_dicom_seg

    report, _, _, _, _ = first_run
    res = report.result("dicom__patA")
    assert "dicom_seg" in res.outputs and "dicom_seg" not in report.result("case0").outputs
    ds = pydicom.dcmread(res.outputs["dicom_seg"])
    case = next(c for c in discover_cases(Path(res.input.split(" [")[0]).parent) if c.case_id == "patA")
    assert ds.Modality == "SEG"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == case.series_uid
    algo = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "LiverKidneySeg test-threshold" and algo.AlgorithmVersion == "1.0"
    image = read_image(case.path)
    seg = read_dicom_seg(res.outputs["dicom_seg"], reference=image)
    nifti = read_label_map(res.outputs["nifti"])
    np.testing.assert_array_equal(seg.mask("Liver"), nifti.array == 1)


def test_run_summary_and_manifest(first_run, cohort):
    _, _, out, expected, _ = first_run
    rows = {r["case_id"]: r for r in read_csv(out / "summary.csv")}
    assert list(rows) == ["broken", "case0", "case1", "case2", "dicom__patA", "dicom__patB"]
    for cid in ("case0", "case1", "case2"):
        ml = expected_ml(expected[cid])
        assert float(rows[cid]["liver_ml"]) == pytest.approx(ml["liver"], abs=1e-3)
        assert float(rows[cid]["liver_tumor_ml"]) == pytest.approx(ml["liver_tumor"], abs=1e-3)
        assert float(rows[cid]["kidney_right_ml"]) == pytest.approx(ml["kidney_right"], abs=1e-3)
        assert int(rows[cid]["liver_tumor_count"]) == (2 if cid == "case1" else 1)
        tlv = ml["liver"] + ml["liver_tumor"]
        assert float(rows[cid]["total_liver_volume_ml"]) == pytest.approx(tlv, abs=1e-3)
        assert float(rows[cid]["liver_tumor_burden_pct"]) == pytest.approx(100 * ml["liver_tumor"] / tlv, abs=0.01)
        assert float(rows[cid]["kidney_tumor_burden_pct"]) == 0.0
        assert rows[cid]["status"] == "done" and float(rows[cid]["total_s"]) >= float(rows[cid]["infer_s"])
        assert rows[cid]["spacing_mm"] == "x".join(f"{s:.4g}" for s in SPACING)
    assert rows["broken"]["status"] == "failed" and rows["broken"]["error"]
    manifest = json.loads((out / "cases" / "case0" / "manifest.json").read_text())
    root, _ = cohort
    assert (
        manifest["input"]["sha256"]
        == hashlib.sha256(b"case0.nii.gz\0" + (root / "case0.nii.gz").read_bytes()).hexdigest()
    )
    assert manifest["model"] == {"model_id": "test-threshold", "model_version": "1.0", "engine": "ThresholdEngine"}
    assert manifest["options"] == FAST.fingerprint()
    assert set(manifest["outputs"]) == {"seg_nrrd", "nifti"}
    log = (out / "logs" / "case0.log").read_text()
    assert "start (new)" in log and "inference" in log and "done in" in log


def test_run_planning_and_meshes(tmp_path):
    src = _small_cohort(tmp_path, 2)
    empty = make_case(0)[0]
    write_image(empty.with_array(np.full(empty.shape, -100, np.int16)), src / "empty.nii.gz")
    lst = tmp_path / "cases.csv"
    lst.write_text("path,height_cm,weight_kg\nin/case0.nii.gz,182,90\nin/case1.nii.gz,,\nin/empty.nii.gz,,\n")
    opts = BatchOptions(
        mesh_formats=("glb", "stl"), plan={"height_cm": "170", "weight_kg": "60", "liver_quality": "cirrhosis"}
    )
    report = run_batch(lst, tmp_path / "out", ThresholdEngine(), options=opts)
    assert report.counts["done"] == 3
    rows = {r["case_id"]: r for r in read_csv(tmp_path / "out" / "summary.csv")}
    for cid, height in (("case0", 182.0), ("case1", 170.0)):
        case_dir = tmp_path / "out" / "cases" / cid
        plan = json.loads((case_dir / f"{cid}_plan.json").read_text())
        manifest = json.loads((case_dir / "manifest.json").read_text())
        assert plan["patient"]["height_cm"] == height and plan["patient"]["liver_quality"] == "cirrhosis"
        assert plan["provenance"]["inputs"]["image"]["sha256"] == manifest["input"]["sha256"]
        assert plan["provenance"]["model"]["model_id"] == "test-threshold"
        volumes = plan["result"]["volumes"]
        assert volumes["liver"]["volume_ml"] == pytest.approx(float(rows[cid]["liver_ml"]), abs=1e-3)
        tumours = [les for les in plan["result"]["lesions"] if les["structure"] == "liver_tumor"]
        assert len(tumours) == int(rows[cid]["liver_tumor_count"]) == (2 if cid == "case1" else 1)
        assert float(rows[cid]["total_liver_volume_ml"]) == pytest.approx(
            plan["result"]["total_liver_volume_ml"], abs=1e-3
        )
        glb = (case_dir / "meshes" / f"{cid}_scene.glb").read_bytes()
        assert glb[:4] == b"glTF" and len(glb) > 1000
        from vtkmodules.vtkIOGeometry import vtkSTLReader

        reader = vtkSTLReader()
        reader.SetFileName(str(case_dir / "meshes" / f"{cid}_liver.stl"))
        reader.Update()
        assert reader.GetOutput().GetNumberOfPoints() > 50
        assert set(manifest["outputs"]) >= {"plan", "mesh:" + f"{cid}_scene.glb", "seg_nrrd", "nifti"}
    # an empty result is a finished case with a warning, not a failure
    empty_res = report.result("empty")
    assert empty_res.status == "done" and "empty segmentation" in rows["empty"]["warnings"]
    assert set(empty_res.outputs) == {"seg_nrrd", "nifti"}


def test_per_case_resection_plane_gives_the_flr(tmp_path):
    """A ``resection_plane`` column makes planning compute that case's FLR (the same numbers as
    planning the written label map directly); cases without one have empty FLR columns."""
    from lkseg.io import read_image, read_label_map
    from lkseg.planning import PlanOptions, Resection, ResectionPlane, run_plan

    src = _small_cohort(tmp_path, 2)
    engine = ThresholdEngine()
    probe = engine.predict(read_image(src / "case0.nii.gz"))
    liver = np.argwhere(probe.labels.array == 1)  # (k, j, i)
    centre_ras = np.asarray(probe.labels.grid.index_to_ras(liver[:, ::-1].mean(axis=0))).reshape(-1)
    plane = f"{centre_ras[0]:.3f} {centre_ras[1]:.3f} {centre_ras[2]:.3f}:1 0 0:positive"  # no commas in CSV
    lst = tmp_path / "cases.csv"
    lst.write_text(
        f"path,height_cm,weight_kg,resection_plane\nin/case0.nii.gz,175,70,{plane}\nin/case1.nii.gz,175,70,\n"
    )
    report = run_batch(lst, tmp_path / "out", ThresholdEngine(), options=BatchOptions(outputs=("nifti", "plan")))
    assert report.counts["done"] == 2, [(r.case_id, r.error) for r in report.results]
    rows = {r["case_id"]: r for r in read_csv(tmp_path / "out" / "summary.csv")}
    labels = read_label_map(tmp_path / "out" / "cases" / "case0" / "case0_labels.nii.gz")
    expected = run_plan(
        labels,
        probe.label_table,
        PlanOptions(resection=Resection(planes=(ResectionPlane.parse(plane),)), surfaces=False),
    ).flr
    assert 5.0 < expected.flr_percent < 95.0  # the plane through the centre cuts the liver
    row = rows["case0"]
    assert float(row["flr_ml"]) == pytest.approx(expected.flr_ml, abs=1e-3)
    assert float(row["flr_percent"]) == pytest.approx(expected.flr_percent, abs=1e-3)
    assert float(row["sflr_percent"]) > 0 and row["flr_verdict"] in ("sufficient", "insufficient")
    plan = json.loads((tmp_path / "out" / "cases" / "case0" / "case0_plan.json").read_text())
    assert plan["result"]["flr"]["flr_ml"] == pytest.approx(expected.flr_ml, abs=1e-3)
    assert all(rows["case1"][c] == "" for c in ("flr_ml", "flr_percent", "sflr_percent", "flr_verdict"))
    # a changed plane redoes that case only
    lst.write_text(lst.read_text().replace(":1 0 0:positive", ":1 0 0:negative"))
    again = run_batch(lst, tmp_path / "out", ThresholdEngine(), options=BatchOptions(outputs=("nifti", "plan")))
    assert again.result("case0").status == "done" and again.result("case1").status == "skipped"
    rows = {r["case_id"]: r for r in read_csv(tmp_path / "out" / "summary.csv")}
    assert float(rows["case0"]["flr_percent"]) < 100.0 - expected.flr_percent + 1.0


def test_resection_plane_errors(tmp_path):
    src = _small_cohort(tmp_path, 1)
    lst = tmp_path / "cases.csv"
    lst.write_text("path,resection_plane\nin/case0.nii.gz,1,2:0,0,1\n")
    with pytest.raises(InputError, match="line 2: resection plane"):
        discover_cases(lst)
    with pytest.raises(InputError, match="belongs to one patient"):
        BatchOptions(plan={"resection_plane": "0,0,0:1,0,0"})
    # a plane that misses the liver fails that case with the planning error, the run goes on
    lst.write_text('path,resection_plane\nin/case0.nii.gz,"9000,0,0:1,0,0"\n')  # quoted commas work too
    report = run_batch(lst, tmp_path / "out", ThresholdEngine(), options=BatchOptions(outputs=("nifti", "plan")))
    assert report.counts["failed"] == 1 and "liver" in report.result("case0").error
    assert src.exists()


# -- resume -----------------------------------------------------------------------------------------
def _small_cohort(tmp_path: Path, n: int = 3) -> Path:
    src = tmp_path / "in"
    make_cohort(src, n_nifti=n, dicom=False, bad=False)
    return src


def test_resume_skips_finished_and_redoes_changed(tmp_path):
    src, out = _small_cohort(tmp_path), tmp_path / "out"
    opts = BatchOptions(outputs=("nifti",))
    run_batch(src, out, ThresholdEngine(), options=opts)
    engine = ThresholdEngine()
    again = run_batch(src, out, engine, options=opts)
    assert engine.calls == 0 and again.counts["skipped"] == 3
    assert all(r.reason == "finished" for r in again.results)
    assert {r["status"] for r in read_csv(out / "summary.csv")} == {"skipped"}
    assert read_csv(out / "summary.csv")[0]["liver_ml"] != ""  # values come back from the manifest
    # change one input's bytes, touch another (same bytes, new date)
    write_image(make_case(4)[0], src / "case1.nii.gz")
    os.utime(src / "case2.nii.gz", ns=(time.time_ns(), time.time_ns() + 10**9))
    engine = ThresholdEngine()
    third = run_batch(src, out, engine, options=opts)
    assert engine.calls == 1
    assert {r.case_id: (r.status, r.reason) for r in third.results} == {
        "case0": ("skipped", "finished"),
        "case1": ("done", "input changed"),
        "case2": ("skipped", "finished (input re-hashed)"),
    }
    np.testing.assert_array_equal(
        read_label_map(out / "cases" / "case1" / "case1_labels.nii.gz").array, make_case(4)[1]
    )
    # the re-hashed case has its new date recorded: the next run needs no hash
    assert run_batch(src, out, ThresholdEngine(), options=opts).result("case2").reason == "finished"
    # a new model version redoes everything; so do new options; a deleted output redoes its case
    engine = ThresholdEngine(version="1.1")
    fourth = run_batch(src, out, engine, options=opts)
    assert (
        engine.calls == 3
        and fourth.result("case0").reason == "model changed (test-threshold 1.0 -> test-threshold 1.1)"
    )
    fifth = run_batch(src, out, engine, options=BatchOptions(outputs=("nifti", "seg_nrrd")))
    assert fifth.counts["done"] == 3 and fifth.result("case0").reason == "options changed"
    (out / "cases" / "case0" / "case0.seg.nrrd").unlink()
    sixth = run_batch(src, out, engine, options=BatchOptions(outputs=("nifti", "seg_nrrd")))
    assert sixth.counts == {"done": 1, "skipped": 2, "failed": 0, "cancelled": 0, "pending": 0}
    assert sixth.result("case0").reason == "output missing: case0.seg.nrrd"
    forced = run_batch(src, out, engine, options=BatchOptions(outputs=("nifti", "seg_nrrd"), force=True))
    assert forced.counts["done"] == 3


def test_failed_cases_are_retried(tmp_path):
    src, out = _small_cohort(tmp_path, 1), tmp_path / "out"
    (src / "late.nii.gz").write_bytes(b"corrupt")
    first = run_batch(src, out, ThresholdEngine(), options=BatchOptions(outputs=("nifti",)))
    assert first.result("late").status == "failed"
    write_image(make_case(2)[0], src / "late.nii.gz")
    second = run_batch(src, out, ThresholdEngine(), options=BatchOptions(outputs=("nifti",)))
    assert second.result("late").status == "done" and second.result("case0").status == "skipped"
    assert read_csv(out / "failures.csv") == []


def test_cancel_keeps_finished_cases_and_leaves_nothing_half_written(tmp_path):
    src, out = _small_cohort(tmp_path, 4), tmp_path / "out"
    token = CancelToken()
    engine = ThresholdEngine(delay=0.2, cancel_on_call=2, token=token)
    fractions = []
    report = run_batch(
        src,
        out,
        engine,
        options=BatchOptions(outputs=("nifti", "seg_nrrd"), prefetch=1),
        cancel=token,
        progress=lambda f, m: fractions.append(f),
    )
    status = {r.case_id: r.status for r in report.results}
    assert status["case0"] == "done" and status["case1"] == "cancelled" and report.cancelled
    assert set(status.values()) == {"done", "cancelled"} and engine.calls == 2
    assert sorted(p.name for p in (out / "cases").iterdir()) == ["case0"]  # no temporary folder left
    assert fractions == sorted(fractions)
    rerun_engine = ThresholdEngine()
    rerun = run_batch(src, out, rerun_engine, options=BatchOptions(outputs=("nifti", "seg_nrrd")))
    assert rerun_engine.calls == 3 and rerun.result("case0").status == "skipped"


def test_stale_temporaries_removed_and_lock(tmp_path):
    src, out = _small_cohort(tmp_path, 1), tmp_path / "out"
    stale = out / "cases" / ".case0.tmp-999-abcd"
    stale.mkdir(parents=True)
    (stale / "half.nii.gz").write_bytes(b"half")
    run_batch(src, out, ThresholdEngine(), options=BatchOptions(outputs=("nifti",)))
    assert not stale.exists()
    with (out / ".lkseg-batch.lock").open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        with pytest.raises(InputError, match="another batch run"):
            run_batch(src, out, ThresholdEngine())


def test_progress_callback_and_workers(tmp_path):
    src = _small_cohort(tmp_path, 4)
    events = []
    report = run_batch(
        src,
        tmp_path / "out",
        ThresholdEngine(),
        options=BatchOptions(outputs=("nifti",), workers=2),
        progress=lambda f, m: events.append((f, m)),
    )
    assert report.counts["done"] == 4
    fractions = [f for f, _ in events]
    assert fractions[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in fractions)
    assert any("thresholding" in m for _, m in events)  # the engine's own progress is forwarded
    assert report.cases_per_hour > 0


def test_case_list_and_explicit_cases(tmp_path):
    src = _small_cohort(tmp_path, 2)
    cases = [CaseInput("only", src / "case1.nii.gz", "image", files=(src / "case1.nii.gz",))]
    report = run_batch(cases, tmp_path / "out", ThresholdEngine(), options=BatchOptions(outputs=("nifti",)))
    assert [r.case_id for r in report.results] == ["only"] and report.counts["done"] == 1


def test_engine_errors_fail_the_case_only(tmp_path):
    src = _small_cohort(tmp_path, 2)

    class Picky(ThresholdEngine):
        def predict(self, volume, **kw):
            if volume.meta["source"].endswith("case0.nii.gz"):
                raise InputError("values are not in the HU range", volume.meta["source"])
            if volume.meta["source"].endswith("case1.nii.gz"):
                return EngineResult(volume, {1: "liver"})
            return super().predict(volume, **kw)

    report = run_batch(src, tmp_path / "out", Picky(), options=BatchOptions(outputs=("nifti",)))
    assert report.result("case0").stage == "infer" and "HU range" in report.result("case0").error
    # case1: the engine returned the CT itself (int16, not a label map) - caught when writing
    assert report.result("case1").status == "failed"


# -- kill safety: SIGKILL mid-run, then resume -----------------------------------------------------
_KILL_SCRIPT = """
import sys
sys.path.insert(0, {testing!r})
from test_batch_support import ThresholdEngine
from lkseg.batch import BatchOptions, run_batch
run_batch({src!r}, {out!r}, ThresholdEngine(delay=0.4), options=BatchOptions(outputs=("nifti", "seg_nrrd")))
"""


def test_sigkill_loses_at_most_the_case_in_flight(tmp_path):
    src, out = _small_cohort(tmp_path, 6), tmp_path / "out"
    script = tmp_path / "run.py"
    script.write_text(_KILL_SCRIPT.format(testing=str(Path(__file__).parent), src=str(src), out=str(out)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(out.glob("cases/*/manifest.json"))) < 2:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    finished = sorted(p.parent.name for p in out.glob("cases/*/manifest.json"))
    assert 2 <= len(finished) < 6, finished
    # every visible case folder is complete (manifest written last, then the folder renamed)
    visible = sorted(p.name for p in (out / "cases").iterdir() if not p.name.startswith("."))
    assert visible == finished
    engine = ThresholdEngine()
    rerun = run_batch(src, out, engine, options=BatchOptions(outputs=("nifti", "seg_nrrd")))
    assert engine.calls == 6 - len(finished)
    assert sorted(r.case_id for r in rerun.results if r.status == "skipped") == finished
    assert rerun.counts["done"] == 6 - len(finished)
    assert not [p for p in (out / "cases").iterdir() if p.name.startswith(".")]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [0, 1])
def test_hard_interrupt_returns_at_once_and_keeps_outputs_whole(tmp_path, workers):
    """A second Ctrl-C (KeyboardInterrupt in the inference thread) stops the run without waiting."""
    src, out = _small_cohort(tmp_path, 5), tmp_path / "out"

    class Interrupting(ThresholdEngine):
        def predict(self, volume, **kw):
            if self.calls == 2:
                raise KeyboardInterrupt
            return super().predict(volume, **kw)

    with pytest.raises(KeyboardInterrupt):
        run_batch(src, out, Interrupting(), options=BatchOptions(outputs=("nifti",), prefetch=1, workers=workers))
    import threading

    deadline = time.monotonic() + 10  # the writer finishes the case it holds, in the background, then exits
    while time.monotonic() < deadline and any(t.name.startswith("lkseg-batch-") for t in threading.enumerate()):
        time.sleep(0.05)
    assert not any(t.name.startswith("lkseg-batch-") for t in threading.enumerate())
    assert not [p for p in (out / "cases").iterdir() if p.name.startswith(".")]
    finished = sorted(p.parent.name for p in out.glob("cases/*/manifest.json"))
    assert finished == sorted(p.name for p in (out / "cases").iterdir())
    rows = {r["case_id"]: r["status"] for r in read_csv(out / "summary.csv")}
    assert rows["case4"] == "cancelled" and set(rows.values()) <= {"done", "cancelled"}
    rerun = run_batch(src, out, ThresholdEngine(), options=BatchOptions(outputs=("nifti",)))
    assert rerun.counts["done"] + rerun.counts["skipped"] == 5


def test_local_runner_modes_give_the_same_outputs(tmp_path):
    """Sequential (no reader, no writer thread), default, and several writers: same results."""
    from lkseg.batch.runner import writer_threads

    assert writer_threads(BatchOptions()) == 1 and writer_threads(BatchOptions(workers=0)) == 0
    src = _small_cohort(tmp_path, 4)
    labels = {}
    for name, opts in {"seq": dict(prefetch=0, workers=0), "default": {}, "many": dict(prefetch=3, workers=3)}.items():
        engine = ThresholdEngine()
        report = run_batch(src, tmp_path / name, engine, options=BatchOptions(outputs=("nifti",), **opts))
        assert report.counts["done"] == 4 and engine.threads == {"MainThread"}
        labels[name] = [
            read_label_map(tmp_path / name / "cases" / f"case{i}" / f"case{i}_labels.nii.gz").array for i in range(4)
        ]
    for name in ("default", "many"):
        for a, b in zip(labels["seq"], labels[name]):
            np.testing.assert_array_equal(a, b)
