"""Batch processing from Slicer: the core's ``lkseg batch`` as a job, out of process.

The same call as :func:`lkseg.batch.run_batch` (the same options, the same resumable output
folder), run in a child process so that Slicer stays responsive and a cancel kills the whole
process tree. :class:`BatchJob` is driven by :meth:`~BatchJob.poll` (from a timer in the GUI, or
the loop in :meth:`~BatchJob.wait` in the Python console); when the child has ended it reads the
run's ``batch.json`` and ``summary.csv`` and, when asked, fills a table node with the summary.

From the Slicer Python console::

    logic = slicer.util.getModuleLogic("LiverKidneySeg")
    summary = logic.runBatch("/data/cohort", "/data/cohort-out",
                             plan={"height_cm": 175, "weight_kg": 80})
    print(summary["counts"], summary["summary_csv"])
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from LiverKidneySegLib.process import CoreJob, CoreProcess
from lkseg.errors import InputError, LKSegError

__all__ = ["BatchJob", "readBatchSummary", "summaryTable"]

log = logging.getLogger(__name__)


def readBatchSummary(outputFolder: str | Path) -> dict:
    """What a finished (or interrupted) batch left in ``outputFolder``.

    Returns:
        ``batch.json``'s content (``counts``, ``model``, ``cases_per_hour``, ``summary_csv``, ...)
        plus ``rows``: the rows of ``summary.csv`` as dicts (one per case, strings as written).

    Raises:
        LKSegError: the folder holds no batch run record.
    """
    from lkseg.batch.options import Layout

    layout = Layout(Path(outputFolder))
    if not layout.run_json.is_file():
        raise LKSegError(f"no batch run record ({layout.run_json.name}) in {outputFolder}")
    summary = json.loads(layout.run_json.read_text(encoding="utf-8"))
    rows: list[dict] = []
    if layout.summary_csv.is_file():
        with layout.summary_csv.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    summary["rows"] = rows
    return summary


class BatchJob(CoreJob):
    """One ``lkseg batch SOURCE OUTPUT`` run in a child process.

    Args:
        source: a folder of NIfTI/NRRD files and DICOM series (searched recursively), a CSV case
            list, or one image file (see :func:`lkseg.batch.run_batch`).
        output: the output folder (resumable: finished cases are skipped on a rerun).
        modelId: model package id or folder (None: the default model).
        options: :class:`lkseg.batch.BatchOptions` (outputs, planning, workers, Ray, ...).
        progress: ``progress(fraction, message)``, called from :meth:`poll`.
        logCallback: the child's other output lines, called from :meth:`poll`.

    States: ``"new"`` -> ``"running"`` -> ``"done"`` | ``"failed"`` | ``"cancelled"``. A run in
    which some cases failed is ``"done"`` (see ``summary["counts"]["failed"]`` and the output's
    ``failures.csv``); ``"failed"`` means the run itself could not go on (no case found, output
    folder locked by another run, model missing).
    """

    title = "lkseg batch"
    cancelMessage = "batch cancelled by the user; finished cases are kept (rerun to resume)"

    def __init__(
        self,
        source: str | Path,
        output: str | Path,
        modelId: str | None = None,
        options=None,
        progress: Callable[[float, str], None] | None = None,
        logCallback: Callable[[str], None] | None = None,
    ):
        from lkseg.batch import BatchOptions

        super().__init__(progress, logCallback)
        self.source = Path(source)
        self.output = Path(output)
        self.modelId = modelId
        self.options = options if options is not None else BatchOptions()
        self.summary: dict | None = None

    def start(self) -> BatchJob:
        """Check the inputs and start the child; returns self.

        Raises:
            InputError: the source does not exist, or the output is an existing file.
            ModelError: the model is not installed.
        """
        from LiverKidneySegLib.autoseg import resolveModel
        from lkseg.batch.options import batch_cli_args

        if self.state != "new":
            raise RuntimeError("a BatchJob can be started once")
        if not self.source.exists():
            raise InputError(f"batch input {self.source} does not exist")
        if self.output.exists() and not self.output.is_dir():
            raise InputError(f"batch output {self.output} is a file; give a folder")
        manifest = resolveModel(self.modelId)  # fails now, not after the child started
        model = str(manifest.folder) if manifest.folder else self.modelId
        args = batch_cli_args(self.source, self.output, model, self.options, progress_lines=True)
        self._process = CoreProcess(args, progress=self._report, logCallback=self._log).start()
        self.state = "running"
        return self

    def _finish(self, code: int) -> None:
        # exit 1 = the run finished but some cases failed; anything else is the run failing
        if code not in (0, 1):
            raise LKSegError(f"lkseg batch failed (exit code {code}): {self._process.errorText()}")
        self.summary = readBatchSummary(self.output)
        if code == 1 and not self.summary.get("counts", {}).get("failed"):
            raise LKSegError(f"lkseg batch failed: {self._process.errorText()}")

    def _result(self) -> dict:
        """:meth:`wait` returns :attr:`summary`."""
        return self.summary


def summaryTable(summary: Mapping, tableNode=None, scene=None):
    """A table node with one row per case of a batch ``summary`` (see :func:`readBatchSummary`);
    numbers become numeric columns."""
    from LiverKidneySegLib.tables import tableFromRows

    rows = [{key: _number(value) for key, value in row.items()} for row in summary.get("rows", [])]
    return tableFromRows(rows, tableNode, scene=scene, name="LiverKidneySeg batch summary")


def _number(text):
    if not isinstance(text, str):
        return text
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value
