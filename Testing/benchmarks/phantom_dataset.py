"""Write an MSD-style training dataset of varied synthetic phantoms (for ``lkseg train``).

Usage::

    python Testing/benchmarks/phantom_dataset.py OUT_DIR --seeds 0-63 --workers 16

Each seed gives one phantom whose acquisition varies with the seed: in-plane spacing 0.7-1.0 mm,
slice thickness 1-5 mm, field of view 340-460 mm, scan range and table position, storage
orientation (LPS, RAS, a sagittal stack or an oblique tilt up to 15 degrees), contrast phase,
noise 5-25 HU, blur, number of liver tumours, kidney tumour kind and cyst. Images are int16 HU,
labels hold :data:`lkseg.labels.PRODUCT_LABELS` values. :func:`phantom_config` is also used by the
accuracy benchmark (on seeds never used for training).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["parse_seeds", "phantom_config", "write_case"]


def parse_seeds(text: str) -> list[int]:
    """``"0-9,20,30-31"`` -> [0, ..., 9, 20, 30, 31]."""
    seeds: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, _, hi = part.partition("-")
        seeds.extend(range(int(lo), int(hi or lo) + 1))
    return seeds


def phantom_config(seed: int, max_voxels: int = 40_000_000, profile: str = "default"):
    """A :class:`~lkseg.phantom.PhantomConfig` with seed-dependent acquisition parameters.

    ``profile="tumours"`` (used to fine-tune the demo model) draws every contrast phase equally,
    2-6 liver tumours and always a kidney tumour, at a coarser in-plane spacing (1.0-1.4 mm) that
    is cheaper to generate; the accuracy benchmark always uses the default profile.
    """
    from lkseg.phantom import PHASES, PhantomConfig, direction_from_orientation, oblique_direction

    rng = np.random.default_rng(10_000 + seed)
    tumours = profile == "tumours"
    inplane = float(rng.uniform(1.0, 1.4) if tumours else rng.uniform(0.7, 1.0))
    slice_mm = float(rng.choice([1.0, 1.25, 2.0, 2.5, 3.0, 5.0]))
    fov = float(rng.uniform(340, 460))
    z_extent = float(rng.uniform(220, 400))
    n_xy = round(fov / inplane)
    n_z = max(24, round(z_extent / slice_mm))
    while n_xy * n_xy * n_z > max_voxels:
        inplane *= 1.1
        n_xy = round(fov / inplane)
    kind = rng.choice(["LPS", "LPS", "LPS", "RAS", "sagittal", "oblique"])
    spacing = [inplane, inplane, slice_mm]
    size = [n_xy, n_xy, n_z]
    if kind == "sagittal":
        direction = direction_from_orientation("PIL")  # i posterior, j inferior, k left
        spacing = [inplane, slice_mm, inplane]
        size = [n_xy, n_z, n_xy]
    elif kind == "oblique":
        direction = oblique_direction(
            direction_from_orientation("LPS"), float(rng.uniform(-15, 15)), str(rng.choice(["x", "y", "z"]))
        )
    else:
        direction = direction_from_orientation(str(kind))
    phase = str(rng.choice(list(PHASES), p=[0.25] * 4 if tumours else [0.5, 0.5 / 3, 0.5 / 3, 0.5 / 3]))
    return PhantomConfig(
        seed=int(seed),
        size_ijk=tuple(size),
        spacing=tuple(spacing),
        direction=tuple(np.asarray(direction).reshape(-1)),
        center_lps=(float(rng.uniform(-15, 15)), float(rng.uniform(-15, 15)), float(rng.uniform(-40, 40))),
        phase=phase,
        noise_sd=float(rng.uniform(5, 25)),
        blur_mm=float(rng.uniform(0.3, 1.0)),
        n_liver_tumors=int(rng.integers(2, 7) if tumours else rng.integers(0, 6)),
        kidney_tumor=str(
            rng.choice(
                ["random", "exophytic", "endophytic"]
                if tumours
                else ["random", "random", "exophytic", "endophytic", "none"]
            )
        ),
        kidney_cyst=bool(rng.random() < 0.5),
    )


def write_case(args) -> dict:
    """Generate one phantom and write ``imagesTr/phantom_<seed>.nii`` + ``labelsTr/...``."""
    out, seed, compress, profile = args
    from lkseg.io import write_image, write_label_map
    from lkseg.phantom import generate_phantom

    t0 = time.perf_counter()
    cfg = phantom_config(seed, profile=profile)
    ph = generate_phantom(cfg)
    ext = ".nii.gz" if compress else ".nii"
    name = f"phantom_{seed:04d}"
    write_image(ph.image, Path(out) / "imagesTr" / f"{name}{ext}", compress=compress)
    write_label_map(ph.product_labels(), Path(out) / "labelsTr" / f"{name}{ext}", compress=compress)
    return {
        "image": f"./imagesTr/{name}{ext}",
        "label": f"./labelsTr/{name}{ext}",
        "seed": seed,
        "size_ijk": list(cfg.size_ijk),
        "spacing": [round(s, 3) for s in cfg.spacing],
        "orientation": ph.image.grid.orientation,
        "phase": cfg.phase,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    from lkseg.labels import PRODUCT_LABELS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--seeds", default="0-63")
    p.add_argument("--workers", type=int, default=max(1, mp.cpu_count() - 1))
    p.add_argument("--compress", action="store_true", help="write .nii.gz (slower) instead of .nii")
    p.add_argument(
        "--profile", default="default", choices=["default", "tumours"], help="acquisition/lesion distribution"
    )
    args = p.parse_args(argv)
    out = Path(args.out)
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    seeds = parse_seeds(args.seeds)
    t0 = time.perf_counter()
    jobs = [(str(out), s, args.compress, args.profile) for s in seeds]
    if args.workers > 1:
        with mp.get_context("fork").Pool(args.workers) as pool:
            cases = list(pool.imap_unordered(write_case, jobs))
    else:
        cases = [write_case(j) for j in jobs]
    cases.sort(key=lambda c: c["seed"])
    dataset = {
        "name": "lkseg-phantoms",
        "description": "Synthetic abdominal CT phantoms (lkseg.phantom), varied acquisition; NOT patient data",
        "licence": "CC0-1.0 (synthetic)",
        "modality": {"0": "CT"},
        "labels": {"0": "background", **{str(v): n for v, n in PRODUCT_LABELS.items()}},
        "numTraining": len(cases),
        "x_profile": args.profile,
        "training": [{"image": c["image"], "label": c["label"]} for c in cases],
        "x_cases": cases,
    }
    (out / "dataset.json").write_text(json.dumps(dataset, indent=2))
    print(
        f"wrote {len(cases)} phantoms to {out} in {time.perf_counter() - t0:.1f} s "
        f"(median {np.median([c['seconds'] for c in cases]):.1f} s each, {math.ceil(len(cases) / max(1, args.workers))} rounds)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
