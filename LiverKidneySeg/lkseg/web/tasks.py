"""One long task at a time per session, polled from the event loop (never blocking it).

The Slicer module's logic already runs its long work off the calling thread and hands back an
object to poll: ``SegmentationJob`` (``poll()``: the child ``lkseg segment`` process) and
``PendingEdit`` (``done()`` / ``finish()``: refinement, propagation, planning, reports). MRML
nodes may only be touched on the thread that owns the scene -- here the asyncio event loop's
thread -- so :class:`LoopTasks` polls those objects from the loop every ``interval`` seconds and
calls ``finish()`` / the completion callback there. Work that needs no MRML access (file
exports) runs on a worker thread through :func:`threadTask`.

A second task while one runs raises :class:`~lkseg.web.jobs.BusyError` (a clear message for the page).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from lkseg.web.jobs import BusyError

__all__ = ["BusyError", "LoopTasks", "Progress", "threadTask"]

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Thread-safe ``(fraction, message)`` written by workers, read by the loop."""

    fraction: float = 0.0
    message: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __call__(self, fraction: float, message: str = "") -> None:
        with self._lock:
            self.fraction, self.message = float(fraction), str(message or self.message)

    def get(self) -> tuple[float, str]:
        with self._lock:
            return self.fraction, self.message


class _ThreadPending:
    """A worker-thread future with the ``PendingEdit`` interface (``done``/``finish``/``cancel``)."""

    def __init__(self, future: Future, cancel: Callable[[], None] | None):
        self.future = self._future = future
        self._cancel = cancel

    def done(self) -> bool:
        return self._future.done()

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel()
        self._future.cancel()

    def finish(self, timeout: float | None = None):
        return self._future.result(timeout)


_POOL: ThreadPoolExecutor | None = None


def threadTask(fn: Callable[[], object], cancel: Callable[[], None] | None = None) -> _ThreadPending:
    """Run ``fn()`` (no MRML access!) on a worker thread; returns a pollable pending object."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lkseg-web")
    return _ThreadPending(_POOL.submit(fn), cancel)


class LoopTasks:
    """At most one long task; polled from the asyncio loop.

    ``on_change()`` is called (on the loop) whenever progress or the running state changes, so the
    page can be updated.
    """

    def __init__(self, on_change: Callable[[], None], interval: float = 0.02):
        self._on_change = on_change
        self._interval = interval
        self.name: str | None = None
        self.progress = Progress()
        self._pending = None
        self._cancelled = False
        self.started_at = self._t0 = 0.0
        #: seconds from start to result of the last task that succeeded (set before ``on_done``)
        self.last_duration: float | None = None

    @property
    def busy(self) -> bool:
        return self.name is not None

    def check_idle(self, what: str) -> None:
        """Raise :class:`BusyError` when a task runs (call before reading inputs or creating nodes)."""
        if self.busy:
            raise BusyError(f"cannot start {what}: '{self.name}' is still running (wait for it or cancel it)")

    def start(
        self,
        name: str,
        pending,
        on_done: Callable[[object], None],
        on_error: Callable[[BaseException], None],
        *,
        poll: Callable[[], bool] | None = None,
        result: Callable[[], object] | None = None,
        startedAt: float | None = None,
    ) -> None:
        """Track ``pending`` (``done()``/``finish()``/``cancel()``), or ``poll()`` -> finished and
        ``result()`` for objects of another shape (``SegmentationJob``). ``startedAt``: the
        ``time.perf_counter()`` when the work began (its preparation counts in the task's time)."""
        self.check_idle(name)
        self.name, self._pending, self._cancelled = name, pending, False
        self.started_at = self._t0 = startedAt if startedAt is not None else time.perf_counter()
        self.progress(0.0, f"{name}...")
        self._on_change()
        asyncio.get_event_loop().create_task(self._run(pending, on_done, on_error, poll, result))

    def cancel(self) -> bool:
        if self._pending is None:
            return False
        self._cancelled = True
        self.progress(self.progress.get()[0], "cancelling...")
        self._pending.cancel()
        return True

    async def _run(self, pending, on_done, on_error, poll, result) -> None:
        name = self.name
        # wake as soon as a worker's future completes (not at the next poll): up to ``interval`` less
        future = getattr(pending, "future", None) if poll is None else None
        wakeup = asyncio.wrap_future(future) if isinstance(future, Future) else None
        if wakeup is not None:  # its outcome is read through ``pending.finish()``; consume it here
            wakeup.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            while True:
                finished = poll() if poll is not None else pending.done()
                if finished:
                    break
                self._on_change()
                if wakeup is not None:
                    await asyncio.wait({wakeup}, timeout=self._interval)
                else:
                    await asyncio.sleep(self._interval)
            t0 = time.perf_counter()
            value = result() if result is not None else pending.finish()
            applied = time.perf_counter() - t0
        except BaseException as exc:  # reported on the page; the server keeps running
            self._reset()
            log.info("task %r ended with %s: %s", name, type(exc).__name__, exc)
            on_error(exc)
        else:
            self._reset()
            t1 = time.perf_counter()
            self.last_duration = t1 - self._t0
            on_done(value)
            log.info(
                "task %r done in %.3f s (result applied in %.3f s, page updated in %.3f s)",
                name,
                time.perf_counter() - self._t0,
                applied,
                time.perf_counter() - t1,
            )
        self._on_change()

    def _reset(self) -> None:
        self.name, self._pending = None, None
        self.progress(0.0, "")
