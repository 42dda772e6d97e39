"""Cost of one refinement click on the main (GUI) thread, through the module Logic on slicer-core.

A 512 x 512 x N CT with a large "Liver" segment; each click is a positive point on a new slice
(the stand-in predictor: the prediction itself costs ~nothing, so what is measured is the MRML
work the GUI thread does: reading the segment, combining, recording the undo step, writing it).
Prints the median wall time of ``finish()`` (the part that runs on the GUI thread) and of the
whole ``refine()``, with the load average.

    PYTHONPATH=LiverKidneySeg python Testing/benchmarks/bench_slicer_click.py --slices 120 --clicks 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Testing/ (slicer_helpers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=120)
    parser.add_argument("--clicks", type=int, default=7)
    args = parser.parse_args()

    from slicer_helpers import FakePromptPredictor

    from LiverKidneySegLib.headless import setupHeadlessSlicer
    from LiverKidneySegLib.logic import LiverKidneySegLogicBase
    from LiverKidneySegLib.refinement import RefineEngine
    from LiverKidneySegLib.segmentations import labelMapToSegmentation
    from LiverKidneySegLib.volumes import ijkToWorld, volumeToNode
    from lkseg.volume import Volume

    scene = setupHeadlessSlicer().scene
    shape = (args.slices, 512, 512)
    volume = Volume.from_array(np.zeros(shape, np.int16), (0.8, 0.8, 2.5), (0.0, 0.0, 0.0), np.eye(3))
    node = volumeToNode(volume, scene=scene, name="CT")
    labels = np.zeros(shape, np.uint8)
    labels[:, 100:400, 80:380] = 1
    engine = RefineEngine(predictorFactory=lambda m, d: FakePromptPredictor(radius=8))
    logic = LiverKidneySegLogicBase(scene, engine)
    seg = logic.newSegmentationNode(node)
    labelMapToSegmentation(volume.with_array(labels), {1: "liver"}, seg)
    logic.refine(node, seg, "liver", positive=ijkToWorld(node, np.array([[450.0, 450.0, 0.0]])), axis=2)  # warm-up
    finish, total = [], []
    for n in range(args.clicks):
        k = 1 + n * (args.slices - 2) // max(args.clicks, 1)
        point = ijkToWorld(node, np.array([[450.0, 450.0, float(k)]]))
        t0 = time.perf_counter()
        pending = logic.refine(node, seg, "liver", positive=point, axis=2, waitForCompletion=False)
        pending.future.result()
        t1 = time.perf_counter()
        pending.finish()
        t2 = time.perf_counter()
        finish.append(t2 - t1)
        total.append(t2 - t0)
    logic.cleanup()
    print(f"volume {shape[2]} x {shape[1]} x {shape[0]} (i x j x k), {args.clicks} clicks")
    print(f"median GUI-thread apply (finish): {statistics.median(finish) * 1000:.0f} ms")
    print(f"median whole click (refine + predict + finish): {statistics.median(total) * 1000:.0f} ms")
    print(f"load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
