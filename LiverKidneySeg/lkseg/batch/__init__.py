"""Batch processing at cohort scale: resumable, interruptible, local or distributed on Ray.

Typical use (the CLI ``lkseg batch`` and the Slicer module call the same function)::

    from lkseg.batch import BatchOptions, run_batch

    report = run_batch("/data/cohort", "/data/cohort-out", model="demo-phantom",
                       options=BatchOptions(plan={"liver_quality": "normal"}))
    print(report.counts, report.summary_csv)

Modules: :mod:`~lkseg.batch.discovery` (cases from folders, DICOM series, CSV lists),
:mod:`~lkseg.batch.manifest` (resume decisions), :mod:`~lkseg.batch.case` (the per-case
function), :mod:`~lkseg.batch.outputs`, :mod:`~lkseg.batch.summary`, :mod:`~lkseg.batch.runner`
(local pipelined runner) and :mod:`~lkseg.batch.ray_runner` (Ray tasks).
"""

from __future__ import annotations

from lkseg.batch.case import CaseJob, process_case
from lkseg.batch.discovery import CaseInput, discover_cases
from lkseg.batch.engine import Engine, EngineResult, EngineSpec, engine_identity
from lkseg.batch.options import MESH_FORMATS, OUTPUT_KINDS, BatchOptions, Layout, batch_cli_args
from lkseg.batch.runner import BatchReport, run_batch
from lkseg.batch.summary import CaseResult

__all__ = [
    "MESH_FORMATS",
    "OUTPUT_KINDS",
    "BatchOptions",
    "BatchReport",
    "CaseInput",
    "CaseJob",
    "CaseResult",
    "Engine",
    "EngineResult",
    "EngineSpec",
    "Layout",
    "batch_cli_args",
    "discover_cases",
    "engine_identity",
    "process_case",
    "run_batch",
]
