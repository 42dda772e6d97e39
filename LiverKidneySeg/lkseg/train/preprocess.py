"""Preprocessing of training cases exactly as the predictor sees them at inference.

Each case is read, its labels mapped to model values, and both are sampled on the model grid:
the image's canonical (``"LPS"``) grid at the stage spacing, image linear in physical space
(:class:`lkseg.auto.sampling.ImageSampler`, the same code the predictor uses), labels nearest.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lkseg.errors import GeometryMismatchError, InputError
from lkseg.models.manifest import IntensitySpec
from lkseg.train.dataset import Case, LabelMapping
from lkseg.volume import Grid

__all__ = ["PreparedCase", "intensity_from_cases", "normalise", "prepare_case", "prepare_cases"]

log = logging.getLogger(__name__)


@dataclass
class PreparedCase:
    """A case on the model grid: ``image`` float32 HU and ``labels`` uint8 model values, both ZYX."""

    case_id: str
    image: np.ndarray
    labels: np.ndarray
    grid: Grid


def prepare_case(
    case: Case, mapping: LabelMapping, table: Mapping[str, int], spacing: Sequence[float], orientation: str = "LPS"
) -> PreparedCase:
    """Read, map and resample one case onto its canonical grid at ``spacing`` (i, j, k mm)."""
    from lkseg.auto.sampling import ImageSampler
    from lkseg.io import read_image, read_label_map
    from lkseg.io.placement import place_label_map
    from lkseg.orientation import reorient_grid
    from lkseg.resample import grid_for_spacing, resample_array_to_grid

    image = read_image(case.image)
    labels = read_label_map(case.label)
    try:  # same lattice, maybe other axis directions (e.g. a flipped NIfTI): placed exactly
        labels = place_label_map(labels, image)
    except GeometryMismatchError:
        if image.shape != labels.shape or not np.allclose(image.direction, labels.direction, atol=1e-2):
            raise InputError(
                f"label map grid {labels.grid.describe()} does not match the image {image.grid.describe()}", case.label
            ) from None
        log.warning("%s: label header differs slightly from the image header; using the image geometry", case.label)
        labels = image.with_array(labels.array)
    mapped = mapping.apply(labels.array, image.grid, image.array, table)
    target = grid_for_spacing(reorient_grid(image.grid, orientation).reoriented, spacing)
    sampled = ImageSampler(image).sample(target)
    lab = resample_array_to_grid(mapped, image.grid, target, "nearest")
    return PreparedCase(case.case_id, sampled, lab.astype(np.uint8, copy=False), target)


def _prepare_star(args) -> PreparedCase:
    return prepare_case(*args)


def prepare_cases(
    cases: Sequence[Case],
    mapping: LabelMapping,
    table: Mapping[str, int],
    spacing: Sequence[float],
    workers: int = 1,
    orientation: str = "LPS",
) -> list[PreparedCase]:
    """:func:`prepare_case` for every case, in ``workers`` processes."""
    jobs = [(c, mapping, dict(table), tuple(spacing), orientation) for c in cases]
    if workers <= 1 or len(jobs) <= 1:
        return [_prepare_star(j) for j in jobs]
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    with ctx.Pool(min(workers, len(jobs))) as pool:
        return list(pool.imap(_prepare_star, jobs))


def intensity_from_cases(
    cases: Sequence[PreparedCase], clip: tuple[float, float], max_voxels: int = 2_000_000
) -> IntensitySpec:
    """Clip window ``clip`` with mean / std of the clipped labelled (foreground) voxels."""
    rng = np.random.default_rng(0)
    samples = []
    per_case = max(1000, max_voxels // max(1, len(cases)))
    for case in cases:
        fg = case.image[case.labels > 0]
        if fg.size:
            samples.append(rng.choice(fg, size=min(per_case, fg.size), replace=False))
    if not samples:
        return IntensitySpec(clip=clip, mean=float(np.mean(clip)), std=float(clip[1] - clip[0]) / 4)
    values = np.clip(np.concatenate(samples), clip[0], clip[1])
    return IntensitySpec(
        clip=(float(clip[0]), float(clip[1])),
        mean=round(float(values.mean()), 3),
        std=round(float(max(values.std(), 1.0)), 3),
    )


def normalise(image: np.ndarray, spec: IntensitySpec) -> np.ndarray:
    """``(clip(image) - mean) / std`` in place on a float32 array (the predictor's formula)."""
    return spec.apply(image)
