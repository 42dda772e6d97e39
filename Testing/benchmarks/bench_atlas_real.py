"""Atlas registration as a second locator on real CT: do phantom atlases find the real organs?

The demo U-Net (trained on phantoms) misses organs on tight fields of view and short slabs of the
one real labelled scan (``bench_localise_real.py``). Issue 15 names atlas registration as a second
opinion. This benchmark measures the idea before any product code is written: validation phantoms
(``--seeds``, never trained on; exact labels) are registered to each cut of ``example_ct`` and
their organs mapped onto it. The real scan is not used as an atlas: it is the only real scan
with a reference, so mapping it onto its own cuts would measure nothing.

Registration (SimpleITK; both images resampled to ``--mm`` isotropic, HU clamped to -300..400):
an affine transform, Mattes mutual information (32 bins, 30 % random samples), regular-step
gradient descent over two levels (shrink 2, 1), from two starts: the body masks' centres of mass
aligned (``moments``), and the best of an exhaustive rigid-translation search at 8 mm (+-90 mm
left-right and front-back, +-120 mm head-foot, 15 mm steps). The start whose result has the
lower full-sample metric is kept. Labels are mapped nearest-neighbour onto the cut's own grid.

Scored with the rules of ``bench_localise_real.py``: an organ is present from ``--present-ml``
mL in the cut, found when the mapped organ's Dice is >= 0.2, invented when the organ is absent and
>= 2 mL are mapped into the cut. Per atlas and for the majority vote of all atlases.

Usage::

    OMP_NUM_THREADS=2 python Testing/benchmarks/bench_atlas_real.py [--seeds 2001-2003]
        [--only full fov70 fov55 slab3-72 slab3-92 pelvis] [--mm 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_localise_real import REAL_CT, variants
from phantom_dataset import parse_seeds, phantom_config

from benchutil import environment, peak_rss_mb, print_table

# TotalSegmentator value -> product value (lkseg-demo-abdomen): spleen, kidneys, liver
ORGANS = {"liver": (5, 1), "kidney_right": (2, 3), "kidney_left": (3, 4), "spleen": (1, 7)}


def isotropic(img, mm: float, default: float):
    """``img`` resampled (linear) to ``mm`` isotropic over the same physical extent and direction."""
    import SimpleITK as sitk

    sp, size = img.GetSpacing(), img.GetSize()
    new_size = [max(1, round(size[d] * sp[d] / mm)) for d in range(3)]
    return sitk.Resample(
        sitk.Cast(img, sitk.sitkFloat32),
        new_size,
        sitk.Transform(),
        sitk.sitkLinear,
        img.GetOrigin(),
        (mm, mm, mm),
        img.GetDirection(),
        default,
        sitk.sitkFloat32,
    )


def _affine(fixed, moving, start):
    import SimpleITK as sitk

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.3, 1)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(2.0, 1e-3, 200, relaxationFactor=0.7)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 0])
    reg.SetInitialTransform(start, inPlace=False)
    return reg.Execute(fixed, moving)


def _translation_search(fixed, moving, start):
    """The start's centre and translation moved to the best point of an exhaustive search at 8 mm."""
    import SimpleITK as sitk

    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(start.GetCenter())
    rigid.SetTranslation(start.GetTranslation())
    search = sitk.ImageRegistrationMethod()
    search.SetMetricAsMattesMutualInformation(32)
    search.SetMetricSamplingStrategy(search.RANDOM)
    search.SetMetricSamplingPercentage(0.2, 1)
    search.SetInterpolator(sitk.sitkLinear)
    search.SetOptimizerAsExhaustive([0, 0, 0, 6, 6, 8], 1.0)
    search.SetOptimizerScales([1.0, 1.0, 1.0, 15.0, 15.0, 15.0])  # rotations fixed; 15 mm steps
    search.SetInitialTransform(rigid, inPlace=True)
    search.Execute(isotropic(fixed, 8.0, -300.0), isotropic(moving, 8.0, -300.0))
    out = sitk.AffineTransform(3)
    out.SetCenter(rigid.GetCenter())
    out.SetTranslation(rigid.GetTranslation())
    return out


