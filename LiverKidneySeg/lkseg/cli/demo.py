"""``lkseg demo [IMAGE]``: the whole pipeline, on a generated phantom CT when no image is given.

Automatic masks, one simulated refinement, planning with a demonstration resection plane, 3D
models and the HTML report; prints the numbers and where everything was written.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lkseg.progress import progress_lines

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline (segment, refine, plan, 3D, report) on a phantom or on IMAGE",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", nargs="?", help="CT file or DICOM folder (default: generate a phantom CT)")
    p.add_argument("-o", "--output", default="lkseg-output", help="output folder (default: ./lkseg-output)")
    p.add_argument("--model", help="automatic model id or package folder (default: the bundled demo model)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument(
        "--seed", type=int, default=5000, help="phantom seed (default 5000, unseen by the demo model's training)"
    )
    p.add_argument("--size", type=int, nargs=3, default=(256, 256, 100), metavar=("I", "J", "K"), help="phantom size")
    p.add_argument("--no-refine", action="store_true", help="skip the simulated refinement")
    p.add_argument("--height-cm", type=float, help="patient height (phantom and DICOM headers provide it)")
    p.add_argument("--weight-kg", type=float, help="patient weight")
    p.add_argument("--liver-quality", choices=["normal", "chemotherapy", "steatosis", "cirrhosis"], default="normal")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--progress-lines", action="store_true", help="print 'LKSEG_PROGRESS <fraction> <message>' lines")
    p.set_defaults(func=run)


def _fmt(value, spec: str = ".1f", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def run(args: argparse.Namespace) -> int:
    from lkseg.cli.info import image_info
    from lkseg.io import read_image
    from lkseg.pipeline import DemoOptions, check_output_dir, run_demo

    out = check_output_dir(Path(args.output))
    progress = progress_lines(args.progress_lines)

    options = DemoOptions(
        image=Path(args.image) if args.image else None,
        output=out,
        model=args.model,
        device=args.device,
        seed=args.seed,
        phantom_size=tuple(args.size),
        refine=not args.no_refine,
        height_cm=args.height_cm,
        weight_kg=args.weight_kg,
        liver_quality=args.liver_quality,
    )
    result = run_demo(options, progress=progress)
    ct_path = Path(args.image) if args.image else out / "phantom" / "ct.nii.gz"
    info = image_info(read_image(ct_path))
    plan = result.plan
    summary = {
        "input": {"path": str(ct_path), **{k: info[k] for k in ("size_ijk", "spacing_mm", "orientation") if k in info}},
        "volumes_ml": {name: round(v.volume_ml, 1) for name, v in plan.volumes.items()},
        "accuracy_dice": {
            k: round(v["dice"], 4) for k, v in result.accuracy.get("automatic", {}).items() if v["ref_ml"]
        },
        "refinement": result.refinement,
        "flr": None,
        "renal": [
            {
                "tumour": r.tumour,
                "kidney": r.kidney,
                "score": r.total,
                "complexity": r.complexity,
                "components": {c: getattr(r, c) for c in ("R", "E", "N", "L")},
                "anterior_posterior": r.anterior_posterior,
                "max_diameter_mm": r.max_diameter_mm,
                "notes": getattr(r, "notes", {}),
            }
            for r in plan.renal
        ],
        "timings_s": {k: round(v, 2) for k, v in result.timings.items()},
        "outputs": {k: str(v) for k, v in result.outputs.items()},
        "warnings": plan.warnings + [w for w in result.warnings if f"automatic segmentation: {w}" not in plan.warnings],
    }
    if plan.flr is not None:
        f = plan.flr
        summary["flr"] = {
            "tlv_ml": f.tlv_ml, "flr_ml": f.flr_ml, "flr_percent": f.flr_percent, "bsa_m2": f.bsa_m2,
            "stlv_ml": f.stlv_ml, "sflr_percent": f.sflr_percent, "threshold_percent": f.threshold_percent, "verdict": f.verdict,
        }  # fmt: skip
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    print(f"input        {ct_path}  ({' x '.join(map(str, info['size_ijk']))} voxels, "
          f"{' x '.join(f'{s:.3g}' for s in info['spacing_mm'])} mm, {info['orientation']})")  # fmt: skip
    if not args.image:
        truth = json.loads((out / "phantom" / "phantom.json").read_text())
        from lkseg.labels import PRODUCT_LABELS

        true_ml = {n: truth["volumes_ml"][n] for n in PRODUCT_LABELS.values() if n in truth.get("volumes_ml", {})}
        print("true volumes (phantom): " + ", ".join(f"{k} {v:.1f} mL" for k, v in true_ml.items()))
    print("\nvolumes (final segmentation)")
    for name, v in plan.volumes.items():
        dice = summary["accuracy_dice"].get(name)
        print(f"  {name:<14} {v.volume_ml:9.1f} mL" + (f"   automatic Dice {dice:.3f}" if dice is not None else ""))
    r = result.refinement
    if r:
        line = f"\nrefinement   {r.get('prompt', 'none')} on the liver ({r.get('changed_voxels', 0)} voxels changed)"
        if "dice_before" in r:
            line += f": liver Dice {r['dice_before']:.4f} -> {r['dice_after']:.4f}"
        if not r.get("applied", True):
            line += f"; NOT applied: {r.get('reverted') or r.get('proposal', '')}"
        print(line)
    if summary["flr"]:
        f = summary["flr"]
        print(f"\nFLR          {_fmt(f['flr_ml'])} mL of {_fmt(f['tlv_ml'])} mL = {_fmt(f['flr_percent'])} %; "
              f"BSA {_fmt(f['bsa_m2'], '.2f')} m2, sTLV {_fmt(f['stlv_ml'])} mL, sFLR {_fmt(f['sflr_percent'])} % "
              f"(threshold {_fmt(f['threshold_percent'], '.0f')} %): {f['verdict']}")  # fmt: skip
    for item in summary["renal"]:
        parts = " ".join(f"{c}{'?' if v is None else v}" for c, v in item["components"].items())
        total = "not available" if item["score"] is None else f"{item['score']} ({item['complexity']})"
        print(f"R.E.N.A.L.   {item['tumour']} in {item['kidney']}: {total}; {parts} A={item['anterior_posterior'] or '?'}, "
              f"max diameter {_fmt(item['max_diameter_mm'])} mm" + ("" if item["score"] is not None else
              f"  ({item['notes'].get('total', 'not available')})"))  # fmt: skip
    for w in summary["warnings"]:
        print(f"warning      {w}")
    print("\ntimings      " + ", ".join(f"{k} {v:.1f}" for k, v in summary["timings_s"].items()))
    print("\noutputs")
    for key, path in summary["outputs"].items():
        print(f"  {key:<22} {path}")
    print(f"\nopen {summary['outputs'].get('report_html', out)} in a browser for the report.")
    return 0
