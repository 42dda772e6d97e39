"""Benchmark: one box on a lesion -> its 3D mask, on real CT with lesions of known extent inserted.

The real scans here have no tumour references, so lesions of known shape are inserted into the
real organs of ``example_ct`` (3 mm, unenhanced; TotalSegmentator's liver and kidney masks tell
where the organs are): an irregular ellipsoid (radii drawn within +-20 % of the nominal diameter,
randomly rotated) placed wholly inside the organ (3 mm from its border), its HU the scan's own
plus a contrast that fades over a 1.5 mm edge, so the real noise and texture stay. The truth is
the voxels at least half inside. Each lesion gets its own copy of the scan (one lesion at a time).

Lesions (fixed in this file before any run; nothing was chosen on them): in the liver 15, 25 and
40 mm, each cyst-like (-40 HU: water in an unenhanced liver of ~47 HU) and subtle (-20 HU, a
metastasis); in the kidneys 20 and 30 mm, a simple cyst (-15 HU, to ~0 HU) and a hyperdense cyst
(+40 HU), one a side, their centres at least half their radius inside the kidney and the lesion cut
at the kidney's border (a kidney is about as thick as a 30 mm lesion). Positions come from ``--seed``.

For each lesion a box is drawn around the truth on its widest axial slice (1 voxel margin) and
the prompt model predicts and propagates it (and, separately, from one positive click on the
truth's deepest pixel of that slice) (``structure`` = liver_tumor / kidney_tumor / kidney_cyst,
so the lesion extent bound applies); with ``--unet`` the demo U-Net's lesion output on the same
scan is scored too (phantom-trained: how much of the inserted lesion it calls a lesion, and how
much lesion it reports elsewhere in the organ). Prints per lesion Dice, volume error, slices
reached beyond the lesion and time; then medians, the load average and the peak RSS.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python Testing/benchmarks/bench_lesion_box_real.py [--seed 0] [--unet]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_lesion_box import box_on_widest_slice, slices_beyond  # noqa: E402

from benchutil import median, peak_rss_mb  # noqa: E402

ROOT = HERE.parents[1]
REAL_CT = ROOT.parent / "shared" / "data" / "real-ct" / "totalsegmentator"
ORGAN_VALUE = {"liver": 5, "kidney_right": 2, "kidney_left": 3}  # TotalSegmentator v2 "total"
#: (organ, structure, diameter mm, HU contrast, what)
LESIONS = [
    ("liver", "liver_tumor", 15, -40, "cyst-like"),
    ("liver", "liver_tumor", 25, -40, "cyst-like"),
    ("liver", "liver_tumor", 40, -40, "cyst-like"),
    ("liver", "liver_tumor", 15, -20, "subtle"),
    ("liver", "liver_tumor", 25, -20, "subtle"),
    ("liver", "liver_tumor", 40, -20, "subtle"),
    ("kidney_right", "kidney_cyst", 20, -15, "simple cyst"),
    ("kidney_left", "kidney_cyst", 30, -15, "simple cyst"),
    ("kidney_left", "kidney_tumor", 20, 40, "hyperdense"),
    ("kidney_right", "kidney_tumor", 30, 40, "hyperdense"),
]


def insert_lesion(
    image: np.ndarray, organ: np.ndarray, spacing_zyx, diameter_mm: float, delta_hu: float, rng, inside: float = 1.0
):
    """Return ``(new image, truth mask)``: an irregular ellipsoid in ``organ`` (ZYX arrays).

    The ellipsoid's radii are the nominal radius times U(0.8, 1.2) each, its axes a random
    rotation; its centre a random voxel of the organ eroded by ``inside`` x the largest radius
    + 3 mm (1: wholly inside; less: cut by the organ's border, as in a kidney that is thinner than
    the lesion). The HU change is ``delta_hu * w`` inside the organ only, ``w`` falling from 1 to 0
    over 1.5 mm across the surface; the truth is ``w >= 0.5`` within the organ.
    """
    from scipy import ndimage

    sp = np.asarray(spacing_zyx, float)
    radii = diameter_mm / 2.0 * rng.uniform(0.8, 1.2, 3)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))  # a random rotation
    margin = inside * radii.max() + 3.0
    dist = ndimage.distance_transform_edt(organ, sampling=sp)
    inside = np.argwhere(dist > margin)
    if len(inside) == 0:
        raise ValueError(f"organ too small for a {diameter_mm} mm lesion")
    centre = inside[rng.integers(len(inside))].astype(float)
    half = np.ceil((radii.max() + 3.0) / sp).astype(int)
    lo = np.maximum(centre.astype(int) - half, 0)
    hi = np.minimum(centre.astype(int) + half + 1, image.shape)
    zz, yy, xx = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")
    pts = (np.stack([zz, yy, xx], -1) - centre) * sp  # mm
    local = pts @ q  # coordinates along the ellipsoid's axes
    r = np.sqrt(((local / radii) ** 2).sum(-1))  # 1 on the surface
    signed_mm = (r - 1.0) * radii.mean()  # approx. signed distance to the surface
    w = np.clip(0.5 - signed_mm / 1.5, 0.0, 1.0)
    out = image.astype(np.float32).copy()
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    out[box] += delta_hu * w * organ[box]
    truth = np.zeros(image.shape, bool)
    truth[box] = (w >= 0.5) & organ[box]
    return out.astype(image.dtype), truth


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unet", action="store_true", help="also score the demo U-Net's lesion output")
    p.add_argument(
        "--contrast-keep", type=float, default=None, help="PropagationConfig.lesion_contrast_keep (0 = the rule off)"
    )
    args = p.parse_args()
    if not (REAL_CT / "example_ct.nii.gz").is_file():
        print(f"no real CT at {REAL_CT}: nothing to measure")
        return 0

    from scipy import ndimage

    from lkseg.io import read_image, read_label_map
    from lkseg.metrics import dice
    from lkseg.refine import PromptPredictor
    from lkseg.volume import Volume

    ct = read_image(REAL_CT / "example_ct.nii.gz")
    ref = read_label_map(REAL_CT / "example_seg_fast_force_split.nii.gz", reference=ct).array
    spacing_zyx = ct.spacing[::-1]
    rng = np.random.default_rng(args.seed)
    print("# bench_lesion_box_real: lesions inserted into example_ct (3 mm, unenhanced), one box each")
    print(f"# load average before: {os.getloadavg()[0]:.2f}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    seg = None
    if args.unet:
        from lkseg.auto import AutoOptions, AutoSegmenter

        seg = AutoSegmenter("lkseg-demo-abdomen", device="cpu")
    predictor = PromptPredictor()
    if args.contrast_keep is not None:
        predictor.config.propagation.lesion_contrast_keep = args.contrast_keep or None
    print(f"# lesion contrast rule: keep {predictor.config.propagation.lesion_contrast_keep}")
    rows = []
    try:
        print(
            "| organ | lesion | true mL | slices | box Dice | box mL | beyond | s | click Dice |"
            + (" U-Net Dice | U-Net lesion mL elsewhere |" if seg else "")
        )
        print("|---|---|---|---|---|---|---|---|---|" + ("---|---|" if seg else ""))
        for organ, structure, diameter, delta, what in LESIONS:
            inside = 1.0 if organ == "liver" else 0.5  # kidneys are thinner than a 30 mm lesion
            image, truth = insert_lesion(ct.array, ref == ORGAN_VALUE[organ], spacing_zyx, diameter, delta, rng, inside)
            vol = Volume(image, ct.grid, dict(ct.meta))
            predictor.set_volume(vol)
            m3d, k, seconds = box_on_widest_slice(predictor, structure, truth)
            # one click instead: on the truth's deepest pixel of the same slice
            depth = ndimage.distance_transform_edt(truth[k])
            j, i = np.unravel_index(int(np.argmax(depth)), depth.shape)
            c2d = predictor.predict("axial", k, points=[[i, j, k]], labels=[1], structure=structure)
            c3d = (
                predictor.propagate("axial", k, c2d, structure=structure) if c2d.any() else np.zeros(truth.shape, bool)
            )
            beyond = slices_beyond(truth, m3d)
            ml = ct.grid.voxel_volume_ml
            row = {
                "organ": organ,
                "lesion": f"{diameter} mm {what} ({delta:+d} HU)",
                "true_ml": truth.sum() * ml,
                "slices": int(truth.any(axis=(1, 2)).sum()),
                "dice": float(dice(m3d, truth)),
                "ml": m3d.sum() * ml,
                "beyond": beyond,
                "seconds": seconds,
                "click_dice": float(dice(c3d, truth)) if c3d.any() else 0.0,
            }
            line = (
                f"| {organ} | {row['lesion']} | {row['true_ml']:.1f} | {row['slices']} | {row['dice']:.3f} | "
                f"{row['ml']:.1f} | {beyond} | {seconds:.1f} | {row['click_dice']:.3f} |"
            )
            if seg is not None:
                result = seg.predict(vol, options=AutoOptions(mode="unet"))
                lab = result.labels.array
                table = result.label_table
                values = [v for v, n in table.items() if n in ("liver_tumor", "kidney_tumor", "kidney_cyst")]
                pred = np.isin(lab, values)
                near = truth | (ref == ORGAN_VALUE[organ])
                row["unet_dice"] = float(dice(pred & near, truth))
                row["unet_elsewhere_ml"] = float((pred & ~truth).sum() * ml)
                line += f" {row['unet_dice']:.3f} | {row['unet_elsewhere_ml']:.1f} |"
            rows.append(row)
            print(line, flush=True)
    finally:
        predictor.close()
    for group, sel in (
        ("liver", [r for r in rows if r["organ"] == "liver"]),
        ("kidney", [r for r in rows if r["organ"] != "liver"]),
    ):
        d = [r["dice"] for r in sel]
        print(
            f"{group}: {len(d)} lesions, box median Dice {median(d):.3f} (min {min(d):.3f}), "
            f"one click median Dice {median([r['click_dice'] for r in sel]):.3f}, "
            f"median volume error {median([100 * (r['ml'] - r['true_ml']) / r['true_ml'] for r in sel]):+.0f} %, "
            f"slices beyond the lesion max {max(r['beyond'] for r in sel)}"
        )
    print(f"# load average after: {os.getloadavg()[0]:.2f}; peak RSS {peak_rss_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
