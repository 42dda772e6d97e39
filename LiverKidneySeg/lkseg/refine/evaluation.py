"""Simulated-user evaluation of interactive refinement (the standard interactive protocol).

For each structure: one box (the reference's bounding box on the structure's central slice)
is propagated through the volume; then up to ``clicks`` corrective clicks follow, each at the
centre (the pixel farthest from the region's border) of the largest error region on the worst
slice (the slice with the most wrong voxels): a positive click for a missed region, a negative
click for a wrongly included one. Dice and HD95 are measured in 3D after the box and after each
click, with the wall time of each interaction.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from lkseg.errors import InputError
from lkseg.refine.maskops import bbox, interior_point
from lkseg.refine.session import FollowConfig, InteractiveSegment

__all__ = ["StepResult", "StructureResult", "format_results", "next_click", "simulate_structure"]

log = logging.getLogger(__name__)


@dataclass
class StepResult:
    """Accuracy after one interaction (``step`` is ``"box"`` or ``"click N"``)."""

    step: str
    dice: float
    hd95_mm: float
    seconds: float
    click: tuple[int, int, int, bool] | None = None  # canonical slice, row, col, positive


@dataclass
class StructureResult:
    name: str
    steps: list[StepResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def box_dice(self) -> float:
        return self.steps[0].dice if self.steps else float("nan")

    @property
    def final_dice(self) -> float:
        return self.steps[-1].dice if self.steps else float("nan")


def _metrics(pred: np.ndarray, ref: np.ndarray, spacing) -> tuple[float, float]:
    from lkseg.metrics import mask_metrics

    m = mask_metrics(pred, ref, spacing)
    return m.dice, m.hd95_mm


def next_click(pred_slices, ref_slices, pixel_mm: tuple[float, float]) -> tuple[int, tuple[int, int], bool] | None:
    """The protocol's next click: (slice, display (row, col), positive) or None when perfect.

    Args:
        pred_slices, ref_slices: callables ``c -> 2D bool`` or sequences of display slices.
        pixel_mm: (row, col) pixel spacing for the region centre.
    """
    from scipy import ndimage

    errors = [int(np.count_nonzero(p ^ r)) for p, r in zip(pred_slices, ref_slices)]
    if not errors or max(errors) == 0:
        return None
    worst = int(np.argmax(errors))
    pred, ref = pred_slices[worst], ref_slices[worst]
    best, best_size, positive = None, 0, True
    for region_mask, is_positive in ((ref & ~pred, True), (pred & ~ref, False)):
        labels, n = ndimage.label(region_mask)
        if n == 0:
            continue
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        k = int(np.argmax(sizes))
        if sizes[k] > best_size:
            best, best_size, positive = labels == k, int(sizes[k]), is_positive
    rc = interior_point(best, pixel_mm)
    return worst, (int(rc[0]), int(rc[1])), positive


def simulate_structure(
    predictor,
    reference: np.ndarray,
    structure: str,
    view: str = "axial",
    clicks: int = 5,
    follow: FollowConfig | None = None,
) -> StructureResult:
    """Run the protocol for one structure.

    Args:
        predictor: a :class:`~lkseg.refine.predictor.PromptPredictor` with the CT set.
        reference: bool 3D reference mask on the volume's grid.
        structure: structure name (HU window).
        view: slicing view of the box and the clicks.
        clicks: number of corrective clicks (stops early when the mask is perfect).
        follow: click follow-up settings of the :class:`InteractiveSegment`.
    """
    slicer = predictor.slicer
    reference = np.asarray(reference, dtype=bool)
    if reference.shape != slicer.volume.shape:
        raise InputError(f"reference mask shape {reference.shape} differs from the image {slicer.volume.shape}")
    result = StructureResult(structure)
    if not reference.any():
        result.warnings.append(f"{structure}: the reference is empty; skipped")
        return result
    spacing = slicer.volume.spacing
    ref_c = slicer.user_volume_to_canonical(reference)
    n = slicer.n_slices(view)
    ref_slices = [np.array(slicer.display_slice(view, c, ref_c)) for c in range(n)]
    present = [c for c in range(n) if ref_slices[c].any()]
    mid = (present[0] + present[-1]) // 2
    if not ref_slices[mid].any():
        mid = min(present, key=lambda s: abs(s - mid))
    r0, c0, r1, c1 = bbox(ref_slices[mid])
    corners_c = slicer.display_to_canonical_ijk(view, mid, np.array([[r0, c0], [r1, c1]], dtype=float))
    corners = slicer.canonical_ijk_to_user(corners_c)
    corners = np.stack([corners.min(axis=0), corners.max(axis=0)])
    session = InteractiveSegment(predictor, structure, view, follow=follow)
    start = time.perf_counter()
    session.box(slicer.canonical_to_user_slice(view, mid), corners)
    seconds = time.perf_counter() - start
    dice, hd95 = _metrics(session.mask, reference, spacing)
    result.steps.append(StepResult("box", dice, hd95, seconds))
    result.warnings.extend(session.last_warnings)
    pixel_mm = slicer.pixel_mm(view)
    for k in range(1, clicks + 1):
        pred_slices = [slicer.display_slice(view, c, session._mask) for c in range(n)]
        click = next_click(pred_slices, ref_slices, pixel_mm)
        if click is None:
            break
        c, rc, positive = click
        start = time.perf_counter()
        session.click_display(c, rc, positive)
        seconds = time.perf_counter() - start
        dice, hd95 = _metrics(session.mask, reference, spacing)
        result.steps.append(StepResult(f"click {k}", dice, hd95, seconds, (c, rc[0], rc[1], positive)))
        result.warnings.extend(session.last_warnings)
    return result


def format_results(results: list[StructureResult]) -> str:
    """A text table: one row per structure and step (Dice, HD95 mm, seconds, click)."""
    lines = [f"{'structure':<14} {'step':<8} {'Dice':>6} {'HD95 mm':>8} {'time s':>7}  click (slice, row, col, +/-)"]
    for res in results:
        for st in res.steps:
            click = (
                ""
                if st.click is None
                else f"({st.click[0]}, {st.click[1]}, {st.click[2]}, {'+' if st.click[3] else '-'})"
            )
            hd = f"{st.hd95_mm:8.1f}" if np.isfinite(st.hd95_mm) else f"{'inf':>8}"
            lines.append(f"{res.name:<14} {st.step:<8} {st.dice:6.3f} {hd} {st.seconds:7.2f}  {click}")
    return "\n".join(lines)
