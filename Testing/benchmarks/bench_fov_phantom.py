"""Tight in-plane fields of view on phantoms: does the demo model lose organs when the body is cut?

On the real ``example_ct`` cut to 70 % / 55 % of its in-plane field of view the demo U-Net misses the
left kidney and the spleen (``bench_localise_real.py``). This benchmark asks whether that is the
field of view itself or the real anatomy: phantoms (validation seeds, never trained on) are cut
about the in-plane centre of the body to ``frac`` of the body's width and depth, and segmented
with the U-Net alone. The share of the body left inside each cut is printed, and that of the real
cuts of ``bench_localise_real.py`` (``frac`` of the grid about the body's centre) when
``example_ct`` is there. An organ counts as present from 5 mL in the cut, found when its Dice is
>= 0.2 (the rules of ``bench_localise_real.py``). Only axially stored phantoms (LPS, RAS) are cut;
the others are skipped and said so.

Usage::

    OMP_NUM_THREADS=2 python Testing/benchmarks/bench_fov_phantom.py [--seeds 2000-2005] [--fracs 0.7 0.55]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from phantom_dataset import parse_seeds, phantom_config

from benchutil import environment, peak_rss_mb, print_table

ORGANS = ("liver", "kidney_right", "kidney_left", "spleen")


def body_kept(arr: np.ndarray, sl) -> tuple[float, float]:
    """Fractions of the body's width (i) and depth (j) (voxels > -500 HU on any slice) inside ``sl``."""
    body = (arr > -500).any(axis=0)
    cols, rows = np.nonzero(body.any(axis=0))[0], np.nonzero(body.any(axis=1))[0]
    width = cols.max() - cols.min() + 1
    depth = rows.max() - rows.min() + 1
    kept_i = min(cols.max() + 1, sl[2].stop) - max(cols.min(), sl[2].start)
    kept_j = min(rows.max() + 1, sl[1].stop) - max(rows.min(), sl[1].start)
    return kept_i / width, kept_j / depth


def cut_fov(image, frac: float):
    """``(volume, slices)``: the in-plane centre of the body (voxels > -500 HU on any slice),
    ``frac`` of the body's width (i) and depth (j) kept; ZYX slices into the original array.
    ``bench_localise_real.py``'s ``fov`` variants keep ``frac`` of the grid instead, but
    ``example_ct``'s body (with its table) fills its grid, so the two cuts agree there, while a
    phantom's grid has air around the body."""
    from lkseg.volume import Volume

    arr = image.array
    body = np.argwhere((arr > -500).any(axis=0))
    lo, hi = body.min(0), body.max(0) + 1
    centre, half = (lo + hi) // 2, ((hi - lo) * frac / 2).astype(int)
    ny, nx = arr.shape[1:]
    j0, j1 = max(0, centre[0] - half[0]), min(ny, centre[0] + half[0])
    i0, i1 = max(0, centre[1] - half[1]), min(nx, centre[1] + half[1])
    sl = (slice(None), slice(int(j0), int(j1)), slice(int(i0), int(i1)))
    origin = image.grid.index_to_lps([sl[2].start, sl[1].start, 0])
    cut = Volume.from_array(np.ascontiguousarray(arr[sl]), image.spacing, origin, image.grid.direction, {})
    return cut, sl


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="2000-2005", help="phantom seeds (validation seeds by default)")
    p.add_argument("--fracs", type=float, nargs="+", default=[0.7, 0.55])
    p.add_argument("--model", default="lkseg-demo-abdomen")
    args = p.parse_args()
    from lkseg.auto import AutoOptions, AutoSegmenter
    from lkseg.metrics import dice
    from lkseg.phantom import generate_phantom

    print(environment())
    real = (
        Path(__file__).resolve().parents[3] / "shared" / "data" / "real-ct" / "totalsegmentator" / "example_ct.nii.gz"
    )
    if real.is_file():
        from lkseg.io import read_image

        real_ct = read_image(real).array
        body = np.argwhere((real_ct > -500).any(axis=0))
        cj, ci = (body.min(0) + body.max(0)) // 2
        ny, nx = real_ct.shape[1:]
        for frac in args.fracs:  # bench_localise_real.variants(): frac of the grid about the body's centre
            hi, hj = int(nx * frac / 2), int(ny * frac / 2)
            sl = (slice(None), slice(max(0, cj - hj), min(ny, cj + hj)), slice(max(0, ci - hi), min(nx, ci + hi)))
            kept = body_kept(real_ct, sl)
            print(f"example_ct cut to {frac:.0%}: {kept[0]:.0%} of the body's width, {kept[1]:.0%} of its depth kept")
    seg = AutoSegmenter(args.model, device="cpu")
    rows, found, missed = [], 0, 0
    for seed in parse_seeds(args.seeds):
        ph = generate_phantom(phantom_config(seed))
        orientation = ph.image.grid.orientation
        if orientation not in ("LPS", "RAS"):
            print(f"seed {seed}: stored {orientation}, not axial: skipped")
            continue
        ref_all = ph.product_labels().array
        voxel_ml = float(np.prod(ph.image.spacing)) / 1000.0
        for frac in args.fracs:
            cut, sl = cut_fov(ph.image, frac)
            ref = ref_all[sl]
            start = time.perf_counter()
            result = seg.predict(cut, options=AutoOptions(mode="unet"))
            row = {"seed": seed, "fov": f"{frac:.0%}", "shape": "x".join(map(str, cut.shape[::-1]))}
            row["body kept (width, depth)"] = "{:.0%}, {:.0%}".format(*body_kept(ph.image.array, sl))
            row["wall_s"] = time.perf_counter() - start
            for organ in ORGANS:
                value = result.label_table.value_of(organ)
                truth, pred = ref == value, result.labels.array == value
                ref_ml, pred_ml = truth.sum() * voxel_ml, pred.sum() * voxel_ml
                if ref_ml < 5.0:
                    row[organ] = f"not scored ({pred_ml:.0f}/{ref_ml:.0f} mL)"
                    continue
                d = dice(pred, truth)
                status = "found" if d >= 0.2 else "MISSED"
                found, missed = found + (status == "found"), missed + (status == "MISSED")
                row[organ] = f"{status} {d:.3f} ({pred_ml:.0f}/{ref_ml:.0f} mL)"
            rows.append(row)
            print("  ".join(f"{k}: {row[k]:.1f}" if k == "wall_s" else f"{k}: {row[k]}" for k in row), flush=True)
    print()
    print_table(rows, ["seed", "fov", "shape", "body kept (width, depth)", "wall_s", *ORGANS])
    print(f"{found} found, {missed} missed (present >= 5 mL); peak RSS {peak_rss_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
