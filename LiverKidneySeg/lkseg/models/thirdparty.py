"""Third-party models mapped onto our labels: MONAI bundles and nnU-Net v2 trained-model folders.

Such a folder gets one small file, ``lkseg-mapping.json``, that says which of the model's output
channels are which of our structures and pins the SHA-256 of its weight files::

    {"format": "monai_bundle", "id": "spleen-bundle", "version": "0.5.0", "license": "Apache-2.0",
     "task": "Spleen segmentation", "labels": {"1": "spleen"},
     "weights": {"models/model.pt": "<sha256>"}}

    {"format": "nnunetv2", "id": "nnunet-liver", "version": "1", "license": "CC-BY-4.0",
     "task": "Liver and liver tumours", "labels": {"liver": "liver", "tumor": "liver_tumor"},
     "configuration": "3d_fullres", "folds": [0], "orientation": "LPS",
     "weights": {"fold_0/checkpoint_final.pth": "<sha256>"}}

Labels map the model's channel (a number, or for nnU-Net a label name of its ``dataset.json``)
to our structure names; channels not listed count as background. Preprocessing is read from the
model's own files (bundle: ``configs/inference.json`` ``Spacingd`` / ``ScaleIntensityRanged`` /
``Orientationd`` / inferer ``roi_size``; nnU-Net: ``plans.json`` spacing, patch size and
``CTNormalization`` statistics) and can be overridden in the mapping (``spacing``, ``patch_size``,
``intensity``, ``orientation``). Networks are built only from MONAI's network zoo or from
``dynamic_network_architectures`` (nnU-Net, via the optional ``nnunetv2`` package); weights are
verified and loaded with ``weights_only=True``. nnU-Net's own loader unpickles checkpoints
completely; ours does not.

nnU-Net does not reorient images: it sees arrays as stored. ``orientation`` (default ``"LPS"``,
the usual DICOM-derived storage) states the storage orientation of its training images.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lkseg.errors import ModelError
from lkseg.io.jsonfile import read_json
from lkseg.labels import LabelTable
from lkseg.models.manifest import InferenceSpec, IntensitySpec, ModelManifest, StageSpec, label_spec_for

__all__ = ["build_thirdparty_network", "load_mapping", "make_mapping"]

log = logging.getLogger(__name__)

MAPPING_NAME = "lkseg-mapping.json"
_FIELDS = {
    "format",
    "id",
    "version",
    "task",
    "license",
    "labels",
    "weights",
    "description",
    "spacing",
    "patch_size",
    "intensity",
    "orientation",
    "configuration",
    "folds",
    "checkpoint",
    "mirror_axes",
    "overlap",
    "training",
    "accuracy",
}


def load_mapping(folder: str | Path) -> ModelManifest:
    """Read ``folder/lkseg-mapping.json`` and the model's own files into a :class:`ModelManifest`."""
    folder = Path(folder)
    path = folder / MAPPING_NAME
    data = read_json(path, "model mapping file", ModelError)
    if not isinstance(data, Mapping):
        raise ModelError(f"{path}: must be a JSON object")
    unknown = sorted(k for k in data if k not in _FIELDS and not str(k).startswith("x_"))
    if unknown:
        raise ModelError(f"{path}: unknown field(s) {unknown} (known: {sorted(_FIELDS)})")
    for key in ("format", "id", "version", "labels", "weights", "license"):
        if key not in data:
            raise ModelError(f"{path}: missing required field {key!r}")
    fmt = data["format"]
    if fmt == "monai_bundle":
        info = _bundle_info(folder, data, path)
    elif fmt == "nnunetv2":
        info = _nnunet_info(folder, data, path)
    else:
        raise ModelError(f"{path}: format {fmt!r} is not 'monai_bundle' or 'nnunetv2'")
    labels = info["labels"]
    if not labels:
        raise ModelError(f"{path}: 'labels' maps no model channel to a structure")
    weights = {}
    for name, digest in dict(data["weights"]).items():
        digest = digest.get("sha256") if isinstance(digest, Mapping) else digest
        if not isinstance(digest, str) or len(digest) != 64:
            raise ModelError(f"{path}: weight file {name!r} needs a 64-hex-digit sha256")
        weights[str(name)] = digest.lower()
    for needed in info["files"]:
        if needed not in weights:
            raise ModelError(f"{path}: weight file {needed!r} is used but has no sha256 in 'weights'")
    intensity = data.get("intensity")
    spec = (
        IntensitySpec(tuple(intensity["clip"]), float(intensity["mean"]), float(intensity["std"]))
        if intensity
        else info["intensity"]
    )
    spacing = tuple(float(s) for s in data.get("spacing", info["spacing"]))
    patch = tuple(int(p) for p in data.get("patch_size", info["patch_size"]))
    if len(spacing) != 3 or len(patch) != 3:
        raise ModelError(f"{path}: a 3D model is needed (spacing {spacing}, patch {patch})")
    stage = StageSpec(
        name="fine",
        role="segment",
        spacing=spacing,  # type: ignore[arg-type]
        patch_size=patch,  # type: ignore[arg-type]
        network={"class": fmt, "params": info["network"]},
        weights=info["files"][0],
        labels=LabelTable(labels),
    )
    mirror = tuple(int(a) for a in data.get("mirror_axes", info.get("mirror_axes", ())))
    return ModelManifest(
        id=str(data["id"]),
        version=str(data["version"]),
        task=str(data.get("task", "")),
        labels={v: label_spec_for(v, n) for v, n in sorted(labels.items())},
        intensity=spec,
        stages={"fine": stage},
        weights=weights,
        license=str(data["license"]),
        folder=folder,
        description=str(data.get("description", "")),
        orientation=str(data.get("orientation", info["orientation"])),
        framework=fmt,
        array_order=info["array_order"],
        inference=InferenceSpec(overlap=float(data.get("overlap", 0.25)), mirror_axes=mirror, cascade=False),
        training=dict(data.get("training", {})),
        accuracy=dict(data.get("accuracy", {})),
    )


