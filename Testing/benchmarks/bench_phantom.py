"""Speed and memory of the phantom generator.

Usage::

    python Testing/benchmarks/bench_phantom.py [--runs 3]

Generates the default 256x256x100 phantom (1.6x1.6x2.5 mm) and the benchmark-size
512x512x200 phantom (0.78x0.78x2.0 mm), each run in a fresh process (so peak RSS is per run),
and prints the median wall time, the median CPU time, the stages and the peak RSS. Also reports
the machine load, because wall times on a shared machine include other people's work.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchutil import environment, measure_in_subprocess, median, print_table

CASES = [
    ("256x256x100 @ 1.6x1.6x2.5 mm", (256, 256, 100), (1.6, 1.6, 2.5)),
    ("512x512x200 @ 0.78x0.78x2.0 mm", (512, 512, 200), (0.78, 0.78, 2.0)),
]


def generate(size, spacing, seed: int) -> dict:
    """One phantom; returns its stage timings and CPU time (picklable)."""
    from lkseg.phantom import PhantomConfig, generate_phantom

    cpu = time.process_time()
    ph = generate_phantom(PhantomConfig(seed=seed, size_ijk=size, spacing=spacing))
    return {"cpu_s": time.process_time() - cpu, **ph.meta["timings_s"], "liver_ml": ph.volumes_ml["liver"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per size (median reported)")
    args = parser.parse_args(argv)
    rows = []
    for label, size, spacing in CASES:
        runs = []
        for r in range(args.runs):
            load = os.getloadavg()[0]
            out = measure_in_subprocess(generate, size, spacing, r)
            runs.append({**out["result"], "wall": out["wall_s"], "rss": out["peak_rss_mb"], "load": load})
        rows.append(
            {
                "case": label,
                "runs": args.runs,
                "median wall s": median(r["wall"] for r in runs),
                "median cpu s": median(r["cpu_s"] for r in runs),
                "anatomy s": median(r["anatomy"] for r in runs),
                "paint s": median(r["paint"] for r in runs),
                "blur+noise s": median(r["blur"] for r in runs),
                "peak RSS MB": max(r["rss"] for r in runs),
                "load avg": median(r["load"] for r in runs),
            }
        )
    print_table(rows, title="lkseg.phantom generation (each run in a fresh process; seeds 0..runs-1)")
    # environment() imports torch: only after the runs, since a spawned child's peak RSS starts
    # from its parent's at the fork (Linux keeps the high-water mark across exec)
    print("environment:", environment())
    return 0


if __name__ == "__main__":
    sys.exit(main())
