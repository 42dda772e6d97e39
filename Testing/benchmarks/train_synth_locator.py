"""Experiment: the coarse locator re-trained on phantoms with randomised tissue contrast (SynthSeg idea).

The demo model's 6 mm coarse stage learned the phantoms' HU values; on real CT it misplaces or
misses organs (``bench_localise_real.py``). Issue 15 names the remedy to measure first: retrain
this small stage (0.6 M parameters) on images whose every tissue gets a random HU, so that it must
rely on shape and position. This script writes such a dataset, fine-tunes the demo's coarse stage
on it on the CPU, and assembles a package with the new coarse stage and the demo's fine stage
(``merge_stages.py``), to be compared with ``bench_auto_accuracy.py --seeds 2000-2011 --no-real``
(validation phantoms: the choice) and ``bench_localise_real.py`` (the real cuts: the report).

The recipe was fixed before its result was run on any real scan (nothing below was tuned on real CT):

* anatomy: training phantoms (``--seeds``, default 0-79, the demo's training seeds), built at
  3 mm on an LPS grid over the same field of view and scan range as ``phantom_dataset.py`` draws;
  ``--draws`` images per phantom, each with its own random contrast;
* contrast, per image, from the phantom's detailed tissue labels: outside the body air
  (-1000 HU); lung -1000..-700; each fat -180..-40; cortical bone 200..1200, cancellous bone
  100..400; the CT table -500..300; bowel and stomach -100..80; every other soft tissue (muscle,
  liver, spleen, each kidney part, vessels, pancreas, heart, lesions...) **independently**
  -30..280 HU (covers unenhanced to arterial and beyond, and every contrast order between organs);
* per-tissue texture (smooth noise of SD 0-20 HU), a smooth bias field (SD 0-30 HU), blur
  (Gaussian, sigma 0-1.5 voxels) and noise (SD 0-40 HU);
* fields of view: with probability 0.35 the in-plane field is cut to 50-90 % about the body's
  centre (+- 10 % shift), with probability 0.25 the scan is cut to a 45-120 mm slab through the
  organs;
* training: the demo's coarse stage as the start (same network, labels and intensity
  normalisation), ``--epochs`` x 50 steps of 4 patches, learning rate 1e-3, ``--minutes`` cap.

Usage::

    OMP_NUM_THREADS=2 python Testing/benchmarks/train_synth_locator.py WORK [--seeds 0-79] [--draws 1]
        [--epochs 20] [--minutes 25]

writes ``WORK/data`` (MSD layout), ``WORK/coarse`` (the trained stage with a throw-away fine
stage) and ``WORK/model`` (the package to benchmark with ``--model WORK/model``; it keeps the
demo's id, version, normalisation and inference settings, and its manifest's
``training.coarse_stage_from`` names the new coarse stage).
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
from merge_stages import merge
from phantom_dataset import parse_seeds, phantom_config

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "models" / "lkseg-demo-abdomen"
GRID_MM = 3.0

_AIR_OUT = 0
_RANGES = {  # detailed tissue -> HU range of its random mean
    "lung": (-1000, -700),
    "subcutaneous_fat": (-180, -40),
    "visceral_fat": (-180, -40),
    "spine": (200, 1200),
    "rib": (200, 1200),
    "pelvic_bone": (200, 1200),
    "spine_trabecular": (100, 400),
    "table": (-500, 300),
    "bowel": (-100, 80),
    "stomach": (-100, 80),
}
_SOFT = (-30, 280)


def lps_config(seed: int):
    """The phantom config of ``seed`` on a 3 mm LPS grid spanning the same field and scan range."""
    from lkseg.phantom import direction_from_orientation

    cfg = phantom_config(seed)
    direction = np.asarray(cfg.direction, dtype=float).reshape(3, 3)
    extents = [n * s for n, s in zip(cfg.size_ijk, cfg.spacing, strict=True)]
    z_axis = int(np.argmax(np.abs(direction[2])))  # the index axis closest to head-foot
    fov = max(e for a, e in enumerate(extents) if a != z_axis)
    size = (round(fov / GRID_MM), round(fov / GRID_MM), max(16, round(extents[z_axis] / GRID_MM)))
    return replace(
        cfg,
        spacing=(GRID_MM, GRID_MM, GRID_MM),
        size_ijk=size,
        direction=tuple(direction_from_orientation("LPS").reshape(-1)),
    )


def _smooth_noise(rng, shape, sigma_vox: float, sd: float) -> np.ndarray:
    from scipy import ndimage

    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox)
    return field * (sd / max(float(field.std()), 1e-6))


def synthesise(labels: np.ndarray, body: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A CT-like image (HU, float32) of the detailed label map ``labels`` (ZYX), random contrast."""
    from scipy import ndimage

    from lkseg.phantom import DETAILED

    image = np.full(labels.shape, -1000.0, dtype=np.float32)
    texture = _smooth_noise(rng, labels.shape, 1.0, 1.0)
    for name, value in DETAILED.items():
        mask = labels == value
        if not mask.any():
            continue
        lo, hi = _RANGES.get(name, _SOFT)
        sd = rng.uniform(0, 20)
        image[mask] = rng.uniform(lo, hi) + sd * texture[mask]
    inside = body & (labels == _AIR_OUT)
    image[inside] = rng.uniform(-180, -40)  # unlabelled voxels inside the body: fat
    image += _smooth_noise(rng, labels.shape, 12.0, rng.uniform(0, 30)) * (labels != _AIR_OUT)
    sigma = rng.uniform(0, 1.5)
    if sigma > 0.2:
        image = ndimage.gaussian_filter(image, sigma)
    image += rng.normal(0.0, rng.uniform(0, 40), labels.shape).astype(np.float32)
    return image


