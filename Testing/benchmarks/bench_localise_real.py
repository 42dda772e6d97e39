"""Localisation on real CT: is every organ in the field of view found, and none invented?

The project has one real multi-organ CT with a reference (``example_ct``, 122 x 101 x 112 at
3 mm, TotalSegmentator masks: pelvis up to the lung bases). This benchmark cuts it into the kinds of
input that broke localisation on users' scans: short slabs (20 slices at 3 mm and, resampled, at
2 mm, like a 512 x 512 x 20 Siemens slab), a pelvis-only scan with none of the four organs, tight
in-plane fields of view, added noise, other storage orders of the same voxels and (added later) a
kidney or the spleen replaced by fat, as after its removal. Each variant is
segmented (``--modes unet`` by default; ``hybrid`` too on request) and every organ is scored:

* present (reference >= ``--present-ml`` mL in the variant): *found* when the prediction's Dice
  with the reference is >= 0.2 (an organ drawn in the wrong place is a miss), else *MISSED*;
* absent (reference < 0.5 mL): *INVENTED* when the prediction holds >= ``--invent-ml`` mL;
* in between: not scored (an organ cut to a sliver at the slab's edge).

It is one patient: the variants test localisation failure modes (field of view, slice count, noise,
orientation), not other anatomy. Variants were fixed before any rule was changed after them.

``--pad MODE [--pad-mm W]`` is an experiment on the tight fields of view: before segmenting, each
variant is padded in-plane (both index axes i and j, symmetrically) to at least ``W`` mm with
``edge`` (the border voxels repeated, as the head-foot context does), ``reflect``, ``air``
(-1024 HU) or ``fat`` (-100 HU), and the labels are cropped back to the variant's grid (origin
moved so that every voxel keeps its LPS position). It assumes an axial scan (i, j in-plane).

Usage::

    OMP_NUM_THREADS=2 python Testing/benchmarks/bench_localise_real.py [--modes unet hybrid]
        [--only slab3-62 pelvis] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import environment, fov_crop, peak_rss_mb, print_table

ROOT = Path(__file__).resolve().parents[2]
REAL_CT = ROOT.parent / "shared" / "data" / "real-ct" / "totalsegmentator"
TOTALSEG = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver"}


def _resample_z(img, seg, spacing_z: float):
    """Both images on a grid with ``spacing_z`` mm slices (CT linear, labels nearest neighbour)."""
    import SimpleITK as sitk

    sp = img.GetSpacing()
    size = img.GetSize()
    new_sp = (sp[0], sp[1], spacing_z)
    new_size = (size[0], size[1], round((size[2] - 1) * sp[2] / spacing_z) + 1)

    def res(im, interp, default):
        return sitk.Resample(
            im, new_size, sitk.Transform(), interp, im.GetOrigin(), new_sp, im.GetDirection(), default, im.GetPixelID()
        )

    return res(img, sitk.sitkLinear, -1024), res(seg, sitk.sitkNearestNeighbor, 0)


def variants(ct_path: Path, seg_path: Path):
    """``(name, what, ct, seg)`` SimpleITK image pairs cut from ``example_ct`` (index k: 0 = inferior)."""
    import numpy as np
    import SimpleITK as sitk

    ct = sitk.ReadImage(str(ct_path))
    seg = sitk.ReadImage(str(seg_path))
    yield "full", "whole scan, 112 slices at 3 mm", ct, seg
    yield (
        "pelvis",
        "slices 0-50 (bladder, prostate, iliac vessels): none of the four organs",
        ct[:, :, 0:51],
        seg[:, :, 0:51],
    )
    for z0 in (62, 72, 82, 92):
        yield f"slab3-{z0}", f"20 slices at 3 mm from slice {z0}", ct[:, :, z0 : z0 + 20], seg[:, :, z0 : z0 + 20]
    ct2, seg2 = _resample_z(ct, seg, 2.0)
    # 2 mm slice k2 sits at 3 mm slice k2 * 2 / 3; a 20-slice slab from 3 mm slice z3 spans 40 mm
    for z3 in (75, 88, 100):
        k = round(z3 * 3 / 2)
        yield (
            f"slab2-{z3}",
            f"20 slices at 2 mm around 3 mm slice {z3 + 7}",
            ct2[:, :, k : k + 20],
            seg2[:, :, k : k + 20],
        )
    # tight fields of view: the in-plane centre of the body, a fraction of the width and height kept
    arr = sitk.GetArrayViewFromImage(ct)
    for frac in (0.7, 0.55):
        yield (
            f"fov{int(frac * 100)}",
            f"in-plane field of view cut to {int(frac * 100)} % about the body's centre",
            *fov_crop(ct, seg, frac),
        )
    rng = np.random.default_rng(0)
    noisy = sitk.GetArrayFromImage(ct).astype(np.float32) + rng.normal(0.0, 40.0, arr.shape).astype(np.float32)
    noisy_img = sitk.GetImageFromArray(noisy.astype(np.int16))
    noisy_img.CopyInformation(ct)
    yield "noise40", "Gaussian noise, SD 40 HU (a low-dose scan)", noisy_img, seg
    for code in ("RAS", "PIR"):
        yield (
            f"orient-{code}",
            f"the same voxels stored {code} (DICOMOrient)",
            sitk.DICOMOrient(ct, code),
            sitk.DICOMOrient(seg, code),
        )
    yield from _organ_removed(ct, seg)


def _organ_removed(ct, seg):
    """A missing organ (nephrectomy, splenectomy; added in a later session than the variants
    above): the organ's voxels and a one-voxel rim filled with fat (-90 HU, SD 15) and cleared
    from the reference, so any of that organ reported is *invented*."""
    import numpy as np
    import SimpleITK as sitk
    from scipy import ndimage

    ref = sitk.GetArrayFromImage(seg)
    arr = sitk.GetArrayFromImage(ct).astype(np.float32)
    rng = np.random.default_rng(1)
    for name, value in (("nephrectomy-left", 3), ("nephrectomy-right", 2), ("splenectomy", 1)):
        hole = ndimage.binary_dilation(ref == value, iterations=1)
        filled, cleared = arr.copy(), ref.copy()
        filled[hole] = -90.0 + rng.normal(0.0, 15.0, int(hole.sum()))
        cleared[ref == value] = 0
        img, lab = sitk.GetImageFromArray(filled.astype(np.int16)), sitk.GetImageFromArray(cleared)
        img.CopyInformation(ct)
        lab.CopyInformation(seg)
        yield name, f"{TOTALSEG[value].replace('_', ' ')} replaced by fat (the organ removed)", img, lab


def pad_inplane(volume, mode: str | None, extent_mm: float):
    """``volume`` padded symmetrically along i and j to at least ``extent_mm`` (see the module
    docstring); ``mode=None``: unchanged."""
    import numpy as np

    from lkseg.volume import Volume

    if mode is None:
        return volume
    arr = volume.array
    si, sj = volume.spacing[0], volume.spacing[1]
    pi = max(0, math.ceil((extent_mm - arr.shape[2] * si) / si / 2))
    pj = max(0, math.ceil((extent_mm - arr.shape[1] * sj) / sj / 2))
    pad = [(0, 0), (pj, pj), (pi, pi)]
    if mode in ("air", "fat"):
        big = np.pad(arr, pad, constant_values=-1024 if mode == "air" else -100)
    else:
        big = np.pad(arr, pad, mode=mode)
    direction = np.asarray(volume.grid.direction, dtype=np.float64)
    origin = np.asarray(volume.grid.origin) - pi * si * direction[:, 0] - pj * sj * direction[:, 1]
    return Volume.from_array(big, volume.spacing, origin, direction, dict(volume.meta))


def crop_result(result, volume):
    """``result`` (of a :func:`pad_inplane` volume) with its labels cut back to ``volume``'s grid."""
    from dataclasses import replace

    from lkseg.volume import Volume

    _, y, x = volume.shape
    pj, pi = (result.labels.shape[1] - y) // 2, (result.labels.shape[2] - x) // 2  # padded symmetrically
    arr = result.labels.array[:, pj : pj + y, pi : pi + x]
    labels = Volume.from_array(arr, volume.spacing, volume.grid.origin, volume.grid.direction, {})
    return replace(result, labels=labels)