def register(fixed_ct, moving_ct, mm: float):
    """Affine transform mapping points of ``fixed_ct`` into ``moving_ct`` (SimpleITK convention),
    the better of two starts by the full-sample metric; returns ``(transform, metric, start)``."""
    import SimpleITK as sitk

    fixed = sitk.Clamp(isotropic(fixed_ct, mm, -1024.0), sitk.sitkFloat32, -300.0, 400.0)
    moving = sitk.Clamp(isotropic(moving_ct, mm, -1024.0), sitk.sitkFloat32, -300.0, 400.0)
    moments = sitk.CenteredTransformInitializer(
        sitk.BinaryThreshold(fixed, -250.0, 1e4),
        sitk.BinaryThreshold(moving, -250.0, 1e4),
        sitk.AffineTransform(3),
        sitk.CenteredTransformInitializerFilter.MOMENTS,
    )
    starts = {"moments": sitk.AffineTransform(moments), "search": _translation_search(fixed, moving, moments)}
    best = None
    for name, start in starts.items():
        tx = _affine(fixed, moving, start)
        check = sitk.ImageRegistrationMethod()
        check.SetMetricAsMattesMutualInformation(32)
        check.SetMetricSamplingStrategy(check.NONE)
        check.SetInterpolator(sitk.sitkLinear)
        check.SetInitialTransform(tx)
        metric = check.MetricEvaluate(fixed, moving)
        if best is None or metric < best[1]:
            best = (tx, metric, name)
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="2001-2003", help="atlas phantoms (validation seeds by default)")
    p.add_argument("--only", nargs="+", default=["full", "fov70", "fov55", "slab3-72", "slab3-92", "pelvis"])
    p.add_argument("--mm", type=float, default=4.0, help="registration grid (isotropic mm)")
    p.add_argument("--present-ml", type=float, default=5.0)
    p.add_argument("--invent-ml", type=float, default=2.0)
    args = p.parse_args()
    import SimpleITK as sitk

    from lkseg.metrics import dice
    from lkseg.phantom import generate_phantom

    ct_path, seg_path = REAL_CT / "example_ct.nii.gz", REAL_CT / "example_seg_fast_force_split.nii.gz"
    if not ct_path.is_file():
        print(f"no real CT at {ct_path}: nothing to measure")
        return 0
    print(environment())
    atlases = []
    for seed in parse_seeds(args.seeds):
        ph = generate_phantom(phantom_config(seed))
        labels = ph.product_labels().to_sitk()
        atlases.append((seed, ph.image.to_sitk(), sitk.Cast(labels, sitk.sitkUInt8)))
        print(f"atlas phantom {seed}: {ph.image.shape[::-1]} voxels, stored {ph.image.grid.orientation}", flush=True)
    rows, times = [], []
    tally = {"atlas": [0, 0, 0], "vote": [0, 0, 0]}  # found, missed, invented
    for name, _what, ct, ref in variants(ct_path, seg_path):
        if name not in args.only:
            continue
        ref_arr = sitk.GetArrayFromImage(ref)
        voxel_ml = float(np.prod(ct.GetSpacing())) / 1000.0
        mapped = []
        for seed, atlas_ct, atlas_labels in atlases:
            start = time.perf_counter()
            tx, metric, how = register(ct, atlas_ct, args.mm)
            times.append(time.perf_counter() - start)
            warped = sitk.GetArrayFromImage(sitk.Resample(atlas_labels, ct, tx, sitk.sitkNearestNeighbor, 0))
            mapped.append((f"phantom {seed}", warped, f"{how}, MI {metric:.3f}, {times[-1]:.1f} s"))
        stack = np.stack([m[1] for m in mapped])
        vote_labels = np.zeros(stack.shape[1:], dtype=np.uint8)  # a voxel goes to the first organ voted
        for _, value in ORGANS.values():
            vote_labels[((stack == value).sum(axis=0) * 2 > len(mapped)) & (vote_labels == 0)] = value
        mapped.append(("majority vote", vote_labels, ""))
        for who, labels, how in mapped:
            row = {"variant": name, "atlas": who, "registration": how}
            key = "vote" if who == "majority vote" else "atlas"
            for organ, (ts_value, value) in ORGANS.items():
                truth, pred = ref_arr == ts_value, labels == value
                ref_ml, pred_ml = truth.sum() * voxel_ml, pred.sum() * voxel_ml
                if ref_ml >= args.present_ml:
                    d = dice(pred, truth)
                    ok = d >= 0.2
                    tally[key][0 if ok else 1] += 1
                    row[organ] = f"{d:.2f}" if ok else f"MISS {d:.2f}"
                elif ref_ml < 0.5:
                    invented = pred_ml >= args.invent_ml
                    tally[key][2] += invented
                    row[organ] = f"INV {pred_ml:.0f} mL" if invented else "absent"
                else:
                    row[organ] = "·"
            rows.append(row)
            print("  ".join(f"{k}: {v}" for k, v in row.items()), flush=True)
    print()
    print_table(rows, ["variant", "atlas", "registration", *ORGANS])
    for key, (found, missed, invented) in tally.items():
        who = "single atlases" if key == "atlas" else "majority vote"
        print(f"{who}: {found} found, {missed} missed (present >= {args.present_ml} mL), {invented} invented")
    print(
        f"registration wall time: median {statistics.median(times):.1f} s "
        f"(min {min(times):.1f}, max {max(times):.1f}, n={len(times)}); peak RSS {peak_rss_mb():.0f} MB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
