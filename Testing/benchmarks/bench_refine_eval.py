"""Simulated-user accuracy of interactive refinement on real CT and on phantoms (LiteMedSAM).

Runs :func:`lkseg.refine.simulate_structure` (the protocol of ``lkseg refine-eval``: a box, then
clicks) for each structure and prints Dice / HD95 after every interaction, the area under the
Dice curve, and the time of each interaction with the load average.

Image embeddings can be kept on disk between runs (``--embedding-cache DIR``): the encoder's
output for a model input is stored under the SHA-1 of that input, so comparing stopping rules or
click strategies on the same scan re-runs only the cheap decoder. Timings of such runs measure
the rules, not the encoder (say so when reporting them).

Data (``--data``):

* ``example_ct`` - the 3 mm whole-trunk TotalSegmentator example (evaluation data);
* ``example_ct_sm`` - its 30-slice slab (slices 82-111 of example_ct: overlaps it);
* ``phantom:SEED`` - a synthetic CT from :mod:`lkseg.phantom` with randomised organ contrast
  (selection data for the stopping rules; exact labels).

Usage::

    OMP_NUM_THREADS=2 python Testing/benchmarks/bench_refine_eval.py --data example_ct \\
        [--user largest-3d|worst-slice] [--clicks 5] [--embedding-cache /tmp/emb] [--set prop.look_ahead=0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT.parent / "shared" / "data" / "real-ct" / "totalsegmentator"
if not REAL.is_dir():
    REAL = ROOT / "shared" / "data" / "real-ct" / "totalsegmentator"
TOTALSEG = {5: "liver", 2: "kidney_right", 3: "kidney_left", 1: "spleen"}


class DiskCachedEngine:
    """Wraps an engine: ``encode`` results are stored on disk under the SHA-1 of each input."""

    def __init__(self, engine, folder: Path):
        self._engine = engine
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def encode(self, images: np.ndarray) -> np.ndarray:
        out = []
        for img in images:
            path = self.folder / (hashlib.sha1(np.ascontiguousarray(img).tobytes()).hexdigest() + ".npy")
            if path.exists():
                self.hits += 1
                out.append(np.load(path))
                continue
            self.misses += 1
            emb = self._engine.encode(img[None])
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, emb)
            tmp.replace(path)
            out.append(emb)
        return np.concatenate(out)

    def decode(self, *args, **kwargs):
        return self._engine.decode(*args, **kwargs)


def load_case(name: str):
    """(image Volume, {value: name}, label Volume)."""
    from lkseg.io import read_image, read_label_map

    if name.startswith("phantom:"):
        seed = int(name.split(":", 1)[1])
        return phantom_case(seed)
    image = read_image(REAL / f"{name}.nii.gz")
    ref = "example_seg_fast_force_split" if name == "example_ct" else "example_seg"
    labels = read_label_map(REAL / f"{ref}.nii.gz", reference=image)
    return image, TOTALSEG, labels


def phantom_case(seed: int):
    """A 2 x 2 x 3 mm phantom; the contrast phase cycles with the seed and the organ HU are drawn
    from the phase's ranges by the phantom itself (randomised contrast). No lesions, so the
    organs are the references."""
    from lkseg.labels import PRODUCT_LABELS
    from lkseg.phantom import PHASES, PhantomConfig, generate_phantom

    config = PhantomConfig(
        seed=seed,
        size_ijk=(200, 200, 84),
        fov_center_lps=(0.0, 0.0, -15.0),
        spacing=(2.0, 2.0, 3.0),
        phase=PHASES[seed % len(PHASES)],
        kidney_tumor="none",
        n_liver_tumors=0,
        kidney_cyst=False,
    )
    ph = generate_phantom(config)
    product = ph.product_labels()
    product = product if hasattr(product, "array") else ph.image.with_array(product)
    wanted = {PRODUCT_LABELS.value_of(n): n for n in ("liver", "kidney_right", "kidney_left", "spleen")}
    return ph.image, wanted, product


def diagnose(predictor, ref: np.ndarray, name: str, clicks: int) -> None:
    """Per axial slice: reference and predicted area (voxels) and slice Dice, after the protocol."""
    from lkseg.refine import InteractiveSegment
    from lkseg.refine.evaluation import _box_corners

    slicer = predictor.slicer
    ref_c = slicer.user_volume_to_canonical(ref)
    ks = np.flatnonzero(ref_c.any(axis=(1, 2)))
    mid = (ks[0] + ks[-1]) // 2
    session = InteractiveSegment(predictor, name, "axial")
    session.box(slicer.canonical_to_user_slice("axial", mid), _box_corners(slicer, "axial", mid, ref_c[mid]))
    pred = session._mask
    rows = []
    for k in range(ref_c.shape[0]):
        a, b = int(ref_c[k].sum()), int(pred[k].sum())
        if a or b:
            d = 2.0 * int((ref_c[k] & pred[k]).sum()) / (a + b)
            rows.append(f"{k}:{a}/{b}/{d:.2f}")
    print(f"  {name} (canonical slice: ref/pred/Dice) start {mid}: " + " ".join(rows))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="example_ct")
    ap.add_argument("--structures", help="comma-separated names (default: all four)")
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--user", default=None, help="simulated user strategy (largest-3d or worst-slice)")
    ap.add_argument("--backend", default="onnx-int8")
    ap.add_argument("--embedding-cache", type=Path, help="keep encoder outputs on disk between runs")
    ap.add_argument("--set", action="append", default=[], help="override, e.g. prop.look_ahead=2 or click.roi_mm=20")
    ap.add_argument("--json", type=Path, help="write the results as JSON")
    ap.add_argument("--diagnose", action="store_true", help="print per-slice areas after the box (clicks 0)")
    args = ap.parse_args(argv)

    from lkseg.refine import PredictorConfig, PromptPredictor, simulate_structure
    from lkseg.refine.models import load_prompt_model
    from lkseg.refine.runtime import make_engine
    from lkseg.refine.session import FollowConfig

    image, wanted, labels = load_case(args.data)
    config = PredictorConfig(backend=args.backend, prefetch=0, cache_slices=max(64, *image.shape))
    follow = FollowConfig()
    for item in args.set:
        key, value = item.split("=", 1)
        group, attr = key.split(".", 1)
        target = {"prop": config.propagation, "click": config.clicks, "follow": follow}[group]
        old = getattr(target, attr)
        value = None if value == "None" else (value if isinstance(old, str) else type(old or 0.0)(eval(value)))
        setattr(target, attr, value)
    engine = make_engine(load_prompt_model(), args.backend, "cpu")
    if args.embedding_cache:
        engine = DiskCachedEngine(engine, args.embedding_cache)
    predictor = PromptPredictor.with_engine(engine, config)
    predictor.set_volume(image)
    names = args.structures.split(",") if args.structures else None
    kwargs = {} if args.user is None else {"user": args.user}
    results = []
    for value, name in sorted(wanted.items(), key=lambda kv: kv[1]):
        if names and name not in names:
            continue
        ref = labels.array == value
        if not ref.any():
            continue
        t0 = time.perf_counter()
        res = simulate_structure(predictor, ref, name, "axial", args.clicks, follow, **kwargs)
        wall = time.perf_counter() - t0
        if args.diagnose:
            diagnose(predictor, ref, name, args.clicks)
        results.append(res)
        steps = " ".join(f"{s.dice:.3f}" for s in res.steps)
        hd = " ".join(f"{s.hd95_mm:.1f}" for s in res.steps)
        auc = res.dice_auc
        kinds = "".join(st.kind[0] for st in res.steps)
        print(
            f"{args.data} {name:<13} Dice {steps} | HD95 {hd} | AUC {auc:.3f} | {kinds} | {wall:.1f} s | "
            f"load {Path('/proc/loadavg').read_text().split()[0]}",
            flush=True,
        )
        for w in res.warnings:
            print(f"   warning: {w}")
    predictor.close()
    finals = [r.final_dice for r in results]
    n_steps = min(len(r.steps) for r in results) if results else 0
    means = [float(np.mean([r.steps[i].dice for r in results])) for i in range(n_steps)]
    print(f"{args.data} mean Dice per step (box, interactions): " + " ".join(f"{m:.4f}" for m in means))
    print(f"{args.data} mean final Dice {np.mean(finals):.3f}; settings {args.set}; user {args.user or 'default'}")
    if isinstance(engine, DiskCachedEngine):
        print(f"embedding cache: {engine.hits} hits, {engine.misses} encoded")
    if args.json:
        payload = {
            r.name: [{"step": s.step, "dice": s.dice, "hd95_mm": s.hd95_mm, "seconds": s.seconds} for s in r.steps]
            for r in results
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
