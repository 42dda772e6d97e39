"""Helpers for the browser tests of the web front end (not a test file).

- :func:`start_web_server` starts ``python -m lkseg web ... --port 0`` in a subprocess, waits for
  its readiness line ``LKSEG-WEB-READY http://127.0.0.1:PORT/`` (and ``LKSEG-WEB-TOKEN <token>``
  when a token guards it), then until the page answers HTTP 200, and returns a :class:`WebServer`
  (a context manager that stops the process). :func:`start_server_process` does the same for any
  command that prints those lines (the harness's own test uses a throwaway trame app).
- :func:`chrome` opens Debian's headless Chromium through Selenium and chromedriver;
  :func:`browser_missing` says why it cannot (the tests skip with that reason).
- :func:`small_phantom` writes the web tests' and benchmarks' 96 x 96 x 40 phantom with
  :func:`run_lkseg` (``python -m lkseg ...`` from this checkout).
- :func:`save_screenshot` keeps a PNG under ``Testing/artifacts/web/`` (gitignored; CI keeps it).

The subprocess imports this checkout's sources (``LiverKidneySeg`` is put first on PYTHONPATH)
and its output (stdout and stderr together) is collected by a reader thread so the pipe never
fills; :attr:`WebServer.output` holds it and start-up failures quote its tail.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "Testing" / "artifacts" / "web"
READY_PREFIX = "LKSEG-WEB-READY"
TOKEN_PREFIX = "LKSEG-WEB-TOKEN"
CHROMIUM = os.environ.get("LKSEG_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("LKSEG_CHROMEDRIVER", "/usr/bin/chromedriver")

_READY_RE = re.compile(rf"{READY_PREFIX}\s+(http://\S+)")
_TOKEN_RE = re.compile(rf"{TOKEN_PREFIX}\s+(\S+)")


class WebServer:
    """A running web-server subprocess.

    Attributes:
        url: the page address, with ``?token=...`` when the server uses a token.
        base_url: the address without the token (``http://127.0.0.1:PORT/``).
        port: the port it listens on.
        token: the access token, or None.
        proc: the :class:`subprocess.Popen`.
        started_to_ready_s: seconds from process start until the page answered HTTP 200.
    """

    def __init__(self, proc: subprocess.Popen, output: collections.deque, reader: threading.Thread):
        self.proc = proc
        self._output = output
        self._reader = reader
        self.base_url = ""
        self.url = ""
        self.port = 0
        self.token: str | None = None
        self.started_to_ready_s = float("nan")

    @property
    def output(self) -> str:
        """What the process printed so far (the last 2000 lines)."""
        return "\n".join(self._output)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10) -> int | None:
        """Stop the process (SIGTERM, then SIGKILL after ``timeout``); returns its exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self._reader.join(timeout)
        return self.proc.returncode

    def __enter__(self) -> WebServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"WebServer({self.base_url!r}, pid={self.proc.pid}, alive={self.alive()})"


def subprocess_env(env: dict | None = None) -> dict:
    """``os.environ`` updated with ``env``, this checkout's sources first on PYTHONPATH, unbuffered
    output, and ``TRAME_SERVER=1`` (trame then never opens a desktop browser)."""
    merged = dict(os.environ)
    merged.update(env or {})
    paths = [str(ROOT / "LiverKidneySeg"), str(ROOT / "Testing")]
    if merged.get("PYTHONPATH"):
        paths.append(merged["PYTHONPATH"])
    merged["PYTHONPATH"] = os.pathsep.join(paths)
    merged["PYTHONUNBUFFERED"] = "1"
    merged.setdefault("TRAME_SERVER", "1")
    return merged


def small_phantom(out: Path, *extra: str) -> subprocess.CompletedProcess:
    """``lkseg phantom`` of the web tests and benchmarks into ``out``: 96 x 96 x 40 voxels at
    3.5 x 3.5 x 5 mm, no .seg.nrrd; ``extra`` adds options (seed, tumours, phase)."""
    size = ("--size", "96", "96", "40", "--spacing", "3.5", "3.5", "5")
    return run_lkseg("phantom", *size, *extra, "--no-seg-nrrd", str(out))


def run_lkseg(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m lkseg ARGS`` from this checkout (2 threads, output captured as text); raises
    ``CalledProcessError`` when it fails."""
    return subprocess.run(
        [sys.executable, "-m", "lkseg", *args],
        env=subprocess_env({"OMP_NUM_THREADS": "2"}),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )


def _http_status(url: str, timeout: float = 5) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def start_server_process(
    cmd: list[str], env: dict | None = None, timeout: float = 60, cwd: str | Path | None = None
) -> WebServer:
    """Start ``cmd`` and wait until it printed the readiness line and its page answers HTTP 200.

    Raises:
        RuntimeError: the process exited or ``timeout`` passed first; the message quotes its output.
    """
    output: collections.deque = collections.deque(maxlen=2000)
    found: dict[str, str] = {}
    seen_ready = threading.Event()
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=subprocess_env(env),
        cwd=str(cwd or ROOT),
        text=True,
        bufsize=1,
        errors="replace",
    )

    def read() -> None:
        for line in proc.stdout:
            line = line.rstrip("\n")
            output.append(line)
            if m := _TOKEN_RE.search(line):
                found.setdefault("token", m.group(1))
            if m := _READY_RE.search(line):
                found.setdefault("url", m.group(1))
                seen_ready.set()
        proc.stdout.close()

    reader = threading.Thread(target=read, name="web-harness-reader", daemon=True)
    reader.start()
    server = WebServer(proc, output, reader)

    def fail(why: str) -> RuntimeError:
        server.stop(5)
        tail = "\n".join(list(output)[-40:])
        return RuntimeError(f"{' '.join(map(str, cmd))}: {why}\n--- output (last 40 lines) ---\n{tail}")

    deadline = t0 + timeout
    while not seen_ready.wait(0.05):
        if proc.poll() is not None:
            reader.join(2)
            if seen_ready.is_set():
                break
            raise fail(f"exited with code {proc.returncode} before printing {READY_PREFIX}")
        if time.monotonic() > deadline:
            raise fail(f"no {READY_PREFIX} line within {timeout:.0f} s")
    time.sleep(0.05)  # the token line comes before the ready line; let the reader catch up
    base = found["url"]
    if not base.endswith("/"):
        base += "/"
    server.base_url = base
    server.port = int(re.search(r":(\d+)", base[len("http://") :]).group(1))
    server.token = found.get("token")
    server.url = f"{base}?token={server.token}" if server.token else base
    status = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise fail(f"exited with code {proc.returncode} after printing {READY_PREFIX}")
        try:
            status = _http_status(server.url)
            if status == 200:
                server.started_to_ready_s = time.monotonic() - t0
                return server
        except OSError:
            pass
        time.sleep(0.1)
    raise fail(f"{server.url} did not answer HTTP 200 within {timeout:.0f} s (last status {status})")


def start_web_server(args: list[str], env: dict | None = None, timeout: float = 60) -> WebServer:
    """Start ``python -m lkseg web <args> --port 0`` (this checkout's sources) and wait until its
    page answers; see :func:`start_server_process`."""
    cmd = [sys.executable, "-m", "lkseg", "web", *map(str, args), "--port", "0"]
    return start_server_process(cmd, env=env, timeout=timeout)


# -- browser ---------------------------------------------------------------------------------------


def browser_missing() -> str | None:
    """Why :func:`chrome` cannot run here (a sentence for ``pytest.skip``), or None when it can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install 'liverkidneyseg[test]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return (
                f"{path} not found: install Debian's chromium and chromium-driver "
                f"(apt-get install --no-install-recommends chromium chromium-driver; scripts/run.sh does it as root) "
                f"- missing package: {package}"
            )
    return None


def web_missing() -> str | None:
    """Why the browser tests cannot run here (:func:`browser_missing`, or trame-slicer absent), or None."""
    why = browser_missing()
    if why:
        return why
    try:
        import trame_slicer  # noqa: F401
    except ImportError as exc:
        return f"trame-slicer is not installed (pip install 'liverkidneyseg[web]'): {exc}"
    return None


def chrome(width: int = 1400, height: int = 900, download_dir: str | Path | None = None):
    """A headless Chromium driven by Selenium (Debian's /usr/bin/chromium + /usr/bin/chromedriver).

    ``--no-sandbox`` because CI runs as root; ``--disable-gpu`` and software WebGL (SwiftShader) so
    VTK's WebGL views render without a GPU. With ``download_dir``, downloads go there without a
    prompt (see :func:`wait_for_download`). The caller quits it (``driver.quit()``), which also
    removes the browser's profile and the socket folder Chromium makes in ``TMPDIR`` (both live in
    one private temporary folder: chromedriver's kill on quit would leave them in /tmp otherwise).

    Raises:
        RuntimeError: chromium or chromedriver is missing (see :func:`browser_missing`).
    """
    why = browser_missing()
    if why:
        raise RuntimeError(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        f"--window-size={int(width)},{int(height)}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    if download_dir is not None:
        download_dir = str(Path(download_dir).resolve())
        Path(download_dir).mkdir(parents=True, exist_ok=True)
        options.add_experimental_option(
            "prefs", {"download.default_directory": download_dir, "download.prompt_for_download": False}
        )
    scratch = tempfile.mkdtemp(prefix="lkseg-chromium-")
    options.add_argument(f"--user-data-dir={Path(scratch) / 'profile'}")
    service = Service(
        executable_path=CHROMEDRIVER, log_output=subprocess.DEVNULL, env={**os.environ, "TMPDIR": scratch}
    )
    try:
        driver = webdriver.Chrome(service=service, options=options)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    quit_browser = driver.quit

    def quit_and_clean() -> None:
        try:
            quit_browser()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    driver.quit = quit_and_clean
    if download_dir is not None:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": download_dir})
    return driver


def wait_for_download(folder: str | Path, name: str, timeout: float = 30) -> Path:
    """Wait until the browser finished downloading ``name`` into ``folder`` (no ``.crdownload``
    left) and return its path.

    Raises:
        TimeoutError: not there within ``timeout`` seconds (the message lists the folder).
    """
    folder = Path(folder)
    target = folder / name
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        partial = list(folder.glob("*.crdownload"))
        if target.is_file() and not partial:
            return target
        time.sleep(0.1)
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    raise TimeoutError(f"{name} was not downloaded into {folder} within {timeout:.0f} s (there: {present})")


def save_screenshot(driver, name: str) -> Path:
    """Save the browser window as ``Testing/artifacts/web/<name>.png`` and return the path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "screenshot"
    if not safe.endswith(".png"):
        safe += ".png"
    path = ARTIFACTS / safe
    if not driver.save_screenshot(str(path)):
        raise RuntimeError(f"the browser did not save a screenshot to {path}")
    return path


def chromium_version() -> str:
    """``chromium --version`` output, or "" when absent."""
    exe = shutil.which(CHROMIUM) or CHROMIUM
    try:
        return subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
