"""``lkseg segment IMAGE -o OUT``: automatic segmentation of liver, kidneys and tumours.

Writes a Slicer ``.seg.nrrd`` (and with ``--nifti`` a NIfTI label map beside it), prints the
structures found with their volumes and the time of each stage. ``--progress-lines`` prints
``LKSEG_PROGRESS <fraction> <message>`` lines on stdout for a GUI progress bar.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from lkseg.progress import progress_lines

__all__ = ["output_paths", "register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="automatic segmentation of liver, kidneys and tumours on a CT")
    p.add_argument("image", help="CT image (NIfTI, NRRD, MetaImage) or DICOM folder")
    p.add_argument(
        "-o", "--output", required=True, help="output .seg.nrrd (or .nii.gz for a plain label map, or a folder)"
    )
    p.add_argument("--model", default=None, help="model id, id@version or package folder (default: the demo model)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    p.add_argument("--structures", nargs="+", metavar="NAME", help="only these structures (e.g. liver liver_tumor)")
    p.add_argument("--nifti", action="store_true", help="also write the label map as NIfTI (<output>.nii.gz)")
    p.add_argument("--probabilities", action="store_true", help="also write probability and uncertainty maps (NIfTI)")
    p.add_argument("--no-cascade", action="store_true", help="run the fine network over the whole scan (slower)")
    p.add_argument(
        "--mode",
        default="auto",
        choices=["auto", "hybrid", "unet"],
        help="hybrid: the U-Net finds the organs and LiteMedSAM draws them (needs the refine extra); "
        "unet: the U-Net alone (faster); auto (default): hybrid when the refine extra is installed",
    )
    p.add_argument(
        "--tta", action="store_true", help="mirroring test-time augmentation (models trained with mirroring)"
    )
    p.add_argument(
        "--context-mm",
        type=float,
        default=160.0,
        metavar="MM",
        help="a scan shorter than this head-foot is extended by repeating its edge slices before the networks "
        "see it (labels cropped back to the scan); 0 turns it off (default: 160)",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    p.add_argument(
        "--backend", default="auto", choices=["auto", "torch", "onnx"], help="auto: ONNX Runtime on CPU, PyTorch on GPU"
    )
    p.add_argument("--series-uid", help="SeriesInstanceUID when a DICOM folder holds several series")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--no-input-checks", action="store_true", help="skip the checks that the image is a CT in HU")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of text")
    p.add_argument("--progress-lines", action="store_true", help="print LKSEG_PROGRESS <fraction> <message> lines")
    p.set_defaults(func=run)


def _strip(path: Path) -> str:
    from lkseg.io import full_suffix

    suffix = full_suffix(path)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


def output_paths(image: str, output: str, nifti: bool, probabilities: bool) -> dict[str, Path]:
    """Files ``lkseg segment`` writes: ``seg`` (.seg.nrrd) and/or ``nifti``, plus probability maps."""
    from lkseg.io import full_suffix

    out = Path(output)
    suffix = full_suffix(out)
    if suffix not in (".seg.nrrd", ".nii", ".nii.gz", ".nrrd"):
        stem = _strip(Path(image.rstrip("/\\"))) or "segmentation"
        out = out / f"{stem}.seg.nrrd"
        suffix = ".seg.nrrd"
    paths: dict[str, Path] = {}
    stem = _strip(out)
    if suffix == ".seg.nrrd":
        paths["seg"] = out
        if nifti:
            paths["nifti"] = out.with_name(f"{stem}.nii.gz")
    else:
        paths["nifti"] = out
    if probabilities:
        paths["probability"] = out.with_name(f"{stem}_probability.nii.gz")
        paths["uncertainty"] = out.with_name(f"{stem}_uncertainty.nii.gz")
    return paths


def run(args: argparse.Namespace) -> int:
    from lkseg.errors import InputError
    from lkseg.io import read_image, write_label_map
    from lkseg.progress import SubProgress

    if not 0.0 <= args.context_mm <= 2000.0:
        raise InputError(f"--context-mm must lie between 0 (off) and 2000 mm, got {args.context_mm:g}")
    paths = output_paths(args.image, args.output, args.nifti, args.probabilities)
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not args.overwrite:
        raise InputError(f"output already exists: {', '.join(existing)} (pass --overwrite to replace)")
    progress = progress_lines(args.progress_lines, min_step=0.01)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    volume = read_image(args.image, series_uid=args.series_uid)
    timings["read"] = time.perf_counter() - t0
    from lkseg.auto import AutoOptions, AutoSegmenter, check_ct_volume  # imports torch: after the input is read

    if not args.no_input_checks:
        check_ct_volume(volume)  # refuse a missing or non-CT input before the model is loaded (seconds)
    if progress:
        progress(0.02, "image read")
    t = time.perf_counter()
    segmenter = AutoSegmenter(args.model, device=args.device, threads=args.threads, backend=args.backend)
    timings["load_model"] = time.perf_counter() - t
    if progress:
        progress(0.08, "model loaded")
    options = AutoOptions(
        cascade=False if args.no_cascade else None,
        tta=args.tta,
        return_probabilities=args.probabilities,
        check_input=not args.no_input_checks,
        mode=args.mode,
        context_mm=args.context_mm,
    )
    result = segmenter.predict(
        volume, args.structures, progress=SubProgress(progress, 0.08, 0.9) if progress else None, options=options
    )
    timings.update(result.timings)
    t = time.perf_counter()
    if "seg" in paths:
        from lkseg.io.segnrrd import write_seg_nrrd

        write_seg_nrrd(result.to_segmentation(), paths["seg"])
    if "nifti" in paths:
        write_label_map(result.labels, paths["nifti"])
    if args.probabilities:
        from lkseg.io import write_image

        write_image(result.probability, paths["probability"])
        write_image(result.uncertainty, paths["uncertainty"])
    timings["write"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    if progress:
        progress(1.0, "done")
    _print_summary(args, segmenter, result, timings, paths)
    return 0


def _print_summary(args, segmenter, result, timings: dict[str, float], paths: dict[str, Path]) -> None:
    volumes = result.volumes_ml
    if args.json:
        summary = {
            "model": f"{result.model_id}@{result.model_version}",
            "device": result.device,
            "backend": segmenter.backend,
            "cascade": result.cascade,
            "mode": result.mode,
            "prompt_backend": result.prompt_backend,
            "lesions_reliable": result.lesions_reliable,
            "empty": result.empty,
            "volumes_ml": {k: round(v, 2) for k, v in volumes.items()},
            "warnings": result.warnings,
            "notes": result.notes,
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
            "outputs": {k: str(v) for k, v in paths.items()},
        }
        print(json.dumps(summary, indent=2))
        return
    stage = "cascade" if result.cascade else "single stage"
    print(
        f"model      {result.model_id}@{result.model_version} on {result.device} via {segmenter.backend} "
        f"({stage}, {result.mode}" + (f"; {result.prompt_backend}" if result.prompt_backend else "") + ")"
    )
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if result.empty:
        print("result     EMPTY - no structure was found")
    else:
        for name, ml in volumes.items():
            print(f"  {name:<14} {ml:10.1f} mL" + ("" if ml > 0 else "   (not found)"))
    print("timings    " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
    for key, path in paths.items():
        print(f"wrote      {path} ({key})")
