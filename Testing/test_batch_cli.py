"""Batch: the ``lkseg batch`` command, its Python/CLI option round trip, Ray slot planning and the
worker model-identity check (all with the tests' threshold engine)."""

from __future__ import annotations

import pytest
from test_batch import _small_cohort
from test_batch_support import ThresholdEngine

from lkseg.batch import BatchOptions, EngineSpec, discover_cases, engine_identity


# -- CLI ----------------------------------------------------------------------------------------------
def test_cli_batch(tmp_path, monkeypatch, capsys):
    from lkseg.cli.main import main

    monkeypatch.setattr(EngineSpec, "build", lambda self: ThresholdEngine())
    src = _small_cohort(tmp_path, 2)
    (src / "bad.nii.gz").write_bytes(b"corrupt")
    out = tmp_path / "out"
    code = main(
        [
            "batch",
            str(src),
            str(out),
            "--outputs",
            "nifti",
            "--progress-lines",
            "--no-progress-bar",
            "--plan",
            "height_cm=180",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 1  # one case failed
    assert "LKSEG_PROGRESS 1.0000" in printed and "2 done, 0 skipped" in printed and "1 failed" in printed
    assert "failures:" in printed and (out / "cases" / "case1" / "case1_labels.nii.gz").is_file()
    (src / "bad.nii.gz").unlink()
    assert (
        main(["batch", str(src), str(out), "--outputs", "nifti", "--no-progress-bar", "--plan", "height_cm=180"]) == 0
    )
    assert "0 done, 2 skipped" in capsys.readouterr().out


def test_cli_batch_bad_options(tmp_path, capsys):
    from lkseg.cli.main import main

    assert main(["batch", str(tmp_path), str(tmp_path / "o"), "--outputs", "pdf"]) == 2
    assert "unknown output kind" in capsys.readouterr().err
    assert main(["batch", str(tmp_path / "missing"), str(tmp_path / "o"), "--outputs", "nifti"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_ray_slots_and_gpu_request():
    from lkseg.batch.ray_runner import _slots

    assert _slots({"CPU": 2.0}, BatchOptions()) == (2, 0.0)
    assert _slots({"CPU": 16.0, "GPU": 2.0}, BatchOptions()) == (2, 1.0)  # one GPU per case when there are GPUs
    assert _slots({"CPU": 16.0, "GPU": 1.0}, BatchOptions(ray_gpus_per_task=0.5, ray_cpus_per_task=4)) == (2, 0.5)
    assert _slots({"CPU": 1.0}, BatchOptions(ray_cpus_per_task=2)) == (1, 0.0)


def test_worker_with_another_model_refuses(tmp_path):
    from lkseg.batch import CaseJob, Layout, process_case

    src = _small_cohort(tmp_path, 1)
    case = discover_cases(src)[0]
    job = CaseJob(Layout(tmp_path / "out"), engine_identity(ThresholdEngine("2.0")), BatchOptions(outputs=("nifti",)))
    res = process_case(case, ThresholdEngine("1.0"), job)
    assert res.status == "failed" and res.stage == "load model" and "install the same model" in res.error
    assert not (tmp_path / "out" / "cases" / case.case_id).exists()
    assert process_case(case, ThresholdEngine("2.0"), job).status == "done"


@pytest.mark.parametrize(
    "opts",
    [
        BatchOptions(),
        BatchOptions(
            outputs=("nifti", "plan"),
            mesh_formats=("stl",),
            plan={"height_cm": "180", "liver_quality": "steatosis"},
            structures=("liver", "liver_tumor"),
            device="cpu",
            workers=3,
            prefetch=4,
            force=True,
            rehash=True,
            ray="ray://head:10001",
            ray_cpus_per_task=2,
            ray_gpus_per_task=0.5,
        ),
    ],
)
def test_batch_cli_args_round_trip(opts):
    from lkseg.batch import batch_cli_args
    from lkseg.cli.batch import options_from_args
    from lkseg.cli.main import build_parser

    argv = batch_cli_args("/in", "/out", "my-model", opts)
    assert argv[:3] == ["batch", "/in", "/out"] and "--progress-lines" in argv and "--no-progress-bar" in argv
    args = build_parser().parse_args(argv)
    assert args.model == "my-model" and options_from_args(args) == opts
