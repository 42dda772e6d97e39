"""Training datasets: MSD / nnU-Net v2 folders, LiTS and KiTS23 layouts, and label mapping.

Layouts recognised by :func:`read_dataset` (``layout="auto"`` detects them):

* ``msd``: ``dataset.json`` with ``labels`` ``{"0": "background", "1": "liver", ...}`` and a
  ``training`` list of ``{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}``;
* ``nnunet``: ``dataset.json`` with ``labels`` ``{"background": 0, "liver": 1}``, ``file_ending``
  and ``imagesTr/<case>_0000<ending>`` + ``labelsTr/<case><ending>``;
* ``lits``: ``volume-N.nii`` + ``segmentation-N.nii`` (1 liver, 2 tumour) in one folder;
* ``kits23``: ``case_XXXXX/imaging.nii.gz`` + ``segmentation.nii.gz`` (1 kidney, 2 tumour, 3 cyst).

A :class:`LabelMapping` turns the dataset's label values into our structure names. The special
target ``"kidney"`` (no side, as in KiTS) is split into ``kidney_right`` / ``kidney_left`` by the
position of each connected kidney piece relative to the body's midline (RAS x).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from lkseg.errors import InputError
from lkseg.io.jsonfile import read_json
from lkseg.labels import PRODUCT_LABELS, STRUCTURES
from lkseg.volume import Grid

__all__ = ["LABEL_PRESETS", "Case", "DatasetSpec", "LabelMapping", "read_dataset", "split_kidney_sides"]

log = logging.getLogger(__name__)

#: Preset mappings: dataset label value -> our structure name.
LABEL_PRESETS: dict[str, dict[int, str]] = {
    "lits": {1: "liver", 2: "liver_tumor"},
    "kits23": {1: "kidney", 2: "kidney_tumor", 3: "kidney_cyst"},
    "product": {v: n for v, n in PRODUCT_LABELS.items()},
}

_SYNONYMS = {
    "liver": "liver",
    "liver_tumor": "liver_tumor",
    "liver_tumour": "liver_tumor",
    "liver_cancer": "liver_tumor",
    "kidney": "kidney",
    "kidneys": "kidney",
    "kidney_right": "kidney_right",
    "right_kidney": "kidney_right",
    "kidney_left": "kidney_left",
    "left_kidney": "kidney_left",
    "kidney_tumor": "kidney_tumor",
    "kidney_tumour": "kidney_tumor",
    "kidney_cyst": "kidney_cyst",
    "cyst": "kidney_cyst",
    "spleen": "spleen",
}
_LESION_WORDS = {"tumor", "tumour", "cancer", "lesion", "lesions", "mass", "masses"}


@dataclass(frozen=True)
class Case:
    """One training case: image and label files and an id."""

    case_id: str
    image: Path
    label: Path


@dataclass(frozen=True)
class DatasetSpec:
    """A training dataset: its cases and its labels (value -> dataset label name)."""

    root: Path
    layout: str
    cases: list[Case]
    labels: dict[int, str]
    name: str = ""


@dataclass(frozen=True)
class LabelMapping:
    """Dataset label value -> our structure name (values not listed become background).

    The target ``"kidney"`` is split into sides (see :func:`split_kidney_sides`).
    """

    mapping: dict[int, str]

    @classmethod
    def parse(
        cls, spec: str | Mapping | None, dataset_labels: Mapping[int, str] | None = None, layout: str = ""
    ) -> LabelMapping:
        """From a preset name (``lits``, ``kits23``, ``product``), ``"1=liver,2=liver_tumor"``, a JSON
        file / mapping, or ``None`` (the layout's preset, else matched by the dataset's label names)."""
        if spec is None or spec == "auto":
            if layout in LABEL_PRESETS:
                return cls(dict(LABEL_PRESETS[layout]))
            return cls._by_names(dataset_labels or {})
        if isinstance(spec, Mapping):
            return cls._checked({int(k): str(v) for k, v in spec.items()})
        text = str(spec).strip()
        if text in LABEL_PRESETS:
            return cls(dict(LABEL_PRESETS[text]))
        if text.endswith(".json") or Path(text).is_file():
            data = read_json(text, "label mapping JSON file")
            return cls._checked({int(k): str(v) for k, v in data.items()})
        pairs = {}
        for item in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = item.partition("=")
            if not sep or not key.strip().isdigit():
                raise InputError(f"label mapping item {item!r} must look like VALUE=structure (e.g. 1=liver)")
            pairs[int(key)] = value.strip()
        return cls._checked(pairs)

    @classmethod
    def _checked(cls, mapping: dict[int, str]) -> LabelMapping:
        known = set(STRUCTURES) | {"kidney"}
        bad = sorted({n for n in mapping.values() if n not in known})
        if bad:
            raise InputError(f"label mapping names unknown structure(s) {bad}; known: {sorted(known)}")
        if not mapping:
            raise InputError("the label mapping is empty")
        return cls(mapping)

    @classmethod
    def _by_names(cls, labels: Mapping[int, str]) -> LabelMapping:
        organs = {n.lower() for n in labels.values()}
        out = {}
        for value, raw in labels.items():
            name = re.sub(r"[\s\-]+", "_", raw.strip().lower())
            if value == 0 or name == "background":
                continue
            if name in _SYNONYMS:
                out[value] = _SYNONYMS[name]
            elif name in _LESION_WORDS and len(organs & {"liver", "kidney", "kidneys"}) == 1:
                organ = "liver" if "liver" in organs else "kidney"
                out[value] = f"{organ}_tumor"
            else:
                log.warning("dataset label %d %r has no matching structure; it is treated as background", value, raw)
        if not out:
            raise InputError(
                f"no dataset label matches a known structure ({dict(labels)}); give --labels (e.g. 1=liver,2=liver_tumor)"
            )
        return cls(out)

    def targets(self) -> list[str]:
        """Our structure names this mapping produces, in :data:`PRODUCT_LABELS` order."""
        names = set()
        for n in self.mapping.values():
            names.update(("kidney_right", "kidney_left") if n == "kidney" else (n,))
        order = list(PRODUCT_LABELS.values())
        return sorted(names, key=lambda n: order.index(n) if n in order else len(order))

    def apply(self, labels: np.ndarray, grid: Grid, image: np.ndarray | None, table: Mapping[str, int]) -> np.ndarray:
        """Map a dataset label array (ZYX) to ``table`` values (structure name -> model value)."""
        lut = np.zeros(max(int(labels.max(initial=0)), max(self.mapping, default=0)) + 1, dtype=np.uint8)
        kidney_value = 255
        for value, name in self.mapping.items():
            if name == "kidney":
                lut[value] = kidney_value
            elif name in table:
                lut[value] = table[name]
        out = lut[labels.astype(np.int64, copy=False)]
        if (out == kidney_value).any():
            split_kidney_sides(out, grid, image, kidney_value, table["kidney_right"], table["kidney_left"])
        return out


def split_kidney_sides(
    labels: np.ndarray, grid: Grid, image: np.ndarray | None, kidney: int, right: int, left: int
) -> None:
    """In place: give each connected piece of value ``kidney`` the value ``right`` or ``left``.

    A piece whose centroid lies at larger RAS x than the body's midline (the centroid of voxels
    above -300 HU in ``image``, else the grid centre) is the right kidney.
    """
    if image is not None:
        body = image > -300
        step = 4
        pts = np.argwhere(body[::step, ::step, ::step]) * step
        centre_zyx = pts.mean(axis=0) if len(pts) else (np.array(labels.shape) - 1) / 2
    else:
        centre_zyx = (np.array(labels.shape) - 1) / 2
    midline_x = float(grid.index_to_ras(centre_zyx[::-1])[0])
    comp, n = ndimage.label(labels == kidney)
    for idx, centroid in enumerate(ndimage.center_of_mass(np.ones_like(comp), comp, range(1, n + 1)), start=1):
        x = float(grid.index_to_ras(np.asarray(centroid)[::-1])[0])
        labels[comp == idx] = right if x > midline_x else left


def _detect(root: Path) -> str:
    if (root / "dataset.json").is_file():
        data = read_json(root / "dataset.json", "dataset.json file")
        labels = data.get("labels", {})
        if "training" in data or any(str(k).isdigit() for k in labels):
            return "msd"
        return "nnunet"
    if any(root.glob("case_*/imaging.nii*")):
        return "kits23"
    if any(root.glob("volume-*.nii*")):
        return "lits"
    raise InputError(
        "not a training dataset: no dataset.json, no KiTS23 case_*/imaging.nii.gz, no LiTS volume-N.nii", root
    )


def read_dataset(root: str | Path, layout: str = "auto") -> DatasetSpec:
    """List the cases of a dataset folder (see the module docstring for layouts).

    Raises:
        InputError: unknown layout, missing files, no cases.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError("no such dataset folder", root)
    layout = _detect(root) if layout == "auto" else layout
    cases: list[Case] = []
    labels: dict[int, str] = {}
    name = root.name
    if layout in ("msd", "nnunet"):
        data = read_json(root / "dataset.json", "dataset.json file")
        name = str(data.get("name", name))
        raw = data.get("labels", {})
        if layout == "msd":
            labels = {int(k): str(v) for k, v in raw.items()}
            for entry in data.get("training", []):
                image, label = root / entry["image"], root / entry["label"]
                cases.append(Case(_case_id(image), image, label))
        else:
            for key, value in raw.items():
                if isinstance(value, (list, tuple)):
                    raise InputError(
                        f"region-based label {key!r} = {value} is not supported; use plain integer labels",
                        root / "dataset.json",
                    )
                labels[int(value)] = str(key)
            ending = str(data.get("file_ending", ".nii.gz"))
            for image in sorted((root / "imagesTr").glob(f"*_0000{ending}")):
                case_id = image.name[: -len(f"_0000{ending}")]
                cases.append(Case(case_id, image, root / "labelsTr" / f"{case_id}{ending}"))
    elif layout == "kits23":
        labels = {1: "kidney", 2: "tumor", 3: "cyst"}
        for folder in sorted(root.glob("case_*")):
            image = next(iter(sorted(folder.glob("imaging.nii*"))), None)
            label = next(iter(sorted(folder.glob("segmentation.nii*"))), None)
            if image and label:
                cases.append(Case(folder.name, image, label))
    elif layout == "lits":
        labels = {1: "liver", 2: "tumor"}
        for image in sorted(root.glob("volume-*.nii*"), key=lambda p: int(re.findall(r"\d+", p.name)[0])):
            number = re.findall(r"\d+", image.name)[0]
            label = next(iter(sorted(root.glob(f"segmentation-{number}.nii*"))), None)
            if label:
                cases.append(Case(f"lits_{number}", image, label))
    else:
        raise InputError(f"unknown dataset layout {layout!r}; use auto, msd, nnunet, lits or kits23")
    missing = [c for c in cases if not c.image.is_file() or not c.label.is_file()]
    if missing:
        c = missing[0]
        raise InputError(
            f"{len(missing)} case(s) lack their files, e.g. {c.image if not c.image.is_file() else c.label}", root
        )
    if not cases:
        raise InputError(f"no training cases found ({layout} layout)", root)
    return DatasetSpec(root, layout, cases, labels, name)


def _case_id(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