# -- MONAI bundle ------------------------------------------------------------------------------
def _resolve(value: Any, config: Mapping, where: str) -> Any:
    if isinstance(value, str) and value.startswith("@"):
        target: Any = config
        for part in value[1:].replace("::", "#").split("#"):
            if not isinstance(target, Mapping) or part not in target:
                raise ModelError(f"{where}: cannot resolve reference {value!r}")
            target = target[part]
        return _resolve(target, config, where)
    if isinstance(value, str) and value.startswith("$"):
        raise ModelError(f"{where}: expression {value!r} is not evaluated; give the value in lkseg-mapping.json")
    if isinstance(value, list):
        return [_resolve(v, config, where) for v in value]
    if isinstance(value, Mapping):
        return {k: _resolve(v, config, where) for k, v in value.items()}
    return value


def _walk_targets(node: Any):
    if isinstance(node, Mapping):
        if "_target_" in node:
            yield node
        for v in node.values():
            yield from _walk_targets(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk_targets(v)


def _bundle_config(folder: Path) -> dict:
    for name in ("inference.json", "inference.yaml", "inference.yml"):
        path = folder / "configs" / name
        if path.is_file():
            if path.suffix == ".json":
                return read_json(path, "MONAI bundle config", ModelError)
            try:
                import yaml
            except ImportError:
                raise ModelError(f"{path}: reading YAML bundle configs needs PyYAML") from None
            return yaml.safe_load(path.read_text(encoding="utf-8"))
    raise ModelError(f"{folder}: not a MONAI bundle (no configs/inference.json)")


def _bundle_info(folder: Path, mapping: Mapping, source: Path) -> dict:
    config = _bundle_config(folder)
    where = str(folder / "configs")
    net_def = config.get("network_def")
    if not isinstance(net_def, Mapping) or "_target_" not in net_def:
        raise ModelError(f"{where}: no network_def with a _target_")
    params = {k: _resolve(v, config, where) for k, v in net_def.items() if k != "_target_"}
    network = {"class": str(net_def["_target_"]), "params": params}
    spacing, clip, orientation, roi = None, None, "RAS", None
    for node in _walk_targets(config):
        target = str(node["_target_"]).split(".")[-1]
        if target in ("Spacingd", "Spacing") and spacing is None:
            spacing = _resolve(node.get("pixdim"), config, where)
        elif target in ("ScaleIntensityRanged", "ScaleIntensityRange") and clip is None:
            clip = {k: float(_resolve(node.get(k), config, where)) for k in ("a_min", "a_max", "b_min", "b_max")}
        elif target in ("Orientationd", "Orientation"):
            orientation = str(_resolve(node.get("axcodes", "RAS"), config, where))
        elif target == "SlidingWindowInferer":
            roi = _resolve(node.get("roi_size"), config, where)
    if spacing is None and "spacing" not in mapping:
        raise ModelError(f"{source}: the bundle has no Spacingd transform; give 'spacing' in the mapping")
    if roi is None and "patch_size" not in mapping:
        raise ModelError(f"{source}: the bundle has no SlidingWindowInferer roi_size; give 'patch_size' in the mapping")
    if clip is not None:
        std = (clip["a_max"] - clip["a_min"]) / (clip["b_max"] - clip["b_min"])
        intensity = IntensitySpec((clip["a_min"], clip["a_max"]), clip["a_min"] - clip["b_min"] * std, std)
    elif "intensity" not in mapping:
        raise ModelError(f"{source}: the bundle has no ScaleIntensityRanged transform; give 'intensity' in the mapping")
    else:
        intensity = IntensitySpec()
    labels = {int(k): str(v) for k, v in dict(mapping["labels"]).items()}
    weights_file = "models/model.pt"
    return {
        "network": network,
        "spacing": spacing or mapping["spacing"],
        "patch_size": roi or mapping["patch_size"],
        "intensity": intensity,
        "orientation": orientation,
        "array_order": "ijk",
        "labels": labels,
        "files": [weights_file],
    }


# -- nnU-Net v2 --------------------------------------------------------------------------------
def _nnunet_config(plans: Mapping, name: str, source: Path) -> dict:
    configs = plans.get("configurations", {})
    if name not in configs:
        raise ModelError(f"{source}: configuration {name!r} not in plans.json (has {sorted(configs)})")
    cfg = dict(configs[name])
    parent = cfg.get("inherits_from")
    if parent:
        base = _nnunet_config(plans, parent, source)
        base.update({k: v for k, v in cfg.items() if k != "inherits_from"})
        cfg = base
    return cfg


def _nnunet_info(folder: Path, mapping: Mapping, source: Path) -> dict:
    dataset = read_json(folder / "dataset.json", "nnU-Net dataset.json", ModelError)
    plans = read_json(folder / "plans.json", "nnU-Net plans.json", ModelError)
    cfg = _nnunet_config(plans, str(mapping.get("configuration", "3d_fullres")), source)
    if list(plans.get("transpose_forward", [0, 1, 2])) != [0, 1, 2]:
        raise ModelError(f"{source}: plans with transpose_forward {plans['transpose_forward']} are not supported")
    if "architecture" not in cfg:
        raise ModelError(f"{source}: old nnU-Net plans without 'architecture'; re-plan with nnU-Net >= 2.4")
    schemes = cfg.get("normalization_schemes", ["CTNormalization"])
    if schemes != ["CTNormalization"]:
        raise ModelError(
            f"{source}: normalisation {schemes} is not CTNormalization; only single-channel CT models are supported"
        )
    props = plans.get("foreground_intensity_properties_per_channel", {}).get("0")
    intensity = (
        IntensitySpec(
            (float(props["percentile_00_5"]), float(props["percentile_99_5"])),
            float(props["mean"]),
            float(props["std"]),
        )
        if props
        else IntensitySpec()
    )
    ds_labels = dataset.get("labels", {})
    if any(isinstance(v, (list, tuple)) for v in ds_labels.values()):
        raise ModelError(f"{source}: region-based nnU-Net models are not supported")
    if len(dataset.get("channel_names", {"0": "CT"})) != 1:
        raise ModelError(f"{source}: only single-channel (CT) nnU-Net models are supported")
    labels = {}
    for key, name in dict(mapping["labels"]).items():
        if str(key).isdigit():
            labels[int(key)] = str(name)
        elif key in ds_labels:
            labels[int(ds_labels[key])] = str(name)
        else:
            raise ModelError(
                f"{source}: label {key!r} is neither a channel number nor a label of dataset.json ({sorted(ds_labels)})"
            )
    folds = mapping.get("folds", [0])
    checkpoint = str(mapping.get("checkpoint", "checkpoint_final.pth"))
    files = [f"fold_{f}/{checkpoint}" for f in folds]
    arch = cfg["architecture"]
    network = {
        "arch_class_name": arch["network_class_name"],
        "arch_kwargs": arch["arch_kwargs"],
        "arch_kwargs_req_import": list(arch.get("_kw_requires_import", [])),
        "num_classes": len(ds_labels),
        "checkpoints": files,
    }
    mirror = mapping.get("mirror_axes")
    return {
        "network": network,
        "spacing": list(reversed(cfg["spacing"])),
        "patch_size": list(reversed(cfg["patch_size"])),
        "intensity": intensity,
        "orientation": "LPS",
        "array_order": "zyx",
        "labels": labels,
        "files": files,
        **({"mirror_axes": mirror} if mirror is not None else {}),
    }


class _Ensemble:
    """Average of the softmax of several networks, returned as log-probabilities."""

    @staticmethod
    def build(nets):
        import torch

        class Ensemble(torch.nn.Module):
            def __init__(self, members):
                super().__init__()
                self.members = torch.nn.ModuleList(members)

            def forward(self, x):
                probs = torch.stack([torch.softmax(m(x).float(), dim=1) for m in self.members]).mean(0)
                return torch.log(probs.clamp_min(1e-8))

        return Ensemble(nets)


def _build_nnunet(manifest: ModelManifest, params: dict):
    import pydoc

    from lkseg.models.loading import _apply_state, load_state_dict

    try:
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    except ImportError:
        raise ModelError(
            "nnU-Net models need the optional 'nnunetv2' package: pip install 'liverkidneyseg[nnunetv2]'"
        ) from None
    name = str(params["arch_class_name"])
    if not name.startswith("dynamic_network_architectures."):
        raise ModelError(f"nnU-Net architecture {name!r} is not from dynamic_network_architectures; refused")
    for key in params["arch_kwargs_req_import"]:
        value = params["arch_kwargs"].get(key)
        if value is not None and not str(value).startswith("torch.nn."):
            raise ModelError(f"nnU-Net architecture argument {key}={value!r} is not a torch.nn class; refused")
    if pydoc.locate(name) is None:
        raise ModelError(f"nnU-Net architecture {name!r} not found in the installed dynamic_network_architectures")
    nets = []
    for file in params["checkpoints"]:
        net = get_network_from_plans(
            name,
            params["arch_kwargs"],
            params["arch_kwargs_req_import"],
            1,
            int(params["num_classes"]),
            allow_init=False,
            deep_supervision=False,
        )
        path = manifest.folder / file
        _apply_state(net, load_state_dict(path, manifest.weights[file], key="network_weights"), str(path))
        nets.append(net.eval())
    return nets[0] if len(nets) == 1 else _Ensemble.build(nets)


def build_thirdparty_network(manifest: ModelManifest, stage: StageSpec):
    """Build and load the network of a mapped MONAI bundle or nnU-Net v2 model."""
    from lkseg.models.loading import _apply_state, load_state_dict
    from lkseg.models.networks import build_network

    if manifest.framework == "monai_bundle":
        net = build_network(stage.network["params"])
        path = manifest.folder / stage.weights
        state = load_state_dict(path, manifest.weights[stage.weights])
        _apply_state(net, state, str(path))
        return net
    if manifest.framework == "nnunetv2":
        return _build_nnunet(manifest, stage.network["params"])
    raise ModelError(f"unknown model framework {manifest.framework!r}")


def make_mapping(folder: str | Path, fmt: str, model_id: str, labels: Mapping, weights: list[str], **fields) -> Path:
    """Write ``lkseg-mapping.json`` for a third-party model folder, computing the SHA-256 of ``weights``.

    Use this once after checking the model's origin: the digests pin exactly those files.
    """
    from lkseg.io.atomic import atomic_write_text
    from lkseg.models.checksum import sha256_file

    folder = Path(folder)
    data = {
        "format": fmt,
        "id": model_id,
        "version": str(fields.pop("version", "1")),
        "license": str(fields.pop("license", "see the model's source")),
        "task": str(fields.pop("task", "")),
        "labels": {str(k): v for k, v in labels.items()},
        "weights": {w: sha256_file(folder / w) for w in weights},
        **fields,
    }
    path = folder / MAPPING_NAME
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path
