"""``lkseg refine-eval IMAGE REFERENCE --labels 5=liver,2=kidney_right``: simulated-user evaluation.

Per structure: one box on the central slice of the reference (its bounding box there),
propagated; then up to ``--clicks`` corrective interactions. The default simulated user
(``--user largest-3d``, the CVPR 2025 interactive 3D protocol) clicks the centre of the largest
3D error component, missed or wrongly included, and draws a box instead where that centre lies on
a slice the mask does not reach (at most ``--max-boxes`` boxes in all); ``--user worst-slice``
clicks the largest error region on the slice with the most wrong voxels (the earlier protocol).
Prints Dice and HD95 after the box and after each interaction, the area under the Dice curve of
the corrective interactions, and the time per interaction (the first interaction includes
encoding the slices it visits).
"""

from __future__ import annotations

import argparse

from lkseg.cli.metrics import add_resample_labels_argument
from lkseg.cli.refine import add_prompt_model_arguments, prompt_predictor
from lkseg.progress import progress_lines

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "refine-eval",
        help="simulate a user (box + propagation + corrective clicks) and report Dice/HD95 per interaction",
        description=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("image", help="CT image")
    p.add_argument("reference", help="reference label map on the same grid")
    add_resample_labels_argument(p)
    p.add_argument(
        "--labels",
        default="product",
        help="VALUE=NAME pairs of REFERENCE to evaluate, e.g. 5=liver,2=kidney_right,3=kidney_left,1=spleen "
        "(TotalSegmentator values); 'product' (default) for the product label map",
    )
    p.add_argument("--clicks", type=int, default=5, help="corrective clicks per structure (default 5)")
    p.add_argument("--view", default="axial", choices=["axial", "coronal", "sagittal"])
    p.add_argument(
        "--follow-slices",
        type=int,
        help="slices a click's edit may follow on each side (default: as long as the error continues)",
    )
    p.add_argument(
        "--user", default="largest-3d", choices=["largest-3d", "worst-slice"], help="simulated user (see above)"
    )
    p.add_argument("--max-boxes", type=int, default=2, help="boxes the largest-3d user may draw, the first included")
    p.add_argument("--click-strategy", choices=["combined", "reprompt", "randomwalker"], help="click handling variant")
    add_prompt_model_arguments(p)
    p.add_argument("--json", dest="json_out", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--progress-lines", action="store_true", help="print LKSEG_PROGRESS lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import time

    import numpy as np

    from lkseg.cli.metrics import parse_label_spec
    from lkseg.errors import InputError
    from lkseg.io import atomic_write_text, read_image, read_label_map
    from lkseg.refine import FollowConfig, PredictorConfig, format_results, simulate_structure

    if args.clicks < 0:
        raise InputError(f"--clicks must be 0 or more, got {args.clicks}")
    if args.max_boxes < 1:
        raise InputError(f"--max-boxes must be 1 or more, got {args.max_boxes}")
    labels = parse_label_spec(args.labels)
    image = read_image(args.image)
    reference = read_label_map(args.reference, reference=image, resample=args.resample_labels)
    if reference.meta.get("grid_placement", "same grid") != "same grid":
        print(f"note: the reference was {reference.meta['grid_placement']} onto the image's grid")
    config = PredictorConfig(backend=args.backend, prefetch=0, cache_slices=max(64, *image.shape))
    if args.click_strategy:
        config.clicks.strategy = args.click_strategy
    follow = FollowConfig()
    if args.follow_slices is not None:
        follow.follow_slices = args.follow_slices
    start = time.perf_counter()
    predictor = prompt_predictor(args, config)
    predictor.set_volume(image)
    load_s = time.perf_counter() - start
    results = []
    progress = progress_lines(args.progress_lines)
    for n, (value, name) in enumerate(sorted(labels.items(), key=lambda kv: kv[1])):
        if progress:
            progress(n / len(labels), name)
        ref = reference.array == value
        if not ref.any():
            print(f"warning: label {value} ({name}) is absent from the reference; skipped")
            continue
        results.append(
            simulate_structure(predictor, ref, name, args.view, args.clicks, follow, args.user, args.max_boxes)
        )
    predictor.close()
    print(
        f"model {predictor.spec.name} on {predictor.engine.backend}/{predictor.engine.device}, loaded in {load_s:.1f} s"
    )
    print(format_results(results))
    summary = []
    for res in results:
        if res.steps:
            gain = res.final_dice - res.box_dice
            auc = f"; Dice AUC {res.dice_auc:.3f}" if np.isfinite(res.dice_auc) else ""
            summary.append(
                f"{res.name}: box {res.box_dice:.3f} -> {res.steps[-1].step} {res.final_dice:.3f} ({gain:+.3f}){auc}"
            )
    print("\n".join(summary))
    if args.json_out:
        payload = {
            "image": str(args.image),
            "reference": str(args.reference),
            "model": predictor.spec.name,
            "backend": predictor.engine.backend,
            "user": args.user,
            "dice_auc": {r.name: (r.dice_auc if np.isfinite(r.dice_auc) else None) for r in results},
            "structures": {
                r.name: [
                    {
                        "step": s.step,
                        "dice": s.dice,
                        "hd95_mm": s.hd95_mm if np.isfinite(s.hd95_mm) else None,
                        "seconds": s.seconds,
                        "click": s.click,
                        "kind": s.kind,
                    }
                    for s in r.steps
                ]
                for r in results
            },
        }
        atomic_write_text(args.json_out, json.dumps(payload, indent=2))
    if progress:
        progress(1.0, "done")
    return 0
