"""LiteMedSAM encoder and decoder per call: back ends side by side, and their masks against fp32.

On real CT slices (``../shared/data/real-ct/totalsegmentator/example_ct`` by default, with its
TotalSegmentator mask: liver, kidneys, spleen), every ``--every``-th axial slice that holds an
organ (at most ``--slices``). Each variant is an encoder back end plus a decoder graph:

* ``eager`` encoder fp32 PyTorch (the reference), ``onnx`` (ONNX Runtime fp32), ``onnx-int8``
  (the encoder's MatMul/Gemm weights dynamically quantized to int8 by onnxruntime),
  ``torch-int8`` (``torch.ao.quantization.quantize_dynamic`` of the encoder's Linear layers),
  ``onnx-gelu-tanh`` (the encoder's GELUs replaced by their tanh approximation), ``onnx-b2``
  (two slices per encoder call);
* decoder ``reference`` (segment-anything's order of operations) or ``fast``
  (:mod:`lkseg.refine.fastdecoder`).

For each variant: encoder seconds per slice (median over the slices, after one warm-up call),
decoder seconds per call (median over every box, ``--decode-repeats`` times), preprocessing
(window, resize, normalise) per slice, and the decoded masks' Dice against the reference variant
(``eager`` + ``reference``) for one box per organ and slice (the reference mask's 2D box + 6 mm,
one decode, no regrow). Variants run interleaved in rounds when ``--rounds`` > 1 (timings are
medians over rounds). ``--isolate`` runs each variant in its own fresh process, which adds its
peak RSS (model load, export or quantization, all slices). The load average is printed beside
every timing. Threads: ``--threads`` (default 2) for torch and ONNX Runtime.

``--ab FILE FILE ...`` instead times exported ONNX graphs (encoders or decoders, e.g. from the
export cache) alternately, call by call: the fairest comparison while other jobs load the CPU.

Usage::

    OMP_NUM_THREADS=2 python Testing/benchmarks/bench_prompt_model.py [--variants onnx-int8:fast ...]
        [--slices 12] [--every 4] [--case example_ct] [--rounds 2] [--isolate]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import environment, measure_in_subprocess, peak_rss_mb, print_table

ROOT = Path(__file__).resolve().parents[2]
REAL_CT = ROOT.parent / "shared" / "data" / "real-ct" / "totalsegmentator"
CASES = {"example_ct": "example_seg_fast_force_split", "example_ct_sm": "example_seg"}
TOTALSEG = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver"}
ENCODERS = ("eager", "onnx", "onnx-int8", "torch-int8", "onnx-gelu-tanh", "onnx-b2")
DECODERS = ("reference", "fast")
REFERENCE = "eager:reference"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def load_case(case: str, n_slices: int, every: int):
    """(volume, [(canonical slice k, [(organ, box_rc)])]) for the chosen axial slices."""
    from lkseg.io import read_image
    from lkseg.refine.slices import VolumeSlicer

    volume = read_image(REAL_CT / f"{case}.nii.gz")
    ref = read_image(REAL_CT / f"{CASES[case]}.nii.gz")
    slicer = VolumeSlicer(volume)
    canon = slicer.user_volume_to_canonical(ref.array)
    row_mm, col_mm = slicer.pixel_mm("axial")
    margin = (round(6.0 / row_mm), round(6.0 / col_mm))
    h, w = canon.shape[1:]
    holding = [k for k in range(canon.shape[0]) if np.isin(canon[k], list(TOTALSEG)).sum() > 0]
    chosen = holding[::every][:n_slices]
    plan = []
    for k in chosen:
        boxes = []
        for value, organ in TOTALSEG.items():
            m = canon[k] == value
            if m.sum() * row_mm * col_mm < 100.0:  # at least 1 cm²
                continue
            rows, cols = np.nonzero(m)
            box = (
                max(0, rows.min() - margin[0]),
                max(0, cols.min() - margin[1]),
                min(h - 1, rows.max() + margin[0]),
                min(w - 1, cols.max() + margin[1]),
            )
            boxes.append((organ, tuple(int(v) for v in box)))
        if boxes:
            plan.append((k, boxes))
    return volume, plan


def make_variant_engine(model, encoder: str, decoder: str, threads: int, cache_dir: str | None):
    """An :class:`~lkseg.refine.runtime.Engine` for ``encoder``/``decoder`` (see module docstring)."""
    import copy
    import warnings

    import torch

    from lkseg.refine.models import LoadedModel
    from lkseg.refine.runtime import EagerEngine, OnnxEngine

    cache = Path(cache_dir) if cache_dir else None
    if encoder == "eager":
        return EagerEngine(model, "cpu", threads, decoder)
    if encoder in ("onnx", "onnx-int8", "onnx-b2"):
        batch = 2 if encoder == "onnx-b2" else 1
        return OnnxEngine(model, "cpu", threads, cache, batch, quantized=encoder == "onnx-int8", decoder=decoder)
    if encoder == "torch-int8":
        net = copy.deepcopy(model.network)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net.image_encoder = torch.ao.quantization.quantize_dynamic(
                net.image_encoder, {torch.nn.Linear}, dtype=torch.qint8
            )
        engine = EagerEngine(LoadedModel(net, model.spec, model.weights), "cpu", threads, decoder)
        engine.backend = "torch-int8"
        return engine
    if encoder == "onnx-gelu-tanh":
        net = copy.deepcopy(model.network)
        for module in net.image_encoder.modules():
            if isinstance(module, torch.nn.GELU):
                module.approximate = "tanh"
        spec = type(model.spec)(**{**model.spec.__dict__, "sha256": "gelutanh-" + model.spec.sha256[:40]})
        return OnnxEngine(LoadedModel(net, spec, model.weights), "cpu", threads, cache, 1, decoder=decoder)
    raise SystemExit(f"unknown encoder variant {encoder!r}; use {', '.join(ENCODERS)}")


def run_variant(variant: str, case: str, n_slices: int, every: int, threads: int, repeats: int, cache_dir) -> dict:
    """Load, time and decode one variant; returns timings and the decoded masks (packed bits)."""
    import torch

    torch.set_num_threads(threads)
    from lkseg.refine import PredictorConfig, PromptPredictor
    from lkseg.refine.models import load_prompt_model

    encoder, decoder = variant.split(":")
    t0 = time.perf_counter()
    model = load_prompt_model()
    engine = make_variant_engine(model, encoder, decoder, threads, cache_dir)
    t_load = time.perf_counter() - t0
    volume, plan = load_case(case, n_slices, every)
    pred = PromptPredictor.with_engine(engine, PredictorConfig(prefetch=0, cache_slices=4))
    pred.set_volume(volume)
    from lkseg.refine.slices import window_for

    window = window_for("liver")
    inputs, t_pre = [], []
    for k, _ in plan:
        s = time.perf_counter()
        inputs.append(pred._model_input("axial", k, window))
        t_pre.append(time.perf_counter() - s)
    engine.encode(inputs[0][None])  # warm-up
    load_before = loadavg()
    t_enc, embeddings = [], []
    batch = engine.encode_batch
    for start in range(0, len(inputs), batch):
        chunk = np.stack(inputs[start : start + batch])
        s = time.perf_counter()
        embs = engine.encode(chunk)
        t_enc.append((time.perf_counter() - s) / len(chunk))
        embeddings.extend(embs[n : n + 1] for n in range(len(chunk)))
    masks, t_dec = {}, []
    for (k, boxes), emb in zip(plan, embeddings):
        key = (pred._volume_id, "axial", k, window)
        pred.cache.put(key, emb)
        ctx = pred.slice_context("axial", k, "liver")
        for organ, box in boxes:
            for _ in range(repeats):
                s = time.perf_counter()
                logits, _ = ctx.decode(box_rc=box)
                t_dec.append(time.perf_counter() - s)
            masks[f"{k}:{organ}"] = np.packbits(logits > 0)
    return {
        "variant": variant,
        "backend": engine.describe(),
        "load_s": t_load,
        "pre_s": statistics.median(t_pre),
        "enc_s": statistics.median(t_enc),
        "dec_s": statistics.median(t_dec),
        "n_slices": len(plan),
        "n_boxes": sum(len(b) for _, b in plan),
        "load_before": load_before,
        "load_after": loadavg(),
        "peak_rss_mb": peak_rss_mb(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop": torch.get_num_interop_threads(),
        "masks": masks,
        "shape": volume.array.shape[1:],
    }


def ab_onnx(paths: list[str], calls: int, threads: int) -> None:
    """Alternate ONNX graphs call by call (A, B, A, B, ...) on one input so that a changing load
    hits them alike; prints the median and minimum seconds per call of each."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sessions = [ort.InferenceSession(p, so, providers=["CPUExecutionProvider"]) for p in paths]
    rng = np.random.default_rng(0)
    names = {i.name for i in sessions[0].get_inputs()}
    if "image" in names:
        feed = {"image": rng.random((1, 3, 256, 256)).astype(np.float32)}
    else:
        feed = {
            "embedding": rng.normal(size=(1, 256, 64, 64)).astype(np.float32),
            "coords": np.array([[[30, 40], [150, 170]]], np.float32),
            "labels": np.array([[2, 3]], np.float32),
            "mask_input": np.zeros((1, 1, 256, 256), np.float32),
            "has_mask": np.zeros(1, np.float32),
        }
    for s in sessions:
        s.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    before = loadavg()
    for _ in range(calls):
        for n, s in enumerate(sessions):
            t = time.perf_counter()
            s.run(None, feed)
            times[n].append(time.perf_counter() - t)
    print(f"alternating A/B, {calls} calls each, load {before} -> {loadavg()}")
    for p, t in zip(paths, times):
        print(f"  {p}: median {statistics.median(t) * 1000:.1f} ms, min {min(t) * 1000:.1f} ms")


