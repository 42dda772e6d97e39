"""``lkseg batch INPUT OUTPUT``: segment and plan a whole cohort; resumable, local or on Ray."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys

from lkseg.progress import progress_lines

__all__ = ["options_from_args", "register", "run"]

_EPILOG = """\
outputs per case (OUTPUT/cases/<case_id>/): <id>.seg.nrrd, <id>_labels.nii.gz, <id>_seg.dcm (DICOM inputs),
meshes/<id>.glb, <id>_plan.json, manifest.json. Also OUTPUT/summary.csv, failures.csv, batch.json and logs/<id>.log.

A rerun skips finished cases and redoes those whose input, model or options changed. Ctrl-C stops after
saving the cases already inferred (a second Ctrl-C stops at once); nothing half-written is ever left.
Exit status: 0 all cases finished, 1 some failed (see failures.csv), 130 interrupted.
"""


def register(sub: argparse._SubParsersAction) -> None:
    from lkseg.batch.options import MESH_FORMATS, OUTPUT_KINDS

    p = sub.add_parser(
        "batch",
        help="segment (and plan) every CT of a folder or CSV list; resumable, optionally on a Ray cluster",
        description="Run the automatic segmentation (model loaded once) and planning over a cohort: NIfTI/NRRD files "
        "and DICOM series (found recursively by SeriesInstanceUID) in INPUT, or the 'path' column of a CSV list "
        "(optional columns: case_id, series_uid, height_cm, weight_kg, liver_quality).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", help="folder, CSV case list, or one image file")
    p.add_argument("output", help="output folder (created; a rerun resumes it)")
    p.add_argument("--model", help="model id or package folder (default: the registry's default model)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="inference device (default: auto)")
    p.add_argument(
        "--outputs",
        default=",".join(OUTPUT_KINDS),
        help=f"comma-separated outputs (default: all of {','.join(OUTPUT_KINDS)})",
    )
    p.add_argument(
        "--mesh-formats",
        default="glb",
        help=f"comma-separated mesh formats from {','.join(MESH_FORMATS)} (default: glb)",
    )
    p.add_argument(
        "--plan",
        metavar="K=V,...",
        help="planning settings for every case: height_cm, weight_kg, liver_quality "
        "(normal|chemotherapy|steatosis|cirrhosis); CSV columns override them per case",
    )
    p.add_argument("--structures", help="comma-separated structures to segment (default: all of the model's)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local: writer threads beside inference (default 1; 0: write in the inference thread); "
        "Ray: cases in flight (default: cluster slots)",
    )
    p.add_argument(
        "--prefetch", type=int, default=2, help="local: cases read ahead of inference (default 2; 0: no reader thread)"
    )
    p.add_argument("--force", action="store_true", help="redo every case, even finished ones")
    p.add_argument(
        "--rehash", action="store_true", help="hash every input again even if its size and date are unchanged"
    )
    p.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run on Ray: 'auto' (the cluster this machine joined), 'local' (a private "
        "instance on this machine) or an address such as ray://head:10001",
    )
    p.add_argument("--ray-cpus-per-task", type=float, default=1.0, help="CPUs per case on Ray (default 1)")
    p.add_argument(
        "--ray-gpus-per-task",
        type=float,
        default=1.0,
        help="GPUs per case on Ray when the cluster has GPUs (default 1)",
    )
    p.add_argument(
        "--progress-lines", action="store_true", help="print 'LKSEG_PROGRESS <fraction> <message>' lines on stdout"
    )
    p.add_argument("--no-progress-bar", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run)


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(t.strip() for t in (text or "").split(",") if t.strip())


def _install_signal_handlers(cancel) -> dict:
    """First Ctrl-C (or SIGTERM): cancel after saving inferred cases; second: stop at once."""

    def handler(signum, frame):
        if cancel.cancelled:
            raise KeyboardInterrupt
        cancel.cancel()
        print(
            "\nlkseg batch: stopping after the cases already inferred are saved (Ctrl-C again to stop now)",
            file=sys.stderr,
        )

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread
            previous[sig] = signal.signal(sig, handler)
    return previous


def options_from_args(args: argparse.Namespace):
    """The :class:`~lkseg.batch.BatchOptions` of parsed ``lkseg batch`` arguments."""
    from lkseg.batch import BatchOptions

    return BatchOptions(
        outputs=_split(args.outputs),
        mesh_formats=_split(args.mesh_formats),
        plan=args.plan or {},
        structures=_split(args.structures) or None,
        device=args.device,
        workers=args.workers,
        prefetch=args.prefetch,
        force=args.force,
        rehash=args.rehash,
        ray=args.ray,
        ray_cpus_per_task=args.ray_cpus_per_task,
        ray_gpus_per_task=args.ray_gpus_per_task,
    )


def run(args: argparse.Namespace) -> int:
    from lkseg.batch import run_batch
    from lkseg.progress import CancelToken

    options = options_from_args(args)
    cancel = CancelToken()
    previous = _install_signal_handlers(cancel)
    try:
        report = run_batch(
            args.input,
            args.output,
            args.model,
            options=options,
            progress=progress_lines(args.progress_lines, digits=4),
            cancel=cancel,
            show_progress_bar=not args.no_progress_bar and not args.quiet,
        )
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    c = report.counts
    print(
        f"{c['done']} done, {c['skipped']} skipped (already finished), {c['failed']} failed, {c['cancelled']} cancelled "
        f"in {report.wall_s:.1f} s ({report.cases_per_hour:.0f} cases/hour) with {report.model['model_id']} "
        f"{report.model['model_version']} [{report.runner}]"
    )
    print(f"summary: {report.summary_csv}")
    if c["failed"]:
        print(f"failures: {report.failures_csv}")
        for res in report.failed[:10]:
            print(f"  {res.case_id} ({res.stage}): {res.error}")
    if report.cancelled:
        return 130
    return 1 if c["failed"] else 0
