"""Loading and saving network weights of a model package, safely.

Weights are untrusted input: every file is checked against the SHA-256 in the manifest before it
is opened, and opened with ``torch.load(weights_only=True)`` (tensors and plain containers only,
never pickled code). Weights may be stored in float16 to keep packages small; they are always
converted to float32 for computing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from lkseg.errors import ModelError
from lkseg.models.checksum import sha256_file, verify_file
from lkseg.models.manifest import ModelManifest, StageSpec
from lkseg.models.networks import build_network

__all__ = ["load_stage_network", "load_state_dict", "save_state_dict"]

log = logging.getLogger(__name__)


def load_state_dict(path: str | Path, expected_sha256: str | None, key: str | None = None) -> dict:
    """Verify and load a state dict (``{name: tensor}``) onto the CPU as float32.

    Args:
        path: the weight file.
        expected_sha256: digest from the manifest; ``None`` skips verification (only for files the
            caller has just written itself).
        key: when the file holds a checkpoint dict, the entry that is the state dict
            (e.g. ``"network_weights"`` for nnU-Net).

    Raises:
        ModelError / ChecksumError: missing, tampered, unreadable or not a state dict.
    """
    import torch

    path = Path(path)
    if expected_sha256 is not None:
        verify_file(path, expected_sha256)
    elif not path.is_file():
        raise ModelError(f"{path}: weight file is missing")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(
            f"{path}: cannot load the weights safely (weights_only=True): {str(exc).splitlines()[0][:200]}"
        ) from exc
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            raise ModelError(f"{path}: checkpoint has no {key!r} entry")
        obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path}: is not a state dict of tensors")
    out = {}
    for name, tensor in obj.items():
        name = str(name).removeprefix("_orig_mod.").removeprefix("module.")
        out[name] = tensor.float() if tensor.is_floating_point() else tensor
    return out


def save_state_dict(net, path: str | Path, dtype: str = "float32") -> str:
    """Save ``net``'s state dict (floating tensors cast to ``dtype``) atomically; returns its SHA-256."""
    import torch

    from lkseg.io.atomic import atomic_path

    target = getattr(torch, dtype)
    state = {
        k: (v.detach().to("cpu", target) if v.is_floating_point() else v.detach().cpu())
        for k, v in net.state_dict().items()
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return sha256_file(path)


def _apply_state(net, state: dict, source: str) -> None:
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        detail = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise ModelError(
            f"{source}: weights do not fit the network described in the manifest ({detail[:200]})"
        ) from None
    if missing or unexpected:
        raise ModelError(
            f"{source}: weights do not fit the network described in the manifest "
            f"(missing {len(missing)} tensors e.g. {missing[:3]}, unexpected {len(unexpected)} e.g. {unexpected[:3]})"
        )


def load_stage_network(manifest: ModelManifest, stage: StageSpec | str, device=None):
    """Build the network of one stage, load its verified weights and move it to ``device``.

    Returns a ``torch.nn.Module`` in eval mode with float32 parameters.
    """
    if isinstance(stage, str):
        if stage not in manifest.stages:
            raise ModelError(f"model {manifest.id!r} has no stage {stage!r}")
        stage = manifest.stages[stage]
    if manifest.folder is None:
        raise ModelError(f"model {manifest.id!r} has no folder to load weights from")
    if manifest.framework == "lkseg":
        net = build_network(stage.network)
        path = manifest.folder / stage.weights
        _apply_state(net, load_state_dict(path, manifest.weights[stage.weights]), str(path))
    else:
        from lkseg.models.thirdparty import build_thirdparty_network

        net = build_thirdparty_network(manifest, stage)
    net = net.float().eval()
    if device is not None:
        net = net.to(device)
    log.info("loaded %s stage %r (%s)", manifest.id, stage.name, stage.network.get("class"))
    return net
