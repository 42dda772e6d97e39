"""Run the core CLI out of process, parse its progress lines, cancel the whole process tree.

The automatic segmentation runs as ``PythonSlicer -m lkseg segment ... --progress-lines`` inside
3D Slicer (``python -m lkseg`` outside it), so the GUI stays responsive and a crash or an
out-of-memory in the network cannot take Slicer down. The child prints machine-readable lines
``LKSEG_PROGRESS <fraction 0..1> <message>`` on stdout; :class:`CoreProcess` collects them on
reader threads and hands them to callbacks **on the thread that calls** :meth:`CoreProcess.poll`
(the GUI thread, from a timer), so callbacks may touch MRML and Qt.

Cancel kills the child and all its descendants (own process group / session on POSIX,
``taskkill /T`` on Windows), gracefully first and forcefully after a short grace period, within
2 seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from lkseg.progress import PROGRESS_PREFIX  # the core CLIs' progress lines (one definition)

__all__ = [
    "PROGRESS_PREFIX",
    "CoreJob",
    "CoreProcess",
    "coreCommand",
    "coreEnvironment",
    "killProcessTree",
    "parseProgressLine",
    "pythonExecutable",
]

log = logging.getLogger(__name__)

#: Folder that contains the core package ``lkseg`` (the module folder, in Slicer and in the repo).
MODULE_DIR = Path(__file__).resolve().parents[1]


def parseProgressLine(line: str) -> tuple[float, str] | None:
    """``"LKSEG_PROGRESS 0.42 sliding window"`` -> ``(0.42, "sliding window")``; other lines -> None.

    The fraction is clamped to [0, 1]; a malformed fraction makes the line a normal log line.
    """
    text = line.strip()
    if not text.startswith(PROGRESS_PREFIX):
        return None
    parts = text[len(PROGRESS_PREFIX) :].strip().split(None, 1)
    if not parts:
        return None
    try:
        fraction = float(parts[0])
    except ValueError:
        return None
    if fraction != fraction:  # NaN
        return None
    return min(max(fraction, 0.0), 1.0), parts[1] if len(parts) > 1 else ""


def pythonExecutable() -> str:
    """``PythonSlicer`` inside 3D Slicer, else the current interpreter (``sys.executable``)."""
    try:
        import slicer

        inSlicer = getattr(slicer, "app", None) is not None
    except ImportError:
        inSlicer = False
    if inSlicer:
        found = shutil.which("PythonSlicer")
        if found:
            return found
        home = Path(slicer.app.slicerHome)
        for candidate in (home / "bin" / "PythonSlicer", home / "bin" / "PythonSlicer.exe"):
            if candidate.exists():
                return str(candidate)
        raise RuntimeError(f"PythonSlicer not found next to 3D Slicer in {home}")
    return sys.executable


def coreCommand(args: Sequence[str], python: str | None = None, module: str = "lkseg") -> list[str]:
    """The command line ``[python, "-u", "-m", "lkseg", *args]``."""
    return [python or pythonExecutable(), "-u", "-m", module, *[str(a) for a in args]]


def coreEnvironment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the child: the module folder (where ``lkseg`` lies) first on PYTHONPATH,
    unbuffered output, UTF-8 I/O."""
    env = dict(os.environ)
    paths = [str(MODULE_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(extra or {})
    return env


def _descendants(pid: int) -> list:
    try:
        import psutil
    except ImportError:
        return []
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def killProcessTree(process: subprocess.Popen, grace: float = 0.7) -> None:
    """Terminate ``process`` and every descendant; force-kill whatever is left after ``grace`` s.

    POSIX: the child was started in its own session, so its process group is signalled (and,
    with psutil, descendants that left the group too). Windows: ``taskkill /T /F``.
    """
    stragglers = _descendants(process.pid)
    if process.poll() is not None and os.name != "nt":
        # the leader is gone; members of its process group may still run
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        return
    if os.name == "nt":  # pragma: no cover - exercised on Windows only
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(process.pid)], capture_output=True, check=False)
    else:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        for child in stragglers:
            with contextlib.suppress(Exception):
                child.terminate()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        for child in stragglers:
            with contextlib.suppress(Exception):
                child.kill()
    try:
        process.wait(timeout=1.0)
    except subprocess.TimeoutExpired:  # pragma: no cover - should not happen after SIGKILL
        log.error("process %d did not exit after SIGKILL", process.pid)


