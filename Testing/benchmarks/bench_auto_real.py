"""Automatic segmentation on real CT with a reference: U-Net alone vs hybrid (U-Net + LiteMedSAM).

Cases: every real CT with a reference under ``../shared/data/real-ct`` (beside the project root)
plus every folder given on the command line with the same layout:

* ``totalsegmentator/<name>.nii.gz`` with its TotalSegmentator mask (labels 1 spleen,
  2 kidney_right, 3 kidney_left, 5 liver): the pairs ``example_ct`` / ``example_seg_fast_force_split``
  and ``example_ct_sm`` / ``example_seg``, or any ``<stem>_ct.nii.gz`` / ``<stem>_seg.nii.gz``;
* ``dcmqi-liver/ct-3slice/`` (DICOM) with ``liver_seg.nrrd`` (label 1 = liver).

For each case and mode: Dice and HD95 (mm) per organ, wall time per stage (median of
``--repeats`` runs, the segmenters loaded once), the slices the prompt model encoded, and the
load average beside every timing. Modes: ``unet`` (the U-Net alone), ``hybrid`` (the default
hybrid: key slices every ``HybridConfig.sample_mm``, the rest interpolated) and ``hybrid-dense``
(the previous default: every slice holding an organ drawn and extended slice by slice,
``sample_mm=0, extend_step_mm=0``).
``--speed`` adds the real-size timing: ``example_ct`` resampled (SimpleITK, linear) to
0.78 x 0.78 x 1.6 mm (469 x 388 x 210 voxels; its TotalSegmentator mask resampled by nearest
neighbour, so Dice at that slice thickness is printed too — same patient, not new data), each
run a fresh process (imports, model loads, read, segment): wall time and peak RSS, median of
``--speed-runs`` runs per ``--speed-modes`` mode, with the load average before and after.
``--speed-geometry 512-0.57`` makes the real-size input a 512 x 512 grid of 0.57 mm pixels instead
(a 292 mm field of view centred on the body, 1.6 mm slices: the geometry of a typical thin-pixel
abdominal CT), see :func:`make_real_size`. ``--resample 0.78|512-0.57`` evaluates every selected
case resampled to that geometry instead of on its own grid (the painted contrast phases of
``make_phase_real.py`` at thin pixels, for instance; :func:`resample_case`). ``--fov 0.7`` then cuts
each case's in-plane field of view to 70 % about the body's centre (:func:`cut_fov`; the liver and
the spleen run out of the image at its sides).

Usage::

    OMP_NUM_THREADS=2 python Testing/benchmarks/bench_auto_real.py [EXTRA_FOLDER ...]
        [--modes unet hybrid hybrid-dense] [--repeats 1] [--cases example_ct_sm] [--speed]
        [--speed-runs 2] [--speed-modes hybrid hybrid-dense] [--speed-geometry 512-0.57]
        [--resample 512-0.57] [--fov 0.7] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import body_centre_ji, environment, fov_crop, measure_in_subprocess, median, peak_rss_mb, print_table

ROOT = Path(__file__).resolve().parents[2]
REAL_CT = ROOT.parent / "shared" / "data" / "real-ct"
TOTALSEG = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver"}
ORGANS = ("liver", "kidney_right", "kidney_left", "spleen")
MODES = ("unet", "hybrid", "hybrid-dense")


def options_for(mode: str):
    """``AutoOptions`` of a benchmark mode (``hybrid-dense``: the previous default, every slice drawn)."""
    from lkseg.auto import AutoOptions
    from lkseg.auto.hybrid import HybridConfig

    if mode == "hybrid-dense":
        return AutoOptions(mode="hybrid", hybrid=HybridConfig(sample_mm=0.0, extend_step_mm=0.0))
    return AutoOptions(mode=mode)


def encoded(result) -> int | None:
    """Slices the prompt model encoded (from the hybrid's note), None in U-Net mode."""
    for note in result.notes:
        m = re.match(r"hybrid: (\d+) slice\(s\) encoded", note)
        if m:
            return int(m.group(1))
    return None


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
        named = {ct for ct, _ in pairs}  # example_ct.nii.gz also matches the pattern (with the wrong mask)
        pairs += [
            (p.name[: -len("_ct.nii.gz")] + "_ct", p.name[: -len("_ct.nii.gz")] + "_seg")
            for p in sorted(ts.glob("*_ct.nii.gz"))
            if p.name[: -len(".nii.gz")] not in named
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
            result = seg.predict(volume, options=options_for(mode))
        except InputError as exc:
            row["refused"] = str(exc)
            return row
        runs.append((time.perf_counter() - start, result))
    row["wall_s"] = median(r[0] for r in runs)
    row["load"] = loadavg()
    result = runs[-1][1]
    for key in sorted({k for _, r in runs for k in r.timings}):
        row[f"t_{key}"] = median(r.timings.get(key, 0.0) for _, r in runs)
    row["mode_used"] = result.mode if mode != "hybrid-dense" else "hybrid-dense"
    row["encoded"] = encoded(result)
    row["prompt_backend"] = result.prompt_backend
    row["hybrid_notes"] = [n for n in result.notes if n.startswith("hybrid: ")]
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


def resample_case(image: Path, reference: Path, geometry: str, paths: tuple[Path, Path]) -> tuple[Path, Path]:
    """A CT (linear) and its label mask (nearest neighbour) resampled to ``geometry``: ``"0.78"``, the
    whole field of view at 0.78 x 0.78 x 1.6 mm; ``"512-0.57"``, a 512 x 512 grid of 0.57 mm pixels
    (a 292 mm field of view centred on the body's in-plane centre, 1.6 mm slices), the geometry of
    the issue's first real scan. Written to ``paths`` (CT as int16, mask), which it returns."""
    import SimpleITK as sitk

    src = sitk.ReadImage(str(image), sitk.sitkFloat32)
    ref = sitk.ReadImage(str(reference))
    if geometry == "512-0.57":
        spacing = (0.57, 0.57, 1.6)
        size = [512, 512, round(src.GetSize()[2] * src.GetSpacing()[2] / spacing[2])]
        cj, ci = body_centre_ji(src)
        centre = np.array(src.TransformContinuousIndexToPhysicalPoint((ci, cj, (src.GetSize()[2] - 1) / 2.0)))
        half = np.array([(n - 1) / 2.0 * t for n, t in zip(size, spacing)])
        origin = tuple(centre - np.array(src.GetDirection()).reshape(3, 3) @ half)
    elif geometry == "0.78":
        spacing = (0.78, 0.78, 1.6)
        size = [round(n * s / t) for n, s, t in zip(src.GetSize(), src.GetSpacing(), spacing)]
        origin = src.GetOrigin()
    else:
        raise ValueError(f"unknown geometry {geometry!r}")
    args = (sitk.Transform(), None, origin, spacing, src.GetDirection())
    big = sitk.Resample(src, size, args[0], sitk.sitkLinear, *args[2:], -1024.0)
    big_ref = sitk.Resample(ref, size, args[0], sitk.sitkNearestNeighbor, *args[2:], 0)
    sitk.WriteImage(sitk.Cast(big, sitk.sitkInt16), str(paths[0]))
    sitk.WriteImage(big_ref, str(paths[1]))
    return paths


def cut_fov(image: Path, reference: Path, fraction: float, paths: tuple[Path, Path]) -> tuple[Path, Path]:
    """A CT and its mask with the in-plane field of view cut to ``fraction`` of the width and height
    about the body's in-plane centre (voxels and geometry kept: a tight field of view, where the
    liver and the spleen run out of the image at its sides). Written to ``paths``, which it returns."""
    import SimpleITK as sitk

    ct, ref = fov_crop(sitk.ReadImage(str(image)), sitk.ReadImage(str(reference)), fraction)
    sitk.WriteImage(ct, str(paths[0]))
    sitk.WriteImage(ref, str(paths[1]))
    return paths


def make_real_size(out_dir: Path, geometry: str = "0.78") -> tuple[Path, Path]:
    """``example_ct`` and its mask resampled by :func:`resample_case`: ``"0.78"`` gives 469 x 388 x
    210 voxels; on ``"512-0.57"`` all of the liver and the kidneys and 96 % of the spleen stay in
    view."""
    ts = REAL_CT / "totalsegmentator"
    tag = "0.78x1.6" if geometry == "0.78" else "512-0.57x1.6"
    paths = (out_dir / f"example_ct_{tag}.nii.gz", out_dir / f"example_seg_{tag}.nii.gz")
    return resample_case(ts / "example_ct.nii.gz", ts / "example_seg_fast_force_split.nii.gz", geometry, paths)


def speed_case(image: str, reference: str, mode: str) -> dict:
    """One fresh-process run on the real-size input: imports, model loads, read, segment; then
    (not timed) Dice against the resampled reference."""
    start = time.perf_counter()
    from lkseg.auto import AutoSegmenter
    from lkseg.io import read_image

    seg = AutoSegmenter(None, device="cpu")
    volume = read_image(image)
    result = seg.predict(volume, options=options_for(mode))
    total = time.perf_counter() - start
    peak = peak_rss_mb()  # before the (untimed) scoring
    from lkseg.metrics import dice

    ref = read_image(reference).array
    table = {n: v for v, n in result.label_table.items()}
    return {
        "size": list(volume.grid.size_ijk),
        "total_s": total,
        "peak_rss_mb_segment": peak,
        "timings": result.timings,
        "mode": result.mode,
        "encoded": encoded(result),
        "prompt_backend": result.prompt_backend,
        "hybrid_notes": [n for n in result.notes if n.startswith("hybrid: ")],
        "dice": {n: round(dice(result.labels.array == table[n], ref == v), 3) for v, n in TOTALSEG.items()},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="*", type=Path, help="extra folders with the real-ct layout")
    p.add_argument("--modes", nargs="+", default=["unet", "hybrid"], choices=MODES)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--cases", nargs="+", help="only these case names")
    p.add_argument("--model", default=None)
    p.add_argument("--speed", action="store_true", help="also time the real-size run (fresh processes)")
    p.add_argument("--speed-runs", type=int, default=2, help="fresh-process runs per speed mode (median)")
    p.add_argument("--speed-modes", nargs="+", default=["hybrid"], choices=MODES)
    p.add_argument(
        "--speed-geometry",
        default="0.78",
        choices=["0.78", "512-0.57"],
        help="the real-size input: example_ct at 0.78 mm (whole field of view) or on a 512x512 grid of 0.57 mm",
    )
    p.add_argument(
        "--resample",
        choices=["0.78", "512-0.57"],
        help="evaluate every selected case resampled to this geometry (as --speed-geometry; its mask by "
        "nearest neighbour) instead of on its own grid; DICOM cases are skipped",
    )
    p.add_argument(
        "--fov",
        type=float,
        help="evaluate every selected case (after --resample) with its in-plane field of view cut to this "
        "fraction of the width and height about the body's centre (0.7: a tight field of view); DICOM cases are skipped",
    )
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
    import tempfile

    derive = []  # (name suffix, function(image, reference, paths)) applied to each case in turn
    if args.resample:
        derive.append((args.resample, lambda im, ref, out: resample_case(im, ref, args.resample, out)))
    if args.fov:
        derive.append((f"fov{round(args.fov * 100)}", lambda im, ref, out: cut_fov(im, ref, args.fov, out)))
    with tempfile.TemporaryDirectory() as folder:
        for case in cases:
            if derive and case["image"].is_dir():
                continue  # a DICOM series
            for suffix, make in derive:
                stem = f"{case['name']}@{suffix}"
                out = (Path(folder) / f"{stem}_ct.nii.gz", Path(folder) / f"{stem}_seg.nii.gz")
                image, reference = make(case["image"], case["reference"], out)
                case = {**case, "name": stem, "image": image, "reference": reference}
            for mode in args.modes:
                row = evaluate(seg, case, mode, args.repeats)
                rows.append(row)
                print(json.dumps(row, default=str), flush=True)
    columns = ["case", "mode_used", "wall_s", "encoded", "load"]
    columns += [f"{o}_{m}" for o in ORGANS for m in ("dice", "hd95")]
    print_table([{k: r.get(k, "refused" if "refused" in r else "") for k in columns} for r in rows], columns, "real CT")
    speed = []
    if args.speed:
        with tempfile.TemporaryDirectory() as tmp:
            image, reference = make_real_size(Path(tmp), args.speed_geometry)
            for mode in args.speed_modes:
                runs = []
                for _ in range(args.speed_runs):
                    before = loadavg()
                    run = measure_in_subprocess(speed_case, str(image), str(reference), mode)
                    run.update(mode=mode, load_before=before, load_after=loadavg())
                    print("speed run", json.dumps(run, default=str), flush=True)
                    runs.append(run)
                summary = {
                    "mode": mode,
                    "geometry": args.speed_geometry,
                    "runs": len(runs),
                    "total_s_median": median(r["result"]["total_s"] for r in runs),
                    "wall_s_median": median(r["wall_s"] for r in runs),
                    "peak_rss_mb_max": max(r["result"]["peak_rss_mb_segment"] for r in runs),
                    "encoded": runs[-1]["result"]["encoded"],
                    "dice": runs[-1]["result"]["dice"],
                    "loads": [(r["load_before"], r["load_after"]) for r in runs],
                }
                speed.append(summary)
                print("speed", json.dumps(summary, default=str), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "speed": speed}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
