"""Clicks with a box-trained model (LiteMedSAM): every click edits the mask near it only.

LiteMedSAM was trained with boxes; point prompts alone give empty masks. A click therefore
edits the current mask of the slice (from a box, from propagation, from the U-Net) locally:

* **positive click** (a pixel the mask missed): the box is re-prompted to include the click
  (the union of the mask's box and a small box around the click) and the model's new mask is
  cut to the *local window* around the click (``roi_mm``); only its connected part that
  contains the click is added. If the model does not include the click, a seeded random walker
  on the CT intensities grows the region from the click instead (seeds: the click and the mask
  = structure; pixels outside the structure's HU band and the window's border outside the mask
  = background).
* **negative click** (a pixel wrongly included): a random walker in the local window separates
  the region under the click (background seeds: the click and everything outside the mask)
  from the rest of the mask (foreground seeds: mask pixels away from the click with the
  structure's intensity); the part of the mask that goes to the background and is connected to
  the click is removed. A mask component with no structure-like seed left is removed whole.

Nothing outside the local window ever changes, and other slices are not touched here (3D
follow-up of a click is in :mod:`lkseg.refine.session`). The strategy can be switched for
experiments (``strategy``): ``"reprompt"`` (model only), ``"randomwalker"`` (intensity only)
or ``"combined"`` (default, the best measured; see README).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np

from lkseg.refine.maskops import bbox, component_at, disk
from lkseg.refine.propagation import intensity_band

__all__ = ["ClickConfig", "SliceEditor"]

log = logging.getLogger(__name__)

Strategy = Literal["combined", "reprompt", "randomwalker"]


@dataclass
class ClickConfig:
    """How clicks edit masks with a box-trained model (see module docstring).

    Attributes:
        strategy: ``"combined"``, ``"reprompt"`` or ``"randomwalker"``.
        roi_mm: half-size of the local window around a click (mm).
        click_box_mm: half-size of the box around a positive click added to the mask's box (mm).
        seed_mm: radius of the seed disk at a click (mm).
        exclusion_mm: for a negative click, mask pixels closer than this to the click are no
            foreground seeds (mm).
        beta: random-walker edge sensitivity.
        band_sigmas, min_band_hu: HU band of the structure (median +/- max(sigmas x robust SD, min)).
        prior_logit: magnitude of the logits a binary mask prompt is turned into.
        use_prior: give the current mask as the decoder's mask prompt when re-prompting.
        adaptive: size the local window from the click's depth in its error region (distance to
            the mask border): ``adaptive_factor`` x depth, clamped to [``min_roi_mm``, ``roi_mm``].
        click_hu_range: a positive click on a pixel outside this HU range (air, lung, bone) is
            ignored with a warning.
        reprompt_depth_mm: if set, ``"combined"`` handles a negative click this deep inside the
            mask (a large wrong region) by re-prompting with the box shrunk past the click first
            (off by default: measured to help a leaking liver but to cut into kidneys).
    """

    strategy: Strategy = "combined"
    roi_mm: float = 30.0
    click_box_mm: float = 6.0
    seed_mm: float = 3.0
    exclusion_mm: float = 10.0
    beta: float = 130.0
    band_sigmas: float = 2.5
    min_band_hu: float = 40.0
    prior_logit: float = 8.0
    use_prior: bool = False
    adaptive: bool = True
    adaptive_factor: float = 3.0
    min_roi_mm: float = 9.0
    reprompt_depth_mm: float | None = None
    click_hu_range: tuple[float, float] = (-200.0, 600.0)


class SliceEditor:
    """Applies a box and clicks to one display slice (see module docstring).

    Args:
        ctx: the slice (``hu``, ``pixel_mm``, ``shape``, ``window`` and ``decode(box, ...)``).
        config: click settings.
        structure_band: the structure's HU band measured in 3D (all its slices); a negative
            click then keeps only mask pixels within it as structure (a slice whose mask is all
            another tissue, e.g. the heart above a liver, is removed whole). Default: the band of
            the slice's own mask away from the click.
    """

    def __init__(self, ctx, config: ClickConfig, structure_band: tuple[float, float] | None = None):
        self.ctx = ctx
        self.config = config
        self.structure_band = structure_band
        row_mm, col_mm = ctx.pixel_mm
        self.px = (row_mm, col_mm)
        self.unit = ctx.window.apply(ctx.hu)
        self.warnings: list[str] = []

    # -- helpers -------------------------------------------------------------------------------------
    def _mm(self, mm: float) -> tuple[float, float]:
        return (mm / self.px[0], mm / self.px[1])

    def _depth_mm(self, mask: np.ndarray, rc: tuple[int, int]) -> float:
        """Distance (mm) from the click to the mask's border: about half the width of the error
        region the click sits in (inside the mask for a negative click, outside for a positive)."""
        cfg = self.config
        if not mask.any():
            return float("inf")
        from scipy import ndimage

        region = mask if mask[rc] else ~mask
        r, c = rc
        hr, hc = self._mm(cfg.roi_mm)
        win = (slice(max(0, int(r - hr)), int(r + hr) + 1), slice(max(0, int(c - hc)), int(c + hc) + 1))
        sub = np.pad(region[win], 1, constant_values=True)
        dist = ndimage.distance_transform_edt(sub, sampling=self.px)[1:-1, 1:-1]
        return float(dist[r - win[0].start, c - win[1].start])

    def _scale_mm(self, depth_mm: float) -> float:
        """Half-size of the local window: with ``adaptive``, ``adaptive_factor`` x the click's
        depth in its error region, clamped to [``min_roi_mm``, ``roi_mm``]."""
        cfg = self.config
        if not cfg.adaptive or not np.isfinite(depth_mm):
            return cfg.roi_mm
        return float(np.clip(cfg.adaptive_factor * depth_mm, cfg.min_roi_mm, cfg.roi_mm))

    def _roi(self, rc: tuple[int, int], half_mm: float | None = None) -> tuple[slice, slice]:
        hr, hc = self._mm(self.config.roi_mm if half_mm is None else half_mm)
        h, w = self.ctx.shape
        r, c = rc
        return (
            slice(max(0, int(r - hr)), min(h, int(r + hr) + 1)),
            slice(max(0, int(c - hc)), min(w, int(c + hc) + 1)),
        )

    def _band(self, mask: np.ndarray, rc: tuple[int, int]) -> tuple[float, float]:
        """HU band of the structure (:func:`~lkseg.refine.propagation.intensity_band`): from the
        mask when it has pixels, else around the click ``rc`` (slice row, col)."""
        return intensity_band(self.ctx.hu, mask, self.config, fallback_rc=rc)

    def _random_walker(self, roi, seeds: np.ndarray) -> np.ndarray | None:
        """Foreground (label 1) of a random walker on the ROI's windowed intensities."""
        from skimage.segmentation import random_walker

        if not (np.any(seeds == 1) and np.any(seeds == 2)):
            return None
        if not np.any(seeds == 0):
            return seeds == 1
        data = self.unit[roi].astype(np.float64)
        if float(data.std()) < 1e-6:
            return None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "probability range outside [0, 1]" at tol=1e-3
                labels = random_walker(data, seeds, beta=self.config.beta, mode="cg_j", tol=1e-3, spacing=self.px)
        except Exception:
            log.debug("random walker failed", exc_info=True)
            return None
        return labels == 1

    # -- box -----------------------------------------------------------------------------------------------
    def run(
        self,
        box_rc: tuple[int, int, int, int] | None,
        pts_rc: np.ndarray | None,
        labels: np.ndarray | None,
        prior: np.ndarray | None,
    ) -> tuple[np.ndarray, float, list[str]]:
        """Box (if any) then clicks in order; returns (mask, model IoU estimate, warnings)."""
        score = float("nan")
        if box_rc is not None:
            logits, score = self.ctx.decode(box_rc)
            mask = logits > 0
        elif prior is not None:
            mask = prior.astype(bool, copy=True)
        else:
            mask = np.zeros(self.ctx.shape, dtype=bool)
        if pts_rc is not None:
            for rc, label in zip(np.rint(pts_rc).astype(int), labels):
                rc = (int(rc[0]), int(rc[1]))
                mask = self.positive(mask, rc) if label > 0.5 else self.negative(mask, rc)
        return mask, score, self.warnings

    # -- positive ------------------------------------------------------------------------------------------
    def positive(self, mask: np.ndarray, rc: tuple[int, int]) -> np.ndarray:
        """Add the structure under a positive click at ``rc`` (display row, col)."""
        if mask[rc]:
            return mask
        hu = float(self.ctx.hu[rc])
        lo, hi = self.config.click_hu_range
        if not lo <= hu <= hi:
            self.warnings.append(
                f"positive click at pixel {rc} ignored: {hu:.0f} HU is air, lung or bone, not soft tissue "
                f"({lo:.0f}..{hi:.0f} HU)"
            )
            return mask
        strategy = self.config.strategy
        scale = self._scale_mm(self._depth_mm(mask, rc))
        add = None
        if strategy in ("combined", "reprompt"):
            add = self._positive_reprompt(mask, rc, scale)
        if (add is None or not add[rc]) and strategy in ("combined", "randomwalker"):
            add = self._positive_rw(mask, rc, scale)
        if add is None or not add.any():
            self.warnings.append(f"positive click at pixel {rc} added nothing")
            return mask
        return mask | add

    def _positive_reprompt(self, mask: np.ndarray, rc: tuple[int, int], scale: float) -> np.ndarray | None:
        cfg = self.config
        h, w = self.ctx.shape
        hr, hc = self._mm(cfg.click_box_mm)
        r, c = rc
        click_box = (max(0, int(r - hr)), max(0, int(c - hc)), min(h - 1, int(r + hr)), min(w - 1, int(c + hc)))
        current = bbox(mask)
        if current is None:
            grown = self._positive_rw(mask, rc, scale)
            current = bbox(grown) if grown is not None else None
        box = (
            click_box
            if current is None
            else (
                min(current[0], click_box[0]),
                min(current[1], click_box[1]),
                max(current[2], click_box[2]),
                max(current[3], click_box[3]),
            )
        )
        logits, _ = self.ctx.decode(box, prior=mask if cfg.use_prior and mask.any() else None)
        local = np.zeros_like(mask)
        local[self._roi(rc, scale)] = True
        cand = (logits > 0) & local
        return component_at(cand | mask, rc) & ~mask if cand[rc] else None

    def _positive_rw(self, mask: np.ndarray, rc: tuple[int, int], scale: float) -> np.ndarray | None:
        roi = self._roi(rc, scale)
        sub_mask = mask[roi]
        hu = self.ctx.hu[roi]
        lo, hi = self._band(mask, rc)
        seeds = np.zeros(sub_mask.shape, dtype=np.int32)
        seeds[(hu < lo) | (hu > hi)] = 2
        border = np.ones_like(sub_mask)
        border[1:-1, 1:-1] = False
        seeds[border & ~sub_mask] = 2
        seeds[sub_mask] = 1
        local_rc = (rc[0] - roi[0].start, rc[1] - roi[1].start)
        seeds[disk(sub_mask.shape, local_rc, self._mm(self.config.seed_mm))] = 1
        fg = self._random_walker(roi, seeds)
        if fg is None:
            return None
        out = np.zeros_like(mask)
        region = component_at(fg | sub_mask, local_rc) & ~sub_mask
        out[roi] = region
        return out

    # -- negative ------------------------------------------------------------------------------------------
    def negative(self, mask: np.ndarray, rc: tuple[int, int]) -> np.ndarray:
        """Remove the wrongly included region under a negative click at ``rc``."""
        if not mask.any():
            self.warnings.append(f"negative click at pixel {rc} ignored: there is no mask to edit on this slice")
            return mask
        if not mask[rc]:
            return mask
        cfg = self.config
        depth = self._depth_mm(mask, rc)
        scale = self._scale_mm(depth)
        roi = self._roi(rc, scale)
        sub_mask = mask[roi]
        local_rc = (rc[0] - roi[0].start, rc[1] - roi[1].start)
        removal = None
        deep = cfg.reprompt_depth_mm is not None and depth >= cfg.reprompt_depth_mm
        if cfg.strategy == "reprompt" or (cfg.strategy == "combined" and deep):
            removal = self._negative_reprompt(mask, rc, scale)
        if (removal is None or not removal.any()) and cfg.strategy != "reprompt":
            exclusion = min(cfg.exclusion_mm, 0.67 * scale) if cfg.adaptive else cfg.exclusion_mm
            removal = self._negative_rw(mask, roi, local_rc, exclusion)
        if removal is None or not removal.any():
            # no structure-like pixels left to keep: the click's component inside the window goes
            removal = np.zeros_like(mask)
            removal[roi] = component_at(sub_mask, local_rc)
        return mask & ~removal

    def _negative_rw(self, mask: np.ndarray, roi, local_rc, exclusion_mm: float) -> np.ndarray | None:
        sub_mask = mask[roi]
        hu = self.ctx.hu[roi]
        far = ~disk(sub_mask.shape, local_rc, self._mm(exclusion_mm))
        # structure-like pixels: the mask's band measured away from the click
        keep_pool = mask.copy()
        keep_pool[roi] &= far
        if self.structure_band is not None:
            lo, hi = self.structure_band
        else:
            lo, hi = self._band(keep_pool, (local_rc[0] + roi[0].start, local_rc[1] + roi[1].start))
        seeds = np.zeros(sub_mask.shape, dtype=np.int32)
        seeds[~sub_mask] = 2
        seeds[sub_mask & far & (hu >= lo) & (hu <= hi)] = 1
        seeds[disk(sub_mask.shape, local_rc, self._mm(self.config.seed_mm)) & sub_mask] = 2
        if not np.any(seeds == 1):
            return None
        keep = self._random_walker(roi, seeds)
        if keep is None:
            return None
        out = np.zeros_like(mask)
        out[roi] = component_at(sub_mask & ~keep, local_rc)
        return out

    def _negative_reprompt(self, mask: np.ndarray, rc: tuple[int, int], scale: float) -> np.ndarray | None:
        box = bbox(mask)
        r, c = rc
        r0, c0, r1, c1 = box
        moves = {"top": r - r0, "bottom": r1 - r, "left": c - c0, "right": c1 - c}
        edge = min(moves, key=moves.get)
        new = {
            "top": (r + 1, c0, r1, c1),
            "bottom": (r0, c0, r - 1, c1),
            "left": (r0, c + 1, r1, c1),
            "right": (r0, c0, r1, c - 1),
        }[edge]
        if new[2] - new[0] < 1 or new[3] - new[1] < 1:
            return None
        logits, _ = self.ctx.decode(new, prior=mask if self.config.use_prior else None)
        local = np.zeros_like(mask)
        local[self._roi(rc, scale)] = True
        return component_at(mask & ~(logits > 0) & local, rc)
