"""The Logic's batch call headless: ``logic.runBatch`` -> ``python -m lkseg batch`` out of process
-> summary dict and a table node in a real MRML scene; resume, failures, cancel.

A tiny random-weight model package keeps it fast: these tests check the wiring (the same
outputs, counts and resumability as :func:`lkseg.batch.run_batch`), not accuracy.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lkseg.labels import PRODUCT_LABELS  # noqa: E402

pytestmark = [pytest.mark.mrml, pytest.mark.usefixtures("private_onnx_cache")]


@pytest.fixture(scope="module")
def lib(headless_slicer):
    from LiverKidneySegLib import batch, logic

    return type("Lib", (), {"batch": batch, "logic": logic})


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """``(source folder, model folder)``: two good cases and one corrupt file; the tiny
    random-weight package and small CTs of the batch tests."""
    from test_batch_auto import small_ct, tiny_package

    from lkseg.io import write_image

    root = tmp_path_factory.mktemp("slicer-batch")
    package = tiny_package(root / "model")
    src = root / "in"
    src.mkdir()
    for seed in (1, 2):
        write_image(small_ct(seed), src / f"case{seed}.nii.gz")
    (src / "broken.nii.gz").write_bytes(b"this is not a NIfTI file")
    return src, str(package.folder)


def _column(table, name):
    t = table.GetTable()
    array = t.GetColumnByName(name)
    assert array is not None, [t.GetColumnName(c) for c in range(t.GetNumberOfColumns())]
    return [array.GetValue(r) for r in range(t.GetNumberOfRows())]


def test_run_batch_from_the_logic_resumes_and_records_failures(lib, mrml_scene, cohort, tmp_path):
    from lkseg.io import read_image, read_label_map

    src, model = cohort
    logic = lib.logic.LiverKidneySegLogicBase(mrml_scene)
    progress = []
    out = tmp_path / "out"
    summary = logic.runBatch(
        src,
        out,
        modelId=model,
        device="cpu",
        outputs=["seg_nrrd", "nifti"],
        progressCallback=lambda f, m: progress.append((f, m)),
    )
    assert summary["counts"]["done"] == 2 and summary["counts"]["failed"] == 1, summary["counts"]
    assert summary["model"]["model_id"] == "tiny-batch"
    assert progress and progress[-1][0] == 1.0
    assert all(0.0 <= f <= 1.0 for f, _ in progress)
    # outputs on each input's exact grid, as run_batch writes them
    for cid in ("case1", "case2"):
        labels = read_label_map(out / "cases" / cid / f"{cid}_labels.nii.gz")
        assert labels.grid.same_as(read_image(src / f"{cid}.nii.gz").grid)
        assert set(np.unique(labels.array)) <= {0, *PRODUCT_LABELS}
        assert (out / "cases" / cid / f"{cid}.seg.nrrd").is_file()
    # one table row per case, statuses from summary.csv
    table = summary["table"]
    assert table.GetScene() is mrml_scene and table.GetTable().GetNumberOfRows() == 3
    statuses = dict(zip(_column(table, "case_id"), _column(table, "status")))
    assert statuses == {"case1": "done", "case2": "done", "broken": "failed"}
    assert json.loads((out / "batch.json").read_text())["counts"] == summary["counts"]

    # a rerun into the same folder skips the finished cases and retries the failed one
    again = logic.runBatch(src, out, modelId=model, device="cpu", outputs=["seg_nrrd", "nifti"], summaryTableNode=table)
    assert again["counts"]["skipped"] == 2 and again["counts"]["failed"] == 1, again["counts"]
    assert again["table"] is table


def test_batch_job_cancel_kills_the_run(lib, mrml_scene, cohort, tmp_path):
    src, model = cohort
    logic = lib.logic.LiverKidneySegLogicBase(mrml_scene)
    job = logic.runBatch(src, tmp_path / "out", modelId=model, device="cpu", waitForCompletion=False)
    assert job.state == "running"
    with pytest.raises(RuntimeError, match="already going on"):
        logic.runBatch(src, tmp_path / "other", modelId=model)
    time.sleep(0.5)
    start = time.monotonic()
    logic.cancelBatch()
    while not job.poll():
        time.sleep(0.05)
    assert time.monotonic() - start < 3.0
    assert job.state == "cancelled", job.error
    assert "rerun to resume" in str(job.error)


def test_bad_batch_arguments_fail_before_any_process(lib, mrml_scene, cohort, tmp_path):
    from lkseg.errors import InputError, ModelError

    src, model = cohort
    logic = lib.logic.LiverKidneySegLogicBase(mrml_scene)
    with pytest.raises(InputError, match="does not exist"):
        logic.runBatch(tmp_path / "missing", tmp_path / "out", modelId=model)
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    with pytest.raises(InputError, match="is a file"):
        logic.runBatch(src, afile, modelId=model)
    with pytest.raises(InputError, match="unknown output kind"):
        logic.runBatch(src, tmp_path / "out", modelId=model, outputs=["pdf"])
    with pytest.raises(ModelError):
        logic.runBatch(src, tmp_path / "out", modelId="no-such-model")
    assert logic.batchJob is None or logic.batchJob.state == "new" or logic.batchJob.finished
    assert not (tmp_path / "out").exists()


def test_summary_table_types(lib, mrml_scene):
    summary = {"rows": [{"case_id": "a", "liver_ml": "1520.5", "n": "3", "status": "done", "note": ""}]}
    table = lib.batch.summaryTable(summary, scene=mrml_scene)
    t = table.GetTable()
    assert t.GetColumnByName("liver_ml").GetValue(0) == pytest.approx(1520.5)
    assert t.GetColumnByName("n").GetValue(0) == 3
    assert t.GetColumnByName("case_id").GetValue(0) == "a"


def test_read_batch_summary_needs_a_run(lib, tmp_path):
    from lkseg.errors import LKSegError

    with pytest.raises(LKSegError, match="no batch run record"):
        lib.batch.readBatchSummary(tmp_path)
