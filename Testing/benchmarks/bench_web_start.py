"""How soon ``lkseg web`` serves a usable page (median of N fresh server processes).

Per run: wall seconds and CPU seconds (user + sys of the server process, from /proc) until it
prints ``LKSEG-WEB-READY``; with ``--browser``, also seconds until headless Chromium shows the
app's state (``lks_busy`` false and the Open button: what the browser test calls "page
interactive") and until the CT is shown (the Segment button enabled). CPU seconds are the figure
to compare between versions on a loaded machine; wall seconds depend on the load (printed).

    PYTHONPATH=LiverKidneySeg python Testing/benchmarks/bench_web_start.py --runs 5 --browser
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "Testing"))


def _load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (float(fields[11]) + float(fields[12])) / os.sysconf("SC_CLK_TCK")


def _to_ready(ct: Path, work: Path) -> tuple[float, float]:
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "lkseg", "web", str(ct), "--port", "0", "--work-dir", str(work)]
    import web_harness as wh

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=wh.subprocess_env())
    try:
        for line in proc.stdout:
            if wh.READY_PREFIX in line:
                return time.monotonic() - t0, _cpu_seconds(proc.pid)
        raise RuntimeError(f"lkseg web exited with {proc.wait()} before {wh.READY_PREFIX}")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _in_browser(driver, ct: Path, work: Path) -> tuple[float, float, float]:
    import web_harness as wh
    from selenium.webdriver.support.ui import WebDriverWait

    t0 = time.monotonic()
    server = wh.start_web_server([str(ct), "--data-root", str(ct.parent), "--work-dir", str(work)])
    try:
        http = time.monotonic() - t0
        driver.get(server.url)
        WebDriverWait(driver, 120, 0.02).until(
            lambda d: d.execute_script(
                "return !!(window.trame && window.trame.state && window.trame.state.get('lks_busy') === false"
                " && document.getElementById('lks-open'));"
            )
        )
        interactive = time.monotonic() - t0
        WebDriverWait(driver, 120, 0.05).until(
            lambda d: d.execute_script("const e = document.getElementById('lks-segment'); return !!e && !e.disabled;")
        )
        return http, interactive, time.monotonic() - t0
    finally:
        server.stop()
        driver.get("about:blank")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--browser", action="store_true", help="also measure the page in headless Chromium")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lkseg-bench-web-") as tmp:
        tmp = Path(tmp)
        import web_harness as wh

        wh.small_phantom(tmp / "ph")
        ct = tmp / "ph" / "ct.nii.gz"
        ready = []
        for i in range(args.runs):
            load = _load()
            ready.append(_to_ready(ct, tmp / "work"))
            print(f"run {i + 1}: READY after {ready[-1][0]:.2f} s wall, {ready[-1][1]:.2f} s CPU; load {load}")
        print(
            f"median to READY: {statistics.median(r[0] for r in ready):.2f} s wall, "
            f"{statistics.median(r[1] for r in ready):.2f} s CPU ({args.runs} runs; load {_load()})"
        )
        if args.browser:
            import web_harness as wh

            driver = wh.chrome(1500, 950)
            try:
                rows = []
                for i in range(args.runs):
                    load = _load()
                    rows.append(_in_browser(driver, ct, tmp / "work"))
                    print(
                        f"browser run {i + 1}: HTTP {rows[-1][0]:.2f} s, page interactive {rows[-1][1]:.2f} s, "
                        f"CT shown {rows[-1][2]:.2f} s; load {load}"
                    )
            finally:
                driver.quit()
            http, inter, shown = (statistics.median(c) for c in zip(*rows))
            print(
                f"median: HTTP {http:.2f} s, page interactive {inter:.2f} s, CT shown {shown:.2f} s "
                f"({args.runs} runs; load {_load()})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
