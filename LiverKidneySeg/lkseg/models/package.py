"""Writing model packages: weights (state dicts with their SHA-256) plus ``manifest.json``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from lkseg.labels import LabelTable
from lkseg.models.loading import save_state_dict
from lkseg.models.manifest import InferenceSpec, IntensitySpec, ModelManifest, StageSpec, label_spec_for

__all__ = ["make_manifest", "make_stage", "write_package"]


def make_stage(
    name: str,
    spacing: Sequence[float],
    patch_size: Sequence[int],
    network: dict,
    labels: Mapping[int, str],
    weights_dtype: str = "float32",
) -> StageSpec:
    """A :class:`StageSpec` whose weights file is ``<name>.pt``."""
    return StageSpec(
        name=name,
        role="segment" if name == "fine" else "locate",
        spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
        patch_size=tuple(int(p) for p in patch_size),  # type: ignore[arg-type]
        network=network,
        weights=f"{name}.pt",
        labels=LabelTable(labels),
        weights_dtype=weights_dtype,
    )


def make_manifest(
    model_id: str,
    version: str,
    task: str,
    labels: Mapping[int, str],
    stages: Sequence[StageSpec],
    intensity: IntensitySpec | None = None,
    license: str = "Apache-2.0",
    **fields,
) -> ModelManifest:
    """A manifest with labels filled from :mod:`lkseg.labels` (colours, SNOMED codes).

    ``fields`` sets any other :class:`ModelManifest` attribute (``description``, ``training``,
    ``accuracy``, ``inference``, ``intended_use``...). Weight digests are filled by
    :func:`write_package`.
    """
    fields.setdefault("inference", InferenceSpec(cascade=any(s.name == "coarse" for s in stages)))
    return ModelManifest(
        id=model_id,
        version=version,
        task=task,
        labels={int(v): label_spec_for(int(v), n) for v, n in sorted(labels.items())},
        intensity=intensity or IntensitySpec(),
        stages={s.name: s for s in stages},
        weights={},
        license=license,
        **fields,
    )


def write_package(folder: str | Path, manifest: ModelManifest, networks: Mapping[str, object]) -> ModelManifest:
    """Save each stage's network (``networks[stage name]``) and the manifest into ``folder``.

    Weights are stored in each stage's ``weights_dtype``; their SHA-256 go into the manifest.
    Returns the manifest as written (with ``folder`` and ``weights`` set).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {}
    for name, stage in manifest.stages.items():
        if name not in networks:
            raise KeyError(f"no network given for stage {name!r}")
        weights[stage.weights] = save_state_dict(networks[name], folder / stage.weights, stage.weights_dtype)
    written = replace(manifest, weights=weights, folder=folder)
    written.save(folder)
    return written
