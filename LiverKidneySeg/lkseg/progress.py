"""Progress reporting and cooperative cancellation for long work.

Long functions take ``progress: ProgressCallback | None`` and ``cancel: CancelToken | None``.
The callback receives a fraction in [0, 1] and a short message; the token is polled between
units of work (sliding-window batches, slices, cases) so cancellation is honoured within about
a second.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from lkseg.errors import CancelledError

__all__ = ["CancelToken", "ProgressCallback", "SubProgress", "null_progress", "report"]

ProgressCallback = Callable[[float, str], None]
log = logging.getLogger(__name__)


def null_progress(fraction: float, message: str) -> None:
    """A progress callback that does nothing."""


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
