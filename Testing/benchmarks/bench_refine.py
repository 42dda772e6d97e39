"""Benchmark of interactive refinement (LiteMedSAM): speed, memory and accuracy.

Prints, as medians of repeated runs:

* encoder time per slice: eager fp32 PyTorch (the reference), TorchScript trace+freeze, ONNX
  Runtime fp32 and int8, measured side by side (interleaved) in this run, with the speed-ups;
* first prediction on a new slice (encode + decode + pre/post) and each further interaction on a
  cached slice (box, positive click, negative click) of a 512x512x200 CT;
* propagating a liver through 60 slices of that CT;
* ``--only logic-clicks``: 3D clicks through the Slicer module's Logic (``click3D``, slicer-core,
  headless) on that CT's liver segment with a missed dent: a click on an already encoded slice,
  end to end (fingerprint, worker's InteractiveSegment, write-back of the changed box, undo step),
  split into the worker's part and the main thread's write-back; and a click after the segment
  was changed elsewhere (the session is re-read from the segment);
* peak RSS of a fresh process holding the predictor with the 512x512x200 volume (after the
  propagation, i.e. with a full embedding cache);
* with CUDA: the same interaction and propagation timings on the GPU (eager PyTorch);
* accuracy: the simulated-user protocol of ``lkseg refine-eval`` on the TotalSegmentator
  examples (liver 5, right kidney 2, left kidney 3, spleen 1), Dice after box and each click.

The 512x512x200 CT is ``example_ct`` resampled (linear) to 512x512x200 voxels over its own extent
(0.71 x 0.59 x 1.68 mm: anisotropic pixels on purpose). Usage::

    nice python Testing/benchmarks/bench_refine.py [--repeats 5] [--skip-accuracy] [--gpu-only]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import environment, measure_in_subprocess, median, peak_rss_mb, print_table

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT.parent / "shared" / "data" / "real-ct" / "totalsegmentator"
if not REAL.is_dir():  # a copy carried inside the checkout (GPU machine)
    REAL = ROOT / "shared" / "data" / "real-ct" / "totalsegmentator"
LIVER, KIDNEY_R, KIDNEY_L, SPLEEN = 5, 2, 3, 1


def big_case():
    """(image, labels) of example_ct resampled to 512 x 512 x 200 voxels."""
    from lkseg.io import read_image, read_label_map
    from lkseg.resample import resample_to_grid
    from lkseg.volume import Grid

    image = read_image(REAL / "example_ct.nii.gz")
    labels = read_label_map(REAL / "example_seg_fast_force_split.nii.gz", reference=image)
    extent = np.asarray(image.spacing) * np.asarray(image.grid.size_ijk)
    size = np.array([512, 512, 200])
    spacing = extent / size
    origin = np.asarray(image.origin) + image.direction @ ((spacing - np.asarray(image.spacing)) / 2.0)
    grid = Grid((200, 512, 512), tuple(spacing), tuple(origin), image.direction)
    big = resample_to_grid(image, grid, "linear", default_value=-1024.0)
    big = big.with_array(np.rint(big.array).astype(np.int16))
    return big, resample_to_grid(labels, grid, "nearest")


def _slice_box(labels, value: int, k: int) -> np.ndarray:
    jj, ii = np.nonzero(labels.array[k] == value)
    return np.array([[ii.min(), jj.min(), k], [ii.max(), jj.max(), k]], dtype=float)


def bench_encoders(repeats: int, cache_dir: Path) -> list[dict]:
    from lkseg.refine.models import load_prompt_model
    from lkseg.refine.runtime import make_engine

    start = time.perf_counter()
    model = load_prompt_model()
    load_s = time.perf_counter() - start
    engines = {}
    for backend in ("eager", "torchscript", "onnx", "onnx-int8"):
        start = time.perf_counter()
        engines[backend] = make_engine(model, backend, "cpu", cache_dir=cache_dir)
        engines[backend].timings["setup_s"] = time.perf_counter() - start
    print(f"model load + sha256 check: {load_s:.2f} s")
    for name, eng in engines.items():
        extra = ", ".join(f"{k} {v:.2f} s" for k, v in eng.timings.items())
        print(f"{name:12s} set-up: {extra}")
    rng = np.random.default_rng(0)
    image = rng.random((1, 3, 256, 256), dtype=np.float32)
    for eng in engines.values():
        eng.encode(image)  # warm-up
    times = {name: [] for name in engines}
    cpu = {name: [] for name in engines}
    for _ in range(repeats):  # interleaved: every back end sees the same machine load
        for name, eng in engines.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            eng.encode(image)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    ref = engines["eager"].encode(image)
    rows = []
    eager = median(times["eager"])
    for name in engines:
        diff = float(np.abs(engines[name].encode(image) - ref).max())
        rows.append(
            {
                "back end": name,
                "median s/slice": median(times[name]),
                "speed-up vs eager": eager / median(times[name]),
                "CPU s/slice": median(cpu[name]),
                "CPU speed-up": median(cpu["eager"]) / median(cpu[name]),
                "max |diff| vs eager": f"{diff:.1e}",
            }
        )
    print_table(rows, title=f"encoder per slice, 256x256 input, {repeats} interleaved runs")
    return rows


def bench_interactions(
    image, labels, repeats: int, cache_dir: Path, device: str = "cpu", backend: str = "auto"
) -> dict:
    from lkseg.refine import PredictorConfig, PromptPredictor

    predictor = PromptPredictor("litemedsam", device, PredictorConfig(backend=backend, prefetch=0, cache_dir=cache_dir))
    predictor.set_volume(image)
    liver = labels.array == LIVER
    slices = np.flatnonzero(liver.any(axis=(1, 2)))
    mid = int(slices[len(slices) // 2])
    # warm-up (session start, first decoder call)
    predictor.predict("axial", mid, box=_slice_box(labels, LIVER, mid), structure="liver")
    first, further, first_cpu, further_cpu = [], [], [], []
    for n in range(repeats):
        k = int(slices[(len(slices) // 4 + 5 * n) % len(slices)])
        if k == mid:
            k = int(slices[0])
        box = _slice_box(labels, LIVER, k)
        start, start_cpu = time.perf_counter(), time.process_time()
        mask = predictor.predict("axial", k, box=box, structure="liver")
        first.append(time.perf_counter() - start)
        first_cpu.append(time.process_time() - start_cpu)
        ref = liver[k]
        missed = ref & ~mask
        wrong = mask & ~ref
        for pts, lab, prior in (
            (None, None, None),  # the box again
            (np.argwhere(missed)[:1], [1], mask),  # a positive click
            (np.argwhere(wrong)[:1], [0], mask),  # a negative click
        ):
            if pts is not None and len(pts) == 0:
                continue
            points = None if pts is None else np.array([[pts[0][1], pts[0][0], k]], dtype=float)
            start, start_cpu = time.perf_counter(), time.process_time()
            predictor.predict(
                "axial",
                k,
                points=points,
                labels=lab,
                box=box if pts is None else None,
                mask_prior=prior,
                structure="liver",
            )
            further.append(time.perf_counter() - start)
            further_cpu.append(time.process_time() - start_cpu)
    # propagation through 60 slices (30 each way) from the central slice
    start_mask = predictor.predict("axial", mid, box=_slice_box(labels, LIVER, mid), structure="liver")
    predictor.cache.clear()
    start, start_cpu = time.perf_counter(), time.process_time()
    vol = predictor.propagate("axial", mid, start_mask, structure="liver", max_slices=30)
    prop_s = time.perf_counter() - start
    prop_cpu = time.process_time() - start_cpu
    n_slices = int(vol.any(axis=(1, 2)).sum())
    predictor.close()
    return {
        "device": f"{predictor.engine.backend}/{predictor.engine.device}",
        "first prediction on a new slice, s": median(first),
        "further interaction on a cached slice, s": median(further),
        "propagation s": prop_s,
        "propagated slices": n_slices,
        "s per propagated slice": prop_s / max(1, n_slices - 1),
        "CPU s: first / further / propagation": f"{median(first_cpu):.2f} / {median(further_cpu):.3f} / {prop_cpu:.1f}",
    }


def bench_logic_clicks(image, labels, repeats: int, cache_dir: Path) -> dict:
    """Cached-slice 3D clicks through ``LiverKidneySegLogicBase.click3D`` (int8 ONNX on the CPU)."""
    sys.path.insert(0, str(ROOT / "LiverKidneySeg"))
    from LiverKidneySegLib.headless import setupHeadlessSlicer
    from LiverKidneySegLib.logic import LiverKidneySegLogicBase
    from LiverKidneySegLib.refinement import RefineEngine
    from LiverKidneySegLib.segmentations import setSegmentMask
    from LiverKidneySegLib.volumes import ijkToWorld, volumeToNode
    from lkseg.refine import PredictorConfig, PromptPredictor

    scene = setupHeadlessSlicer().scene
    node = volumeToNode(image, scene=scene, name="CT")
    predictors = []

    decodes = [0]

    def factory(model, device):
        predictors.append(PromptPredictor(model, device, PredictorConfig(cache_dir=cache_dir)))
        decode = predictors[-1].engine.decode

        def counted(*args, **kwargs):
            decodes[0] += 1
            return decode(*args, **kwargs)

        predictors[-1].engine.decode = counted
        return predictors[-1]

    logic = LiverKidneySegLogicBase(scene, RefineEngine("litemedsam", "cpu", predictorFactory=factory))
    seg = logic.newSegmentationNode(node)
    liver = labels.array == LIVER
    slices = np.flatnonzero(liver.any(axis=(1, 2)))
    k = int(slices[len(slices) // 2])
    jj, ii = np.nonzero(liver[k])
    centre = np.array([ii.mean(), jj.mean()])
    # a missed dent: a 12 mm ball at the liver's edge on slice k (the user clicks into it, then out)
    edge = int(np.argmax((ii - centre[0]) ** 2 + (jj - centre[1]) ** 2))
    dent_ijk = np.array([ii[edge] + 0.4 * (centre[0] - ii[edge]), jj[edge] + 0.4 * (centre[1] - jj[edge]), k])
    kk, jjj, iii = np.ogrid[: liver.shape[0], : liver.shape[1], : liver.shape[2]]
    sp = image.spacing
    ball = ((iii - dent_ijk[0]) * sp[0]) ** 2 + ((jjj - dent_ijk[1]) * sp[1]) ** 2 + ((kk - k) * sp[2]) ** 2 <= 144
    segmentId = logic._segmentId(seg, "liver")
    setSegmentMask(seg, segmentId, liver & ~ball, image.grid)
    ras = ijkToWorld(node, dent_ijk)

    def click(positive: bool) -> tuple[float, float, float, int, int]:
        if predictors:
            predictors[0].wait_prefetch(60)  # the user's pause between clicks: neighbours encoded
        decodes[0] = 0
        start = time.perf_counter()
        pending = logic.click3D(node, seg, "liver", ras, positive=positive, waitForCompletion=False)
        pending.future.result()
        worker = time.perf_counter()
        result = pending.finish()
        end = time.perf_counter()
        return end - start, worker - start, end - worker, result.changedVoxels, decodes[0]

    first = click(True)  # loads the model, encodes the slice and the 2 followed on each side
    click(False)
    runs = {True: [], False: []}  # positive (into the dent) / negative (out of it) clicks
    for n in range(2 * repeats):
        positive = n % 2 == 0  # alternately into and out of the dent: a real edit every time
        runs[positive].append(click(positive))
    # the same run's 2D baseline: one decoder call on the cached slice (what a slice click costs)
    box = _slice_box(labels, LIVER, k)
    decode2d = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictors[0].predict("axial", k, box=box, structure="liver")
        decode2d.append(time.perf_counter() - start)
    reread = []
    for _ in range(max(1, repeats // 2)):
        logic.undo()  # the dent is filled again: the segment changed outside the session,
        reread.append(click(False)[0])  # so this click (out of the dent again) re-reads it
    logic.cleanup()
    row = {"CT": "x".join(map(str, image.grid.size_ijk)), "first click (model load + encode 5 slices), s": first[0]}
    for positive, name in ((True, "+ click"), (False, "- click")):
        values = list(zip(*runs[positive]))
        row[f"cached {name}: click3D s (worker / write-back)"] = (
            f"{median(values[0]):.3f} ({median(values[1]):.3f} / {median(values[2]):.3f})"
        )
        row[f"{name}: decoder calls, voxels changed"] = f"{median(values[4]):.0f}, {median(values[3]):.0f}"
    row["2D box prediction on the cached slice (1 decoder call), s"] = median(decode2d)
    row["click after an outside change (re-read), s"] = median(reread)
    row["undo steps"] = len(logic.history)
    return row


def _rss_child(ct_path: str, mid: int, box: list, cache_dir: str) -> dict:
    """In a fresh process: read the CT, build the predictor, predict, propagate 80 slices."""
    from lkseg.io import read_image
    from lkseg.refine import PredictorConfig, PromptPredictor

    image = read_image(ct_path)
    before = peak_rss_mb()
    predictor = PromptPredictor("litemedsam", "cpu", PredictorConfig(prefetch=2, cache_dir=cache_dir))
    predictor.set_volume(image)
    start = predictor.predict("axial", mid, box=np.asarray(box), structure="liver")
    predictor.propagate("axial", mid, start, structure="liver", max_slices=40)
    predictor.wait_prefetch(60)
    cache_mb = predictor.cache.nbytes / 2**20
    predictor.close()
    return {"volume_mb": image.array.nbytes / 2**20, "rss_after_reading_ct_mb": before, "cache_mb": cache_mb}


def bench_rss(image, labels, cache_dir: Path) -> None:
    from lkseg.io import write_image

    ct_path = cache_dir / "bench_ct_512x512x200.nii.gz"
    write_image(image, ct_path)
    liver = labels.array == LIVER
    mid = int(np.flatnonzero(liver.any(axis=(1, 2))).mean())
    box = _slice_box(labels, LIVER, mid).tolist()
    out = measure_in_subprocess(_rss_child, str(ct_path), mid, box, str(cache_dir))
    res = out["result"]
    print_table(
        [
            {
                "what": "predictor + 512x512x200 int16 CT, after an 80-slice propagation",
                "peak RSS MB": out["peak_rss_mb"],
                "CT MB": res["volume_mb"],
                "embedding cache MB": res["cache_mb"],
                "RSS after reading the CT MB": res["rss_after_reading_ct_mb"],
                "wall s": out["wall_s"],
            }
        ],
        title="peak RSS (fresh process: read CT, load model, predict, propagate)",
    )


def bench_accuracy(cache_dir: Path, clicks: int) -> None:
    from lkseg.io import read_image, read_label_map
    from lkseg.refine import PredictorConfig, PromptPredictor, format_results, simulate_structure

    for ct, seg in (
        ("example_ct_sm.nii.gz", "example_seg.nii.gz"),
        ("example_ct.nii.gz", "example_seg_fast_force_split.nii.gz"),
    ):
        image = read_image(REAL / ct)
        labels = read_label_map(REAL / seg, reference=image)
        predictor = PromptPredictor(
            "litemedsam", "auto", PredictorConfig(prefetch=0, cache_slices=256, cache_dir=cache_dir)
        )
        predictor.set_volume(image)
        results = []
        for name, value in (
            ("liver", LIVER),
            ("kidney_right", KIDNEY_R),
            ("kidney_left", KIDNEY_L),
            ("spleen", SPLEEN),
        ):
            results.append(simulate_structure(predictor, labels.array == value, name, "axial", clicks))
        predictor.close()
        print(f"\n## simulated user on {ct} (one box on the central slice + propagation, then clicks)")
        print(format_results(results))
        print("summary: " + "; ".join(f"{r.name} {r.box_dice:.3f} -> {r.final_dice:.3f}" for r in results))


def _load() -> str:
    """The machine's load average: other processes on the 2 cores slow every timing here."""
    return "load average (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--gpu-only", action="store_true", help="only the CUDA timings (GPU machine)")
    parser.add_argument(
        "--only", choices=["encoders", "interactions", "logic-clicks", "rss", "accuracy"], help="run one section"
    )
    parser.add_argument("--cache-dir", help="ONNX export cache root (default: a fresh temporary folder)")
    args = parser.parse_args(argv)
    import torch

    print(environment())
    cache_dir = Path(args.cache_dir) if args.cache_dir else Path(tempfile.mkdtemp(prefix="lkseg-bench-"))
    image, labels = big_case()
    print(f"benchmark CT: {image.describe()}")
    if torch.cuda.is_available():
        rows = [bench_interactions(image, labels, args.repeats, cache_dir, "cuda", "eager")]
        print_table(rows, title=f"GPU ({torch.cuda.get_device_name(0)}), eager PyTorch fp32")
    if args.gpu_only:
        return 0
    sections = [args.only] if args.only else ["encoders", "interactions", "logic-clicks", "rss", "accuracy"]
    if args.skip_accuracy and "accuracy" in sections:
        sections.remove("accuracy")
    if "encoders" in sections:
        print(_load())
        bench_encoders(args.repeats, cache_dir)
    if "interactions" in sections:
        print(_load())
        rows = [bench_interactions(image, labels, args.repeats, cache_dir, "cpu", b) for b in ("onnx", "onnx-int8")]
        print_table(rows, title=f"CPU interactions, {torch.get_num_threads()} threads (medians of {args.repeats})")
    if "logic-clicks" in sections:
        print(_load())
        print(f"\n## 3D clicks through the Logic (medians of {args.repeats})")
        for key, value in bench_logic_clicks(image, labels, args.repeats, cache_dir).items():
            print(f"  {key}: {value:.3f}" if isinstance(value, float) else f"  {key}: {value}")
    if "rss" in sections:
        print(_load())
        bench_rss(image, labels, cache_dir)
    print(_load())
    if "accuracy" in sections:
        bench_accuracy(cache_dir, args.clicks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
