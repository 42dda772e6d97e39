"""``train_model``: a dataset folder in, a complete model package out."""

from __future__ import annotations

import datetime as _dt
import logging
import platform
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lkseg.errors import InputError
from lkseg.labels import LabelTable
from lkseg.models.manifest import InferenceSpec, ModelManifest
from lkseg.models.networks import unet_spec
from lkseg.models.package import make_manifest, make_stage, write_package
from lkseg.progress import CancelToken, ProgressCallback, SubProgress, report
from lkseg.train.dataset import LabelMapping, read_dataset
from lkseg.train.preprocess import intensity_from_cases, normalise, prepare_cases
from lkseg.train.trainer import StageConfig, train_stage

__all__ = ["PRESETS", "TrainConfig", "train_model"]

log = logging.getLogger(__name__)


def _cascade_preset() -> list[StageConfig]:
    return [
        StageConfig(
            "coarse",
            (6.0, 6.0, 6.0),
            (64, 64, 48),
            (16, 32, 64, 128),
            1,
            epochs=20,
            iters_per_epoch=50,
            batch_size=4,
            lr=3e-3,
        ),
        StageConfig(
            "fine",
            (1.5, 1.5, 1.5),
            (112, 112, 112),
            (16, 32, 64, 128, 256),
            2,
            epochs=60,
            iters_per_epoch=100,
            batch_size=4,
            lr=2e-3,
        ),
    ]


#: Named stage presets: ``cascade`` (coarse 6 mm locator + fine 1.5 mm segmenter), ``single``
#: (fine only), ``tiny`` (small and quick, for tests and smoke runs).
PRESETS = {
    "cascade": _cascade_preset,
    "single": lambda: [s for s in _cascade_preset() if s.name == "fine"],
    "tiny": lambda: [
        StageConfig(
            "coarse", (8.0, 8.0, 8.0), (32, 32, 32), (8, 16, 32), 1, epochs=2, iters_per_epoch=4, batch_size=2, lr=3e-3
        ),
        StageConfig(
            "fine", (4.0, 4.0, 4.0), (32, 32, 32), (8, 16, 32), 1, epochs=2, iters_per_epoch=4, batch_size=2, lr=3e-3
        ),
    ],
}


@dataclass
class TrainConfig:
    """Everything :func:`train_model` needs besides the folders.

    Attributes:
        stages: stage settings (see :data:`PRESETS`).
        model_id, version, task, description, license: package metadata.
        labels: label mapping spec (preset ``lits`` / ``kits23`` / ``product``, ``"1=liver,..."``,
            a JSON file) or None for the layout's default / name matching.
        layout: dataset layout (``auto``, ``msd``, ``nnunet``, ``lits``, ``kits23``).
        val_fraction: share of cases held out for validation (at least one case).
        seed: seed of the split, the sampling and the initialisation.
        device: ``auto``, ``cpu`` or ``cuda``.
        workers: data-loading / preprocessing processes.
        amp: bfloat16 autocast on CUDA.
        clip: HU window of the intensity normalisation.
        resume: continue from the checkpoints in ``OUT/.train``.
        max_cases: use at most this many cases (quick experiments).
        init_from: a model package whose stage weights start training (fine-tuning); its stages
            must have the same networks and labels.
        extra: more manifest fields (``training_data``, ``intended_use``...).
    """

    stages: list[StageConfig] = field(default_factory=_cascade_preset)
    model_id: str = "lkseg-custom"
    version: str = "0.1.0"
    task: str = "Automatic segmentation of abdominal CT"
    description: str = ""
    license: str = "Apache-2.0"
    labels: str | dict | None = None
    layout: str = "auto"
    val_fraction: float = 0.15
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    amp: bool = True
    clip: tuple[float, float] = (-200.0, 350.0)
    resume: bool = False
    max_cases: int | None = None
    init_from: str | None = None
    progress_bar: bool | None = None
    extra: dict = field(default_factory=dict)


