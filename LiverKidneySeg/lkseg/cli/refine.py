"""``lkseg refine IMAGE --structure liver --box ... --point ... -o OUT``: scripted interactive refinement.

A box (two opposite corners) on one slice predicts that slice with LiteMedSAM and propagates
it through the neighbouring slices; positive (``--point``) and negative (``--negative-point``)
clicks then edit the mask, in the order given. With ``--seg`` an existing label map (for example
the U-Net's) is edited: ``--mode replace`` (default) edits the structure's own mask, ``add`` /
``subtract`` add or remove the prompted mask; other labels never change. Coordinates are voxel
indices ``I J K`` of IMAGE, or RAS millimetres with ``--ras`` (as Slicer shows them).
"""

from __future__ import annotations

import argparse

from lkseg.progress import progress_lines

__all__ = ["register"]


class _ClickAction(argparse.Action):
    """Collects ``--point`` / ``--negative-point`` in command-line order as (x, y, z, positive)."""

    def __call__(self, parser, namespace, values, option_string=None):
        clicks = list(getattr(namespace, "clicks", None) or [])
        clicks.append((*[float(v) for v in values], self.const))
        namespace.clicks = clicks


def add_prompt_model_arguments(p: argparse.ArgumentParser) -> None:
    """``--model --checkpoint-kind --checkpoint-sha256 --device --backend``: the prompt model and
    where it runs (``lkseg refine`` and ``lkseg refine-eval``; read by :func:`prompt_predictor`)."""
    p.add_argument("--model", default="litemedsam", help="litemedsam (default) or a SAM/MedSAM checkpoint file")
    p.add_argument("--checkpoint-kind", help="architecture of --model: sam_vit_b, sam_vit_l, sam_vit_h or medsam")
    p.add_argument("--checkpoint-sha256", help="SHA-256 you trust for a checkpoint without an official digest (MedSAM)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--backend", default="auto", choices=["auto", "onnx", "onnx-int8", "eager", "torchscript"])


def prompt_predictor(args: argparse.Namespace, config):
    """The :class:`~lkseg.refine.PromptPredictor` the arguments of :func:`add_prompt_model_arguments` name."""
    from lkseg.refine import PromptPredictor

    return PromptPredictor(args.model, args.device, config, args.checkpoint_kind, args.checkpoint_sha256)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "refine",
        help="segment or correct one structure with a box and clicks (LiteMedSAM), with 3D propagation",
        description=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("image", help="CT image (NIfTI, NRRD or DICOM folder)")
    p.add_argument("-o", "--output", required=True, help="output label map (.nii.gz, .nrrd or .seg.nrrd)")
    p.add_argument("--seg", help="existing label map to edit (same grid as IMAGE)")
    p.add_argument("--structure", required=True, help="structure name, e.g. liver, kidney_right, spleen")
    p.add_argument(
        "--label", type=int, help="label value of the structure (default: its value in the product label map)"
    )
    p.add_argument(
        "--view", default="axial", choices=["axial", "coronal", "sagittal"], help="slicing view of the prompts"
    )
    p.add_argument(
        "--slice", type=int, dest="slice_index", help="slice index along the view's axis (default: from the prompts)"
    )
    p.add_argument(
        "--box", nargs=6, type=float, metavar=("X0", "Y0", "Z0", "X1", "Y1", "Z1"), help="two opposite box corners"
    )
    p.add_argument(
        "--point", nargs=3, action=_ClickAction, const=True, metavar=("X", "Y", "Z"), help="positive click (repeatable)"
    )
    p.add_argument(
        "--negative-point",
        nargs=3,
        action=_ClickAction,
        const=False,
        metavar=("X", "Y", "Z"),
        help="negative click (repeatable)",
    )
    p.add_argument("--ras", action="store_true", help="coordinates are RAS mm (default: voxel indices I J K)")
    p.add_argument(
        "--mode", default="replace", choices=["replace", "add", "subtract"], help="how the result enters --seg"
    )
    p.add_argument("--no-propagate", action="store_true", help="segment the box's slice only")
    p.add_argument("--max-slices", type=int, help="propagate at most this many slices each way")
    add_prompt_model_arguments(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--progress-lines", action="store_true", help="print LKSEG_PROGRESS lines for a progress bar")
    p.set_defaults(func=run, clicks=[])


def _write(labels, path, table) -> None:
    from lkseg.io import full_suffix, write_label_map

    if full_suffix(path) == ".seg.nrrd":
        from lkseg.io.segnrrd import write_seg_nrrd
        from lkseg.segmentation import Segmentation

        write_seg_nrrd(Segmentation.from_label_volume(labels, table), path)
    else:
        write_label_map(labels, path)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from lkseg.errors import InputError
    from lkseg.io import read_image, read_label_map
    from lkseg.labels import PRODUCT_LABELS, LabelTable
    from lkseg.progress import report
    from lkseg.refine import PredictorConfig, combine
    from lkseg.refine.session import InteractiveSegment

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise InputError("exists; pass --overwrite to replace it", out)
    if args.seg and Path(args.seg).resolve() == out.resolve() and not args.overwrite:
        raise InputError("is the input --seg; write to another file or pass --overwrite", out)
    if args.box is None and not args.clicks:
        raise InputError("give a --box and/or at least one --point / --negative-point")
    progress = progress_lines(args.progress_lines)
    coords = "ras" if args.ras else "voxel"

    image = read_image(args.image)
    if args.seg:
        labels = read_label_map(args.seg, reference=image)
    else:
        labels = image.with_array(np.zeros(image.shape, dtype=np.uint8), meta={})
    value = args.label
    if value is None:
        table = labels.meta.get("label_table") or {}
        named = {str(v): int(k) for k, v in table.items()} if table else {}
        if args.structure in named:
            value = named[args.structure]
        elif args.structure in PRODUCT_LABELS.values():
            value = PRODUCT_LABELS.value_of(args.structure)
        else:
            raise InputError(f"unknown structure {args.structure!r}; give its label value with --label")
    report(progress, 0.02, "loading the model")
    config = PredictorConfig(backend=args.backend, prefetch=0)
    predictor = prompt_predictor(args, config)
    predictor.set_volume(image)
    current = labels.array == value
    session = InteractiveSegment(
        predictor, args.structure, args.view, initial=current if args.mode == "replace" else None
    )
    report(progress, 0.1, "segmenting")
    if args.box is not None:
        corners = np.asarray(args.box, dtype=float).reshape(2, 3)
        session.box(args.slice_index, corners, coords, propagate=not args.no_propagate, max_slices=args.max_slices)
    for n, (x, y, z, positive) in enumerate(args.clicks):
        report(progress, 0.6 + 0.3 * n / max(1, len(args.clicks)), f"click {n + 1}")
        session.click(np.array([x, y, z]), positive, coords)
    for text in session.last_warnings:
        print(f"warning: {text}")
    result = combine(labels, session.mask, value, args.mode)
    table = LabelTable(
        {**{int(k): str(v) for k, v in (labels.meta.get("label_table") or {}).items()}, value: args.structure}
    )
    _write(result, out, table)
    predictor.close()
    ml = image.grid.voxel_volume_ml
    before = int(current.sum()) * ml
    after = int(np.count_nonzero(result.array == value)) * ml
    report(progress, 1.0, "done")
    print(f"{args.structure} (label {value}): {before:.1f} mL -> {after:.1f} mL; wrote {out}")
    return 0