def crop(image, labels, product, rng):
    """Random field of view (see the module docstring) of ``image`` and ``product`` (the body read
    from the detailed ``labels``); returns both cut and the ZYX slices."""
    nz, ny, nx = labels.shape
    sl = [slice(0, nz), slice(0, ny), slice(0, nx)]
    body = np.argwhere((labels > 0).any(axis=0))
    if rng.random() < 0.35 and body.size:
        (j0, i0), (j1, i1) = body.min(0), body.max(0) + 1
        frac = rng.uniform(0.5, 0.9)
        for axis, lo, hi, n in ((1, j0, j1, ny), (2, i0, i1, nx)):
            half = (hi - lo) * frac / 2
            centre = (lo + hi) / 2 + rng.uniform(-0.1, 0.1) * (hi - lo)
            sl[axis] = slice(max(0, int(centre - half)), min(n, int(centre + half)))
    organ_z = np.flatnonzero(product.any(axis=(1, 2)))
    if rng.random() < 0.25 and organ_z.size:
        length = max(8, round(rng.uniform(45, 120) / GRID_MM))
        start = int(rng.integers(max(0, organ_z[0] - length // 2), max(1, organ_z[-1] - length // 2)))
        sl[0] = slice(start, min(nz, start + length))
    sl = tuple(sl)
    return image[sl], product[sl], sl


def write_dataset(out: Path, seeds: list[int], draws: int) -> None:
    from lkseg.io import write_image, write_label_map
    from lkseg.labels import PRODUCT_LABELS
    from lkseg.phantom import generate_phantom
    from lkseg.phantom.tables import product_lut
    from lkseg.volume import Volume

    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    lut = product_lut()
    training, t0 = [], time.perf_counter()
    for seed in seeds:
        ph = generate_phantom(lps_config(seed))
        detailed = ph.labels.array
        product = lut[detailed]
        body = ph.image.array > -500
        for draw in range(draws):
            rng = np.random.default_rng([seed, draw, 515])
            image = synthesise(detailed, body, rng)
            image, labels, sl = crop(image, detailed, product, rng)
            origin = ph.image.grid.index_to_lps([sl[2].start, sl[1].start, sl[0].start])
            name = f"synth_{seed:04d}_{draw}"
            grid = (ph.image.spacing, origin, ph.image.grid.direction)
            write_image(
                Volume.from_array(np.clip(image, -1024, 3071).astype(np.int16), *grid, {}),
                out / "imagesTr" / f"{name}.nii",
            )
            write_label_map(
                Volume.from_array(np.ascontiguousarray(labels), *grid, {}), out / "labelsTr" / f"{name}.nii"
            )
            training.append({"image": f"./imagesTr/{name}.nii", "label": f"./labelsTr/{name}.nii"})
        print(f"phantom {seed}: {draws} image(s), {time.perf_counter() - t0:.0f} s so far", flush=True)
    dataset = {
        "name": "lkseg-synth-contrast",
        "description": "Synthetic phantoms with random tissue contrast (train_synth_locator.py); NOT patient data",
        "modality": {"0": "CT"},
        "labels": {"0": "background", **{str(v): n for v, n in PRODUCT_LABELS.items()}},
        "numTraining": len(training),
        "training": training,
    }
    (out / "dataset.json").write_text(json.dumps(dataset, indent=2))


def train(data: Path, coarse_out: Path, epochs: int, minutes: float) -> None:
    """The coarse stage from the demo's, the demo's intensity normalisation; a throw-away fine stage."""
    import lkseg.train.api as api
    from lkseg.models import load_manifest
    from lkseg.train.trainer import StageConfig

    demo = load_manifest(str(DEMO))
    original = api._initial_state
    api.intensity_from_cases = lambda cases, clip: demo.intensity  # the fine stage's normalisation
    api._initial_state = lambda package, stage, table: (
        original(package, stage, table) if stage.name == "coarse" else None
    )
    coarse = next(s for s in api.PRESETS["cascade"]() if s.name == "coarse")
    coarse = replace(coarse, epochs=epochs, iters_per_epoch=50, lr=1e-3, max_minutes=minutes, weights_dtype="float16")
    fine = StageConfig("fine", (8.0, 8.0, 8.0), (16, 16, 16), (8, 16), 1, epochs=1, iters_per_epoch=1, batch_size=1)
    config = api.TrainConfig(
        stages=[coarse, fine],
        model_id="lkseg-synth-locator",
        version="0.0.1",
        labels="product",
        val_fraction=0.1,
        device="cpu",
        init_from=str(DEMO),
        progress_bar=False,
    )
    api.train_model(data, coarse_out, config)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("work", type=Path)
    p.add_argument("--seeds", default="0-79")
    p.add_argument("--draws", type=int, default=1)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--minutes", type=float, default=25.0)
    args = p.parse_args()
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    data = args.work / "data"
    if not (data / "dataset.json").is_file():
        write_dataset(data, parse_seeds(args.seeds), args.draws)
    coarse = args.work / "coarse"
    if not (coarse / "manifest.json").is_file():
        train(data, coarse, args.epochs, args.minutes)
    merge(str(DEMO), str(coarse), str(args.work / "model"))
    print(f"package: {args.work / 'model'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
