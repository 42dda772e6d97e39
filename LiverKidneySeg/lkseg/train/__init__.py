"""Training of model packages on MSD / nnU-Net v2 / LiTS / KiTS23 style datasets with MONAI.

Example::

    from lkseg.train import TrainConfig, train_model, PRESETS
    manifest = train_model("Task03_Liver", "models/my-liver", TrainConfig(stages=PRESETS["cascade"](), labels="lits"))
"""

from __future__ import annotations

from lkseg.train.api import PRESETS, TrainConfig, remove_training_state, train_model
from lkseg.train.dataset import LABEL_PRESETS, Case, DatasetSpec, LabelMapping, read_dataset, split_kidney_sides
from lkseg.train.trainer import StageConfig, StageResult, train_stage

__all__ = [
    "LABEL_PRESETS",
    "PRESETS",
    "Case",
    "DatasetSpec",
    "LabelMapping",
    "StageConfig",
    "StageResult",
    "TrainConfig",
    "read_dataset",
    "remove_training_state",
    "split_kidney_sides",
    "train_model",
    "train_stage",
]