class CoreProcess:
    """One run of ``lkseg <args>`` in a child process.

    Args:
        args: CLI arguments after ``lkseg`` (e.g. ``["segment", "ct.nrrd", "-o", "out.seg.nrrd",
            "--progress-lines"]``).
        progress: called as ``progress(fraction, message)`` for each progress line (from :meth:`poll`).
        logCallback: called with every other output line, stdout and stderr (from :meth:`poll`).
        python: interpreter (default :func:`pythonExecutable`).
        env: extra environment variables.
        module: the module run with ``-m`` (the core CLI; tests use a stand-in).

    Usage::

        proc = CoreProcess(["segment", ...], progress=bar.update).start()
        while proc.poll() is None:   # or from a QTimer
            time.sleep(0.1)
        if proc.returncode != 0: raise RuntimeError(proc.errorText())
    """

    def __init__(
        self,
        args: Sequence[str],
        progress: Callable[[float, str], None] | None = None,
        logCallback: Callable[[str], None] | None = None,
        python: str | None = None,
        env: dict[str, str] | None = None,
        module: str = "lkseg",
    ):
        self.command = coreCommand(args, python, module)
        self.progress = progress
        self.logCallback = logCallback
        self._env = coreEnvironment(env)
        self._process: subprocess.Popen | None = None
        self._lines: queue.Queue[tuple[str, str]] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self.tail: deque[str] = deque(maxlen=200)
        self.cancelled = False
        self.lastProgress: tuple[float, str] = (0.0, "")

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> CoreProcess:
        """Start the child; returns self."""
        if self._process is not None:
            raise RuntimeError("this CoreProcess was already started")
        log.info("starting: %s", subprocess.list2cmdline(self.command))
        kwargs: dict = {}
        if os.name == "nt":  # pragma: no cover
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            kwargs["start_new_session"] = True
        self._process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self._env,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            **kwargs,
        )
        for stream, name in ((self._process.stdout, "stdout"), (self._process.stderr, "stderr")):
            thread = threading.Thread(target=self._read, args=(stream, name), daemon=True, name=f"lkseg-{name}")
            thread.start()
            self._threads.append(thread)
        return self

    def _read(self, stream, name: str) -> None:
        for line in iter(stream.readline, ""):
            self._lines.put((name, line.rstrip("\r\n")))
        stream.close()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def returncode(self) -> int | None:
        return self._process.returncode if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def poll(self) -> int | None:
        """Deliver queued output to the callbacks; return the exit code once the child has ended
        and all its output was delivered, else None."""
        if self._process is None:
            raise RuntimeError("call start() first")
        self._drain()
        code = self._process.poll()
        if code is None:
            return None
        for thread in self._threads:
            thread.join(timeout=1.0)
        self._drain()
        return code

    def _drain(self) -> None:
        while True:
            try:
                stream, line = self._lines.get_nowait()
            except queue.Empty:
                return
            parsed = parseProgressLine(line) if stream == "stdout" else None
            if parsed is not None:
                self.lastProgress = parsed
                if self.progress:
                    self.progress(*parsed)
                continue
            if line.strip():
                self.tail.append(line)
                if self.logCallback:
                    self.logCallback(line)

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> int:
        """Block until the child ends (delivering output meanwhile); returns its exit code.

        Raises:
            TimeoutError: still running after ``timeout`` seconds (the child is left running).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            code = self.poll()
            if code is not None:
                return code
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"lkseg did not finish within {timeout} s")
            time.sleep(interval)

    def cancel(self) -> None:
        """Kill the child and its whole process tree (returns within about 2 s)."""
        self.cancelled = True
        if self._process is not None:
            killProcessTree(self._process)
            self._drain()

    def errorText(self) -> str:
        """The last meaningful output lines, for error messages (``lkseg ...: error: ...`` first)."""
        errors = [line for line in self.tail if ": error:" in line]
        if errors:
            return errors[-1]
        return "\n".join(list(self.tail)[-15:]) or f"lkseg exited with code {self.returncode}"


class CoreJob:
    """A long ``lkseg`` run driven from the thread that owns the MRML scene.

    Subclasses start :attr:`_process` (a :class:`CoreProcess`) in their ``start()`` and implement
    :meth:`_finish` (read the child's results, on the polling thread). States: ``"new"`` ->
    ``"running"`` -> ``"done"`` | ``"failed"`` | ``"cancelled"``.

    Args:
        progress: ``progress(fraction, message)``, called from :meth:`poll`.
        logCallback: the child's other output lines, called from :meth:`poll`.
    """

    #: what the job is called in log lines and messages
    title = "lkseg"
    #: the error raised (as :attr:`error`) when the user cancelled
    cancelMessage = "cancelled by the user"

    def __init__(
        self,
        progress: Callable[[float, str], None] | None = None,
        logCallback: Callable[[str], None] | None = None,
    ):
        self.progress = progress
        self.logCallback = logCallback
        self.state = "new"
        self.error: Exception | None = None
        self._process: CoreProcess | None = None

    def _report(self, fraction: float, message: str) -> None:
        if self.progress:
            self.progress(min(max(fraction, 0.0), 1.0), message)

    def _log(self, line: str) -> None:
        log.info("%s: %s", self.title, line)
        if self.logCallback:
            self.logCallback(line)

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def _finish(self, code: int) -> None:
        """Called once the child has ended with exit ``code`` (not cancelled); raise to fail."""
        raise NotImplementedError

    def _cleanup(self) -> None:
        """Called once when the job ends, whatever the outcome."""

    def poll(self) -> bool:
        """Deliver progress; once the child has ended, collect its result (on this thread).

        Returns:
            True once the job is finished (see :attr:`state` and :attr:`error`).
        """
        from lkseg.errors import CancelledError

        if self.finished:
            return True
        if self._process is None:
            raise RuntimeError("call start() first")
        code = self._process.poll()
        if code is None:
            return False
        try:
            if self._process.cancelled:
                raise CancelledError(self.cancelMessage)
            self._finish(code)
            self.state = "done"
            self._report(1.0, "done")
        except CancelledError as exc:
            self.state, self.error = "cancelled", exc
        except Exception as exc:
            self.state, self.error = "failed", exc
        finally:
            self._cleanup()
        return True

    def _result(self):
        """What :meth:`wait` returns."""
        return None

    def wait(self, interval: float = 0.1):
        """Poll until finished; returns the job's result or raises its error."""
        while not self.poll():
            time.sleep(interval)
        if self.error is not None:
            raise self.error
        return self._result()

    def cancel(self) -> None:
        """Kill the child process tree (within about 2 s); the job ends as ``"cancelled"`` at the
        next poll."""
        if self._process is not None and not self.finished:
            self._process.cancel()
        elif self.state == "new":
            self.state = "cancelled"
