"""Editing one 3D segment with a box and clicks: what the Slicer module and the CLI drive.

:class:`InteractiveSegment` holds the 3D mask of one structure (new, or an existing mask such
as the U-Net's) and applies prompts to it:

* :meth:`~InteractiveSegment.box` - a box on one slice predicts that slice and propagates it
  through the neighbouring slices (:mod:`lkseg.refine.propagation`); on an existing mask the
  result replaces the mask only on the slices the propagation reached.
* :meth:`~InteractiveSegment.click` - a positive or negative click edits the slice locally
  (:mod:`lkseg.refine.clicks`), then **follows the edit into the neighbouring slices** while the
  same error continues there: a positive click's added region is re-clicked at its centre on the
  next slice while that pixel is outside the mask and has the structure's intensity; a negative
  click's removed region likewise while it is inside the mask. A positive click on a slice with
  no mask (past the end of a propagation) starts the structure there and propagates it into the
  empty slices beyond. Each follow-up stops after ``follow_slices`` slices, when the edit
  becomes small or stops overlapping the previous slice's edit, so regions far from the click
  never change.
* :meth:`~InteractiveSegment.undo` - one step back.

All work happens in the predictor's canonical frame; :attr:`~InteractiveSegment.mask` is the
3D bool mask on the volume's own grid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from lkseg.errors import PromptError
from lkseg.refine.clicks import SliceEditor
from lkseg.refine.maskops import bbox, interior_point
from lkseg.refine.propagation import intensity_band, propagate_from

__all__ = ["FollowConfig", "InteractiveSegment"]

log = logging.getLogger(__name__)


@dataclass
class FollowConfig:
    """How far a click's edit follows into neighbouring slices.

    Attributes:
        follow_slices: at most this many slices on each side (0 = edit the clicked slice only).
        min_edit_mm2: stop when the edit on a slice is smaller than this.
        min_overlap: stop when a slice's edit overlaps the previous slice's edit less than this
            fraction of its own area.
    """

    follow_slices: int = 2
    min_edit_mm2: float = 10.0
    min_overlap: float = 0.2


class InteractiveSegment:
    """A 3D segment of one structure edited with boxes and clicks on one slicing view.

    Args:
        predictor: a :class:`~lkseg.refine.predictor.PromptPredictor` with a volume set.
        structure: structure name (HU window and intensity band), e.g. ``"liver"``.
        view: the slicing direction the prompts are given on.
        initial: an existing 3D bool mask on the volume's grid to edit (e.g. from the U-Net).
        follow: click follow-up settings.
    """

    def __init__(
        self,
        predictor,
        structure: str | None = None,
        view: str = "axial",
        initial: np.ndarray | None = None,
        follow: FollowConfig | None = None,
    ):
        self.predictor = predictor
        self.slicer = predictor.slicer
        self.structure = structure
        self.view = self.slicer.check_view(view)
        self.follow = follow or FollowConfig()
        shape = self.slicer.array.shape
        if initial is None:
            self._mask = np.zeros(shape, dtype=bool)
        else:
            initial = np.asarray(initial)
            if initial.shape != self.slicer.volume.shape:
                raise PromptError(f"initial mask has shape {initial.shape}; the volume is {self.slicer.volume.shape}")
            self._mask = self.slicer.user_volume_to_canonical(initial.astype(bool))
        self._history: list[np.ndarray] = []
        self.last_warnings: list[str] = []

    @property
    def mask(self) -> np.ndarray:
        """The 3D bool mask on the volume's own grid (a copy)."""
        return self.slicer.canonical_volume_to_user(self._mask)

    def undo(self) -> bool:
        """Return to the mask before the last prompt; False when there is nothing to undo."""
        if not self._history:
            return False
        self._mask = self._history.pop()
        return True

    def _slice(self, c: int) -> np.ndarray:
        return self.slicer.display_slice(self.view, c, self._mask)

    def _put(self, c: int, mask2d: np.ndarray) -> None:
        self.slicer.set_display_slice(self._mask, self.view, c, mask2d)

    # -- box ---------------------------------------------------------------------------------------------
    def box(
        self,
        slice_index: int,
        box: np.ndarray,
        coords: str = "voxel",
        propagate: bool = True,
        max_slices: int | None = None,
    ) -> np.ndarray:
        """Segment the structure from a box on one slice (and propagate it); returns :attr:`mask`."""
        p = self.predictor
        c, _, _, box_rc = p._prompts_to_display(self.view, slice_index, None, None, box, coords)
        ctx = p.slice_context(self.view, c, self.structure)
        mask2d, _, warns = SliceEditor(ctx, p.config.clicks).run(box_rc, None, None, None)
        self.last_warnings = list(warns)
        self._history.append(self._mask.copy())
        if not mask2d.any():
            self.last_warnings.append("the box produced an empty mask")
            self._put(c, mask2d)
            return self.mask
        if propagate:
            new = propagate_from(p, self.view, c, mask2d, self.structure, max_slices)
            reached = self._slices_with(new)
            for s in reached:
                self._put(s, self.slicer.display_slice(self.view, s, new))
        else:
            self._put(c, mask2d)
        return self.mask

    def _slices_with(self, vol: np.ndarray) -> list[int]:
        axis = {"axial": 0, "coronal": 1, "sagittal": 2}[self.view]
        other = tuple(a for a in range(3) if a != axis)
        return [int(s) for s in np.flatnonzero(vol.any(axis=other))]

    # -- clicks ----------------------------------------------------------------------------------------------
    def click(self, point: np.ndarray, positive: bool = True, coords: str = "voxel") -> np.ndarray:
        """Apply one click (a 3D point on a slice of :attr:`view`); returns :attr:`mask`."""
        p = self.predictor
        pt = np.asarray(point, dtype=np.float64).reshape(1, 3)
        c, pts_rc, _, _ = p._prompts_to_display(self.view, None, pt, [1.0 if positive else 0.0], None, coords)
        rc = tuple(int(v) for v in np.rint(pts_rc[0]))
        self._history.append(self._mask.copy())
        self.last_warnings = []
        old = self._slice(c).copy()
        if positive and not old.any():
            self._start_here(c, rc)
            return self.mask
        editor = SliceEditor(p.slice_context(self.view, c, self.structure), p.config.clicks)
        new = editor.positive(old, rc) if positive else editor.negative(old, rc)
        self.last_warnings.extend(editor.warnings)
        self._put(c, new)
        edit = (new & ~old) if positive else (old & ~new)
        if edit.any() and self.follow.follow_slices > 0:
            for d in (1, -1):
                self._follow(c, d, edit, positive)
        return self.mask

    def click_display(self, c: int, rc: tuple[int, int], positive: bool) -> np.ndarray:
        """:meth:`click` with a canonical slice and display (row, col) (evaluation, tests)."""
        ijk = self.slicer.display_to_canonical_ijk(self.view, c, np.array([rc], dtype=float))
        return self.click(self.slicer.canonical_ijk_to_user(ijk)[0], positive, "voxel")

    def _start_here(self, c: int, rc: tuple[int, int]) -> None:
        """A positive click on an empty slice: grow the structure there, then into empty slices beyond."""
        p = self.predictor
        editor = SliceEditor(p.slice_context(self.view, c, self.structure), p.config.clicks)
        new = editor.positive(np.zeros(self.slicer.display_shape(self.view), dtype=bool), rc)
        self.last_warnings.extend(editor.warnings)
        if not new.any():
            return
        self._put(c, new)
        n = self.slicer.n_slices(self.view)
        for d in (1, -1):
            # only into slices that are empty: never overwrite what exists
            limit = 0
            s = c + d
            while 0 <= s < n and not self._slice(s).any():
                limit += 1
                s += d
            if limit == 0:
                continue
            grown = propagate_from(p, self.view, c, new, self.structure, limit, directions=(d,))
            for s in self._slices_with(grown):
                if s != c:
                    self._put(s, self.slicer.display_slice(self.view, s, grown))

    def _follow(self, c: int, d: int, edit: np.ndarray, positive: bool) -> None:
        p = self.predictor
        cfg = self.follow
        n = self.slicer.n_slices(self.view)
        first = p.slice_context(self.view, c, self.structure)
        band = intensity_band(first.hu, self._slice(c), p.config.propagation) if positive else None
        row_mm, col_mm = first.pixel_mm
        prev_edit = edit
        s = c + d
        for _ in range(cfg.follow_slices):
            if not 0 <= s < n:
                return
            current = self._slice(s).copy()
            if positive:
                candidates = prev_edit & ~current
            else:
                candidates = prev_edit & current
            if not candidates.any():
                return
            rc = interior_point(candidates, (row_mm, col_mm))
            ctx = p.slice_context(self.view, s, self.structure)
            if positive and not (band[0] <= ctx.hu[rc] <= band[1]):
                return
            if not positive and not current.any():
                return
            editor = SliceEditor(ctx, p.config.clicks)
            new = editor.positive(current, rc) if positive else editor.negative(current, rc)
            this_edit = (new & ~current) if positive else (current & ~new)
            area_mm2 = float(this_edit.sum()) * row_mm * col_mm
            if area_mm2 < cfg.min_edit_mm2:
                return
            overlap = float((this_edit & prev_edit).sum()) / max(1, int(this_edit.sum()))
            if overlap < cfg.min_overlap:
                return
            self._put(s, new)
            prev_edit = this_edit
            s += d

    def slice_box(self, c: int) -> tuple[int, int, int, int] | None:
        """Display-frame box of the mask on canonical slice ``c`` (None when empty)."""
        return bbox(self._slice(c))
