"""``run_batch``: the batch entry point (CLI, Slicer, Python), and the local pipelined runner.

The local runner loads the engine once and overlaps the three stages of consecutive cases on
three kinds of threads joined by bounded queues::

    reader thread   prepare (skip check, hash, read)  --queue(prefetch)-->
    calling thread  infer (the engine, all cores)      --queue(workers)--->
    writer threads  finish (outputs, planning, meshes, manifest, rename)

so reading case n+1 and writing case n-1 happen while case n is inferred, and memory stays
bounded. The Ray runner (:mod:`lkseg.batch.ray_runner`) runs the same stages as one task per case.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lkseg import __version__
from lkseg.batch.case import CaseJob, finish_case, infer_case, prepare_case
from lkseg.batch.caselog import install_case_logging
from lkseg.batch.discovery import CaseInput, discover_cases
from lkseg.batch.engine import Engine, EngineSpec, engine_identity, get_engine
from lkseg.batch.options import BatchOptions, Layout
from lkseg.batch.reporting import Reporter
from lkseg.batch.summary import CaseResult
from lkseg.errors import InputError
from lkseg.io.atomic import atomic_write_text
from lkseg.progress import CancelToken, ProgressCallback

__all__ = ["BatchReport", "run_batch", "run_local", "writer_threads"]

log = logging.getLogger(__name__)

_END = object()
ModelSource = str | Path | EngineSpec | Engine | Callable[[], Engine] | None


@dataclass
class BatchReport:
    """What a batch run did.

    Attributes:
        output: the output folder.
        results: one :class:`CaseResult` per case, in case order.
        model: the engine identity (model id, version).
        runner: ``"local"`` or ``"ray"``.
        wall_s: seconds for the whole call (discovery and model loading included).
        process_s: seconds from the first case started to the last finished.
        cancelled: the run was interrupted.
    """

    output: Path
    results: list[CaseResult]
    model: dict
    runner: str
    wall_s: float
    process_s: float
    cancelled: bool = False
    layout: Layout = field(init=False)

    def __post_init__(self) -> None:
        self.layout = Layout(self.output)

    @property
    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in ("done", "skipped", "failed", "cancelled", "pending")}
        for res in self.results:
            out[res.status] = out.get(res.status, 0) + 1
        return out

    @property
    def cases_per_hour(self) -> float:
        """Cases processed (status ``done``) per hour of processing time."""
        done = self.counts["done"]
        return 3600.0 * done / self.process_s if self.process_s > 0 and done else 0.0

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def summary_csv(self) -> Path:
        return self.layout.summary_csv

    @property
    def failures_csv(self) -> Path:
        return self.layout.failures_csv

    def result(self, case_id: str) -> CaseResult:
        for res in self.results:
            if res.case_id == case_id:
                return res
        raise KeyError(case_id)

    def to_dict(self) -> dict:
        return {
            "output": str(self.output),
            "runner": self.runner,
            "model": self.model,
            "counts": self.counts,
            "wall_s": round(self.wall_s, 3),
            "process_s": round(self.process_s, 3),
            "cases_per_hour": round(self.cases_per_hour, 1),
            "cancelled": self.cancelled,
            "summary_csv": str(self.summary_csv),
            "failures_csv": str(self.failures_csv),
        }


# -- run-level safety ---------------------------------------------------------------------------
@contextlib.contextmanager
def _output_lock(layout: Layout) -> Iterator[None]:
    """An exclusive lock on the output folder (released by the OS if the process dies)."""
    import fcntl

    layout.root.mkdir(parents=True, exist_ok=True)
    fh = layout.lock.open("a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError("another batch run is writing to this output folder", layout.root) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield
    finally:
        fh.close()


def _remove_stale_temporaries(layout: Layout) -> int:
    """Delete the hidden temporary case folders a killed run left behind (we hold the lock)."""
    removed = 0
    if layout.cases.is_dir():
        for entry in layout.cases.iterdir():
            if entry.name.startswith(".") and (".tmp-" in entry.name or ".old-" in entry.name):
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
                removed += 1
    if removed:
        log.info("removed %d temporary folder(s) left by an interrupted run", removed)
    return removed


def _resolve_source(model: ModelSource, device: str) -> EngineSpec | Engine | Callable[[], Engine]:
    if model is None or isinstance(model, str | Path):
        return EngineSpec(None if model is None else str(model), device)
    return model


# -- local runner -------------------------------------------------------------------------------
def writer_threads(options: BatchOptions) -> int:
    """Writer threads of the local runner: ``options.workers``, one by default."""
    return 1 if options.workers is None else options.workers


def run_local(
    cases: Sequence[CaseInput],
    engine: Engine,
    job: CaseJob,
    reporter: Reporter,
    cancel: CancelToken,
) -> None:
    """Process ``cases`` with ``engine`` on this machine, overlapping read, inference and writing.

    A reader thread prepares up to ``options.prefetch`` cases ahead (``0``: the inference thread
    reads each case itself) and ``options.workers`` writer threads write finished cases (``0``:
    the inference thread writes them), so ``prefetch=0, workers=0`` runs the stages one after
    the other.
    """
    n_writers = writer_threads(job.options)
    prefetch = job.options.prefetch
    q_in: queue.Queue = queue.Queue(maxsize=max(prefetch, 1))
    q_out: queue.Queue = queue.Queue(maxsize=max(n_writers, 1))
    errors: list[BaseException] = []
    log.info("local runner: %d case(s) read ahead, %d writer thread(s)", prefetch, n_writers)

    def prepared():
        """The cases to infer, in order (skipped and failed ones are reported on the way)."""
        for case in cases:
            if cancel.cancelled:
                return
            item = prepare_case(case, job, cancel)
            if isinstance(item, CaseResult):
                reporter.add(item)
            else:
                yield item

    def reader() -> None:
        try:
            for item in prepared():
                q_in.put(item)
        except BaseException as exc:  # a bug in the framework, not a case error
            errors.append(exc)
            cancel.cancel()
        finally:
            q_in.put(_END)

    def queued():
        while (item := q_in.get()) is not _END:
            yield item

    def writer() -> None:
        while True:
            item = q_out.get()
            if item is _END:
                return
            try:
                reporter.add(finish_case(item, job))
            except BaseException as exc:
                errors.append(exc)
                cancel.cancel()

    threads = [threading.Thread(target=reader, name="lkseg-batch-reader", daemon=True)] if prefetch else []
    writers = [threading.Thread(target=writer, name=f"lkseg-batch-writer-{i}", daemon=True) for i in range(n_writers)]
    for t in threads + writers:
        t.start()
    try:
        for loaded in queued() if prefetch else prepared():
            if cancel.cancelled:
                reporter.add(CaseResult(loaded.case.case_id, "cancelled", str(loaded.case.path), "not started"))
                continue
            cid = loaded.case.case_id
            out = infer_case(loaded, engine, job, lambda f, m, cid=cid: reporter.case_progress(cid, f, m), cancel)
            if isinstance(out, CaseResult):
                reporter.add(out)
            elif n_writers:
                q_out.put(out)
            else:
                reporter.add(finish_case(out, job))
    except BaseException:  # a second Ctrl-C, or a bug: stop now, without waiting for the threads
        cancel.cancel()
        threading.Thread(target=_close, args=(q_in if prefetch else None, q_out, n_writers), daemon=True).start()
        raise
    for _ in writers:
        q_out.put(_END)
    for t in threads + writers:
        t.join()
    if errors:
        raise errors[0]


def _close(q_in: queue.Queue | None, q_out: queue.Queue, n_writers: int) -> None:
    """Let the reader and writers of an aborted run finish their current case and exit."""
    while q_in is not None and q_in.get() is not _END:
        pass
    for _ in range(n_writers):
        q_out.put(_END)


# -- entry point --------------------------------------------------------------------------------
def run_batch(
    source: str | Path | Sequence[CaseInput],
    output: str | Path,
    model: ModelSource = None,
    *,
    options: BatchOptions | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    on_case: Callable[[CaseResult], None] | None = None,
    show_progress_bar: bool = False,
) -> BatchReport:
    """Segment (and plan) every case of a cohort; resumable, interruptible, failures recorded.

    Args:
        source: a folder (NIfTI/NRRD files and DICOM series, searched recursively), a CSV case
            list (``path`` column, optional ``case_id``, ``series_uid``, ``height_cm``,
            ``weight_kg``, ``liver_quality``), one image file, or a list of
            :class:`~lkseg.batch.discovery.CaseInput`.
        output: the output folder (see :class:`~lkseg.batch.options.Layout`); created if needed.
        model: a model id or package folder (``None``: the registry's default), an
            :class:`~lkseg.batch.engine.EngineSpec`, or an engine object with
            ``predict(volume, progress=, cancel=)`` and ``model_id``/``version``.
        options: outputs, formats, planning settings, workers, resume and Ray settings.
        progress: called with (fraction in [0, 1] of the cases to run, message); from worker
            threads too, so a GUI must marshal it to its own thread.
        cancel: set it (from any thread) to stop; finished cases are kept, the case being
            inferred is dropped, cases not started are reported ``cancelled``.
        on_case: called with each case's final :class:`CaseResult` as it arrives.
        show_progress_bar: draw a tqdm bar on stderr (the CLI does).

    Returns:
        A :class:`BatchReport`; ``summary.csv``, ``failures.csv`` and ``batch.json`` are written in
        ``output``. Cases that fail do not raise: see ``report.failed``.

    Raises:
        InputError: the source holds no case, or another run holds the output folder.
        ModelError: the model cannot be loaded.
    """
    t_start = time.perf_counter()
    options = options or BatchOptions()
    cancel = cancel or CancelToken()
    layout = Layout(Path(output).expanduser().resolve())
    cases = (
        list(source)
        if isinstance(source, Sequence) and not isinstance(source, str)
        else discover_cases(source, exclude=layout.root)
    )
    if not cases:
        raise InputError("no case to process")
    with _output_lock(layout), install_case_logging():
        _remove_stale_temporaries(layout)
        layout.cases.mkdir(parents=True, exist_ok=True)
        engine_source = _resolve_source(model, options.device)
        reporter = Reporter(cases, layout, progress, on_case, bar=show_progress_bar)
        runner = "ray" if options.ray else "local"
        run_info = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "lkseg_version": __version__,
            "source": str(source if not isinstance(source, Sequence) or isinstance(source, str) else "<list>"),
        }
        try:
            if options.ray:
                from lkseg.batch.ray_runner import run_ray

                identity, t_proc = run_ray(cases, engine_source, layout, options, reporter, cancel)
            else:
                # built here, not cached: the model's memory is freed when the batch ends
                engine = engine_source.build() if isinstance(engine_source, EngineSpec) else get_engine(engine_source)
                identity = engine_identity(engine)
                log.info("model %s %s; %d case(s)", identity["model_id"], identity["model_version"], len(cases))
                t_proc = time.perf_counter()
                run_local(cases, engine, CaseJob(layout, identity, options), reporter, cancel)
        except KeyboardInterrupt:
            cancel.cancel()
            reporter.mark_unfinished("cancelled")
            reporter.close()
            raise
        finally:
            if cancel.cancelled:
                reporter.mark_unfinished("cancelled")
            reporter.close()
        end = time.perf_counter()
        report = BatchReport(
            layout.root,
            list(reporter.results.values()),
            identity,
            runner,
            end - t_start,
            end - t_proc,
            cancel.cancelled,
        )
        run_info.update(report.to_dict(), finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), options=_options_json(options))
        atomic_write_text(layout.run_json, json.dumps(run_info, indent=2, default=str))
    c = report.counts
    log.info(
        "batch finished: %d done, %d skipped, %d failed, %d cancelled",
        c["done"],
        c["skipped"],
        c["failed"],
        c["cancelled"],
    )
    return report


def _options_json(options: BatchOptions) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(options)
