"""Long work off the web server's event loop: one job at a time, with progress and cancel.

The trame server runs an asyncio event loop; a segmentation or a propagation that ran on it would
freeze every page the server serves. :class:`JobRunner` runs such work on a worker thread and hands
the outcome back to the loop thread (``loop.call_soon_threadsafe``), where it is safe to change the
trame state and the MRML scene. One runner serves one session (one scene): while its job runs,
:meth:`JobRunner.submit` raises :class:`BusyError`, whose message the page shows.

The job function receives ``(progress, cancel)``: ``progress(fraction, message)`` as every long
function of the core takes it, and a :class:`~lkseg.progress.CancelToken` it must poll between
units of work (the core's long functions all do), so :meth:`Job.cancel` ends it within a second
or two. Cancellation reaches ``on_error`` as :class:`~lkseg.errors.CancelledError`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from lkseg.errors import CancelledError, InputError
from lkseg.progress import CancelToken, ProgressCallback

__all__ = ["BusyError", "Job", "JobRunner"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: At most one ``on_progress`` delivery per this many seconds (the last one always goes through).
PROGRESS_INTERVAL_S = 0.1


class BusyError(InputError):
    """A job is already running in this session; the new one was not started."""


class Job(Generic[T]):
    """One unit of long work submitted to a :class:`JobRunner`.

    Attributes:
        name: what the job does, as shown on the page ("Automatic segmentation").
        token: the cancel token the job function polls.
        result: the function's return value once it finished without error.
        error: the exception it raised (:class:`~lkseg.errors.CancelledError` when cancelled).
        started_at, finished_at: ``time.monotonic()`` stamps (``finished_at`` None while running).
    """

    def __init__(self, name: str):
        self.name = name
        self.token = CancelToken()
        self.result: T | None = None
        self.error: BaseException | None = None
        self.started_at = time.monotonic()
        self.finished_at: float | None = None
        self._progress: tuple[float, str] = (0.0, "starting")
        self._lock = threading.Lock()
        self._finished = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def progress(self) -> tuple[float, str]:
        """The last reported ``(fraction, message)``; fraction in [0, 1]."""
        with self._lock:
            return self._progress

    def _set_progress(self, fraction: float, message: str = "") -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        with self._lock:
            self._progress = (fraction, str(message))

    @property
    def done(self) -> bool:
        """Whether the job function has returned or raised (its callbacks may still be queued)."""
        return self._finished.is_set()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self.token.cancelled

    def cancel(self) -> None:
        """Ask the job to stop (sets its token); it ends at its next check, within about 2 s."""
        self.token.cancel()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job function has finished (not for use on the event loop thread)."""
        return self._finished.wait(timeout)

    def __repr__(self) -> str:
        state = "done" if self.done else "running"
        return f"Job({self.name!r}, {state}, progress={self.progress})"


class JobRunner:
    """Runs one job at a time on a worker thread; results go back to the event loop.

    Example (inside a trame controller, on the loop thread)::

        runner.submit("Automatic segmentation", lambda progress, cancel: segment(ct, progress=progress,
                      cancel=cancel), on_done=show_masks, on_error=show_error,
                      loop=asyncio.get_running_loop())
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: Job | None = None

    @property
    def current(self) -> Job | None:
        """The running job, or None."""
        with self._lock:
            return self._current

    @property
    def busy(self) -> bool:
        return self.current is not None

    def cancel(self) -> bool:
        """Cancel the running job, if any; returns whether there was one."""
        job = self.current
        if job is None:
            return False
        job.cancel()
        return True

    def submit(
        self,
        name: str,
        fn: Callable[[ProgressCallback, CancelToken], T],
        on_done: Callable[[T], Any] | None = None,
        on_error: Callable[[BaseException], Any] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        on_progress: Callable[[float, str], Any] | None = None,
    ) -> Job[T]:
        """Start ``fn(progress, cancel)`` on a worker thread and return at once.

        Args:
            name: shown in messages ("... is still running").
            fn: the work; it reports through ``progress`` and polls ``cancel``.
            on_done: called with the result.
            on_error: called with the exception (CancelledError after :meth:`Job.cancel`). Without
                it the error is logged.
            loop: the event loop whose thread runs the callbacks; None runs them on the worker thread.
            on_progress: optional push of ``(fraction, message)``, at most every 0.1 s, on the loop
                thread too (the page can also poll :attr:`Job.progress`).

        Raises:
            BusyError: a job is running; it names that job.
        """
        with self._lock:
            if self._current is not None:
                running = self._current
                fraction, _ = running.progress
                raise BusyError(
                    f"{running.name!r} is still running ({fraction:.0%} done); wait for it or cancel it "
                    f"before starting {name!r}"
                )
            job: Job[T] = Job(name)
            self._current = job
        thread = threading.Thread(
            target=self._run,
            args=(job, fn, on_done, on_error, loop, on_progress),
            name=f"lkseg-job-{name}",
            daemon=True,
        )
        job._thread = thread
        try:
            thread.start()
        except BaseException:
            with self._lock:
                self._current = None
            raise
        return job

    async def run(
        self,
        name: str,
        fn: Callable[[ProgressCallback, CancelToken], T],
        on_progress: Callable[[float, str], Any] | None = None,
    ) -> T:
        """Await ``fn(progress, cancel)`` run on a worker thread (for ``async`` trame controllers).

        The job is :attr:`current` while it runs (cancel it with :meth:`cancel`); its exception,
        including :class:`~lkseg.errors.CancelledError`, is raised here.

        Raises:
            BusyError: a job is already running (raised at once).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def done(result) -> None:
            if not future.done():
                future.set_result(result)

        def failed(exc: BaseException) -> None:
            if not future.done():
                future.set_exception(exc)

        self.submit(name, fn, on_done=done, on_error=failed, loop=loop, on_progress=on_progress)
        return await future

    # -- worker side ---------------------------------------------------------------------------

    def _run(self, job: Job, fn, on_done, on_error, loop, on_progress) -> None:
        last_push = [0.0]

        def progress(fraction: float, message: str = "") -> None:
            job._set_progress(fraction, message)
            if on_progress is None:
                return
            now = time.monotonic()
            if now - last_push[0] < PROGRESS_INTERVAL_S and fraction < 1.0:
                return
            last_push[0] = now
            self._deliver(loop, on_progress, *job.progress)

        try:
            if job.token.cancelled:
                raise CancelledError("cancelled by the user")
            result = fn(progress, job.token)
        except BaseException as exc:  # delivered to on_error, whatever it is
            job.error = exc
            if isinstance(exc, CancelledError):
                log.info("job %r cancelled", job.name)
            else:
                log.warning("job %r failed: %s", job.name, exc, exc_info=not isinstance(exc, InputError))
        else:
            job.result = result
            job._set_progress(1.0, "done")
        finally:
            job.finished_at = time.monotonic()
            with self._lock:
                if self._current is job:
                    self._current = None
            job._finished.set()
        if job.error is not None:
            if on_error is not None:
                self._deliver(loop, on_error, job.error)
        elif on_done is not None:
            self._deliver(loop, on_done, job.result)

    @staticmethod
    def _deliver(loop: asyncio.AbstractEventLoop | None, callback: Callable, *args) -> None:
        def call() -> None:
            try:
                callback(*args)
            except Exception:
                log.exception("job callback %r failed", callback)

        if loop is None:
            call()
            return
        try:
            loop.call_soon_threadsafe(call)
        except RuntimeError:  # the loop was closed (server stopped): nobody left to tell
            log.warning("event loop closed; job callback %r dropped", callback)
