"""Network construction from a manifest's ``{"class": ..., "params": {...}}`` description.

Only classes from MONAI's network zoo (``monai.networks.nets``) are built: a manifest can choose
a class and its JSON parameters, never run code. The default for this product is MONAI's
``UNet``: it downsamples at its first layer, which makes it several times faster on a CPU than
networks whose first level runs at full resolution (see ``../shared/docs/measured.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lkseg.errors import ModelError

__all__ = ["build_network", "count_parameters", "unet_spec"]


def unet_spec(
    out_channels: int, channels=(16, 32, 64, 128, 256), num_res_units: int = 2, norm: str = "INSTANCE"
) -> dict:
    """The ``network`` entry of a manifest for a 3D MONAI ``UNet`` with stride-2 levels."""
    return {
        "class": "UNet",
        "params": {
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": int(out_channels),
            "channels": [int(c) for c in channels],
            "strides": [2] * (len(channels) - 1),
            "num_res_units": int(num_res_units),
            "norm": norm,
        },
    }


def _check_json_params(params: Any, where: str) -> None:
    if isinstance(params, Mapping):
        for key, value in params.items():
            _check_json_params(value, f"{where}.{key}")
    elif isinstance(params, (list, tuple)):
        for n, value in enumerate(params):
            _check_json_params(value, f"{where}[{n}]")
    elif isinstance(params, str):
        if params.startswith(("$", "@", "%")):
            raise ModelError(f"network parameter {where} = {params!r}: expressions and references are not allowed")
    elif params is not None and not isinstance(params, (bool, int, float)):
        raise ModelError(f"network parameter {where} has unsupported type {type(params).__name__}")


def build_network(spec: Mapping[str, Any]):
    """Instantiate ``monai.networks.nets.<class>(**params)``; returns a ``torch.nn.Module`` in eval mode.

    Args:
        spec: ``{"class": "UNet" | "monai.networks.nets.UNet" | ..., "params": {...}}``.

    Raises:
        ModelError: the class is not a MONAI network or the parameters do not fit it.
    """
    import torch
    from monai.networks import nets

    name = str(spec.get("class", ""))
    short = name.removeprefix("monai.networks.nets.")
    cls = getattr(nets, short, None) if short.isidentifier() else None
    if cls is None or not isinstance(cls, type) or not issubclass(cls, torch.nn.Module):
        raise ModelError(f"network class {name!r} is not a network of monai.networks.nets")
    params = dict(spec.get("params", {}))
    _check_json_params(params, short)
    try:
        net = cls(**params)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ModelError(f"cannot build {short} with parameters {params}: {exc}") from exc
    return net.eval()


def count_parameters(net) -> int:
    return int(sum(p.numel() for p in net.parameters()))
