"""Automatic segmentation on real CT with a reference: U-Net alone vs hybrid (U-Net + LiteMedSAM).

Cases: every real CT with a reference under ``../shared/data/real-ct`` (beside the project root)
plus every folder given on the command line with the same layout:

* ``totalsegmentator/<name>.nii.gz`` with its TotalSegmentator mask (labels 1 spleen,
  2 kidney_right, 3 kidney_left, 5 liver): the pairs ``example_ct`` / ``example_seg_fast_force_split``
  and ``example_ct_sm`` / ``example_seg``, or any ``<stem>_ct.nii.gz`` / ``<stem>_seg.nii.gz``;
* ``dcmqi-liver/ct-3slice/`` (DICOM) with ``liver_seg.nrrd`` (label 1 = liver).

For each case and mode: Dice and HD95 (mm) per organ, wall time per stage (median of
``--repeats`` runs, the segmenters loaded once), and the load average beside every timing.
``--speed`` adds the real-size timing: ``example_ct`` resampled (SimpleITK, linear) to
0.78 x 0.78 x 1.6 mm (about 470 x 390 x 210 voxels; a timing input only, no reference), hybrid
mode in a fresh process: wall time and peak RSS.

Usage::

    OMP_NUM_THREADS=2 python Testing/benchmarks/bench_auto_real.py [EXTRA_FOLDER ...]
        [--modes unet hybrid] [--repeats 1] [--cases example_ct_sm] [--speed] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import environment, measure_in_subprocess, median, print_table

ROOT = Path(__file__).resolve().parents[2]
REAL_CT = ROOT.parent / "shared" / "data" / "real-ct"
TOTALSEG = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver"}
ORGANS = ("liver", "kidney_right", "kidney_left", "spleen")


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def find_cases(folders: list[Path]) -> list[dict]:
    """``{"name", "image", "reference", "labels"}`` for every case in ``folders``."""
    cases = []
    for folder in folders:
        ts = folder / "totalsegmentator"
        pairs = [("example_ct", "example_seg_fast_force_split"), ("example_ct_sm", "example_seg")]
        pairs += [
            (p.name[: -len("_ct.nii.gz")] + "_ct", p.name[: -len("_ct.nii.gz")] + "_seg")
            for p in ts.glob("*_ct.nii.gz")
        ]
        for ct, seg in pairs:
            if (ts / f"{ct}.nii.gz").is_file() and (ts / f"{seg}.nii.gz").is_file():
                cases.append(
                    {"name": ct, "image": ts / f"{ct}.nii.gz", "reference": ts / f"{seg}.nii.gz", "labels": TOTALSEG}
                )
        dq = folder / "dcmqi-liver"
        if (dq / "ct-3slice").is_dir() and (dq / "liver_seg.nrrd").is_file():
            cases.append(
                {
                    "name": "dcmqi-liver",
                    "image": dq / "ct-3slice",
                    "reference": dq / "liver_seg.nrrd",
                    "labels": {1: "liver"},
                }
            )
    return cases


def evaluate(seg, case: dict, mode: str, repeats: int) -> dict:
    from lkseg.auto import AutoOptions
    from lkseg.errors import InputError
    from lkseg.io import read_image
    from lkseg.metrics import mask_metrics

    volume = read_image(case["image"])
    ref = read_image(case["reference"]).array
    row: dict = {"case": case["name"], "mode": mode}
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        try:
            result = seg.predict(volume, options=AutoOptions(mode=mode))
        except InputError as exc:
            row["refused"] = str(exc)
            return row
        runs.append((time.perf_counter() - start, result))
    row["wall_s"] = median(r[0] for r in runs)
    row["load"] = loadavg()
    result = runs[-1][1]
    for key in sorted({k for _, r in runs for k in r.timings}):
        row[f"t_{key}"] = median(r.timings.get(key, 0.0) for _, r in runs)
    row["mode_used"] = result.mode
    table = {n: v for v, n in result.label_table.items()}
    for value, name in case["labels"].items():
        truth = ref == value
        if not truth.any() or name not in table:
            continue
        m = mask_metrics(result.labels.array == table[name], truth, volume.spacing)
        row[f"{name}_dice"] = m.dice
        row[f"{name}_hd95"] = m.hd95_mm
        row[f"{name}_ml"] = m.pred_ml
        row[f"{name}_ref_ml"] = m.ref_ml
    row["warnings"] = result.warnings
    return row


def speed_case(out_dir: str) -> dict:
    """Hybrid on example_ct resampled to 0.78 x 0.78 x 1.6 mm, in this (fresh) process."""
    import SimpleITK as sitk

    from lkseg.auto import AutoOptions, AutoSegmenter
    from lkseg.io import read_image

    src = sitk.ReadImage(str(REAL_CT / "totalsegmentator" / "example_ct.nii.gz"), sitk.sitkFloat32)
    spacing = (0.78, 0.78, 1.6)
    size = [round(n * s / t) for n, s, t in zip(src.GetSize(), src.GetSpacing(), spacing)]
    big = sitk.Resample(
        src, size, sitk.Transform(), sitk.sitkLinear, src.GetOrigin(), spacing, src.GetDirection(), -1024.0
    )
    path = Path(out_dir) / "example_ct_0.78x1.6.nii.gz"
    sitk.WriteImage(sitk.Cast(big, sitk.sitkInt16), str(path))
    start = time.perf_counter()
    seg = AutoSegmenter(None, device="cpu")
    volume = read_image(path)
    result = seg.predict(volume, options=AutoOptions(mode="hybrid"))
    return {
        "size": list(volume.grid.size_ijk),
        "total_s": time.perf_counter() - start,
        "timings": result.timings,
        "mode": result.mode,
        "volumes_ml": {k: round(v, 1) for k, v in result.volumes_ml.items()},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="*", type=Path, help="extra folders with the real-ct layout")
    p.add_argument("--modes", nargs="+", default=["unet", "hybrid"], choices=["unet", "hybrid"])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--cases", nargs="+", help="only these case names")
    p.add_argument("--model", default=None)
    p.add_argument("--speed", action="store_true", help="also time the 512-class real-size hybrid run")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from lkseg.auto import AutoSegmenter

    print("environment", json.dumps(environment()), "load", loadavg())
    folders = ([REAL_CT] if REAL_CT.is_dir() else []) + list(args.folders)
    cases = [c for c in find_cases(folders) if not args.cases or c["name"] in args.cases]
    start = time.perf_counter()
    seg = AutoSegmenter(args.model, device="cpu")
    print(f"model loaded in {time.perf_counter() - start:.1f} s (load {loadavg()})")
    rows = []
    for case in cases:
        for mode in args.modes:
            row = evaluate(seg, case, mode, args.repeats)
            rows.append(row)
            print(json.dumps(row, default=str), flush=True)
    columns = ["case", "mode_used", "wall_s", "load"]
    columns += [f"{o}_{m}" for o in ORGANS for m in ("dice", "hd95")]
    print_table([{k: r.get(k, "refused" if "refused" in r else "") for k in columns} for r in rows], columns, "real CT")
    speed = None
    if args.speed:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            speed = measure_in_subprocess(speed_case, tmp)
        speed["load"] = loadavg()
        print("speed", json.dumps(speed, default=str))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "speed": speed}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
