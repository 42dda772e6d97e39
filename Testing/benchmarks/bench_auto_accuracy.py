"""Accuracy of automatic segmentation: held-out phantoms and the real CT scans.

1. Phantoms with seeds never used for training (default 1000-1011), drawn from the same
   acquisition distribution as the training set (:func:`phantom_dataset.phantom_config`): Dice and
   HD95 per structure on the phantom's own grid (the prediction lies on the input grid). Tumours
   are scored twice: per case (the tumour label, with the neighbourhood of lesions under 10 mm
   masked out of both maps) and per lesion of >= 10 mm (Dice inside the lesion's 10 mm
   neighbourhood; detected when Dice > 0.1).
2. ``../shared/data/real-ct`` (TotalSegmentator reference masks: 1 spleen, 2 kidney_right,
   3 kidney_left, 5 liver): runs without error, checks that the output grid equals the input
   grid, and reports Dice / HD95 - a phantom-trained model is expected to do poorly there.

Usage::

    python Testing/benchmarks/bench_auto_accuracy.py [--model ID|DIR] [--seeds 1000-1011] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))

from phantom_dataset import parse_seeds, phantom_config

from benchutil import environment, print_table

ROOT = Path(__file__).resolve().parents[2]
REAL_CT = ROOT.parent / "shared" / "data" / "real-ct"
TOTALSEG = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver"}
ORGANS = ["liver", "kidney_right", "kidney_left", "spleen"]
TUMOURS = ["liver_tumor", "kidney_tumor", "kidney_cyst"]


def _zone(mask: np.ndarray, spacing_zyx: tuple[float, float, float], mm: float) -> np.ndarray:
    """``mask`` grown by ``mm`` (Euclidean, in mm), computed inside its bounding box only."""
    (sl,) = ndimage.find_objects(mask.astype(np.uint8))
    pad = [math.ceil(mm / s) + 1 for s in spacing_zyx]
    box = tuple(slice(max(0, s.start - p), min(n, s.stop + p)) for s, p, n in zip(sl, pad, mask.shape))
    zone = np.zeros(mask.shape, dtype=bool)
    zone[box] = ndimage.distance_transform_edt(~mask[box], sampling=spacing_zyx) <= mm
    return zone


def lesion_scores(
    pred: np.ndarray, ref: np.ndarray, value: int, lesions: list[dict], grid, label: str
) -> tuple[list[dict], np.ndarray]:
    """Per-lesion Dice for lesions of ``label`` >= 10 mm; returns scores and the mask of the
    neighbourhoods of the smaller lesions (to leave out of the per-case score)."""
    from lkseg.metrics import dice

    comp, _ = ndimage.label(ref == value)
    spacing_zyx = (grid.spacing[2], grid.spacing[1], grid.spacing[0])
    small_zone = np.zeros(ref.shape, dtype=bool)
    scores = []
    for lesion in lesions:
        if lesion["label"] != label:
            continue
        ijk = np.rint(grid.lps_to_index(lesion["center_lps"])).astype(int)
        zyx = tuple(int(v) for v in ijk[::-1])
        if not all(0 <= c < n for c, n in zip(zyx, ref.shape)):
            continue
        cid = comp[zyx]
        if cid == 0:
            continue
        mask = comp == cid
        zone = _zone(mask, spacing_zyx, 10.0)
        if lesion["diameter_mm"] < 10:
            small_zone |= zone
            continue
        d = dice(pred[zone] == value, mask[zone])
        scores.append({"lesion": lesion["name"], "diameter_mm": lesion["diameter_mm"], "dice": d, "detected": d > 0.1})
    return scores, small_zone


def evaluate_phantom(seg, seed: int) -> dict:
    from lkseg.metrics import mask_metrics
    from lkseg.phantom import generate_phantom

    ph = generate_phantom(phantom_config(seed))
    ref = ph.product_labels().array
    t = time.perf_counter()
    result = seg.predict(ph.image)
    seconds = time.perf_counter() - t
    assert result.labels.grid.same_as(ph.image.grid), "output grid differs from the input grid"
    pred = result.labels.array
    table = result.label_table
    row: dict = {"seed": seed, "orientation": ph.image.grid.orientation, "phase": ph.config.phase, "seconds": seconds}
    for name in ORGANS:
        v = table.value_of(name)
        m = mask_metrics(pred == v, ref == v, ph.image.spacing)
        row[name] = {"dice": m.dice, "hd95": m.hd95_mm}
    lesions = []
    for name in TUMOURS:
        v = table.value_of(name)
        scores, small = lesion_scores(pred, ref, v, ph.lesions, ph.image.grid, name)
        lesions += [s | {"type": name} for s in scores]
        keep = ~small
        if (ref[keep] == v).any():
            m = mask_metrics((pred == v) & keep, (ref == v) & keep, ph.image.spacing)
            row[name] = {"dice": m.dice, "hd95": m.hd95_mm}
    row["lesions"] = lesions
    return row


def evaluate_real(seg) -> list[dict]:
    from lkseg.io import read_image, read_label_map
    from lkseg.metrics import mask_metrics

    rows = []
    folder = REAL_CT / "totalsegmentator"
    for ct, ref_name in [
        ("example_ct.nii.gz", "example_seg_fast_force_split.nii.gz"),
        ("example_ct_sm.nii.gz", "example_seg.nii.gz"),
    ]:
        if not (folder / ct).exists():
            continue
        image = read_image(folder / ct)
        ref = read_label_map(folder / ref_name, reference=image).array
        t = time.perf_counter()
        result = seg.predict(image)
        seconds = time.perf_counter() - t
        same = result.labels.grid.same_as(image.grid)
        row = {"case": ct, "grid_equal": same, "seconds": seconds, "warnings": result.warnings}
        for value, name in TOTALSEG.items():
            m = mask_metrics(result.labels.array == result.label_table.value_of(name), ref == value, image.spacing)
            row[name] = {"dice": m.dice, "hd95": m.hd95_mm, "pred_ml": m.pred_ml, "ref_ml": m.ref_ml}
        rows.append(row)
    return rows


def _summary(rows: list[dict], names: list[str]) -> list[dict]:
    out = []
    for name in names:
        dices = [r[name]["dice"] for r in rows if name in r]
        hd = [r[name]["hd95"] for r in rows if name in r and math.isfinite(r[name]["hd95"])]
        if not dices:
            continue
        out.append(
            {
                "structure": name,
                "cases": len(dices),
                "dice_mean": float(np.mean(dices)),
                "dice_median": float(np.median(dices)),
                "dice_min": float(np.min(dices)),
                "hd95_mean_mm": float(np.mean(hd)) if hd else float("nan"),
                "hd95_median_mm": float(np.median(hd)) if hd else float("nan"),
            }
        )
    return out


def update_manifest(manifest, seeds: str, summary: list[dict], lesions: list[dict], real: list[dict]) -> None:
    """Write the held-out and real-CT numbers into the package's manifest (``accuracy``)."""
    from dataclasses import replace

    def clean(value):
        if isinstance(value, float):
            return round(value, 4) if math.isfinite(value) else None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    accuracy = dict(manifest.accuracy)
    accuracy["held_out_phantoms"] = {
        "seeds": seeds,
        "benchmark": "Testing/benchmarks/bench_auto_accuracy.py (Dice and HD95 on the input grid)",
        "per_structure": clean(summary),
        "per_lesion_10mm_or_more": clean(lesions),
    }
    accuracy["real_ct"] = {
        "data": "../shared/data/real-ct/totalsegmentator (reference masks are TotalSegmentator output)",
        "cases": clean([{k: v for k, v in r.items() if k != "warnings"} for r in real]),
    }
    replace(manifest, accuracy=accuracy).save(manifest.folder)
    print(f"accuracy written to {manifest.folder / 'manifest.json'}")


