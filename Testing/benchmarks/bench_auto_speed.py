"""Speed of automatic segmentation on a 512x512x200 CT at 0.78x0.78x2.0 mm (a phantom).

Each run happens in a fresh process and covers everything ``lkseg segment`` does: importing
torch/MONAI, loading and verifying the model, reading the NIfTI, checks, coarse pass, fine pass,
resampling back onto the input grid, postprocessing and writing the ``.seg.nrrd``. Printed: the
median of the runs per stage, total wall time and peak RSS, for the cascade and for a single-stage
run (fine network over the whole scan). ``--warm`` also times ``predict()`` alone with the model
already loaded (load once, predict many).

Usage::

    python Testing/benchmarks/bench_auto_speed.py [--model ID|DIR] [--device cpu|cuda] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchutil import environment, measure_in_subprocess, median, print_table

STAGES = [
    "import",
    "load_model",
    "read",
    "checks",
    "coarse",
    "fine_resample",
    "fine_infer",
    "resample_back",
    "postprocess",
    "assemble",
    "write",
]


def make_input(path: Path, size, spacing, seed: int) -> dict:
    """Generate the phantom CT once and write it as NIfTI."""
    from lkseg.io import write_image, write_label_map
    from lkseg.phantom import PhantomConfig, generate_phantom

    ph = generate_phantom(PhantomConfig(seed=seed, size_ijk=tuple(size), spacing=tuple(spacing)))
    write_image(ph.image, path)
    write_label_map(ph.product_labels(), path.with_name("reference.nii.gz"))
    return {"size": list(size), "spacing": list(spacing), "seed": seed}


def segment_once(
    image: str, out: str, model: str | None, device: str, cascade: bool, threads: int | None, backend: str = "auto"
) -> dict:
    """One complete segmentation as ``lkseg segment`` does it; returns seconds per stage."""
    t0 = time.perf_counter()
    import torch

    from lkseg.auto import AutoOptions, AutoSegmenter
    from lkseg.io import read_image
    from lkseg.io.segnrrd import write_seg_nrrd

    timings = {"import": time.perf_counter() - t0}
    t = time.perf_counter()
    seg = AutoSegmenter(model, device=device, threads=threads, backend=backend)
    timings["load_model"] = time.perf_counter() - t
    t = time.perf_counter()
    volume = read_image(image)
    timings["read"] = time.perf_counter() - t
    result = seg.predict(volume, options=AutoOptions(cascade=cascade))
    if device != "cpu":
        import torch

        torch.cuda.synchronize()
    timings.update(result.timings)
    t = time.perf_counter()
    write_seg_nrrd(result.to_segmentation(), out)
    timings["write"] = time.perf_counter() - t
    timings["total_in_process"] = time.perf_counter() - t0
    timings["_volumes_ml"] = result.volumes_ml
    timings["_device"] = result.device
    timings["_backend"] = seg.backend
    return timings


def prepare_model(model: str | None, device: str, backend: str) -> str:
    """Load the model once (exports and caches the ONNX graph on first use)."""
    from lkseg.auto import AutoSegmenter

    return AutoSegmenter(model, device=device, backend=backend).backend


def warm_predict(
    image: str, model: str | None, device: str, cascade: bool, repeats: int, backend: str = "auto"
) -> list[float]:
    """``predict()`` times with the model loaded once (first call included, listed first)."""
    from lkseg.auto import AutoOptions, AutoSegmenter
    from lkseg.io import read_image

    seg = AutoSegmenter(model, device=device, backend=backend)
    volume = read_image(image)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        seg.predict(volume, options=AutoOptions(cascade=cascade))
        if device != "cpu":
            import torch

            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--size", type=int, nargs=3, default=(512, 512, 200))
    p.add_argument("--spacing", type=float, nargs=3, default=(0.78, 0.78, 2.0))
    p.add_argument("--seed", type=int, default=4242)
    p.add_argument("--modes", nargs="+", default=["cascade", "single"], choices=["cascade", "single"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"])
    p.add_argument("--warm", type=int, default=0, help="also time N predict() calls with the model loaded once")
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="lkseg-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    image = work / "ct.nii.gz"
    if not image.exists():
        t = time.perf_counter()
        make_input(image, args.size, args.spacing, args.seed)
        print(f"phantom written in {time.perf_counter() - t:.1f} s: {image}")
    t = time.perf_counter()
    prepared = measure_in_subprocess(prepare_model, args.model, args.device, args.backend)
    print(
        f"model prepared (first use: ONNX export when the back end is onnx, then cached) in {time.perf_counter() - t:.1f} s: {prepared['result']}"
    )
    env = environment()
    print("environment:", json.dumps(env))
    print(
        f"input: {args.size[0]}x{args.size[1]}x{args.size[2]} voxels at {args.spacing} mm (phantom seed {args.seed}), NIfTI .nii.gz"
    )
    results = {}
    for mode in args.modes:
        runs = []
        for n in range(args.runs):
            out = measure_in_subprocess(
                segment_once,
                str(image),
                str(work / f"out_{mode}_{n}.seg.nrrd"),
                args.model,
                args.device,
                mode == "cascade",
                args.threads,
                args.backend,
            )
            runs.append(out)
            res = out["result"]
            print(
                f"  {mode} run {n + 1}: wall {out['wall_s']:.2f} s, peak RSS {out['peak_rss_mb']:.0f} MB, "
                f"device {res['_device']}, back end {res['_backend']}, load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
        rows = []
        for stage in [*STAGES, "total_in_process"]:
            values = [r["result"].get(stage, 0.0) for r in runs]
            rows.append({"stage": stage, "median_s": median(values), "min_s": min(values), "max_s": max(values)})
        rows.append(
            {
                "stage": "WALL (fresh process)",
                "median_s": median(r["wall_s"] for r in runs),
                "min_s": min(r["wall_s"] for r in runs),
                "max_s": max(r["wall_s"] for r in runs),
            }
        )
        rows.append(
            {
                "stage": "peak RSS (MB)",
                "median_s": median(r["peak_rss_mb"] for r in runs),
                "min_s": min(r["peak_rss_mb"] for r in runs),
                "max_s": max(r["peak_rss_mb"] for r in runs),
            }
        )
        print_table(rows, ["stage", "median_s", "min_s", "max_s"], title=f"{mode} on {args.device} ({args.runs} runs)")
        vols = runs[0]["result"]["_volumes_ml"]
        print("volumes (mL): " + ", ".join(f"{k} {v:.1f}" for k, v in vols.items()))
        results[mode] = {
            "runs": [
                {k: v for k, v in r["result"].items()} | {"wall_s": r["wall_s"], "peak_rss_mb": r["peak_rss_mb"]}
                for r in runs
            ]
        }
        if args.warm:
            times = warm_predict(str(image), args.model, args.device, mode == "cascade", args.warm, args.backend)
            print(
                f"warm predict() {mode} on {args.device}: "
                + ", ".join(f"{t:.2f}" for t in times)
                + f" s (median of repeats after the first: {median(times[1:] or times):.2f} s)"
            )
            results[mode]["warm_predict_s"] = times
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "results": results}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
