"""Post-export numerical check of the automatic models' ONNX graphs: differences and cost.

For each stage of a model package (default: the demo model), export the verified PyTorch network
to ONNX into a temporary folder and compare ONNX Runtime with PyTorch on seeded N(0, 1) inputs:
at the check's own shape (the patch capped at 64 voxels a side, as ``lkseg.models.onnx`` does)
and at the full patch. Prints the max |difference|, the largest |logit|, the tolerance that
``lkseg.models.onnx`` applies, and the wall time of the check (median of ``--repeats``).

    OMP_NUM_THREADS=2 python Testing/benchmarks/bench_onnx_check.py [--model ID] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model id or package folder (default: the demo model)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    from lkseg.models import find_model
    from lkseg.models.loading import load_stage_network
    from lkseg.models.onnx import _CHECK_MAX_SIDE, CHECK_ATOL, CHECK_RTOL, _check_against_torch, _export

    torch.set_num_threads(args.threads)
    manifest = find_model(args.model)
    print(f"model {manifest.id}@{manifest.version}; torch {torch.__version__}, onnxruntime {ort.__version__}")
    print(f"load average before: {Path('/proc/loadavg').read_text().split()[:3]}")
    print(f"tolerance: {CHECK_ATOL:g} + {CHECK_RTOL:g} x max|PyTorch logit|")
    for name, stage in manifest.stages.items():
        net = load_stage_network(manifest, stage, "cpu")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.onnx"
            start = time.perf_counter()
            _export(net, stage, path)
            export_s = time.perf_counter() - start
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            times, check = [], {}
            for _ in range(args.repeats):
                start = time.perf_counter()
                check = _check_against_torch(net, session, stage, name)
                times.append(time.perf_counter() - start)
            full = tuple(reversed(stage.patch_size))
            x = torch.randn(1, 1, *full, generator=torch.Generator().manual_seed(1))
            with torch.inference_mode():
                want = net(x).numpy()
            got = session.run(None, {"image": x.numpy()})[0]
        side = min(_CHECK_MAX_SIDE, *full)
        print(
            f"{name}: patch {full}, export {export_s:.1f} s; check input {check['input']}: max|diff| "
            f"{check['max_abs_diff']:.2e} (tolerance {check['tolerance']:.2e}), check wall median "
            f"{statistics.median(times):.2f} s of {args.repeats}; full patch (seed 1): max|diff| "
            f"{float(np.abs(got - want).max()):.2e}, max|logit| {float(np.abs(want).max()):.1f} (cap {side})"
        )
    print(
        f"load average after: {Path('/proc/loadavg').read_text().split()[:3]}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
    )


if __name__ == "__main__":
    main()
