"""Distributed mode: the per-case function as Ray tasks gives the local runner's results exactly.

One small local Ray instance (2 CPUs, no dashboard) serves the whole module and is shut down at
the end. Skipped when ``ray`` (the optional ``ray`` extra) is not installed.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import test_batch_support
from test_batch_support import ThresholdEngine, make_case, make_cohort

from lkseg.batch import BatchOptions, run_batch
from lkseg.io import read_label_map, write_image

ray = pytest.importorskip("ray", reason="the optional 'ray' extra is not installed")
pytestmark = pytest.mark.ray

OPTIONS = dict(outputs=("seg_nrrd", "nifti", "dicom_seg"))
_VOLATILE = {"read_s", "infer_s", "write_s", "total_s", "case_dir", "reason"}


@pytest.fixture(scope="module")
def ray_cluster():
    # The test engine lives in a test module that Ray workers cannot import: ship it by value.
    ray.cloudpickle.register_pickle_by_value(test_batch_support)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _rows(path: Path) -> dict[str, dict]:
    with path.open(newline="") as fh:
        return {r["case_id"]: {k: v for k, v in r.items() if k not in _VOLATILE} for r in csv.DictReader(fh)}


def _manifest(path: Path) -> dict:
    data = json.loads(path.read_text())
    data.pop("finished_at")
    data["record"].pop("timings")
    data["record"].pop("case_dir")
    return data


def test_ray_results_identical_to_local(ray_cluster, tmp_path):
    src = tmp_path / "in"
    expected = make_cohort(src)
    local = run_batch(src, tmp_path / "local", ThresholdEngine(), options=BatchOptions(**OPTIONS))
    dist = run_batch(src, tmp_path / "ray", ThresholdEngine(), options=BatchOptions(ray="auto", **OPTIONS))
    assert dist.runner == "ray" and local.runner == "local"
    assert {r.case_id: r.status for r in dist.results} == {r.case_id: r.status for r in local.results}
    assert dist.counts["done"] == len(expected) == 4 and dist.counts["failed"] == 2
    assert _rows(tmp_path / "ray" / "summary.csv") == _rows(tmp_path / "local" / "summary.csv")
    for cid in expected:
        a = read_label_map(tmp_path / "local" / "cases" / cid / f"{cid}_labels.nii.gz")
        b = read_label_map(tmp_path / "ray" / "cases" / cid / f"{cid}_labels.nii.gz")
        np.testing.assert_array_equal(a.array, b.array)
        assert a.grid.same_as(b.grid)
        assert _manifest(tmp_path / "ray" / "cases" / cid / "manifest.json") == _manifest(
            tmp_path / "local" / "cases" / cid / "manifest.json"
        )
    assert (tmp_path / "ray" / "cases" / "dicom__patA" / "dicom__patA_seg.dcm").is_file()
    failures = (tmp_path / "ray" / "failures.csv").read_text()
    assert "modality is MR" in failures and "broken" in failures
    assert "done in" in (tmp_path / "ray" / "logs" / "case0.log").read_text()  # workers write the case logs


def test_ray_resumes_local_work_and_redoes_changed(ray_cluster, tmp_path):
    src = tmp_path / "in"
    make_cohort(src, n_nifti=3, dicom=False, bad=False)
    out = tmp_path / "out"
    run_batch(src, out, ThresholdEngine(), options=BatchOptions(outputs=("nifti",)))
    again = run_batch(src, out, ThresholdEngine(), options=BatchOptions(outputs=("nifti",), ray="auto"))
    assert again.counts["skipped"] == 3  # a cohort started locally is finished on the cluster
    write_image(make_case(3)[0], src / "case2.nii.gz")
    third = run_batch(src, out, ThresholdEngine(), options=BatchOptions(outputs=("nifti",), ray="auto", workers=1))
    assert {r.case_id: r.status for r in third.results} == {"case0": "skipped", "case1": "skipped", "case2": "done"}
    assert third.result("case2").reason == "input changed"
    np.testing.assert_array_equal(
        read_label_map(out / "cases" / "case2" / "case2_labels.nii.gz").array, make_case(3)[1]
    )


@pytest.mark.slow  # Ray workers import torch and MONAI (~30 s on 2 cores)
def test_ray_with_model_package_matches_local(ray_cluster, tmp_path):
    """The real engine named by an EngineSpec: each worker builds it from the package folder."""
    pytest.importorskip("torch")
    pytest.importorskip("lkseg.auto", reason="the automatic engine is not in this tree")
    from test_batch_auto import small_ct, tiny_package

    from lkseg.batch import EngineSpec

    model = str(tiny_package(tmp_path / "model").folder)
    src = tmp_path / "in"
    src.mkdir()
    for seed in (3, 4, 5):
        write_image(small_ct(seed), src / f"ct{seed}.nii.gz")
    spec = EngineSpec(model, device="cpu", threads=1)  # same thread count: bitwise-identical inference
    local = run_batch(src, tmp_path / "local", spec, options=BatchOptions(outputs=("nifti",)))
    dist = run_batch(src, tmp_path / "ray", spec, options=BatchOptions(outputs=("nifti",), ray="auto"))
    assert local.counts["done"] == dist.counts["done"] == 3
    assert dist.model == local.model and dist.model["model_id"] == "tiny-batch"
    for cid in ("ct3", "ct4", "ct5"):
        a = read_label_map(tmp_path / "local" / "cases" / cid / f"{cid}_labels.nii.gz").array
        b = read_label_map(tmp_path / "ray" / "cases" / cid / f"{cid}_labels.nii.gz").array
        assert len(np.unique(a)) > 3  # a real, non-trivial label map
        np.testing.assert_array_equal(a, b)
