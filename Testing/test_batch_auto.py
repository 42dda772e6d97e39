"""Batch with the real automatic engine (``lkseg.auto.AutoSegmenter``) and a tiny model package.

The package has random weights (made in the test): these tests check the wiring — the model is
named by its folder, loaded once, its identity (id, version, weights digest) goes into every
manifest and matches what the Ray driver reads from the manifest without loading; outputs lie on
the exact input grid; the CLI runs it. Accuracy is the automatic engine's business.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lkseg.auto", reason="the automatic engine is not in this tree")

from lkseg.batch import BatchOptions, EngineSpec, engine_identity, run_batch  # noqa: E402
from lkseg.io import read_image, read_label_map, write_image  # noqa: E402
from lkseg.labels import PRODUCT_LABELS  # noqa: E402

pytestmark = pytest.mark.usefixtures("private_onnx_cache")

LABELS = dict(PRODUCT_LABELS.items())


def tiny_package(folder):
    from lkseg.models import IntensitySpec, build_network, make_manifest, make_stage, unet_spec, write_package

    torch.manual_seed(0)
    fine = make_stage("fine", (6, 6, 6), (32, 32, 32), unet_spec(len(LABELS) + 1, (8, 16, 32), 1), LABELS)
    manifest = make_manifest(
        "tiny-batch", "0.0.1", "test", LABELS, [fine], IntensitySpec((-200, 300), 50, 100), "Apache-2.0"
    )
    return write_package(folder, manifest, {"fine": build_network(fine.network)})


def small_ct(seed: int):
    """A 48x40x20 CT-like volume (air, body, two organ blobs; 7x7x10 mm) - enough for the engine's checks."""
    from lkseg.volume import Volume

    rng = np.random.default_rng(seed)
    k, j, i = np.mgrid[0:20, 0:40, 0:48]
    arr = np.full((20, 40, 48), -1000.0)
    arr[((i - 24) / 20) ** 2 + ((j - 20) / 15) ** 2 < 1] = 40.0
    arr[((i - 16) / 7) ** 2 + ((j - 18) / 6) ** 2 + ((k - 10) / 6) ** 2 < 1] = 110.0
    arr[((i - 32) / 3) ** 2 + ((j - 24) / 3) ** 2 + ((k - 9) / 4) ** 2 < 1] = 170.0
    arr += rng.normal(0, 8, arr.shape)
    return Volume.from_array(arr.astype(np.int16), (7.0, 7.0, 10.0), (-160.0, -140.0, -90.0 + seed))


@pytest.fixture(scope="module")
def auto_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("auto")
    manifest = tiny_package(root / "model")
    src = root / "in"
    src.mkdir()
    for seed in (1, 2):
        write_image(small_ct(seed), src / f"ph{seed}.nii.gz")
    return root, str(manifest.folder), src


def test_auto_engine_batch_and_resume(auto_setup):
    root, model, src = auto_setup
    out = root / "out"
    report = run_batch(src, out, model, options=BatchOptions(outputs=("seg_nrrd", "nifti")))
    assert report.counts["done"] == 2, [(r.case_id, r.error) for r in report.results]
    spec_identity = EngineSpec(model).identity()
    assert report.model == spec_identity  # the driver-side identity (no weights loaded) is the engine's
    assert (
        report.model["model_id"] == "tiny-batch"
        and report.model["engine"] == "AutoSegmenter"
        and report.model["weights"]
    )
    for cid in ("ph1", "ph2"):
        manifest = json.loads((out / "cases" / cid / "manifest.json").read_text())
        assert manifest["model"] == spec_identity
        labels = read_label_map(out / "cases" / cid / f"{cid}_labels.nii.gz")
        assert labels.grid.same_as(read_image(src / f"{cid}.nii.gz").grid)
        assert set(np.unique(labels.array)) <= set(range(8))
        assert (out / "cases" / cid / f"{cid}.seg.nrrd").is_file()
        assert "engine_timings" in manifest["record"]
    again = run_batch(src, out, model, options=BatchOptions(outputs=("seg_nrrd", "nifti")))
    assert again.counts["skipped"] == 2


def test_auto_engine_loaded_once_and_cli(auto_setup, capsys, monkeypatch):
    from lkseg.auto import AutoSegmenter
    from lkseg.cli.main import main

    root, model, src = auto_setup
    built = []
    original = EngineSpec.build
    monkeypatch.setattr(EngineSpec, "build", lambda self: built.append(self) or original(self))
    code = main(
        [
            "batch",
            str(src),
            str(root / "cli"),
            "--model",
            model,
            "--outputs",
            "nifti",
            "--no-progress-bar",
            "--device",
            "cpu",
        ]
    )
    assert code == 0 and "2 done" in capsys.readouterr().out
    assert len(built) == 1  # one model load for the whole cohort
    assert engine_identity(AutoSegmenter(model, device="cpu")) == EngineSpec(model).identity()


@pytest.mark.slow
def test_cli_ctrl_c_keeps_finished_cases(auto_setup, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    _, model, _ = auto_setup
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for seed in range(5):
        write_image(small_ct(seed), src / f"ct{seed}.nii.gz")
    cmd = [sys.executable, "-m", "lkseg", "batch", str(src), str(out), "--model", model, "--outputs", "nifti"]
    proc = subprocess.Popen(
        [*cmd, "--device", "cpu", "--progress-lines"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not list(out.glob("cases/*/manifest.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "stopping after the cases already inferred are saved" in stderr and "LKSEG_PROGRESS" in stdout
    finished = sorted(p.parent.name for p in out.glob("cases/*/manifest.json"))
    assert 1 <= len(finished) < 5
    assert sorted(p.name for p in (out / "cases").iterdir()) == finished  # nothing half-written
    with (out / "summary.csv").open() as fh:
        import csv

        status = {r["case_id"]: r["status"] for r in csv.DictReader(fh)}
    assert sorted(c for c, s in status.items() if s == "done") == finished
    assert {s for c, s in status.items() if c not in finished} == {"cancelled"}
    # (resuming after an interruption is covered by test_batch.py)