def count_flops() -> None:
    """Floating-point operations of one encoder call and one box decode with each decoder graph
    (torch's ``FlopCounterMode``: 2 per multiply-add)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lkseg.refine.models import load_prompt_model
    from lkseg.refine.runtime import decoder_graph

    net = load_prompt_model().network
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        emb = net.image_encoder(torch.rand(1, 3, 256, 256))
    print(f"encoder: {fc.get_total_flops() / 1e9:.2f} GFLOP per 256x256 slice")
    box = (torch.tensor([[[30.0, 40.0], [150.0, 170.0]]]), torch.tensor([[2.0, 3.0]]))
    for kind in ("reference", "fast"):
        graph = decoder_graph(net, kind)
        with torch.inference_mode(), FlopCounterMode(display=False) as fc:
            graph(emb, *box, torch.zeros(1, 1, 256, 256), torch.zeros(1))
        print(f"decoder {kind}: {fc.get_total_flops() / 1e9:.2f} GFLOP per box decode")


def dice_bits(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.unpackbits(a).astype(bool), np.unpackbits(b).astype(bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--variants",
        nargs="+",
        default=["eager:reference", "onnx:reference", "onnx-int8:reference", "onnx:fast", "onnx-int8:fast"],
        help="encoder:decoder pairs; encoders " + ", ".join(ENCODERS) + "; decoders " + ", ".join(DECODERS),
    )
    ap.add_argument("--reference", default=REFERENCE, help="the variant whose masks the others are compared with")
    ap.add_argument("--case", default="example_ct", choices=sorted(CASES))
    ap.add_argument("--slices", type=int, default=12)
    ap.add_argument("--every", type=int, default=4, help="take every n-th axial slice holding an organ")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decode-repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds over the variants")
    ap.add_argument("--isolate", action="store_true", help="each variant in a fresh process (peak RSS)")
    ap.add_argument("--cache-dir", default=None, help="ONNX export cache root (default: the user cache)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--ab", nargs="+", default=None, help="ONNX graph files to time alternately (then exit)")
    ap.add_argument("--ab-calls", type=int, default=20)
    ap.add_argument("--flops", action="store_true", help="print the operation counts (then exit)")
    args = ap.parse_args()
    if args.flops:
        count_flops()
        return
    if args.ab:
        ab_onnx(args.ab, args.ab_calls, args.threads)
        return
    variants = list(dict.fromkeys([args.reference, *args.variants]))
    print("environment:", environment(), "OMP_NUM_THREADS =", os.environ.get("OMP_NUM_THREADS"))
    print(
        f"case {args.case}: up to {args.slices} axial slices, every {args.every}th holding an organ; load {loadavg()}"
    )
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for rnd in range(args.rounds):
        for v in variants:
            call = (v, args.case, args.slices, args.every, args.threads, args.decode_repeats, args.cache_dir)
            if args.isolate:
                out = measure_in_subprocess(run_variant, *call)
                res = out["result"]
                res["process_wall_s"] = out.get("wall_s")
            else:
                res = run_variant(*call)
            runs[v].append(res)
            print(
                f"round {rnd + 1} {v}: encoder {res['enc_s']:.3f} s/slice, decoder {res['dec_s'] * 1000:.1f} ms/call, "
                f"load {res['load_before']} -> {res['load_after']}",
                flush=True,
            )
    ref_masks = runs[args.reference][0]["masks"]
    rows = []
    for v in variants:
        first = runs[v][0]
        dices = [dice_bits(first["masks"][key], ref_masks[key]) for key in ref_masks]
        rows.append(
            {
                "variant": v,
                "back end": first["backend"],
                "encoder s/slice": statistics.median(r["enc_s"] for r in runs[v]),
                "decoder ms/call": 1000 * statistics.median(r["dec_s"] for r in runs[v]),
                "preprocess ms": 1000 * statistics.median(r["pre_s"] for r in runs[v]),
                "load s": statistics.median(r["load_s"] for r in runs[v]),
                "Dice mean": float(np.mean(dices)),
                "Dice min": float(np.min(dices)),
                "peak RSS MB": first["peak_rss_mb"] if args.isolate else None,
                "loadavg": f"{first['load_before']} -> {runs[v][-1]['load_after']}",
            }
        )
    first = runs[args.reference][0]
    print(f"Dice against {args.reference}")
    print(
        f"{first['n_slices']} slices ({first['shape'][0]}x{first['shape'][1]}), {first['n_boxes']} boxes; "
        f"torch threads {first['torch_threads']}, interop {first['torch_interop']}; encoder input 256x256"
    )
    print_table(rows, title=f"LiteMedSAM per call, {args.case}, medians of {args.rounds} round(s)")
    if args.json:
        for r in runs.values():
            for x in r:
                x.pop("masks", None)
        args.json.write_text(json.dumps({"rows": rows, "runs": runs}, indent=2, default=str))


if __name__ == "__main__":
    main()
