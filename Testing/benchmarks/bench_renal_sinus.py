"""Benchmark: R.E.N.A.L. N and L from the geometric renal sinus vs the phantom's exact sinus.

For each phantom seed (default grid, no noise; each phantom has one kidney tumour), three label
maps of the same phantom are scored with :func:`lkseg.planning.run_plan`:

* truth: kidneys = cortex + medulla, plus the exact ``renal_pelvis`` (pelvis + sinus) segment;
* parenchyma: kidneys = cortex + medulla, no sinus segment (the sinus is derived from the shape);
* product: kidneys = cortex + medulla + pelvis (this product's kidney label), no sinus segment;
* product_ct: as product, with the phantom's CT (portal-venous, 12 HU noise) given to the plan.

Prints N and L of each, the share of tumours whose N and L equal the truth's, the gap and
polar-line errors against the truth (mm) and the sinus sources used. Without the CT the product
kidney's sinus is *estimated from its shape* (:func:`lkseg.planning.sinus.filled_kidney_sinus`,
whose scale and hilar point were chosen on seeds 1-8).

``--sweep SCALES/HILUMS`` (e.g. ``0.4,0.45,0.5,0.55,0.6,0.65/0.6,0.7,0.8,0.9,1.0``) scores only
the product kidney without CT for each scale and hilar point of the estimate (how the defaults
were chosen, on seeds 1-8).

Usage::

    .venv/bin/python Testing/benchmarks/bench_renal_sinus.py [--seeds 10-29] [--sweep S/H]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_couinaud import _seeds  # noqa: E402

from benchutil import environment, print_table  # noqa: E402

MAPS = {
    "truth": {"kidney_right": ("cortex", "medulla"), "kidney_left": ("cortex", "medulla"), "renal_pelvis": ("pelvis",)},
    "parenchyma": {"kidney_right": ("cortex", "medulla"), "kidney_left": ("cortex", "medulla")},
    "product": {"kidney_right": ("cortex", "medulla", "pelvis"), "kidney_left": ("cortex", "medulla", "pelvis")},
}
MAPS["product_ct"] = MAPS["product"]
KINDS = ("parenchyma", "product", "product_ct")


def score(seed: int, kinds=tuple(MAPS), phantom=None) -> dict:
    from lkseg.labels import LabelTable
    from lkseg.phantom import DETAILED, PhantomConfig, generate_phantom
    from lkseg.planning import PlanOptions, run_plan

    ph = phantom or generate_phantom(PhantomConfig(seed=seed, kidney_cyst=False, n_liver_tumors=0))
    out = {"seed": seed}
    for kind in kinds:
        parts = MAPS[kind]
        table = {1: "kidney_tumor"}
        lut = np.zeros(256, np.uint8)
        lut[DETAILED["kidney_tumor"]] = 1
        for value, (name, pieces) in enumerate(parts.items(), start=2):
            table[value] = name
            for piece in pieces:
                if name == "renal_pelvis":
                    lut[DETAILED["kidney_right_pelvis"]] = lut[DETAILED["kidney_left_pelvis"]] = value
                else:
                    lut[DETAILED[f"{name}_{piece}"]] = value
        labels = ph.labels.with_array(lut[ph.labels.array])
        image = ph.image if kind == "product_ct" else None
        renal = run_plan(labels, LabelTable(table), PlanOptions(surfaces=False), image=image).renal
        if renal:
            r = renal[0]
            out[kind] = (r.N, r.L, r.nearness_mm, r.sinus_source, r.polar_lines_ras_s_mm)
    return out


def sweep(seeds, spec: str) -> None:
    """N and L of the product kidney (no CT) vs the truth for each (scale, hilum) of ``spec``."""
    import lkseg.planning.sinus as sinus_module
    from lkseg.phantom import PhantomConfig, generate_phantom

    scales, hilums = ([float(v) for v in part.split(",")] for part in spec.split("/"))
    phantoms = {s: generate_phantom(PhantomConfig(seed=s, kidney_cyst=False, n_liver_tumors=0)) for s in seeds}
    truth = {s: score(s, ("truth",), ph).get("truth") for s, ph in phantoms.items()}
    truth = {s: t for s, t in truth.items() if t is not None}
    defaults = sinus_module.FILLED_SCALE, sinus_module.FILLED_HILUM
    for scale in scales:
        for hilum in hilums:
            sinus_module.FILLED_SCALE, sinus_module.FILLED_HILUM = scale, hilum
            est = {s: score(s, ("product",), phantoms[s])["product"] for s in truth}
            n_ok = sum(est[s][0] == t[0] for s, t in truth.items())
            l_ok = sum(est[s][1] == t[1] for s, t in truth.items())
            both = sum(est[s][:2] == t[:2] for s, t in truth.items())
            gap = np.mean([abs(est[s][2] - t[2]) for s, t in truth.items()])
            polar = np.mean([np.abs(np.subtract(est[s][4], t[4])).mean() for s, t in truth.items()])
            print(
                f"scale {scale:.3f} hilum {hilum:.2f}: N equal {n_ok}/{len(truth)}, L equal {l_ok}/{len(truth)}, "
                f"both {both}/{len(truth)}; mean |gap - truth| {gap:.2f} mm, mean |polar line - truth| {polar:.2f} mm",
                flush=True,
            )
    sinus_module.FILLED_SCALE, sinus_module.FILLED_HILUM = defaults


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="10-29")
    parser.add_argument("--sweep", help="SCALES/HILUMS of the filled-kidney estimate (product kidney, no CT)")
    args = parser.parse_args()
    if args.sweep:
        print("# bench_renal_sinus --sweep: the filled-kidney sinus estimate vs the exact sinus")
        print("load average (1, 5, 15 min):", os.getloadavg())
        sweep(_seeds(args.seeds), args.sweep)
        print("load average after:", os.getloadavg())
        return 0
    print("# bench_renal_sinus: R.E.N.A.L. N and L from the geometric sinus vs the exact sinus")
    print("environment:", environment())
    print("load average (1, 5, 15 min):", os.getloadavg())
    rows = []
    errors = {kind: [] for kind in KINDS}
    sources = {kind: Counter() for kind in KINDS}
    for seed in _seeds(args.seeds):
        r = score(seed)
        if "truth" not in r:
            continue
        row = {"seed": seed, "truth_N": r["truth"][0], "truth_L": r["truth"][1], "truth_gap_mm": r["truth"][2]}
        for kind in KINDS:
            n, lv, gap, src, polar = r.get(kind, (None, None, None, None, None))
            row.update({f"{kind}_N": n, f"{kind}_L": lv, f"{kind}_gap_mm": gap})
            errors[kind].append(
                None if gap is None else (abs(gap - r["truth"][2]), *np.abs(np.subtract(polar, r["truth"][4])).tolist())
            )
            sources[kind][(src or "not available").split(":")[0]] += 1
        rows.append(row)
    print_table(rows, title="N and L per phantom kidney tumour")
    for kind in KINDS:
        n_ok = sum(r[f"{kind}_N"] == r["truth_N"] for r in rows)
        l_ok = sum(r[f"{kind}_L"] == r["truth_L"] for r in rows)
        both = sum(r[f"{kind}_N"] == r["truth_N"] and r[f"{kind}_L"] == r["truth_L"] for r in rows)
        na = sum(r[f"{kind}_N"] is None for r in rows)
        print(
            f"{kind:10s}: N equal {n_ok}/{len(rows)}, L equal {l_ok}/{len(rows)}, both {both}/{len(rows)}, N not available {na}"
        )
        err = np.array([e for e in errors[kind] if e is not None]).reshape(-1, 3)
        if len(err):
            print(
                f"{'':10s}  |gap - truth| mean {err[:, 0].mean():.2f} max {err[:, 0].max():.2f} mm; "
                f"|polar line - truth| mean {err[:, 1:].mean():.2f} max {err[:, 1:].max():.2f} mm; "
                f"sources {dict(sources[kind])}"
            )
    print("load average after:", os.getloadavg())
    return 0


if __name__ == "__main__":
    sys.exit(main())
