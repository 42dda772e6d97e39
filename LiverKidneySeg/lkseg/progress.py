"""Progress reporting and cooperative cancellation for long work.

Long functions take ``progress: ProgressCallback | None`` and ``cancel: CancelToken | None``.
The callback receives a fraction in [0, 1] and a short message; the token is polled between
units of work (sliding-window batches, slices, cases) so cancellation is honoured within about
a second.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable

from lkseg.errors import CancelledError

__all__ = [
    "PROGRESS_PREFIX",
    "CancelToken",
    "ProgressCallback",
    "SubProgress",
    "null_progress",
    "progress_lines",
    "report",
]

ProgressCallback = Callable[[float, str], None]
log = logging.getLogger(__name__)


#: First word of the machine-readable progress lines the CLIs print for a GUI (``--progress-lines``);
#: the Slicer module parses them (``LiverKidneySegLib.process.parseProgressLine``).
PROGRESS_PREFIX = "LKSEG_PROGRESS"


def null_progress(fraction: float, message: str) -> None:
    """A progress callback that does nothing."""


def progress_lines(enabled: bool = True, min_step: float = 0.0, digits: int = 3) -> ProgressCallback | None:
    """A callback printing ``LKSEG_PROGRESS <fraction> <message>`` lines on stdout (flushed), or
    None when not ``enabled``.

    Args:
        min_step: print only when the fraction advanced by at least this much since the last
            printed line (and always at 1.0); 0 prints every call.
        digits: decimals of the fraction.
    """
    if not enabled:
        return None
    last = [-1.0]

    def emit(fraction: float, message: str) -> None:
        if min_step > 0 and fraction - last[0] < min_step and fraction < 1.0:
            return
        last[0] = fraction
        sys.stdout.write(f"{PROGRESS_PREFIX} {fraction:.{digits}f} {message}\n")
        sys.stdout.flush()

    return emit


class CancelToken:
    """A thread-safe cancellation flag.

    Call :meth:`cancel` from any thread (a GUI button, a signal handler); the worker calls
    :meth:`raise_if_cancelled` between units of work.
    """

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise CancelledError("cancelled by the user")


def report(progress: ProgressCallback | None, fraction: float, message: str = "") -> None:
    """Call ``progress`` if given, clamping the fraction to [0, 1]."""
    if progress is not None:
        progress(min(max(float(fraction), 0.0), 1.0), message)


class SubProgress:
    """Maps a child's [0, 1] progress onto the parent range [start, stop]."""

    def __init__(self, parent: ProgressCallback | None, start: float, stop: float, prefix: str = ""):
        self.parent, self.start, self.stop, self.prefix = parent, start, stop, prefix

    def __call__(self, fraction: float, message: str = "") -> None:
        msg = f"{self.prefix}{message}" if self.prefix else message
        report(self.parent, self.start + (self.stop - self.start) * fraction, msg)
