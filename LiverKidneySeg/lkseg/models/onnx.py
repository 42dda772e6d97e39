"""ONNX Runtime back end for CPU inference of lkseg model packages.

On this project's 2-core CPUs ONNX Runtime runs the MONAI U-Net faster than eager PyTorch: the
fine pass of the 512x512x200 benchmark takes 3.6 s instead of 4.1 s on an idle machine (1.7 s vs
3.1 s for one 96x128x128 window on a busy one; logits within 2e-3), for about 0.6 GB more peak
memory (its allocation arena). The network is exported from
the SHA-256-verified PyTorch weights on first use and cached as
``<cache>/onnx/auto-<model id>-<stage>-<weights sha256[:16]>.onnx`` (cache root ``$LKSEG_CACHE``,
else ``$XDG_CACHE_HOME/lkseg`` or ``~/.cache/lkseg``, read at call time). A JSON sidecar records
the export's own SHA-256 and what produced it (weights, torch and onnx versions, export code
version); a file that no longer matches is exported again, never loaded. Right after each export
the ONNX Runtime session is checked numerically against the PyTorch network on one seeded
N(0, 1) input (the stage's patch, each side capped at 64 voxels): the largest absolute logit
difference must be at most ``CHECK_ATOL + CHECK_RTOL * max|PyTorch logit|`` (1e-3 + 2e-4 x),
else the export is deleted and a :class:`~lkseg.errors.ModelError` raised. The demo model
measures 7e-5 (coarse) and 2e-4 (fine, 64^3) against tolerances of 1e-2 and 1.6e-2, and 1.2e-3
over the fine stage's full 112^3 patch; the check costs 2-4 s once per export
(``Testing/benchmarks/bench_onnx_check.py``). A session that cannot be built also raises
:class:`~lkseg.errors.ModelError`, on which ``backend="auto"`` falls back to PyTorch with a
warning. Window batch and spatial sizes are dynamic, so MONAI's sliding window can use any window.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

from lkseg.cache import cache_root
from lkseg.errors import ModelError
from lkseg.models.checksum import sha256_file
from lkseg.models.manifest import ModelManifest, StageSpec

__all__ = ["CHECK_ATOL", "CHECK_RTOL", "OnnxNetwork", "cache_root", "onnx_available", "onnx_network"]

log = logging.getLogger(__name__)
_EXPORT_VERSION = 1
#: Tolerance of the post-export check: max |ORT - PyTorch| <= CHECK_ATOL + CHECK_RTOL * max |PyTorch logit|.
CHECK_ATOL = 1e-3
CHECK_RTOL = 2e-4
_CHECK_MAX_SIDE = 64


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _network_class():
    import torch

    class OnnxNetwork(torch.nn.Module):
        """A ``torch.nn.Module`` facade over an ONNX Runtime session: (N, 1, D, H, W) float32 ->
        (N, C, D, H, W) logits, on the CPU. It has no parameters (so no device moves)."""

        def __init__(self, session, path: Path):
            super().__init__()
            self.session = session
            self.path = path

        def forward(self, x):
            arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
            return torch.from_numpy(self.session.run(None, {"image": arr})[0])

    return OnnxNetwork


def OnnxNetwork(session, path: Path):
    return _network_class()(session, path)


def _export(net, stage: StageSpec, path: Path) -> None:
    import torch

    from lkseg.io.atomic import atomic_path

    patch = tuple(reversed(stage.patch_size))
    dummy = torch.zeros(1, 1, *patch)
    dynamic = {0: "batch", 2: "d", 3: "h", 4: "w"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about instance norm and shape asserts
        torch.onnx.export(
            net.cpu().eval(),
            dummy,
            str(tmp),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": dynamic, "logits": dynamic},
            opset_version=17,
            dynamo=False,
        )


def _cache_files(manifest: ModelManifest, stage: StageSpec, cache_dir: str | Path | None) -> tuple[Path, Path, dict]:
    """The export's path, its JSON sidecar and what the sidecar must record for the export to be used."""
    import torch

    source = manifest.weights[stage.weights]
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    path = root / "onnx" / f"auto-{manifest.id}-{stage.name}-{source[:16]}.onnx"
    expected = {
        "source_sha256": source,
        "torch": torch.__version__,
        "onnx": _onnx_version(),
        "export_version": _EXPORT_VERSION,
    }
    return path, path.with_suffix(".json"), expected


