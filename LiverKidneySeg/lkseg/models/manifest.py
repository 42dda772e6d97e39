"""The model package manifest (``manifest.json``): what a model segments and how to run it.

A model package is a folder::

    my-model/
      manifest.json     id, version, task, labels, preprocessing, networks, sha256 of each weight file
      fine.pt           weights as a plain state dict (``torch.save(model.state_dict())``)
      coarse.pt         (optional) the low-resolution locator of a two-stage cascade
      coarse2.pt        (optional) a second locator, asked only for organs the first one missed
      MODEL_CARD.md     (optional) the human-readable card

The manifest is strict: unknown fields are refused (a typo must not silently change behaviour),
extension fields may be added under names starting with ``x_``. Every weight file must be listed
with its SHA-256; :mod:`lkseg.models.loading` refuses a file whose digest differs.

Geometry conventions: ``spacing`` is (si, sj, sk) in mm along the i, j, k axes of the canonical
orientation (``orientation``, by default ``"LPS"``: i toward the patient's left, j posterior,
k superior); ``patch_size`` is in voxels in the same (i, j, k) order.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lkseg.errors import ModelError
from lkseg.io.jsonfile import read_json
from lkseg.labels import STRUCTURES, LabelTable, get_structure

__all__ = [
    "MANIFEST_NAME",
    "InferenceSpec",
    "IntensitySpec",
    "LabelSpec",
    "ModelManifest",
    "StageSpec",
    "label_spec_for",
    "load_manifest",
    "parse_manifest",
]

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
FORMAT = "lkseg-model"
FORMAT_VERSION = 1

_TOP_FIELDS = {
    "format",
    "format_version",
    "id",
    "version",
    "name",
    "task",
    "description",
    "modality",
    "orientation",
    "labels",
    "intensity",
    "stages",
    "inference",
    "weights",
    "license",
    "training",
    "accuracy",
    "intended_use",
    "authors",
    "created",
    "framework",
    "array_order",
}
_REQUIRED_TOP = ("id", "version", "task", "labels", "intensity", "stages", "weights", "license")
_STAGE_FIELDS = {"role", "spacing", "patch_size", "network", "weights", "labels", "weights_dtype"}
_INTENSITY_FIELDS = {"clip", "mean", "std", "scheme"}
_LABEL_FIELDS = {"name", "display", "color", "snomed"}
_INFERENCE_FIELDS = {"overlap", "sw_batch_size", "mirror_axes", "cascade", "margin_mm", "min_organ_ml", "class_weights"}


def _extension(key: str) -> bool:
    return key.startswith("x_")


def _check_fields(data: Mapping, allowed: set[str], where: str, source: str) -> None:
    unknown = sorted(k for k in data if k not in allowed and not _extension(k))
    if unknown:
        raise ModelError(
            f"{source}: unknown field(s) {', '.join(map(repr, unknown))} in {where} "
            f"(known: {', '.join(sorted(allowed))}; extension fields must start with 'x_')"
        )


def _vec3(value: Any, what: str, source: str, positive: bool = True) -> tuple[float, float, float]:
    try:
        vals = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ModelError(f"{source}: {what} must be 3 numbers, got {value!r}") from None
    if len(vals) != 3 or (positive and min(vals) <= 0):
        raise ModelError(f"{source}: {what} must be 3 positive numbers (i, j, k), got {value!r}")
    return vals  # type: ignore[return-value]


@dataclass(frozen=True)
class LabelSpec:
    """One output label of a model.

    Attributes:
        value: the network output channel (1..C-1; 0 is background).
        name: structure name of :mod:`lkseg.labels` (``"liver"``, ``"kidney_right"``...).
        display: name shown to users.
        color: RGB in [0, 1].
        snomed: terminology codes ``{"category": {...}, "type": {...}, ...}`` in DICOM triplet form.
    """

    value: int
    name: str
    display: str
    color: tuple[float, float, float]
    snomed: dict

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "display": self.display,
            "color": [round(c, 4) for c in self.color],
            "snomed": self.snomed,
        }


def label_spec_for(value: int, name: str) -> LabelSpec:
    """A :class:`LabelSpec` filled from :data:`lkseg.labels.STRUCTURES` (colour, SNOMED codes)."""
    s = get_structure(name)
    snomed = {"category": s.category.to_dict(), "type": s.type.to_dict()}
    if s.modifier is not None:
        snomed["modifier"] = s.modifier.to_dict()
    if s.region is not None:
        snomed["region"] = s.region.to_dict()
    return LabelSpec(int(value), name, s.display, tuple(s.color), snomed)  # type: ignore[arg-type]


@dataclass(frozen=True)
class IntensitySpec:
    """CT intensity normalisation: ``(clip(HU, lo, hi) - mean) / std``.

    Attributes:
        clip: (low, high) HU window applied first.
        mean, std: z-score parameters in HU (after clipping), typically the training foreground's.
    """

    clip: tuple[float, float] = (-200.0, 300.0)
    mean: float = 50.0
    std: float = 100.0

    def apply(self, image):
        """Normalise a float32 array in place: ``(clip(image, lo, hi) - mean) / std``; returns it."""
        import numpy as np

        np.clip(image, self.clip[0], self.clip[1], out=image)
        image -= np.float32(self.mean)
        image *= np.float32(1.0 / self.std)
        return image

    def to_json(self) -> dict:
        return {"scheme": "ct_clip_zscore", "clip": list(self.clip), "mean": self.mean, "std": self.std}


@dataclass(frozen=True)
class StageSpec:
    """One network of a package.

    Attributes:
        name: ``"fine"`` (the segmenter; required), ``"coarse"`` (the low-resolution locator) or
            ``"coarse2"`` (an optional second locator on the coarse stage's grid and labels,
            consulted only for the organs the first one and the whole-scan pass missed; see
            :meth:`lkseg.auto.AutoSegmenter.predict`).
        role: ``"segment"`` or ``"locate"``.
        spacing: (si, sj, sk) mm at which the network runs.
        patch_size: (pi, pj, pk) voxels of the training patch / sliding window.
        network: ``{"class": "UNet", "params": {...}}`` (see :mod:`lkseg.models.networks`).
        weights: file name of the state dict inside the package.
        labels: output channel -> structure name of this stage (defaults to the package labels).
        weights_dtype: dtype the weights are stored in (``"float32"`` or ``"float16"``); they are
            always computed in float32.
    """

    name: str
    role: str
    spacing: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    network: dict
    weights: str
    labels: LabelTable
    weights_dtype: str = "float32"

    def to_json(self) -> dict:
        return {
            "role": self.role,
            "spacing": list(self.spacing),
            "patch_size": list(self.patch_size),
            "network": self.network,
            "weights": self.weights,
            "weights_dtype": self.weights_dtype,
            "labels": self.labels.to_json(),
        }

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1


@dataclass(frozen=True)
class InferenceSpec:
    """Default inference settings of a package (each can be overridden by the predictor).

    ``class_weights`` maps structure names to a factor applied to that channel's fine-stage
    probability before the arg-max (a prior shift, tuned on validation data; 1 when absent).
    """

    overlap: float = 0.25
    sw_batch_size: int = 2
    mirror_axes: tuple[int, ...] = ()
    cascade: bool = True
    margin_mm: float = 20.0
    min_organ_ml: float = 5.0
    class_weights: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        data = {
            "overlap": self.overlap,
            "sw_batch_size": self.sw_batch_size,
            "mirror_axes": list(self.mirror_axes),
            "cascade": self.cascade,
            "margin_mm": self.margin_mm,
            "min_organ_ml": self.min_organ_ml,
        }
        if self.class_weights:
            data["class_weights"] = dict(self.class_weights)
        return data


@dataclass(frozen=True)
class ModelManifest:
    """A parsed, validated ``manifest.json``. ``folder`` is where the package lies."""

    id: str
    version: str
    task: str
    labels: dict[int, LabelSpec]
    intensity: IntensitySpec
    stages: dict[str, StageSpec]
    weights: dict[str, str]
    license: str
    folder: Path | None = None
    name: str = ""
    description: str = ""
    modality: str = "CT"
    orientation: str = "LPS"
    framework: str = "lkseg"
    array_order: str = "zyx"
    inference: InferenceSpec = field(default_factory=InferenceSpec)
    training: dict = field(default_factory=dict)
    accuracy: dict = field(default_factory=dict)
    intended_use: str = ""
    authors: str = ""
    created: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def label_table(self) -> LabelTable:
        """Output channel -> structure name of the package."""
        return LabelTable({v: spec.name for v, spec in self.labels.items()})

    @property
    def fine(self) -> StageSpec:
        return self.stages["fine"]

    @property
    def coarse(self) -> StageSpec | None:
        return self.stages.get("coarse")

    @property
    def coarse2(self) -> StageSpec | None:
        """The optional second locator (needs a ``coarse`` stage)."""
        return self.stages.get("coarse2")

    @property
    def structures(self) -> list[str]:
        return [spec.name for spec in self.labels.values()]

    def to_json(self) -> dict:
        data: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "id": self.id,
            "version": self.version,
            "name": self.name or self.id,
            "task": self.task,
            "description": self.description,
            "modality": self.modality,
            "orientation": self.orientation,
            "framework": self.framework,
            "array_order": self.array_order,
            "labels": {str(v): spec.to_json() for v, spec in sorted(self.labels.items())},
            "intensity": self.intensity.to_json(),
            "stages": {name: stage.to_json() for name, stage in self.stages.items()},
            "inference": self.inference.to_json(),
            "weights": {name: {"sha256": digest} for name, digest in sorted(self.weights.items())},
            "license": self.license,
            "intended_use": self.intended_use,
            "authors": self.authors,
            "created": self.created,
            "training": self.training,
            "accuracy": self.accuracy,
        }
        data.update(self.extra)
        return data

    def save(self, folder: str | Path) -> Path:
        """Write ``manifest.json`` into ``folder`` atomically; returns its path."""
        from lkseg.io.atomic import atomic_write_text

        path = Path(folder) / MANIFEST_NAME
        atomic_write_text(path, json.dumps(self.to_json(), indent=2) + "\n")
        return path


def _parse_labels(raw: Any, source: str) -> dict[int, LabelSpec]:
    if not isinstance(raw, Mapping) or not raw:
        raise ModelError(
            f"{source}: 'labels' must be a non-empty object {{value: {{name, color, snomed}}}}; the model names no labels"
        )
    labels: dict[int, LabelSpec] = {}
    for key, entry in raw.items():
        try:
            value = int(key)
        except ValueError:
            raise ModelError(f"{source}: label value {key!r} is not an integer") from None
        if value <= 0:
            raise ModelError(f"{source}: label value {value} must be >= 1 (0 is background)")
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, Mapping) or not entry.get("name"):
            raise ModelError(f"{source}: label {value} has no 'name'")
        _check_fields(entry, _LABEL_FIELDS, f"label {value}", source)
        name = str(entry["name"])
        if name not in STRUCTURES:
            log.warning(
                "%s: label %d %r is not a known structure; it gets a generic colour and code", source, value, name
            )
        spec = label_spec_for(value, name)
        color = entry.get("color", spec.color)
        if len(color) != 3 or not all(0 <= float(c) <= 1 for c in color):
            raise ModelError(f"{source}: label {value} colour must be 3 numbers in [0, 1], got {color!r}")
        labels[value] = LabelSpec(
            value,
            name,
            str(entry.get("display", spec.display)),
            tuple(float(c) for c in color),
            dict(entry.get("snomed", spec.snomed)),
        )
    names = [s.name for s in labels.values()]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ModelError(f"{source}: structure(s) {dupes} named by more than one label")
    return labels


def _parse_stage(name: str, raw: Any, labels: dict[int, LabelSpec], source: str) -> StageSpec:
    if not isinstance(raw, Mapping):
        raise ModelError(f"{source}: stage {name!r} must be an object")
    _check_fields(raw, _STAGE_FIELDS, f"stage {name!r}", source)
    for key in ("spacing", "patch_size", "network", "weights"):
        if key not in raw:
            raise ModelError(f"{source}: stage {name!r} lacks {key!r}")
    network = raw["network"]
    if not isinstance(network, Mapping) or "class" not in network:
        raise ModelError(f"{source}: stage {name!r} 'network' must be {{'class': ..., 'params': {{...}}}}")
    patch = tuple(int(v) for v in _vec3(raw["patch_size"], f"stage {name!r} patch_size", source))
    if raw.get("labels") is not None:
        try:
            stage_labels = LabelTable({int(k): str(v) for k, v in raw["labels"].items()})
        except (ValueError, AttributeError) as exc:
            raise ModelError(f"{source}: stage {name!r} labels are malformed ({exc})") from None
    else:
        stage_labels = LabelTable({v: s.name for v, s in labels.items()})
    dtype = str(raw.get("weights_dtype", "float32"))
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ModelError(f"{source}: stage {name!r} weights_dtype {dtype!r} is not float32/float16/bfloat16")
    return StageSpec(
        name=name,
        role=str(raw.get("role", "segment" if name == "fine" else "locate")),
        spacing=_vec3(raw["spacing"], f"stage {name!r} spacing", source),
        patch_size=patch,  # type: ignore[arg-type]
        network={"class": str(network["class"]), "params": dict(network.get("params", {}))},
        weights=str(raw["weights"]),
        labels=stage_labels,
        weights_dtype=dtype,
    )


def _parse_intensity(raw: Any, source: str) -> IntensitySpec:
    if not isinstance(raw, Mapping):
        raise ModelError(f"{source}: 'intensity' must be an object {{clip, mean, std}}")
    _check_fields(raw, _INTENSITY_FIELDS, "intensity", source)
    scheme = raw.get("scheme", "ct_clip_zscore")
    if scheme != "ct_clip_zscore":
        raise ModelError(f"{source}: intensity scheme {scheme!r} is not supported (only 'ct_clip_zscore')")
    clip = raw.get("clip", (-200.0, 300.0))
    try:
        lo, hi = (float(c) for c in clip)
        mean, std = float(raw.get("mean", 0.0)), float(raw.get("std", 1.0))
    except (TypeError, ValueError):
        raise ModelError(f"{source}: intensity clip/mean/std must be numbers, got {dict(raw)!r}") from None
    if not lo < hi or std <= 0:
        raise ModelError(f"{source}: intensity needs clip low < high and std > 0, got {dict(raw)!r}")
    return IntensitySpec((lo, hi), mean, std)


def _parse_class_weights(raw: Any, names: set[str], source: str) -> dict[str, float]:
    if not isinstance(raw, Mapping):
        raise ModelError(f"{source}: inference.class_weights must map structure names to factors, got {raw!r}")
    out = {}
    for name, value in raw.items():
        if name not in names:
            raise ModelError(f"{source}: inference.class_weights names {name!r}, not a label of this model")
        try:
            factor = float(value)
        except (TypeError, ValueError):
            factor = float("nan")
        if not math.isfinite(factor) or factor <= 0:
            raise ModelError(f"{source}: inference.class_weights[{name!r}] must be a positive number, got {value!r}")
        out[str(name)] = factor
    return out


def _parse_inference(raw: Any, source: str, names: set[str] | None = None) -> InferenceSpec:
    if raw is None:
        return InferenceSpec()
    if not isinstance(raw, Mapping):
        raise ModelError(f"{source}: 'inference' must be an object")
    _check_fields(raw, _INFERENCE_FIELDS, "inference", source)
    d = InferenceSpec()
    axes = tuple(int(a) for a in raw.get("mirror_axes", d.mirror_axes))
    if any(a not in (0, 1, 2) for a in axes):
        raise ModelError(f"{source}: mirror_axes must be index axes 0 (i), 1 (j), 2 (k), got {axes}")
    overlap = float(raw.get("overlap", d.overlap))
    if not 0 <= overlap < 1:
        raise ModelError(f"{source}: overlap must be in [0, 1), got {overlap}")
    return InferenceSpec(
        overlap=overlap,
        sw_batch_size=max(1, int(raw.get("sw_batch_size", d.sw_batch_size))),
        mirror_axes=axes,
        cascade=bool(raw.get("cascade", d.cascade)),
        margin_mm=float(raw.get("margin_mm", d.margin_mm)),
        min_organ_ml=float(raw.get("min_organ_ml", d.min_organ_ml)),
        class_weights=_parse_class_weights(raw.get("class_weights", {}), names or set(), source),
    )


def _parse_weights(raw: Any, source: str) -> dict[str, str]:
    if not isinstance(raw, Mapping) or not raw:
        raise ModelError(f"{source}: 'weights' must list every weight file with its sha256")
    out = {}
    for name, entry in raw.items():
        digest = entry.get("sha256") if isinstance(entry, Mapping) else entry
        if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
            raise ModelError(f"{source}: weight file {name!r} needs a 64-hex-digit sha256, got {digest!r}")
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ModelError(f"{source}: weight file {name!r} must be a relative path inside the package")
        out[str(name)] = digest.lower()
    return out


def _parse_array_order(value: Any, source: str) -> str:
    if value not in ("zyx", "ijk"):
        raise ModelError(
            f"{source}: array_order must be 'zyx' (SimpleITK/numpy order) or 'ijk' (MONAI/nibabel order), got {value!r}"
        )
    return str(value)


def parse_manifest(data: Mapping, folder: str | Path | None = None, source: str = MANIFEST_NAME) -> ModelManifest:
    """Validate a manifest dictionary and build a :class:`ModelManifest`.

    Raises:
        ModelError: unknown or missing fields, no labels, a stage whose weights are not listed
            with a sha256, a network whose output channels do not cover the labels.
    """
    if not isinstance(data, Mapping):
        raise ModelError(f"{source}: a manifest must be a JSON object")
    _check_fields(data, _TOP_FIELDS, "the manifest", source)
    if data.get("format", FORMAT) != FORMAT:
        raise ModelError(f"{source}: format {data.get('format')!r} is not {FORMAT!r}")
    if int(data.get("format_version", FORMAT_VERSION)) > FORMAT_VERSION:
        raise ModelError(
            f"{source}: format_version {data['format_version']} is newer than this LiverKidneySeg supports ({FORMAT_VERSION})"
        )
    missing = [k for k in _REQUIRED_TOP if k not in data]
    if missing:
        raise ModelError(f"{source}: missing required field(s) {', '.join(map(repr, missing))}")
    labels = _parse_labels(data["labels"], source)
    weights = _parse_weights(data["weights"], source)
    raw_stages = data["stages"]
    if not isinstance(raw_stages, Mapping) or "fine" not in raw_stages:
        raise ModelError(f"{source}: 'stages' must hold a 'fine' stage (and optionally 'coarse', 'coarse2')")
    unknown = sorted(set(raw_stages) - {"fine", "coarse", "coarse2"})
    if unknown:
        raise ModelError(f"{source}: unknown stage(s) {unknown}; only 'fine', 'coarse' and 'coarse2' exist")
    if "coarse2" in raw_stages and "coarse" not in raw_stages:
        raise ModelError(f"{source}: a 'coarse2' stage (second locator) needs a 'coarse' stage")
    stages = {name: _parse_stage(name, raw, labels, source) for name, raw in raw_stages.items()}
    for stage in stages.values():
        if stage.weights not in weights:
            raise ModelError(f"{source}: stage {stage.name!r} weight file {stage.weights!r} has no sha256 in 'weights'")
        out_ch = stage.network["params"].get("out_channels")
        if out_ch is not None and int(out_ch) < stage.num_classes:
            raise ModelError(
                f"{source}: stage {stage.name!r} network has {out_ch} output channels but labels go up to {stage.num_classes - 1}"
            )
    fine_names = set(stages["fine"].labels.values())
    missing_labels = [s.name for s in labels.values() if s.name not in fine_names]
    if missing_labels:
        raise ModelError(f"{source}: label(s) {missing_labels} are not produced by the fine stage")
    return ModelManifest(
        id=str(data["id"]),
        version=str(data["version"]),
        task=str(data["task"]),
        labels=labels,
        intensity=_parse_intensity(data["intensity"], source),
        stages=stages,
        weights=weights,
        license=str(data["license"]),
        folder=Path(folder) if folder is not None else None,
        name=str(data.get("name", "")),
        description=str(data.get("description", "")),
        modality=str(data.get("modality", "CT")),
        orientation=str(data.get("orientation", "LPS")),
        framework=str(data.get("framework", "lkseg")),
        array_order=_parse_array_order(data.get("array_order", "zyx"), source),
        inference=_parse_inference(data.get("inference"), source, {spec.name for spec in labels.values()}),
        training=dict(data.get("training", {})),
        accuracy=dict(data.get("accuracy", {})),
        intended_use=str(data.get("intended_use", "")),
        authors=str(data.get("authors", "")),
        created=str(data.get("created", "")),
        extra={k: v for k, v in data.items() if _extension(k)},
    )


def load_manifest(folder: str | Path) -> ModelManifest:
    """Read and validate ``folder/manifest.json``.

    Raises:
        ModelError: the folder or manifest is missing, not JSON, or invalid.
    """
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ModelError(f"{folder}: not a model package (no {MANIFEST_NAME})")
    data = read_json(path, "model manifest", ModelError)
    return parse_manifest(data, folder, source=str(path))
