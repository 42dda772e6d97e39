"""Small helpers shared by the benchmark scripts: medians, wall time and peak RSS.

Benchmarks print what they measure; numbers in the README are copied from their output.
Peak RSS is the high-water mark of a process (``ru_maxrss``), so each measured run happens in a
fresh child process (:func:`measure_in_subprocess`) to get a per-run figure.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["environment", "measure_in_subprocess", "median", "peak_rss_mb", "print_table", "timed"]


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB.

    On Linux this reads ``VmHWM`` from ``/proc/self/status``: it belongs to the process image and
    starts afresh at ``exec``, whereas ``ru_maxrss`` survives ``fork``+``exec`` and would report a
    spawned child's parent peak when that was higher.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / 1024.0 / 1024.0


def median(values) -> float:
    values = list(values)
    return float(statistics.median(values)) if values else float("nan")


class timed:
    """Context manager: ``with timed() as t: ...; t.seconds``."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False


def _child(conn, fn, args, kwargs):
    try:
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        wall = time.perf_counter() - start
        conn.send({"ok": True, "wall_s": wall, "peak_rss_mb": peak_rss_mb(), "result": result})
    except BaseException as exc:
        conn.send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def measure_in_subprocess(fn: Callable[..., Any], *args, **kwargs) -> dict:
    """Run ``fn(*args, **kwargs)`` in a fresh spawned process; return wall time, peak RSS and the
    (picklable) result. ``fn`` must be importable at module level."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, args, kwargs))
    proc.start()
    child.close()
    out = parent.recv()
    proc.join()
    if not out.get("ok"):
        raise RuntimeError(out.get("error"))
    return out


def environment() -> dict:
    """Machine facts printed at the top of every benchmark."""
    info = {"python": platform.python_version(), "machine": platform.machine(), "cpus": mp.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def body_centre_ji(image) -> tuple[float, float]:
    """``(j, i)`` index of the centre of the body's in-plane extent in a SimpleITK CT: the middle of
    the rows and columns holding any voxel above -500 HU on any slice."""
    import numpy as np
    import SimpleITK as sitk

    body = np.argwhere((sitk.GetArrayViewFromImage(image) > -500).any(axis=0))  # (j, i)
    cj, ci = (body.min(0) + body.max(0)) / 2.0
    return float(cj), float(ci)


def fov_crop(ct, seg, fraction: float):
    """``(ct, seg)`` SimpleITK images cut in-plane to ``fraction`` of the width and height about the
    body's centre (:func:`body_centre_ji`; voxels and geometry kept): a tight field of view."""
    nx, ny, _ = ct.GetSize()
    cj, ci = (int(c) for c in body_centre_ji(ct))
    hi, hj = int(nx * fraction / 2), int(ny * fraction / 2)
    i0, i1, j0, j1 = max(0, ci - hi), min(nx, ci + hi), max(0, cj - hj), min(ny, cj + hj)
    return ct[i0:i1, j0:j1, :], seg[i0:i1, j0:j1, :]


def print_table(rows: list[dict], columns: list[str] | None = None, title: str | None = None) -> None:
    """Print rows as an aligned text table (and nothing else)."""
    if title:
        print(f"\n## {title}")
    if not rows:
        print("(no rows)")
        return
    columns = columns or list(rows[0])

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


if __name__ == "__main__":
    print(json.dumps(environment(), indent=2))
