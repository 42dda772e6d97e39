"""Collecting case results while a batch runs: progress bar, progress callback, summary on disk.

The :class:`Reporter` is the one place results arrive (from the reader, writer threads or Ray);
it is thread-safe, keeps the summary CSV and failures report current on disk (throttled), drives
a tqdm bar with per-case timing and an ETA, and forwards fractions to a
:data:`~lkseg.progress.ProgressCallback` (the Slicer progress bar, ``--progress-lines``).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable

from lkseg.batch.discovery import CaseInput
from lkseg.batch.options import Layout
from lkseg.batch.summary import CaseResult, write_failures, write_summary
from lkseg.progress import ProgressCallback, report

__all__ = ["Reporter"]

log = logging.getLogger(__name__)

_FINAL = ("done", "skipped", "failed", "cancelled")


class Reporter:
    """Thread-safe sink of :class:`CaseResult` objects.

    Args:
        cases: every case of the batch (rows of the summary, in this order).
        layout: where the summary and failures report go.
        progress: receives ``(fraction of the cases to run, message)``.
        on_case: called with each final result (from whichever thread produced it).
        bar: show a tqdm progress bar on stderr.
        flush_every_s: minimum interval between summary rewrites (skips arrive in bursts).
    """

    def __init__(
        self,
        cases: list[CaseInput],
        layout: Layout,
        progress: ProgressCallback | None = None,
        on_case: Callable[[CaseResult], None] | None = None,
        bar: bool = False,
        flush_every_s: float = 1.0,
    ):
        self.layout = layout
        self.progress = progress
        self.on_case = on_case
        self.flush_every_s = flush_every_s
        self.results: dict[str, CaseResult] = {c.case_id: CaseResult(c.case_id, "pending", str(c.path)) for c in cases}
        self._lock = threading.RLock()
        self._last_flush = 0.0
        self._dirty = False
        self.n_total = len(cases)
        self.n_skipped = 0
        self.n_finished = 0  # done, failed or cancelled in this run
        self._bar = None
        if bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self.n_total, unit="case", file=sys.stderr, dynamic_ncols=True, desc="batch", smoothing=0.3
            )

    # -- counts -----------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        with self._lock:
            out = {s: 0 for s in (*_FINAL, "pending")}
            for res in self.results.values():
                out[res.status] = out.get(res.status, 0) + 1
            return out

    @property
    def n_to_run(self) -> int:
        return max(self.n_total - self.n_skipped, 0)

    # -- events -----------------------------------------------------------------------------
    def add(self, result: CaseResult) -> None:
        """Record a final result (done, skipped, failed or cancelled)."""
        with self._lock:
            self.results[result.case_id] = result
            if result.status == "skipped":
                self.n_skipped += 1
                if self._bar is not None:
                    self._bar.total = max(self._bar.total - 1, self._bar.n)  # keep the ETA about real work
                    self._bar.refresh()
            else:
                self.n_finished += 1
                if self._bar is not None:
                    self._bar.update(1)
                    secs = result.record.get("timings", {}).get("total_s")
                    self._bar.set_postfix_str(
                        f"{result.case_id} {result.status}" + (f" {secs:.1f}s" if secs else ""), refresh=True
                    )
                if result.status == "failed" and self._bar is not None:
                    self._bar.write(f"case {result.case_id} failed ({result.stage}): {result.error}", file=sys.stderr)
            self._dirty = True
            self.flush(force=result.status in ("done", "failed"))
            fraction = self.n_finished / self.n_to_run if self.n_to_run else 1.0
        report(self.progress, fraction, f"{self.n_finished}/{self.n_to_run} {result.case_id} {result.status}")
        if self.on_case is not None:
            self.on_case(result)

    def case_progress(self, case_id: str, fraction: float, message: str) -> None:
        """Progress inside the case being inferred (fraction of that case)."""
        if self.progress is None:
            return
        total = self.n_to_run or 1
        report(
            self.progress,
            (self.n_finished + min(max(fraction, 0.0), 1.0)) / total,
            f"{self.n_finished + 1}/{total} {case_id}: {message}",
        )

    def mark_unfinished(self, status: str = "cancelled") -> None:
        """Give every case still pending the final ``status`` (after a cancel)."""
        with self._lock:
            for cid, res in self.results.items():
                if res.status == "pending":
                    self.results[cid] = CaseResult(cid, status, res.input, "not started")
            self._dirty = True

    def flush(self, force: bool = False) -> None:
        """Rewrite the summary CSV and failures report (atomically) if due."""
        with self._lock:
            now = time.monotonic()
            if not self._dirty or (not force and now - self._last_flush < self.flush_every_s):
                return
            ordered = list(self.results.values())
            write_summary(self.layout.summary_csv, ordered)
            write_failures(self.layout.failures_csv, ordered)
            self._last_flush, self._dirty = now, False

    def close(self) -> None:
        self.flush(force=True)
        if self._bar is not None:
            self._bar.close()
            self._bar = None
