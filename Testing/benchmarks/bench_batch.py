"""Batch benchmark: throughput of the local runner, overhead of the Ray runner, kill-and-resume.

On 10 phantom CTs of 256x256x100 (written once as NIfTI under ``--work``), with every output
(.seg.nrrd, NIfTI labels, GLB meshes, planning JSON):

1. the local runner (model loaded once, the next case read and the previous one written while
   one is inferred): cases per hour, wall time, per-stage medians per case, peak RSS (fresh
   process); and, as a baseline, the same runner with the stages one after the other
   (``prefetch=0, workers=0``);
2. the Ray runner on a private local Ray instance (2 CPUs, no dashboard) on the same machine, with
   1 CPU per task (2 cases in parallel, 1 torch thread each) and with 2 CPUs per task (1 case at
   a time, 2 threads): processing time vs the local runner (target: within 15 %), and Ray's
   start-up time reported apart;
3. resume: ``lkseg batch`` is SIGKILLed after 3 cases are finished, then rerun: only the
   unfinished cases run, the finished ones are skipped untouched, no half-written case folder.

Usage::

    .venv/bin/python Testing/benchmarks/bench_batch.py [--cases 10] [--model ID] [--skip-ray]
        [--engine auto|oracle] [--work DIR]

``--engine oracle`` swaps the neural engine for the phantoms' exact label maps (everything but
inference: reading, planning, meshes, writing, Ray scheduling). Numbers are printed; the README quotes them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # Testing/, for the oracle engine

from benchutil import environment, measure_in_subprocess, median, print_table  # noqa: E402

SIZE = (256, 256, 100)


def _labels_dir(src: Path) -> Path:
    return src.parent / f"{src.name}-labels"


def make_cases(folder: Path, n: int) -> list[Path]:
    """Phantoms with seeds 1000.. as NIfTI, their exact product labels beside (kept between runs)."""
    from lkseg.io import write_image, write_label_map
    from lkseg.phantom import PhantomConfig, generate_phantom

    folder.mkdir(parents=True, exist_ok=True)
    _labels_dir(folder).mkdir(exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"phantom_{i:02d}.nii.gz"
        if not path.exists() or not (_labels_dir(folder) / path.name).exists():
            ph = generate_phantom(PhantomConfig(seed=1000 + i, size_ijk=SIZE))
            write_label_map(ph.product_labels(), _labels_dir(folder) / path.name)
            write_image(ph.image, path)
        paths.append(path)
    return paths


def _engine(kind: str, model: str | None, src: str):
    if kind == "oracle":
        from test_batch_support import LabelFileEngine

        return LabelFileEngine(_labels_dir(Path(src)))
    return model


def _stage_medians(out: Path) -> dict:
    with (out / "summary.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["status"] == "done"]
    return {k: median(float(r[k]) for r in rows) for k in ("read_s", "infer_s", "write_s", "total_s")}


#: Local runner modes: the default pipeline, and the stages one after the other as a baseline.
LOCAL_MODES = {"local": {}, "local, sequential": {"prefetch": 0, "workers": 0}}


def run_local(src: str, out: str, kind: str, model: str | None, mode: str = "local") -> dict:
    from lkseg.batch import BatchOptions, run_batch

    t0 = time.perf_counter()
    report = run_batch(src, out, _engine(kind, model, src), options=BatchOptions(**LOCAL_MODES[mode]))
    info = report.to_dict()
    info.update(_stage_medians(Path(out)), call_s=time.perf_counter() - t0)
    return info


def run_ray(src: str, out: str, kind: str, model: str | None, cpus_per_task: float) -> dict:
    import ray

    from lkseg.batch import BatchOptions, run_batch

    if kind == "oracle":
        import test_batch_support

        ray.cloudpickle.register_pickle_by_value(test_batch_support)
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    t_init = time.perf_counter() - t0
    try:
        report = run_batch(
            src, out, _engine(kind, model, src), options=BatchOptions(ray="auto", ray_cpus_per_task=cpus_per_task)
        )
    finally:
        ray.shutdown()
    info = report.to_dict()
    info.update(_stage_medians(Path(out)), ray_init_s=t_init, call_s=time.perf_counter() - t0)
    return info


_DRIVER = """
import sys
sys.path.insert(0, {testing!r})
from test_batch_support import LabelFileEngine
from lkseg.batch import run_batch
run_batch({src!r}, {out!r}, LabelFileEngine({labels!r}, delay=1.0))
"""


def _batch_command(src: Path, out: Path, kind: str, model: str | None, work: Path) -> list[str]:
    if kind == "oracle":
        script = work / "driver.py"
        script.write_text(
            _DRIVER.format(testing=str(HERE.parent), src=str(src), out=str(out), labels=str(_labels_dir(src)))
        )
        return [sys.executable, str(script)]
    cmd = [sys.executable, "-m", "lkseg", "batch", str(src), str(out), "--no-progress-bar"]
    return cmd + (["--model", model] if model else [])


def resume_test(src: Path, work: Path, kind: str, model: str | None, kill_after: int) -> dict:
    """SIGKILL ``lkseg batch`` once ``kill_after`` cases are finished, rerun, check what ran."""
    out = work / "out-resume"
    shutil.rmtree(out, ignore_errors=True)
    cmd = _batch_command(src, out, kind, model, work)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.perf_counter()
    while proc.poll() is None and len(list(out.glob("cases/*/manifest.json"))) < kill_after:
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = time.perf_counter() - t0
    finished = sorted(p.parent.name for p in out.glob("cases/*/manifest.json"))
    stamps = {cid: json.loads((out / "cases" / cid / "manifest.json").read_text())["finished_at"] for cid in finished}
    visible = sorted(p.name for p in (out / "cases").iterdir() if not p.name.startswith("."))
    leftovers = sorted(p.name for p in (out / "cases").iterdir() if p.name.startswith("."))
    t1 = time.perf_counter()
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    rerun_s = time.perf_counter() - t1
    with (out / "summary.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    skipped = sorted(r["case_id"] for r in rows if r["status"] == "skipped")
    done = sorted(r["case_id"] for r in rows if r["status"] == "done")
    untouched = all(
        json.loads((out / "cases" / c / "manifest.json").read_text())["finished_at"] == stamps[c] for c in finished
    )
    return {
        "killed_after_s": killed_at,
        "finished_before_kill": finished,
        "visible_case_folders_complete": visible == finished,
        "temporary_folders_after_kill": leftovers,
        "rerun_exit_code": rerun.returncode,
        "rerun_s": rerun_s,
        "rerun_skipped": skipped,
        "rerun_done": done,
        "only_unfinished_ran": skipped == finished and len(done) == len(rows) - len(finished),
        "finished_cases_untouched": untouched,
        "temporary_folders_after_rerun": sorted(p.name for p in (out / "cases").iterdir() if p.name.startswith(".")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--model", help="model id (default: the registry's default)")
    parser.add_argument(
        "--engine", choices=["auto", "oracle"], default="auto", help="oracle: the phantoms' exact labels, no inference"
    )
    parser.add_argument("--work", default="/tmp/lkseg-bench-batch", help="working folder (phantoms are kept there)")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--skip-resume", action="store_true")
    parser.add_argument("--ray-cpus", default="1,2", help="CPUs per Ray task to measure (comma-separated)")
    parser.add_argument("--ray-first", action="store_true", help="measure the Ray runs before the local ones")
    parser.add_argument("--skip-sequential", action="store_true", help="do not measure the sequential local baseline")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    work = Path(args.work)
    print(
        json.dumps(
            {
                **environment(),
                "engine": args.engine,
                "model": args.model or "default",
                "cases": args.cases,
                "size_ijk": SIZE,
            },
            indent=2,
        )
    )
    t = time.perf_counter()
    src = work / f"in-{args.cases}"
    # in a child process: children inherit this process's peak RSS, so keep it small
    measure_in_subprocess(make_cases, src, args.cases)
    print(f"phantoms ready in {time.perf_counter() - t:.1f} s: {src}")

    runs = [("local", m) for m in LOCAL_MODES if m == "local" or not args.skip_sequential]
    if not args.skip_ray:
        ray_runs = [("ray", float(c)) for c in args.ray_cpus.split(",")]
        runs = ray_runs + runs if args.ray_first else runs + ray_runs
    measured = {}
    for kind, value in runs:  # each in a fresh process
        if kind == "local":
            name, out = value, work / ("out-local" if value == "local" else "out-local-sequential")
            shutil.rmtree(out, ignore_errors=True)
            measured[name] = (measure_in_subprocess(run_local, str(src), str(out), args.engine, args.model, value), out)
        else:
            name, out = f"ray {value:g} cpu/task", work / f"out-ray-{value:g}"
            shutil.rmtree(out, ignore_errors=True)
            measured[name] = (measure_in_subprocess(run_ray, str(src), str(out), args.engine, args.model, value), out)
    reference, ref_out = measured.get("local", next(iter(measured.values())))
    rows = []
    for name, (run, out) in measured.items():
        row = _row(name, run["result"], run["peak_rss_mb"], None if run is reference else reference["result"])
        row["same_labels"] = _agreement(ref_out, out)
        rows.append(row)
    print_table(
        rows,
        [
            "runner",
            "done",
            "failed",
            "batch_s",
            "process_s",
            "cases_per_hour",
            "vs_local_pct",
            "ray_init_s",
            "read_s",
            "infer_s",
            "write_s",
            "total_s",
            "driver_rss_mb",
            "same_labels",
        ],
        title=f"{args.cases} phantom cases {SIZE[0]}x{SIZE[1]}x{SIZE[2]}, all outputs (per-stage columns: median s per case)",
    )
    print(
        "batch_s: the whole run_batch call (discovery, model loading, every case; Ray's own start-up excluded, shown as "
        "ray_init_s). process_s: first case started to last case finished; cases_per_hour = done / process_s. "
        "vs_local_pct compares batch_s. driver_rss_mb: peak RSS of the driver process (Ray workers are separate processes). "
        "same_labels: cases whose label map equals the local run's voxel for voxel (and the largest share of differing voxels)."
    )
    if not args.skip_resume:
        res = resume_test(src, work, args.engine, args.model, kill_after=3)
        print("\n## resume after SIGKILL")
        for key, value in res.items():
            print(f"{key}: {value}")


def _agreement(ref: Path, out: Path) -> str:
    """How many cases have the same label map in both output folders (and the worst mismatch)."""
    import numpy as np

    from lkseg.io import read_label_map

    same, worst, total = 0, 0.0, 0
    for path in sorted(ref.glob("cases/*/*_labels.nii.gz")):
        other = out / path.relative_to(ref)
        if not other.exists():
            continue
        a, b = read_label_map(path).array, read_label_map(other).array
        total += 1
        diff = float(np.count_nonzero(a != b)) / a.size
        same += diff == 0
        worst = max(worst, diff)
    return f"{same}/{total}" + (f" (max {100 * worst:.4f}% voxels differ)" if worst else "")


def _row(name: str, res: dict, rss: float, local: dict | None) -> dict:
    batch_s = res["call_s"] - res.get("ray_init_s", 0.0)
    return {
        "runner": name,
        "done": res["counts"]["done"],
        "failed": res["counts"]["failed"],
        "batch_s": batch_s,
        "process_s": res["process_s"],
        "cases_per_hour": res["cases_per_hour"],
        "vs_local_pct": f"{100.0 * (batch_s / local['call_s'] - 1):+.1f}" if local else "",
        "ray_init_s": res.get("ray_init_s", ""),
        "read_s": res["read_s"],
        "infer_s": res["infer_s"],
        "write_s": res["write_s"],
        "total_s": res["total_s"],
        "driver_rss_mb": rss,
    }


if __name__ == "__main__":
    main()
