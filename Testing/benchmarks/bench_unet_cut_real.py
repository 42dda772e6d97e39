"""What the hybrid does when the U-Net finds only part of an organ, on real CT.

The hybrid draws each organ inside boxes taken from the U-Net's labels (``lkseg.auto.hybrid``).
On example_ct the demo U-Net finds the whole liver and spleen, so this benchmark takes its labels
and **cuts an organ by a plane** before the hybrid stage: the part of the organ beyond a quantile
of its voxels' patient coordinate is cleared (named by the patient side removed: the liver's
right lateral 30 % or its left 30 % - the left lobe -, its anterior or posterior 25 %, its top
20 %; the spleen's lateral or medial 40 %; the right kidney's lower 40 %), or every organ is eroded
by 4 mm. Then the hybrid runs with the real LiteMedSAM on the uncut scan, and each organ's Dice
against the TotalSegmentator reference is printed for the cut U-Net and for the hybrid
(``--no-grow``: ``HybridConfig(grow_organs=())``, the hybrid without box growth, for comparison).

Cuts are planes in patient space (LPS: x toward the patient's left, y posterior, z superior,
read from the image grid), so the storage order does not change what is cut. The cases are
``example_ct`` (3 mm, reference ``example_seg_fast_force_split``) and ``example_ct_sm`` (its
slices 82-111, reference ``example_seg``): one patient; the box-growth rule was chosen on these
cuts (README, *Where the U-Net cut an organ short*), so they show the mechanism, not how it
generalises. Wall time is one hybrid run per variant (``--repeats`` for a median); the prompt
model's slice embeddings stay cached between the variants of a case, so after each case's first
variant the times are mostly decoder time. Peak RSS at the end. ``--set FIELD=VALUE`` changes a
numeric ``HybridConfig`` field (experiments).

Usage::

    OMP_NUM_THREADS=2 python Testing/benchmarks/bench_unet_cut_real.py [--cases example_ct]
        [--only liver-left30 spleen-medial40] [--no-grow] [--repeats 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import environment, median, peak_rss_mb, print_table

ROOT = Path(__file__).resolve().parents[2]
REAL_CT = ROOT.parent / "shared" / "data" / "real-ct" / "totalsegmentator"
CASES = {"example_ct": "example_seg_fast_force_split", "example_ct_sm": "example_seg"}
TOTALSEG = {"liver": 5, "kidney_right": 2, "kidney_left": 3, "spleen": 1}

#: variant -> (organ, LPS axis, fraction removed, which end: +1 the high coordinates, -1 the low)
#: LPS axes: 0 x (toward the patient's left), 1 y (posterior), 2 z (superior)
CUTS = {
    "liver-right30": ("liver", 0, 0.30, -1),
    "liver-left30": ("liver", 0, 0.30, +1),
    "liver-anterior25": ("liver", 1, 0.25, -1),
    "liver-posterior25": ("liver", 1, 0.25, +1),
    "liver-top20": ("liver", 2, 0.20, +1),
    "spleen-lateral40": ("spleen", 0, 0.40, +1),
    "spleen-medial40": ("spleen", 0, 0.40, -1),
    "kidneyR-lower40": ("kidney_right", 2, 0.40, -1),
}
ERODE_MM = 4.0


def cut(labels: np.ndarray, grid, value: int, axis: int, fraction: float, end: int) -> np.ndarray:
    """``labels`` (ZYX on ``grid``) with the part of organ ``value`` beyond the ``fraction``
    quantile of its voxels' LPS coordinate ``axis`` (``end`` +1: the high side) cleared."""
    out = labels.copy()
    kji = np.argwhere(labels == value)
    if not len(kji):
        return out
    lps = grid.index_to_lps(kji[:, ::-1].astype(float))[:, axis]
    limit = np.quantile(lps, 1 - fraction if end > 0 else fraction)
    gone = lps > limit if end > 0 else lps < limit
    out[tuple(kji[gone].T)] = 0
    return out


