"""Benchmark: one box on a lesion -> its 3D mask by LiteMedSAM propagation (the lesion path of issue 15).

For every liver tumour, kidney tumour and kidney cyst of the phantoms (connected pieces of at least
``--min-voxels`` voxels of the phantom's exact labels), a box is drawn around the lesion on its
widest axial slice (1 voxel margin), predicted and propagated with the default prompt model, with
the lesion extent bound (default: at most the lesion's in-plane diameter, >= 10 mm, each way from
the start slice; ``lkseg.refine.propagation.LESION_EXTENT_FACTOR``) and without it (the organ
limit only). Prints, per lesion, Dice against the exact lesion, the slices reached beyond the
lesion's own, and the time; then medians per variant, the load average and the peak RSS.

Data: phantoms ``PhantomConfig(seed, 192x192x80, 2.0 x 2.0 x 2.5 mm)``, the phase cycled over
portal-venous / arterial / unenhanced / nephrographic by seed. The bound's factor (1.0) and minimum
(10 mm) were set from the lesion's shape (a compact blob) and the web browser test's seed-2
arterial phantom; the default seeds 3000-3003 were not used to choose them.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python Testing/benchmarks/bench_lesion_box.py --seeds 3000 3001 3002 3003
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from benchutil import median, peak_rss_mb  # noqa: E402

PHASES = ("portal_venous", "arterial", "unenhanced", "nephrographic")
LESION_LABELS = ("liver_tumor", "kidney_tumor", "kidney_cyst")


def _lesions(phantom, min_voxels: int):
    """(structure, ZYX bool mask) per connected lesion piece of the exact labels."""
    from scipy import ndimage

    labels = np.asarray(phantom.labels.array)
    table = phantom.label_table
    for name in LESION_LABELS:
        value = next((v for v, n in table.items() if n == name), None)
        if value is None:
            continue
        pieces, n = ndimage.label(labels == value, structure=np.ones((3, 3, 3), dtype=bool))
        for i in range(1, n + 1):
            piece = pieces == i
            if piece.sum() >= min_voxels:
                yield name, piece


def box_on_widest_slice(predictor, structure: str, lesion: np.ndarray) -> tuple[np.ndarray, int, float]:
    """A box around ``lesion`` (ZYX bool) on its widest axial slice (1 voxel margin), predicted and
    propagated: ``(3D mask, slice k, seconds)``. Also used by ``bench_lesion_box_real.py``."""
    k = int(np.argmax(lesion.sum(axis=(1, 2))))
    jj, ii = np.nonzero(lesion[k])
    box = [[ii.min() - 1, jj.min() - 1, k], [ii.max() + 1, jj.max() + 1, k]]
    t0 = time.perf_counter()
    m2d = predictor.predict("axial", k, box=box, structure=structure)
    m3d = predictor.propagate("axial", k, m2d, structure=structure)
    return m3d, k, time.perf_counter() - t0


def slices_beyond(lesion: np.ndarray, mask: np.ndarray) -> int:
    """Axial slices ``mask`` reaches below and above the lesion's own (ZYX bool arrays)."""
    own = np.flatnonzero(lesion.any(axis=(1, 2)))
    got = np.flatnonzero(mask.any(axis=(1, 2)))
    return 0 if got.size == 0 else int(max(0, own.min() - got.min()) + max(0, got.max() - own.max()))


def _run(predictor, structure: str, lesion: np.ndarray, bound: bool) -> dict:
    from lkseg.metrics import dice

    predictor.config.propagation.max_extent_mm = None if bound else 1e6
    m3d, k, seconds = box_on_widest_slice(predictor, structure, lesion)
    slices = int(lesion.any(axis=(1, 2)).sum())
    beyond = slices_beyond(lesion, m3d)
    return {"dice": float(dice(m3d, lesion)), "beyond": beyond, "seconds": seconds, "k": k, "slices": slices}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", nargs="+", type=int, default=[3000, 3001, 3002, 3003])
    p.add_argument("--min-voxels", type=int, default=30)
    p.add_argument(
        "--contrast-keep", type=float, default=None, help="PropagationConfig.lesion_contrast_keep (0 = the rule off)"
    )
    args = p.parse_args()

    from lkseg.phantom import PhantomConfig, generate_phantom
    from lkseg.refine import PromptPredictor

    print("# bench_lesion_box: one box on the widest slice of each phantom lesion -> 3D mask (LiteMedSAM)")
    print(f"# load average before: {os.getloadavg()[0]:.2f}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    rows = {"bound": [], "no bound": []}
    predictor = PromptPredictor()
    if args.contrast_keep is not None:
        predictor.config.propagation.lesion_contrast_keep = args.contrast_keep or None
    print(f"# lesion contrast rule: keep {predictor.config.propagation.lesion_contrast_keep}")
    try:
        print(f"# prompt model back end: {getattr(predictor.engine, 'backend', '?')}")
        print(
            "| seed (phase) | lesion | slices | start k | Dice bound / no bound | slices beyond bound / no bound | s bound / no bound |"
        )
        print("|---|---|---|---|---|---|---|")
        for seed in args.seeds:
            phase = PHASES[seed % len(PHASES)]
            phantom = generate_phantom(
                PhantomConfig(seed=seed, size_ijk=(192, 192, 80), spacing=(2.0, 2.0, 2.5), phase=phase)
            )
            predictor.set_volume(phantom.image)
            for structure, lesion in _lesions(phantom, args.min_voxels):
                # without the bound first: it encodes the farther slices, so the bound's time is a cached one
                free = _run(predictor, structure, lesion, bound=False)
                bounded = _run(predictor, structure, lesion, bound=True)
                rows["bound"].append(bounded)
                rows["no bound"].append(free)
                print(
                    f"| {seed} ({phase}) | {structure} ({int(lesion.sum())} vx) | {bounded['slices']} | {bounded['k']} | "
                    f"{bounded['dice']:.3f} / {free['dice']:.3f} | {bounded['beyond']} / {free['beyond']} | "
                    f"{bounded['seconds']:.1f} / {free['seconds']:.1f} |",
                    flush=True,
                )
    finally:
        predictor.close()
    for name, values in rows.items():
        d = [r["dice"] for r in values]
        print(
            f"{name}: {len(d)} lesions, median Dice {median(d):.3f} (min {min(d, default=float('nan')):.3f}), "
            f"median slices beyond the lesion {median([r['beyond'] for r in values]):.0f} "
            f"(max {max((r['beyond'] for r in values), default=0)})"
        )
    print(f"# load average after: {os.getloadavg()[0]:.2f}; peak RSS {peak_rss_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
