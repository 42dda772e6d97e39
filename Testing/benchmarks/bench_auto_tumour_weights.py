"""Tune ``inference.class_weights`` of a model package on VALIDATION phantoms.

The fine stage runs once per phantom; every variant re-uses its probabilities (only the prior
shift, resampling back and postprocessing are repeated), so a sweep costs little more than one
evaluation. Use seeds disjoint from the training seeds and from the held-out test seeds of
``bench_auto_accuracy.py`` (1000-1011), e.g. 2000-2011, and report the held-out numbers only for
the variant chosen here.

Usage::

    python Testing/benchmarks/bench_auto_tumour_weights.py --model models/lkseg-demo-abdomen \\
        --seeds 2000-2011 --variants "none;kidney_tumor=2;liver_tumor=1.5,kidney_tumor=2"

``none`` is an empty weight table (the network's own arg-max), ``package`` the package's own.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_auto_accuracy import ORGANS, TUMOURS, lesion_scores
from phantom_dataset import parse_seeds, phantom_config

from benchutil import environment, print_table


def parse_variant(text: str) -> dict[str, float] | None:
    """``"liver_tumor=1.5,kidney_tumor=2"`` -> dict; ``"none"`` -> {}; ``"package"`` -> None."""
    text = text.strip()
    if text == "package":
        return None
    if text in ("none", ""):
        return {}
    out = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        out[name.strip()] = float(value)
    return out


def score(pred: np.ndarray, ph, table) -> dict:
    """Organ Dice, per-case tumour Dice (small lesions masked out) and per-lesion scores."""
    from lkseg.metrics import dice, mask_metrics

    ref = ph.product_labels().array
    row: dict = {name: dice(pred == table.value_of(name), ref == table.value_of(name)) for name in ORGANS}
    lesions = []
    for name in TUMOURS:
        v = table.value_of(name)
        scores, small = lesion_scores(pred, ref, v, ph.lesions, ph.image.grid, name)
        lesions += [s | {"type": name} for s in scores]
        if (ref[~small] == v).any():
            row[name] = dice((pred == v) & ~small, (ref == v) & ~small)
            row[f"{name}_hd95"] = mask_metrics((pred == v) & ~small, (ref == v) & ~small, ph.image.grid.spacing).hd95_mm
    row["lesions"] = lesions
    return row


def summary(name: str, rows: list[dict]) -> dict:
    out: dict = {"variant": name}
    for s in [*ORGANS, "liver_tumor", "kidney_tumor"]:
        vals = [r[s] for r in rows if s in r]
        out[s] = float(np.mean(vals)) if vals else float("nan")
    for s in ("liver_tumor", "kidney_tumor"):
        vals = [r[f"{s}_hd95"] for r in rows if f"{s}_hd95" in r]
        out[f"{s}_hd95_median"] = float(np.median(vals)) if vals else float("nan")
    for kind, short in (("liver_tumor", "lt"), ("kidney_tumor", "kt")):
        les = [le for r in rows for le in r["lesions"] if le["type"] == kind]
        out[f"{short}_found"] = f"{sum(le['detected'] for le in les)}/{len(les)}"
        out[f"{short}_lesion_mean"] = float(np.mean([le["dice"] for le in les])) if les else float("nan")
    return out


def main(argv: list[str] | None = None) -> int:
    from lkseg.auto import AutoOptions, AutoSegmenter
    from lkseg.auto import predictor as predictor_module
    from lkseg.phantom import generate_phantom

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--seeds", default="2000-2011")
    p.add_argument("--variants", default="none;package")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    variants = {v.strip(): parse_variant(v) for v in args.variants.split(";")}
    print("environment:", json.dumps(environment()))
    seg = AutoSegmenter(args.model)
    print(f"model {seg.manifest.id}@{seg.manifest.version}, package weights {seg.manifest.inference.class_weights}")

    memo: dict = {}
    original = predictor_module.AutoSegmenter._fine

    def fine_once(self, *a, **k):
        if "out" not in memo:
            memo["out"] = original(self, *a, **k)
        probs, union = memo["out"]
        return probs.copy(), union  # the prior shift works in place

    predictor_module.AutoSegmenter._fine = fine_once
    rows: dict[str, list[dict]] = {name: [] for name in variants}
    try:
        for seed in parse_seeds(args.seeds):
            ph = generate_phantom(phantom_config(seed))
            memo.clear()
            t = time.perf_counter()
            for name, weights in variants.items():
                result = seg.predict(ph.image, options=AutoOptions(class_weights=weights))
                rows[name].append(score(result.labels.array, ph, result.label_table) | {"seed": seed})
            line = ", ".join(
                f"{name}: lt {r.get('liver_tumor', float('nan')):.3f} kt {r.get('kidney_tumor', float('nan')):.3f}"
                for name, r in ((n, rows[n][-1]) for n in variants)
            )
            print(f"  seed {seed} ({ph.config.phase}, {time.perf_counter() - t:.1f} s): {line}", flush=True)
    finally:
        predictor_module.AutoSegmenter._fine = original
    table = [summary(name, r) for name, r in rows.items()]
    print_table(table, title=f"validation phantoms (seeds {args.seeds}): mean Dice per variant")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": table, "rows": rows}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