def erode_all(labels: np.ndarray, spacing_zyx, values, mm: float) -> np.ndarray:
    """Every organ in ``values`` eroded by ``mm`` (Euclidean, physical spacing)."""
    from scipy import ndimage

    out = labels.copy()
    for v in values:
        m = labels == v
        inner = ndimage.distance_transform_edt(m, sampling=spacing_zyx) > mm
        out[m & ~inner] = 0
    return out


def dices(labels: np.ndarray, ref: np.ndarray, value_of: dict) -> dict:
    from lkseg.metrics import dice

    return {name: dice(labels == value_of[name], ref == t) for name, t in TOTALSEG.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--only", nargs="+", help="only these variants (none, the CUTS names, all-eroded4mm)")
    p.add_argument("--no-grow", action="store_true", help="HybridConfig(grow_organs=()): no box growth")
    p.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE", help="HybridConfig fields to change")
    p.add_argument("--repeats", type=int, default=1, help="hybrid runs per variant (median wall time)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if not (REAL_CT / "example_ct.nii.gz").is_file():
        print(f"no real CT at {REAL_CT}: nothing to measure")
        return 0
    from lkseg.auto import AutoOptions, AutoSegmenter
    from lkseg.auto.hybrid import HybridConfig, hybrid_refine
    from lkseg.io import read_image

    print(environment())
    seg = AutoSegmenter(None, device="cpu")
    predictor, why = seg._prompt_predictor()
    if predictor is None:
        print(f"no prompt model: {why}")
        return 0
    config = HybridConfig(grow_organs=()) if args.no_grow else HybridConfig()
    for item in args.set:  # numbers only: the experiments this option is for
        field, value = item.split("=", 1)
        kind = type(getattr(config, field))
        config = replace(config, **{field: kind(float(value)) if kind in (int, float) else kind(value)})
    rows = []
    for case in args.cases:
        volume = read_image(REAL_CT / f"{case}.nii.gz")
        ref = read_image(REAL_CT / f"{CASES[case]}.nii.gz").array
        unet = seg.predict(volume, options=AutoOptions(mode="unet"))
        table = unet.label_table
        value_of = {n: v for v, n in table.items()}
        spacing_zyx = tuple(reversed(volume.spacing))
        variants = {"none": unet.labels.array}
        for name, (organ, axis, fraction, end) in CUTS.items():
            variants[name] = cut(unet.labels.array, volume.grid, value_of[organ], axis, fraction, end)
        organs = [value_of[n] for n in TOTALSEG]
        variants[f"all-eroded{ERODE_MM:.0f}mm"] = erode_all(unet.labels.array, spacing_zyx, organs, ERODE_MM)
        for name, labels in variants.items():
            if args.only and name not in args.only:
                continue
            walls = []
            for _ in range(max(1, args.repeats)):
                start = time.perf_counter()
                out = hybrid_refine(predictor, volume, labels, table, config)
                walls.append(time.perf_counter() - start)
            before, after = dices(labels, ref, value_of), dices(out.labels, ref, value_of)
            row = {"case": case, "variant": name, "hybrid_s": median(walls)}
            for organ in TOTALSEG:
                row[organ] = f"{before[organ]:.3f} -> {after[organ]:.3f}"
            rows.append({**row, "unet_dice": before, "hybrid_dice": after})
            print(f"{case:14s} {name:18s} " + "  ".join(f"{o}: {row[o]}" for o in TOTALSEG), flush=True)
    what = "no box growth" if args.no_grow else "default HybridConfig"
    print(f"\nDice of the cut U-Net -> the hybrid ({what}{', ' + ' '.join(args.set) if args.set else ''})")
    print_table(
        [{k: v for k, v in r.items() if not k.endswith("_dice")} for r in rows],
        ["case", "variant", "hybrid_s", *TOTALSEG],
    )
    print(f"peak RSS {peak_rss_mb():.0f} MB")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