def score(result, ref_arr, spacing, present_ml: float, invent_ml: float) -> dict:
    from lkseg.metrics import mask_metrics

    table = {n: v for v, n in result.label_table.items()}
    voxel_ml = float(spacing[0] * spacing[1] * spacing[2]) / 1000.0
    out = {}
    for value, name in TOTALSEG.items():
        truth = ref_arr == value
        pred = result.labels.array == table[name] if name in table else truth & False
        ref_ml, pred_ml = truth.sum() * voxel_ml, pred.sum() * voxel_ml
        m = mask_metrics(pred, truth, spacing) if truth.any() else None
        dice = m.dice if m is not None else float("nan")
        if ref_ml >= present_ml:
            status = "found" if dice >= 0.2 else "MISSED"
        elif ref_ml < 0.5:
            status = "INVENTED" if pred_ml >= invent_ml else "absent"
        else:
            status = "sliver"
        out[name] = {"status": status, "dice": dice, "ref_ml": ref_ml, "pred_ml": pred_ml}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", nargs="+", default=["unet"], choices=["unet", "hybrid"])
    p.add_argument("--only", nargs="+", help="only these variants")
    p.add_argument("--present-ml", type=float, default=5.0)
    p.add_argument("--invent-ml", type=float, default=2.0)
    p.add_argument("--no-relocate", action="store_true", help="AutoOptions(relocate=False): the cascade alone")
    p.add_argument("--context-mm", type=float, default=None, help="AutoOptions.context_mm (default: the package's)")
    p.add_argument("--no-follow-down", action="store_true", help="HybridConfig(follow_down=False)")
    p.add_argument("--no-mirror", action="store_true", help="HybridConfig(mirror_kidney=False)")
    p.add_argument("--model", default=None)
    p.add_argument("--pad", choices=["edge", "reflect", "air", "fat"], help="pad in-plane before segmenting")
    p.add_argument("--pad-mm", type=float, default=380.0, help="in-plane extent to pad to (with --pad)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ct_path, seg_path = REAL_CT / "example_ct.nii.gz", REAL_CT / "example_seg_fast_force_split.nii.gz"
    if not ct_path.is_file():
        print(f"no real CT at {REAL_CT}: nothing to measure")
        return 0
    import SimpleITK as sitk

    from lkseg.auto import AutoOptions, AutoSegmenter
    from lkseg.io import read_image

    print(environment())
    seg = AutoSegmenter(args.model or "lkseg-demo-abdomen", device="cpu")
    rows, tally = [], {m: {"found": 0, "MISSED": 0, "INVENTED": 0, "absent": 0} for m in args.modes}
    with tempfile.TemporaryDirectory() as tmp:
        for name, what, ct, ref in variants(ct_path, seg_path):
            if args.only and name not in args.only:
                continue
            path = Path(tmp) / f"{name}.nii.gz"
            sitk.WriteImage(ct, str(path))
            volume = read_image(path)
            ref_path = Path(tmp) / f"{name}_seg.nii.gz"
            sitk.WriteImage(ref, str(ref_path))
            ref_arr = read_image(ref_path).array
            for mode in args.modes:
                start = time.perf_counter()
                extra = {} if args.context_mm is None else {"context_mm": args.context_mm}
                if args.no_follow_down or args.no_mirror:
                    from lkseg.auto.hybrid import HybridConfig

                    extra["hybrid"] = HybridConfig(
                        follow_down=not args.no_follow_down, mirror_kidney=not args.no_mirror
                    )
                options = AutoOptions(mode=mode, relocate=not args.no_relocate, **extra)
                result = seg.predict(pad_inplane(volume, args.pad, args.pad_mm), options=options)
                if args.pad:
                    result = crop_result(result, volume)
                wall = time.perf_counter() - start
                organs = score(result, ref_arr, volume.spacing, args.present_ml, args.invent_ml)
                row = {"variant": name, "mode": mode, "shape": "x".join(map(str, volume.shape[::-1])), "wall_s": wall}
                for organ, o in organs.items():
                    tally[mode][o["status"]] = tally[mode].get(o["status"], 0) + 1
                    dice = "" if o["dice"] != o["dice"] else f" {o['dice']:.3f}"
                    row[organ] = f"{o['status']}{dice} ({o['pred_ml']:.0f}/{o['ref_ml']:.0f} mL)"
                row["notes"] = "; ".join(
                    n for n in result.notes if n.startswith(("locator", "second locator", "kidney mirror"))
                )
                # seconds the package's second locator took (0: not asked, or no such stage)
                row["locator2_s"] = sum(v for k, v in result.timings.items() if k.startswith("locator2_"))
                rows.append({**row, "what": what, "organs": organs, "warnings": result.warnings})
                print(f"{name:12s} {mode:6s} {wall:6.1f} s  " + "  ".join(f"{k}: {row[k]}" for k in organs), flush=True)
                for note in result.notes:
                    if note.startswith("kidney mirror"):
                        print(f"    {note}", flush=True)
    print()
    print_table(
        [{k: v for k, v in r.items() if k not in ("organs", "warnings", "what")} for r in rows],
        ["variant", "mode", "shape", "wall_s", "locator2_s", *TOTALSEG.values()],
    )
    for mode, t in tally.items():
        print(
            f"{mode}: {t['found']} found, {t['MISSED']} missed (present >= {args.present_ml} mL), "
            f"{t['INVENTED']} invented (absent, >= {args.invent_ml} mL predicted), {t['absent']} correctly absent"
        )
    print(f"peak RSS {peak_rss_mb():.0f} MB")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "tally": tally}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
