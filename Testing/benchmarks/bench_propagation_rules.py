"""Choose the propagation stop rules: Dice / HD95 after the box (propagation only) per rule variant.

For each data set (``--data``, repeatable; see ``bench_refine_eval.py``: ``phantom:SEED`` with
randomised contrast, ``example_ct_sm``, ``example_ct``) and each variant, runs the first step of
the simulated-user protocol (the reference's box on the central slice, propagated) for liver,
kidneys and spleen, and prints per variant the mean Dice, the worst Dice and the worst HD95.
Embeddings come from ``--embedding-cache`` (see ``bench_refine_eval.py``), so variants cost only
the decoder. Usage::

    OMP_NUM_THREADS=2 python Testing/benchmarks/bench_propagation_rules.py --data phantom:101 \\
        --data example_ct_sm --embedding-cache /tmp/emb
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_refine_eval import DiskCachedEngine, load_case

#: name -> PropagationConfig overrides (the first is the rules before issue 14).
VARIANTS = {
    "before (start band, no look-ahead, no shift rule)": dict(band_slices=0, look_ahead=0, max_median_shift_hu=None),
    "adaptive band only": dict(look_ahead=0, max_median_shift_hu=None),
    "adaptive + shift 25": dict(look_ahead=0, max_median_shift_hu=25.0),
    "adaptive + shift 15": dict(look_ahead=0, max_median_shift_hu=15.0),
    "adaptive + shift 25 + look-ahead 2": dict(look_ahead=2, max_median_shift_hu=25.0),
    "adaptive + shift 15 + look-ahead 1": dict(look_ahead=1, max_median_shift_hu=15.0),
    "adaptive + shift 15 + growth x2": dict(look_ahead=0, max_median_shift_hu=15.0, max_area_ratio=2.0),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--embedding-cache", type=Path)
    ap.add_argument("--backend", default="onnx-int8")
    ap.add_argument("--variants", help="comma-separated indices into VARIANTS (default: all)")
    args = ap.parse_args(argv)

    from lkseg.refine import PredictorConfig, PromptPredictor, simulate_structure
    from lkseg.refine.models import load_prompt_model
    from lkseg.refine.runtime import make_engine

    engine = make_engine(load_prompt_model(), args.backend, "cpu")
    if args.embedding_cache:
        engine = DiskCachedEngine(engine, args.embedding_cache)
    names = list(VARIANTS)
    if args.variants:
        names = [names[int(i)] for i in args.variants.split(",")]
    table: dict[str, list[tuple[str, float, float]]] = {v: [] for v in names}
    for data in args.data:
        image, wanted, labels = load_case(data)
        base = PredictorConfig(backend=args.backend, prefetch=0, cache_slices=max(64, *image.shape))
        predictor = PromptPredictor.with_engine(engine, base)
        predictor.set_volume(image)
        for variant in names:
            predictor.config.propagation = replace(PredictorConfig().propagation, **VARIANTS[variant])
            t0 = time.perf_counter()
            for value, name in sorted(wanted.items(), key=lambda kv: kv[1]):
                ref = labels.array == value
                if ref.any():
                    res = simulate_structure(predictor, ref, name, "axial", 0)
                    table[variant].append((f"{data}/{name}", res.box_dice, res.steps[0].hd95_mm))
            print(
                f"{data:<14} {variant:<52} "
                + " ".join(f"{n.split('/')[1][:6]} {d:.3f}/{h:.0f}" for n, d, h in table[variant][-len(wanted) :])
                + f"  ({time.perf_counter() - t0:.0f} s, load {Path('/proc/loadavg').read_text().split()[0]})",
                flush=True,
            )
        predictor.close()
    print("\nvariant: mean Dice after the box / worst Dice / worst HD95 mm over", ", ".join(args.data))
    for variant in names:
        rows = table[variant]
        dices = [d for _, d, _ in rows]
        hds = [h for _, _, h in rows]
        print(f"{variant:<52} {np.mean(dices):.3f} / {np.min(dices):.3f} / {np.max(hds):.1f}")
    if isinstance(engine, DiskCachedEngine):
        print(f"embedding cache: {engine.hits} hits, {engine.misses} encoded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
