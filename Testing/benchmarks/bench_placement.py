"""Cost of placing a label map from another tool on its image (``lkseg.io.placement``).

A 512x512xN uint8 label map stored with its j axis flipped (a RAS NIfTI beside an LPS DICOM
series) is placed on the image grid exactly (:func:`place_label_map`) and, for comparison,
resampled with SimpleITK nearest neighbour. Prints the median wall time of ``--repeats`` runs,
the peak RSS of the process and the load average.

    OMP_NUM_THREADS=2 python Testing/benchmarks/bench_placement.py [--slices 300] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from benchutil import peak_rss_mb
from lkseg.io.placement import place_label_map
from lkseg.resample import resample_array_to_grid
from lkseg.volume import Volume


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, size=(args.slices, 512, 512)).astype(np.uint8)
    image = Volume.from_array(labels, (0.78, 0.78, 1.5), (-200.0, -180.0, -600.0))
    ras_like = Volume.from_array(
        np.ascontiguousarray(labels[:, ::-1, :]),
        image.spacing,
        image.grid.index_to_lps([0, 511, 0]),
        image.direction @ np.diag([1.0, -1.0, 1.0]),
    )
    print(f"load average before: {Path('/proc/loadavg').read_text().split()[:3]}")
    for name, run in (
        ("place_label_map (exact)", lambda: place_label_map(ras_like, image).array),
        (
            "SimpleITK nearest resample",
            lambda: resample_array_to_grid(ras_like.array, ras_like.grid, image.grid, "nearest"),
        ),
    ):
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = run()
            times.append(time.perf_counter() - start)
        assert np.array_equal(out, labels), name
        print(f"{name}: 512x512x{args.slices} uint8, median {statistics.median(times):.3f} s of {args.repeats}")
    print(f"peak RSS {peak_rss_mb():.0f} MB; load average after: {Path('/proc/loadavg').read_text().split()[:3]}")


if __name__ == "__main__":
    main()