def train_model(
    dataset_dir: str | Path,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> ModelManifest:
    """Train every stage of ``config`` on ``dataset_dir`` and write a model package to ``out_dir``.

    Returns the written manifest. Checkpoints go to ``out_dir/.train`` (kept for ``resume``).

    Raises:
        InputError: bad dataset, labels or settings.
    """
    from lkseg.models.device import configure_threads, resolve_device

    config = config or TrainConfig()
    out_dir = Path(out_dir)
    if (out_dir / "manifest.json").exists() and not config.resume:
        raise InputError("already holds a model package; choose another folder or pass --resume", out_dir)
    names = [s.name for s in config.stages]
    if "fine" not in names or len(set(names)) != len(names) or not set(names) <= {"fine", "coarse"}:
        raise InputError(f"stages must be 'fine' and optionally 'coarse', got {names}")
    for stage in config.stages:
        stride = 2 ** (len(stage.channels) - 1)
        if any(p % stride for p in stage.patch_size):
            raise InputError(
                f"stage {stage.name}: patch size {stage.patch_size} must be a multiple of {stride} for {len(stage.channels)} levels"
            )
    device = resolve_device(config.device)
    configure_threads()
    t0 = time.perf_counter()
    spec = read_dataset(dataset_dir, config.layout)
    mapping = LabelMapping.parse(config.labels, spec.labels, spec.layout)
    targets = mapping.targets()
    table = {name: n for n, name in enumerate(targets, start=1)}
    label_table = {v: k for k, v in table.items()}
    cases = list(spec.cases)
    random.Random(config.seed).shuffle(cases)
    if config.max_cases:
        cases = cases[: config.max_cases]
    if len(cases) < 2:
        raise InputError(f"needs at least 2 cases (one for validation), found {len(cases)}", dataset_dir)
    n_val = max(1, round(len(cases) * config.val_fraction))
    val, train = cases[:n_val], cases[n_val:]
    log.info(
        "dataset %s (%s): %d training, %d validation cases; labels %s",
        spec.name,
        spec.layout,
        len(train),
        len(val),
        label_table,
    )

    stage_specs, networks, validation = [], {}, {}
    intensity = None
    order = sorted(config.stages, key=lambda s: 0 if s.name == "coarse" else 1)
    for n, stage in enumerate(order):
        sub = SubProgress(progress, n / len(order), (n + 1) / len(order), f"{stage.name}: ")
        report(sub, 0.0, "preprocessing")
        train_prep = prepare_cases(train, mapping, table, stage.spacing, config.workers)
        val_prep = prepare_cases(val, mapping, table, stage.spacing, config.workers)
        if intensity is None:
            intensity = intensity_from_cases(train_prep, config.clip)
        for case in train_prep + val_prep:
            normalise(case.image, intensity)
        options = {
            "seed": config.seed,
            "workers": config.workers,
            "amp": config.amp,
            "checkpoint": out_dir / ".train" / f"{stage.name}.ckpt",
            "resume": config.resume,
        }
        if config.progress_bar is not None:
            options["progress_bar"] = config.progress_bar
        if config.init_from:
            options["init_state"] = _initial_state(config.init_from, stage, label_table)
        result = train_stage(
            stage, train_prep, val_prep, label_table, device, options, SubProgress(sub, 0.05, 1.0), cancel
        )
        del train_prep, val_prep
        networks[stage.name] = result.net.cpu()
        network = unet_spec(len(targets) + 1, stage.channels, stage.num_res_units)
        stage_specs.append(
            make_stage(stage.name, stage.spacing, stage.patch_size, network, label_table, stage.weights_dtype)
        )
        validation[stage.name] = {
            "dice": result.best_dice,
            "best_epoch": result.best_epoch,
            "seconds": round(result.seconds, 1),
            "history": result.history,
        }

    training = {
        "dataset": spec.name,
        "dataset_layout": spec.layout,
        "label_mapping": {str(k): v for k, v in mapping.mapping.items()},
        "cases_train": [c.case_id for c in train],
        "cases_validation": [c.case_id for c in val],
        "stages": {
            s.name: {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(s).items()} for s in config.stages
        },
        "augmentation": "RandCropByLabelClassesd, RandAffined (rotation, scale), Gaussian noise and smoothing, intensity scale/shift, gamma; no flips",
        "loss": "Dice + cross-entropy (MONAI DiceCELoss, batch Dice, background excluded)",
        "seed": config.seed,
        "device": str(device),
        "torch": _torch_version(),
        "host": platform.node(),
        "seconds": round(time.perf_counter() - t0, 1),
        **config.extra.pop("training", {}),
    }
    accuracy = {"validation": {name: v for name, v in validation.items()}}
    manifest = make_manifest(
        config.model_id,
        config.version,
        config.task,
        LabelTable(label_table),
        stage_specs,
        intensity,
        config.license,
        description=config.description,
        training=training,
        accuracy=accuracy,
        created=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        inference=InferenceSpec(cascade="coarse" in names),
        **config.extra,
    )
    written = write_package(out_dir, manifest, networks)
    report(progress, 1.0, "package written")
    return written


def _initial_state(package: str, stage: StageConfig, label_table: dict[int, str]) -> dict | None:
    """Weights of ``stage`` from another package, refused when the network or labels differ."""
    from lkseg.models.loading import load_state_dict
    from lkseg.models.registry import find_model

    manifest = find_model(package)
    other = manifest.stages.get(stage.name)
    if other is None:
        log.warning("%s has no %s stage; that stage starts from random weights", package, stage.name)
        return None
    wanted = unet_spec(len(label_table) + 1, stage.channels, stage.num_res_units)
    if other.network != wanted or dict(other.labels) != dict(label_table):
        raise InputError(f"cannot start stage {stage.name!r} from {package}: its network or labels differ")
    return load_state_dict(manifest.folder / other.weights, manifest.weights[other.weights])


def _torch_version() -> str:
    import torch

    return torch.__version__


def remove_training_state(out_dir: str | Path) -> None:
    """Delete ``out_dir/.train`` (checkpoints) once a package is final."""
    shutil.rmtree(Path(out_dir) / ".train", ignore_errors=True)
