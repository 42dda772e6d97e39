"""3D propagation of a slice mask through its neighbours, and where to stop.

Slice by slice in both directions, the next slice is prompted with the previous slice's box
(grown by ``margin_mm``) and, optionally, its mask as the decoder's mask prompt. The new mask keeps
only the components that overlap the previous mask (a box can catch a neighbouring organ), and
propagation stops where the structure ends:

* the mask vanishes or falls under ``min_area_mm2``;
* it shrinks abruptly (area below ``min_area_ratio`` of the previous slice) - the model then
  outlines something else in the box;
* it no longer overlaps the previous mask enough (``min_overlap``);
* its intensity no longer matches the structure: less than ``min_intensity_fraction`` of its
  pixels lie within the HU band of the start slice's mask.

Slices are encoded ahead in batches of the engine's batch size (4 on CUDA).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lkseg.progress import CancelToken, ProgressCallback, report
from lkseg.refine.maskops import bbox, components_touching

if TYPE_CHECKING:
    from lkseg.refine.predictor import PromptPredictor

__all__ = ["PropagationConfig", "intensity_band", "propagate_from", "step_slice"]

log = logging.getLogger(__name__)


@dataclass
class PropagationConfig:
    """How propagation prompts each slice and when it stops (see module docstring)."""

    margin_mm: float = 5.5
    use_mask_prior: bool = False
    min_area_mm2: float = 15.0
    min_area_ratio: float = 0.25
    min_overlap: float = 0.3
    min_intensity_fraction: float = 0.5
    band_sigmas: float = 2.5
    min_band_hu: float = 40.0
    max_growth_mm: float | None = None
    per_component: bool = True
    min_component_mm2: float = 30.0


def intensity_band(hu: np.ndarray, mask: np.ndarray, config: PropagationConfig) -> tuple[float, float]:
    """HU band of a structure: median +/- max(``band_sigmas`` robust SD, ``min_band_hu``)."""
    values = hu[mask]
    if values.size == 0:
        return (-np.inf, np.inf)
    med = float(np.median(values))
    mad = float(np.median(np.abs(values - med))) * 1.4826
    half = max(config.band_sigmas * mad, config.min_band_hu)
    return (med - half, med + half)


def grow_box(
    box: tuple[int, int, int, int], margin_px: tuple[float, float], shape: tuple[int, int]
) -> tuple[float, float, float, float]:
    """A display box grown by ``margin_px`` (rows, cols; fractional pixels kept), clipped to the slice."""
    r0, c0, r1, c1 = box
    mr, mc = margin_px
    return (max(0.0, r0 - mr), max(0.0, c0 - mc), min(shape[0] - 1.0, r1 + mr), min(shape[1] - 1.0, c1 + mc))


def step_slice(
    ctx, prev: np.ndarray, band: tuple[float, float], config: PropagationConfig
) -> tuple[np.ndarray | None, str]:
    """Predict the slice of ``ctx`` from the neighbouring slice mask ``prev`` (display frame).

    Returns the new mask, or None and the reason to stop.
    """
    if bbox(prev) is None:
        return None, "empty previous mask"
    row_mm, col_mm = ctx.pixel_mm
    pix_mm2 = row_mm * col_mm
    if config.per_component:
        from scipy import ndimage

        labels, n = ndimage.label(prev)
        parts = [labels == k for k in range(1, n + 1)]
        big = [q for q in parts if q.sum() * pix_mm2 >= config.min_component_mm2]
        parts = big or [max(parts, key=lambda q: int(q.sum()))]
    else:
        parts = [prev]
    mask = np.zeros(prev.shape, dtype=bool)
    for part in parts:
        box = grow_box(bbox(part), (config.margin_mm / row_mm, config.margin_mm / col_mm), ctx.shape)
        logits, _ = ctx.decode(box, prior=part if config.use_mask_prior else None)
        mask |= components_touching(logits > 0, part)
    if config.max_growth_mm:
        from scipy import ndimage

        reach = ndimage.distance_transform_edt(~prev, sampling=(row_mm, col_mm)) <= config.max_growth_mm
        mask &= reach
    area = int(mask.sum())
    if area == 0 or area * pix_mm2 < config.min_area_mm2:
        return None, "structure ended (mask vanished)"
    prev_area = int(prev.sum())
    if area < config.min_area_ratio * prev_area:
        return None, f"structure ended (area fell to {area / prev_area:.0%} of the previous slice)"
    overlap = int((mask & prev).sum()) / area
    if overlap < config.min_overlap:
        return None, f"structure ended (only {overlap:.0%} overlap with the previous slice)"
    lo, hi = band
    inside = ctx.hu[mask]
    fraction = float(np.mean((inside >= lo) & (inside <= hi)))
    if fraction < config.min_intensity_fraction:
        return None, f"structure ended (only {fraction:.0%} of the mask has the structure's intensity)"
    return mask, ""


def propagate_from(
    predictor: PromptPredictor,
    view: str,
    c: int,
    start: np.ndarray,
    structure: str | None,
    max_slices: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    directions: tuple[int, ...] = (1, -1),
) -> np.ndarray:
    """Propagate the display-frame mask ``start`` of canonical slice ``c``; returns a canonical 3D mask."""
    slicer = predictor.slicer
    config = predictor.config.propagation
    out = np.zeros(slicer.array.shape, dtype=bool)
    slicer.set_display_slice(out, view, c, start)
    n = slicer.n_slices(view)
    first = predictor.slice_context(view, c, structure)
    band = intensity_band(first.hu, start, config)
    batch = max(1, predictor.engine.encode_batch)
    total = sum((n - 1 - c) if d > 0 else c for d in directions)
    total = min(total, (max_slices or n) * len(directions)) or 1
    done = 0
    for d in directions:
        prev = start
        steps = 0
        s = c + d
        while 0 <= s < n and (max_slices is None or steps < max_slices):
            if cancel is not None:
                cancel.raise_if_cancelled()
            if batch > 1:
                ahead = [t for t in range(s, s + d * batch, d) if 0 <= t < n]
                predictor.precompute(view, ahead, first.window, cancel)
            ctx = predictor.slice_context(view, s, structure)
            mask, reason = step_slice(ctx, prev, band, config)
            if mask is None:
                log.info(
                    "propagation %s from slice %d stopped at slice %d: %s", "up" if d > 0 else "down", c, s, reason
                )
                break
            slicer.set_display_slice(out, view, s, mask)
            prev = mask
            steps += 1
            done += 1
            s += d
            report(progress, done / total, f"propagating: slice {s}")
    report(progress, 1.0, "propagation done")
    return out
