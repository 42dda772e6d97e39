"""Model packages: manifests, registry, checksum verification, device selection and networks.

Typical use::

    from lkseg.models import find_model, list_models
    manifest = find_model("lkseg-demo-abdomen")     # or a folder path
    net = load_stage_network(manifest, "fine", device)
"""

from __future__ import annotations

from lkseg.models.checksum import check_weights, sha256_file, verify_file
from lkseg.models.device import configure_threads, resolve_device
from lkseg.models.loading import load_stage_network, load_state_dict, save_state_dict
from lkseg.models.manifest import (
    MANIFEST_NAME,
    InferenceSpec,
    IntensitySpec,
    LabelSpec,
    ModelManifest,
    StageSpec,
    label_spec_for,
    load_manifest,
    parse_manifest,
)
from lkseg.models.networks import build_network, count_parameters, unet_spec
from lkseg.models.package import make_manifest, make_stage, write_package
from lkseg.models.registry import (
    DEFAULT_MODEL_ID,
    MAPPING_NAME,
    builtin_models_dir,
    find_model,
    list_models,
    load_package,
    model_dirs,
    user_models_dirs,
)

__all__ = [
    "DEFAULT_MODEL_ID",
    "MANIFEST_NAME",
    "MAPPING_NAME",
    "InferenceSpec",
    "IntensitySpec",
    "LabelSpec",
    "ModelManifest",
    "StageSpec",
    "build_network",
    "builtin_models_dir",
    "check_weights",
    "configure_threads",
    "count_parameters",
    "find_model",
    "label_spec_for",
    "list_models",
    "load_manifest",
    "load_package",
    "load_stage_network",
    "load_state_dict",
    "make_manifest",
    "make_stage",
    "model_dirs",
    "parse_manifest",
    "resolve_device",
    "save_state_dict",
    "sha256_file",
    "unet_spec",
    "user_models_dirs",
    "verify_file",
    "write_package",
]
