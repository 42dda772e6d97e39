"""``generate_phantom(config) -> Phantom``: a seeded synthetic abdominal CT with exact labels.

The anatomy (:mod:`lkseg.phantom.anatomy`) is sampled in patient LPS millimetres and painted
onto the configured grid; the image is then blurred (partial volume) and given correlated
noise. The label maps are exact: every voxel's label is the structure its centre lies in, and
all volumes are voxel counts x voxel volume of these maps.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from lkseg.labels import PRODUCT_LABELS, LabelTable
from lkseg.phantom.anatomy import build_anatomy
from lkseg.phantom.config import PhantomConfig
from lkseg.phantom.imaging import NoiseBlur, to_int16
from lkseg.phantom.raster import paint
from lkseg.phantom.tables import DETAILED, DETAILED_LABELS, PRODUCT_FROM_DETAILED, product_lut
from lkseg.progress import CancelToken, ProgressCallback, SubProgress, report
from lkseg.volume import LPS_TO_RAS, Grid, Volume

__all__ = ["Phantom", "generate_phantom"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Phantom:
    """A generated phantom.

    Attributes:
        image: int16 CT in HU (ZYX array, geometry of ``config.grid()``).
        labels: uint8 detailed label map on the same grid (values of ``label_table``).
        label_table: the detailed :class:`~lkseg.labels.LabelTable`.
        config: the :class:`PhantomConfig` that made it.
        volumes_ml: true volume in mL of every detailed structure and every product structure
            (voxel count x voxel volume), absent structures at 0.0.
        lesions: one dict per lesion: ``name``, ``kind``, ``organ``, ``label``, ``center_ras``
            and ``center_lps`` (mm), ``diameter_mm`` (nominal), ``volume_ml`` (voxels in the grid),
            ``growth`` and extra facts.
        hu: the HU value drawn for each tissue (before texture, blur and noise).
        meta: patient facts (``height_cm``, ``weight_kg``, ``bsa_m2``), timings, calibration.
    """

    image: Volume
    labels: Volume
    label_table: LabelTable
    config: PhantomConfig
    volumes_ml: dict[str, float]
    lesions: list[dict]
    hu: dict[str, float]
    meta: dict = field(default_factory=dict)

    @property
    def grid(self) -> Grid:
        return self.image.grid

    @property
    def product_label_table(self) -> LabelTable:
        return PRODUCT_LABELS

    def product_labels(self) -> Volume:
        """The label map in :data:`lkseg.labels.PRODUCT_LABELS` values (liver = parenchyma + intrahepatic
        portal and hepatic veins, tumours excluded; kidney = cortex + medulla + pelvis/sinus)."""
        lut = product_lut()
        return self.labels.with_array(lut[self.labels.array], meta={"label_table": PRODUCT_LABELS.to_json()})

    def mask(self, name: str) -> np.ndarray:
        """Boolean ZYX mask of a detailed or product structure name."""
        if name in DETAILED:
            return self.labels.array == DETAILED[name]
        if name in PRODUCT_FROM_DETAILED:
            return np.isin(self.labels.array, [DETAILED[p] for p in PRODUCT_FROM_DETAILED[name]])
        raise KeyError(f"unknown structure {name!r}; known: {sorted(set(DETAILED) | set(PRODUCT_FROM_DETAILED))}")


def _volumes(labels: np.ndarray, voxel_ml: float) -> dict[str, float]:
    counts = np.bincount(labels.reshape(-1), minlength=256)
    vols = {name: float(counts[value]) * voxel_ml for name, value in DETAILED.items()}
    for name, parts in PRODUCT_FROM_DETAILED.items():
        vols[name] = float(sum(counts[DETAILED[p]] for p in parts)) * voxel_ml
    return {k: round(v, 4) for k, v in vols.items()}


_ANATOMY_FIELDS = ("seed", "phase", "kidney_tumor", "kidney_tumor_side", "n_liver_tumors", "kidney_cyst", "variation")


@functools.lru_cache(maxsize=6)
def _cached_anatomy(key: tuple) -> object:
    return build_anatomy(PhantomConfig(**dict(zip(_ANATOMY_FIELDS, key))))


def _anatomy(config: PhantomConfig):
    """The anatomy of ``config`` (cached: the same patient on several grids is sampled once).

    It does not depend on the grid, the noise or the blur.
    """
    return _cached_anatomy(tuple(getattr(config, f) for f in _ANATOMY_FIELDS))


def generate_phantom(
    config: PhantomConfig | None = None, progress: ProgressCallback | None = None, cancel: CancelToken | None = None
) -> Phantom:
    """Generate the phantom described by ``config`` (default: ``PhantomConfig()``).

    Args:
        config: the configuration (seed, grid, phase, noise, lesions...).
        progress: optional ``(fraction, message)`` callback.
        cancel: optional :class:`~lkseg.progress.CancelToken`, polled between slabs.

    Returns:
        The :class:`Phantom`; identical arrays for identical configs.
    """
    config = config or PhantomConfig()
    t0 = time.perf_counter()
    report(progress, 0.0, "sampling anatomy")
    anatomy = _anatomy(config)
    t1 = time.perf_counter()
    if cancel is not None:
        cancel.raise_if_cancelled()
    grid = config.grid()
    center = np.asarray(config.center_lps)
    body_grid = Grid(grid.shape, grid.spacing, tuple(np.asarray(grid.origin) - center), grid.direction)
    effects = NoiseBlur(config.seed, config.blur_sigma_vox(), config.noise_sd)

    def post(labels_slab, image_slab, k0, k1):
        effects.in_plane(image_slab, k0)

    labels, image, counts = paint(
        body_grid, anatomy.layers, post_slab=post, progress=SubProgress(progress, 0.05, 0.85, ""), cancel=cancel
    )
    t2 = time.perf_counter()
    report(progress, 0.87, "partial-volume blur")
    effects.along_k(image)
    image16 = to_int16(image)
    del image
    t3 = time.perf_counter()
    voxel_ml = grid.voxel_volume_ml
    lesions = []
    for les in anatomy.lesions:
        lps = les.center + center
        lesions.append(
            {
                "name": les.name,
                "kind": les.kind,
                "organ": les.organ,
                "label": les.label,
                "center_lps": [round(float(v), 2) for v in lps],
                "center_ras": [round(float(v), 2) for v in LPS_TO_RAS @ lps],
                "diameter_mm": round(float(les.diameter), 2),
                "volume_ml": round(counts.get(les.name, 0) * voxel_ml, 4),
                "growth": les.growth,
                **les.extra,
            }
        )
    bsa = float(np.sqrt(anatomy.body.height_cm * anatomy.body.weight_kg / 3600.0))
    meta = {
        **anatomy.meta,
        "bsa_m2": round(bsa, 3),
        "phase": config.phase,
        "timings_s": {
            "anatomy": round(t1 - t0, 3),
            "paint": round(t2 - t1, 3),
            "blur": round(t3 - t2, 3),
            "total": round(time.perf_counter() - t0, 3),
        },
    }
    image_meta = {
        "modality": "CT",
        "height_cm": meta["height_cm"],
        "weight_kg": meta["weight_kg"],
        "series_description": f"LiverKidneySeg phantom seed {config.seed} ({config.phase.replace('_', ' ')})",
        "phantom_seed": config.seed,
    }
    report(progress, 1.0, "phantom ready")
    log.info("phantom seed %d: %s in %.2f s", config.seed, grid.describe(), meta["timings_s"]["total"])
    return Phantom(
        image=Volume(image16, grid, image_meta),
        labels=Volume(labels, grid, {"label_table": DETAILED_LABELS.to_json()}),
        label_table=DETAILED_LABELS,
        config=config,
        volumes_ml=_volumes(labels, voxel_ml),
        lesions=lesions,
        hu={k: round(v, 2) for k, v in anatomy.hu.items()},
        meta=meta,
    )
