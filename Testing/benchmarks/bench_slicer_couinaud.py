"""Couinaud planning through the module's Logic on slicer-core: what runs on the GUI thread and
what on the worker, on the 512x512x200 phantom of ``bench_planning.py`` (exact landmarks in a
point list, resection of segments 5-8, no surfaces).

Per run it prints: ``read`` (GUI thread: segmentation -> label map, landmarks, options: the part
of ``logic.plan(..., waitForCompletion=False)`` before it returns), ``worker`` (the core's
``run_plan`` on the planning thread), ``finish`` (GUI thread: Couinaud segments into a
segmentation node and the results table), then the medians, peak RSS and the load average.

    PYTHONPATH=LiverKidneySeg python Testing/benchmarks/bench_slicer_couinaud.py --runs 3
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_planning import PLANNING, SIZE, make_case  # noqa: E402

from benchutil import environment  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "lkseg" / "bench"))
    args = parser.parse_args()

    from LiverKidneySegLib.couinaud import landmarksToMarkups
    from LiverKidneySegLib.headless import setupHeadlessSlicer
    from LiverKidneySegLib.logic import LiverKidneySegLogicBase
    from LiverKidneySegLib.segmentations import labelMapToSegmentation
    from LiverKidneySegLib.volumes import volumeToNode
    from lkseg.planning import CouinaudLandmarks
    from lkseg.volume import Volume

    print("# bench_slicer_couinaud: Couinaud planning through the Logic,", "x".join(map(str, SIZE)))
    print("environment:", environment())
    case, truth = make_case(args.seed, Path(args.cache))
    data = np.load(case)
    image = Volume.from_array(data["image"], tuple(data["spacing"]), tuple(data["origin"]), data["direction"])
    labels = image.with_array(data["labels"])
    scene = setupHeadlessSlicer().scene
    ct = volumeToNode(image, scene=scene, name="CT")
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Organs")
    labelMapToSegmentation(labels, {v: n for v, (n, _) in PLANNING.items()}, seg, referenceVolumeNode=ct)
    points = landmarksToMarkups(CouinaudLandmarks.from_dict(truth["landmarks"]), scene=scene)
    logic = LiverKidneySegLogicBase(scene)
    couinaud = None
    rows = []
    for run in range(args.runs):
        t0 = time.perf_counter()
        pending = logic.plan(
            ct,
            seg,
            landmarksNode=points,
            resectSegments="5,6,7,8",
            couinaudSegmentationNode=couinaud,
            waitForCompletion=False,
        )
        t1 = time.perf_counter()
        pending.future.result()
        t2 = time.perf_counter()
        result, _ = pending.finish()
        t3 = time.perf_counter()
        couinaud = logic.lastCouinaudSegmentation
        rows.append((t1 - t0, t2 - t1, t3 - t2))
        print(
            f"run {run + 1}: read {t1 - t0:.2f} s, worker {t2 - t1:.2f} s, finish {t3 - t2:.2f} s, "
            f"FLR {result.flr.flr_percent:.1f} %, load {os.getloadavg()[0]:.2f}"
        )
    read, worker, finish = (statistics.median(c) for c in zip(*rows))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"median of {args.runs}: GUI thread read {read:.2f} s + finish {finish:.2f} s, worker {worker:.2f} s; "
        f"peak RSS {rss:.0f} MiB; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    logic.cleanup()


if __name__ == "__main__":
    main()