def main(argv: list[str] | None = None) -> int:
    from lkseg.auto import AutoSegmenter

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--seeds", default="1000-1011")
    p.add_argument("--no-real", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument(
        "--update-manifest", action="store_true", help="store the summary in the model's manifest.json (accuracy)"
    )
    args = p.parse_args(argv)
    print("environment:", json.dumps(environment()))
    seg = AutoSegmenter(args.model, device=args.device)
    print(f"model {seg.manifest.id}@{seg.manifest.version} ({seg.manifest.folder}) on {seg.device}")
    rows = []
    for seed in parse_seeds(args.seeds):
        row = evaluate_phantom(seg, seed)
        rows.append(row)
        organs = ", ".join(f"{n} {row[n]['dice']:.3f}" for n in ORGANS)
        print(f"  seed {seed} ({row['orientation']}, {row['phase']}, {row['seconds']:.1f} s): {organs}", flush=True)
    print_table(
        _summary(rows, ORGANS + TUMOURS),
        title=f"held-out phantoms (seeds {args.seeds}), Dice and HD95 (mm) on the input grid",
    )
    lesions = [le for r in rows for le in r["lesions"]]
    lesion_rows = []
    for kind in TUMOURS:
        sel = [le for le in lesions if le["type"] == kind]
        if sel:
            lesion_rows.append(
                {
                    "type": kind,
                    "lesions_>=10mm": len(sel),
                    "detected": sum(le["detected"] for le in sel),
                    "dice_mean": float(np.mean([le["dice"] for le in sel])),
                    "dice_median": float(np.median([le["dice"] for le in sel])),
                    "mean_diameter_mm": float(np.mean([le["diameter_mm"] for le in sel])),
                }
            )
    print_table(lesion_rows, title="per lesion (>= 10 mm): Dice inside a 10 mm neighbourhood")
    real = []
    if not args.no_real and REAL_CT.is_dir():
        real = evaluate_real(seg)
        table = []
        for r in real:
            for name in TOTALSEG.values():
                table.append(
                    {
                        "case": r["case"],
                        "structure": name,
                        "dice": r[name]["dice"],
                        "hd95_mm": r[name]["hd95"],
                        "pred_ml": r[name]["pred_ml"],
                        "ref_ml": r[name]["ref_ml"],
                    }
                )
        print_table(table, title="real CT (TotalSegmentator reference masks)")
        for r in real:
            print(
                f"  {r['case']}: output grid == input grid: {r['grid_equal']}, {r['seconds']:.1f} s, warnings: {r['warnings']}"
            )
    if args.update_manifest:
        update_manifest(seg.manifest, args.seeds, _summary(rows, ORGANS + TUMOURS), lesion_rows, real)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "phantoms": rows,
                    "summary": _summary(rows, ORGANS + TUMOURS),
                    "lesions": lesion_rows,
                    "real_ct": real,
                },
                indent=2,
                default=float,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
