"""One log file per case, even while several cases are in flight on different threads.

Each stage of a case runs inside :func:`case_context`, which tags the thread with the case id;
:class:`CaseLogHandler` (attached to the ``lkseg`` logger for the duration of a run) appends every
record from that thread to ``logs/<case_id>.log``. :func:`case_log` writes the runner's own stage
lines there directly, whatever the logging level.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

__all__ = ["CaseLogHandler", "case_context", "case_log", "current_case", "install_case_logging"]

_current = threading.local()
_file_lock = threading.Lock()
_FMT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def current_case() -> tuple[str, Path] | None:
    """(case id, log path) of the case this thread works on, if any."""
    return getattr(_current, "case", None)


@contextlib.contextmanager
def case_context(case_id: str, log_path: Path) -> Iterator[None]:
    """Route this thread's ``lkseg`` log records to ``log_path`` while the block runs."""
    previous = getattr(_current, "case", None)
    _current.case = (case_id, Path(log_path))
    try:
        yield
    finally:
        _current.case = previous


def _append(path: Path, text: str) -> None:
    with _file_lock:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(text if text.endswith("\n") else text + "\n")


def case_log(log_path: Path, message: str, exc: BaseException | None = None) -> None:
    """Append a timestamped line (and a traceback when ``exc`` is given) to a case log."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    text = f"{stamp} batch: {message}"
    if exc is not None:
        text += "\n" + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
    _append(Path(log_path), text)


class CaseLogHandler(logging.Handler):
    """Appends records to the log of the case the emitting thread is working on."""

    def emit(self, record: logging.LogRecord) -> None:
        current = current_case()
        if current is None:
            return
        try:
            _append(current[1], _FMT.format(record))
        except Exception:  # logging must never break a case
            self.handleError(record)


_installed: dict[int, CaseLogHandler] = {}
_install_lock = threading.Lock()


@contextlib.contextmanager
def install_case_logging(level: int | None = None) -> Iterator[None]:
    """Attach one :class:`CaseLogHandler` to the ``lkseg`` logger while the block runs (re-entrant)."""
    logger = logging.getLogger("lkseg")
    with _install_lock:
        handler = _installed.get(id(logger))
        if handler is None:
            handler = CaseLogHandler(level or logging.NOTSET)
            logger.addHandler(handler)
            handler.users = 0  # type: ignore[attr-defined]
            _installed[id(logger)] = handler
        handler.users += 1  # type: ignore[attr-defined]
    try:
        yield
    finally:
        with _install_lock:
            handler.users -= 1  # type: ignore[attr-defined]
            if handler.users <= 0:  # type: ignore[attr-defined]
                logger.removeHandler(handler)
                _installed.pop(id(logger), None)