def _cache_valid(path: Path, sidecar: Path, expected: dict) -> bool:
    """Whether the cached export exists, its sidecar records ``expected`` and its SHA-256 matches."""
    if not (path.is_file() and sidecar.is_file()):
        return False
    try:
        info = json.loads(sidecar.read_text())
        valid = all(info.get(k) == v for k, v in expected.items()) and info.get("sha256") == sha256_file(path)
    except (OSError, ValueError):
        valid = False
    if not valid:
        log.warning("%s: cached ONNX export does not match its record; exporting again", path)
    return valid


def _session(path: Path, threads: int, what: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own (pybind) types for invalid or unsupported graphs
        raise ModelError(f"ONNX Runtime cannot build a session for {what} from {path}: {exc}") from exc


def onnx_network(
    manifest: ModelManifest,
    stage: StageSpec,
    net,
    threads: int,
    cache_dir: str | Path | None = None,
):
    """An ONNX Runtime version of the verified PyTorch network of ``stage``, exported and cached
    on first use.

    ``net`` is that network, or a function without arguments that builds it: it is then called
    only when the cache holds no valid export (building a MONAI network means importing MONAI,
    4-4.5 s on a 2-core CPU, and reading the weights), so a cached export runs without either.
    The caller verifies the weights' SHA-256 against the manifest either way.

    Raises:
        ModelError: onnxruntime is missing, or the export fails or disagrees with PyTorch.
    """
    if not onnx_available():
        raise ModelError("the ONNX back end needs the 'onnxruntime' package")
    path, sidecar, expected = _cache_files(manifest, stage, cache_dir)
    what = f"{manifest.id} stage {stage.name!r}"
    if _cache_valid(path, sidecar, expected):
        return OnnxNetwork(_session(path, threads, what), path)
    if callable(net) and not hasattr(net, "parameters"):
        net = net()
    log.info("exporting %s stage %r to ONNX (first use; cached in %s)", manifest.id, stage.name, path.parent)
    try:
        _export(net, stage, path)
    except Exception as exc:
        raise ModelError(f"ONNX export of {what} failed: {exc}") from exc
    session = _session(path, threads, what)
    try:
        check = _check_against_torch(net, session, stage, what)
    except ModelError:
        path.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)
        raise
    from lkseg.io.atomic import atomic_write_text

    atomic_write_text(sidecar, json.dumps({**expected, "sha256": sha256_file(path), "check": check}, indent=2))
    return OnnxNetwork(session, path)


def _onnx_version() -> str | None:
    try:
        import onnx
    except ImportError:
        return None
    return onnx.__version__


def _check_against_torch(net, session, stage: StageSpec, what: str) -> dict:
    """Run the new export and the PyTorch network on one seeded input; raise if they disagree."""
    import numpy as np
    import torch

    shape = tuple(min(int(n), _CHECK_MAX_SIDE) for n in reversed(stage.patch_size))  # (D, H, W)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, *shape, generator=generator)
    with torch.inference_mode():
        want = net.cpu().eval()(x).float().numpy()
    try:
        got = session.run(None, {"image": x.numpy()})[0]
    except Exception as exc:
        raise ModelError(f"the ONNX export of {what} fails to run: {exc}") from exc
    if got.shape != want.shape:
        raise ModelError(f"the ONNX export of {what} returns shape {got.shape}, PyTorch {want.shape}")
    diff = float(np.max(np.abs(got - want)))
    tolerance = CHECK_ATOL + CHECK_RTOL * float(np.max(np.abs(want)))
    if not np.isfinite(diff) or diff > tolerance:
        raise ModelError(
            f"the ONNX export of {what} disagrees with PyTorch: max |difference| {diff:.3g} > tolerance "
            f"{tolerance:.3g} on a N(0, 1) input of shape {shape}; not used"
        )
    log.info("ONNX export of %s matches PyTorch: max |difference| %.2e <= %.2e", what, diff, tolerance)
    return {"input": f"N(0,1) seed 0, shape {list(shape)}", "max_abs_diff": diff, "tolerance": tolerance}
