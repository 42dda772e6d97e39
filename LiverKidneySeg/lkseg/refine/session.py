"""Editing one 3D segment with boxes and clicks: what the CLI, ``refine-eval`` and the pipeline drive.

:class:`InteractiveSegment` holds the 3D mask of one structure (new, or an existing mask such
as the U-Net's) and applies prompts to it. Every prompt is a 3D edit:

* :meth:`~InteractiveSegment.box` - a box on one slice predicts that slice and propagates it
  (:mod:`lkseg.refine.propagation`). On a slice the existing mask does not reach, the new
  propagation runs both ways only through empty slices, until it meets the existing mask (it
  never overwrites it); on a slice the mask has, the result replaces the mask on the slices the
  propagation reached.
* :meth:`~InteractiveSegment.click` - a click edits its slice locally (:mod:`lkseg.refine.clicks`),
  then follows its error into the next slices while it continues there (at most
  ``FollowConfig.follow_slices`` on each side, 2 by default; None = no bound): the edited region's centre is re-clicked on the next slice while it is still missed (positive)
  / still included (negative), has the structure's intensity (positive), and the edit there stays
  large enough, overlaps the previous slice's edit and does not balloon (``FollowConfig``).

  - A positive click on a slice with no mask (past the end of a propagation) seeds a new
    propagation from there in both directions through the empty slices until it meets the mask.
  - A negative click that removes (nearly) all of its slice's mask marks a slice the structure
    does not reach (a propagation ran on): the structure **ends there** - the mask on that slice
    and every slice beyond it (away from the bulk of the mask) that continues the removed part
    goes; towards the bulk the removal follows as above, so the leaked slices between the true end
    and the click go too, and the organ itself stays.

* :meth:`~InteractiveSegment.undo` / :meth:`~InteractiveSegment.redo` - one user action (a box or a
  click with everything it changed in 3D). The history stores only the bounding box of each change
  (before and after), at most ``max_history`` actions. :meth:`~InteractiveSegment.last_change` gives
  the last action's bounding box on the volume's own grid (what a front end writes back).

An action is atomic: when it fails or is cancelled (``cancel`` token of :meth:`box` / :meth:`click`)
the mask is left as it was. The cost of an action does not depend on the volume's size: only the
slices it writes are saved and compared.

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

_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}


@dataclass
class FollowConfig:
    """How far a click's edit follows into neighbouring slices.

    Attributes:
        follow_slices: at most this many slices on each side (None = as long as the error
            continues; 0 = edit the clicked slice only). Default 2: following without a bound was
            worse on the selection data (example_ct_sm, phantom 102; see README).
        min_edit_mm2: stop when the edit on a slice is smaller than this.
        min_overlap: stop when a slice's edit overlaps the previous slice's edit less than this
            fraction of its own area.
        max_edit_growth: stop when a slice's edit is larger than this multiple of the previous
            slice's edit (plus ``min_edit_mm2``): the error does not continue like this.
        end_fraction: a negative click that removes at least this fraction of its slice's mask
            ends the structure there (see module docstring); None = never.
    """

    follow_slices: int | None = 2
    min_edit_mm2: float = 10.0
    min_overlap: float = 0.2
    max_edit_growth: float = 2.0
    end_fraction: float | None = 0.8


@dataclass
class _Change:
    """One user action: the bounding box (canonical slices) of what changed, before and after."""

    where: tuple[slice, slice, slice]
    before: np.ndarray
    after: np.ndarray


class InteractiveSegment:
    """A 3D segment of one structure edited with boxes and clicks on one slicing view.

    Args:
        predictor: a :class:`~lkseg.refine.predictor.PromptPredictor` with a volume set.
        structure: structure name (HU window and intensity band), e.g. ``"liver"``.
        view: the slicing direction the prompts are given on.
        initial: an existing 3D bool mask on the volume's grid to edit (e.g. from the U-Net).
        follow: click follow-up settings.
        probability: optional probability map of the structure on the volume's grid (0..1, e.g.
            the U-Net's); propagation then also stops where it falls (``min_probability``).
        max_history: undoable actions kept.
    """

    def __init__(
        self,
        predictor,
        structure: str | None = None,
        view: str = "axial",
        initial: np.ndarray | None = None,
        follow: FollowConfig | None = None,
        probability: np.ndarray | None = None,
        max_history: int = 100,
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
        self._probability = None
        if probability is not None:
            probability = np.asarray(probability, dtype=np.float32)
            if probability.shape != self.slicer.volume.shape:
                raise PromptError(
                    f"probability map has shape {probability.shape}; the volume is {self.slicer.volume.shape}"
                )
            self._probability = self.slicer.user_volume_to_canonical(probability)
        self.max_history = max(1, int(max_history))
        self._undo: list[_Change] = []
        self._redo: list[_Change] = []
        self.last_warnings: list[str] = []
        self._saved: dict[int, np.ndarray] | None = None  # slices as they were before the running action
        self._last: _Change | None = None  # the last action's change (None: it changed nothing)
        self._progress = None
        self._cancel = None
        self._version = 0  # changes whenever the mask does (caches below are keyed by it)
        self._band_cache: tuple[int, tuple[float, float] | None] | None = None

    @property
    def mask(self) -> np.ndarray:
        """The 3D bool mask on the volume's own grid (a copy, also when no reorientation is needed)."""
        out = self.slicer.canonical_volume_to_user(self._mask)
        return out.copy() if np.shares_memory(out, self._mask) else out

    # -- history -------------------------------------------------------------------------------------
    def _begin(self, progress=None, cancel=None) -> None:
        """Start one user action: slices are saved as :meth:`_put` first writes them."""
        self._saved, self._last = {}, None
        self._progress, self._cancel = progress, cancel

    def _end(self, ok: bool) -> None:
        """Finish the action: record it as one undoable change, or (``ok`` False) restore the mask."""
        saved, self._saved = self._saved or {}, None
        self._progress = self._cancel = None
        if not saved:
            return
        if not ok:
            for c, original in saved.items():
                self.slicer.set_display_slice(self._mask, self.view, c, original)
            self._version += 1
            return
        axis = _AXIS[self.view]
        lo, hi = min(saved), max(saved) + 1
        slab = [slice(None)] * 3
        slab[axis] = slice(lo, hi)
        after = self._mask[tuple(slab)]
        before = after.copy()
        for c, original in saved.items():
            self.slicer.set_display_slice(before, self.view, c - lo, original)
        changed = before ^ after
        if not changed.any():
            return
        local = [slice(int(ix.min()), int(ix.max()) + 1) for ix in np.nonzero(changed)]
        where = list(local)
        where[axis] = slice(local[axis].start + lo, local[axis].stop + lo)
        change = _Change(tuple(where), before[tuple(local)].copy(), after[tuple(local)].copy())  # type: ignore[arg-type]
        self._last = change
        self._undo.append(change)
        del self._undo[: -self.max_history]
        self._redo.clear()

    def last_change(self) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray] | None:
        """What the last box or click changed, on the volume's own grid: ``(region, before, after)``
        with ``region`` the ZYX slices of the changed bounding box and ``before``/``after`` the bool
        blocks of :attr:`mask` there; None when the last action changed nothing."""
        change = self._last
        if change is None:
            return None
        slicer = self.slicer
        lo = np.array([[change.where[2].start, change.where[1].start, change.where[0].start]], dtype=float)
        hi = np.array([[change.where[2].stop - 1, change.where[1].stop - 1, change.where[0].stop - 1]], dtype=float)
        corners = np.rint(slicer.canonical_ijk_to_user(np.vstack([lo, hi]))).astype(int)  # (i, j, k)
        first, last = corners.min(axis=0), corners.max(axis=0)
        region = tuple(slice(int(first[a]), int(last[a]) + 1) for a in (2, 1, 0))
        return (
            region,  # type: ignore[return-value]
            slicer.canonical_volume_to_user(change.before),
            slicer.canonical_volume_to_user(change.after),
        )

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def history_bytes(self) -> int:
        """Memory held by the undo and redo history (bytes)."""
        return sum(ch.before.nbytes + ch.after.nbytes for ch in self._undo + self._redo)

    def undo(self) -> bool:
        """Take back the last user action (a box or a click, whatever it changed); False when
        there is nothing to undo."""
        if not self._undo:
            return False
        change = self._undo.pop()
        self._mask[change.where] = change.before
        self._version += 1
        self._redo.append(change)
        return True

    def redo(self) -> bool:
        """Re-apply the last undone action; False when there is nothing to redo."""
        if not self._redo:
            return False
        change = self._redo.pop()
        self._mask[change.where] = change.after
        self._version += 1
        self._undo.append(change)
        return True

    # -- slices ---------------------------------------------------------------------------------------
    def _slice(self, c: int) -> np.ndarray:
        return self.slicer.display_slice(self.view, c, self._mask)

    def _put(self, c: int, mask2d: np.ndarray) -> None:
        if self._saved is not None and c not in self._saved:
            self._saved[c] = self._slice(c).copy()
        self.slicer.set_display_slice(self._mask, self.view, c, mask2d)
        self._version += 1

    def _check_cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.raise_if_cancelled()

    def _slices_with(self, vol: np.ndarray) -> list[int]:
        axis = _AXIS[self.view]
        other = tuple(a for a in range(3) if a != axis)
        return [int(s) for s in np.flatnonzero(vol.any(axis=other))]

    def _propagate(self, c: int, start: np.ndarray, max_slices: int | None, directions=(1, -1)) -> np.ndarray:
        return propagate_from(
            self.predictor,
            self.view,
            c,
            start,
            self.structure,
            max_slices,
            self._progress,
            self._cancel,
            directions=directions,
            probability=self._probability,
        )

    def _empty_run(self, c: int, d: int) -> int:
        """Number of consecutive empty slices after ``c`` in direction ``d``."""
        n = self.slicer.n_slices(self.view)
        count, s = 0, c + d
        while 0 <= s < n and not self._slice(s).any():
            count += 1
            s += d
        return count

    def _fill_empty(self, c: int, start: np.ndarray, max_slices: int | None = None) -> None:
        """Put ``start`` on slice ``c`` and propagate it through the empty slices on both sides
        until it meets the existing mask (never overwriting it)."""
        self._put(c, start)
        for d in (1, -1):
            limit = self._empty_run(c, d)
            if max_slices is not None:
                limit = min(limit, max_slices)
            if limit == 0:
                continue
            grown = self._propagate(c, start, limit, directions=(d,))
            for s in self._slices_with(grown):
                if s != c:
                    self._put(s, self.slicer.display_slice(self.view, s, grown))

    # -- box ---------------------------------------------------------------------------------------------
    def box(
        self,
        slice_index: int,
        box: np.ndarray,
        coords: str = "voxel",
        propagate: bool = True,
        max_slices: int | None = None,
        *,
        progress=None,
        cancel=None,
        return_mask: bool = True,
    ) -> np.ndarray | None:
        """Segment the structure from a box on one slice (and propagate it); returns :attr:`mask`.

        ``progress(fraction, message)`` and the ``cancel`` token are passed to the propagation; a
        cancelled box leaves the mask unchanged (``CancelledError``). ``return_mask=False``
        returns None instead of a full-volume copy (callers that read :meth:`last_change`)."""
        p = self.predictor
        c, _, _, box_rc = p._prompts_to_display(self.view, slice_index, None, None, box, coords)
        ctx = p.slice_context(self.view, c, self.structure)
        mask2d, _, warns = SliceEditor(ctx, p.config.clicks).run(box_rc, None, None, None)
        self.last_warnings = list(warns)
        self._begin(progress, cancel)
        ok = False
        try:
            if not mask2d.any():
                self.last_warnings.append("the box produced an empty mask")
                self._put(c, mask2d)
            elif not propagate:
                self._put(c, mask2d)
            elif self._mask.any() and not self._slice(c).any():
                # a slice the mask does not reach: grow from here until the existing mask
                self._fill_empty(c, mask2d, max_slices)
            else:
                new = self._propagate(c, mask2d, max_slices)
                for s in self._slices_with(new):
                    self._put(s, self.slicer.display_slice(self.view, s, new))
            ok = True
        finally:
            self._end(ok)
        return self.mask if return_mask else None

    # -- clicks ----------------------------------------------------------------------------------------------
    def click(
        self,
        point: np.ndarray,
        positive: bool = True,
        coords: str = "voxel",
        *,
        progress=None,
        cancel=None,
        return_mask: bool = True,
    ) -> np.ndarray | None:
        """Apply one click (a 3D point on a slice of :attr:`view`); returns :attr:`mask`.

        ``progress``/``cancel``/``return_mask`` as in :meth:`box` (a click that fills unreached
        slices propagates)."""
        p = self.predictor
        pt = np.asarray(point, dtype=np.float64).reshape(1, 3)
        c, pts_rc, _, _ = p._prompts_to_display(self.view, None, pt, [1.0 if positive else 0.0], None, coords)
        rc = tuple(int(v) for v in np.rint(pts_rc[0]))
        self.last_warnings = []
        self._begin(progress, cancel)
        ok = False
        try:
            self._click(c, rc, positive)
            ok = True
        finally:
            self._end(ok)
        return self.mask if return_mask else None

    def click_display(self, c: int, rc: tuple[int, int], positive: bool) -> np.ndarray:
        """:meth:`click` with a canonical slice and display (row, col) (evaluation, tests)."""
        ijk = self.slicer.display_to_canonical_ijk(self.view, c, np.array([rc], dtype=float))
        return self.click(self.slicer.canonical_ijk_to_user(ijk)[0], positive, "voxel")

    def _editor(self, c: int, structure_band: tuple[float, float] | None = None) -> SliceEditor:
        p = self.predictor
        return SliceEditor(p.slice_context(self.view, c, self.structure), p.config.clicks, structure_band)

    def _structure_band(self) -> tuple[float, float] | None:
        """The structure's HU band over its whole 3D mask (None when the mask is small); computed
        once per mask state (a full-volume pass: ~0.1 s on 512 x 512 x 200)."""
        if self._band_cache is not None and self._band_cache[0] == self._version:
            return self._band_cache[1]
        band = None
        if np.count_nonzero(self._mask) >= 200:
            band = intensity_band(self.slicer.array, self._mask, self.predictor.config.clicks)
        self._band_cache = (self._version, band)
        return band

    def _click(self, c: int, rc: tuple[int, int], positive: bool) -> None:
        old = self._slice(c).copy()
        if positive and not old.any():
            editor = self._editor(c)
            new = editor.positive(old, rc)
            self.last_warnings.extend(editor.warnings)
            if new.any():
                self._fill_empty(c, new)
            return
        band3d = None if positive else self._structure_band()
        editor = self._editor(c, band3d)
        new = editor.positive(old, rc) if positive else editor.negative(old, rc)
        self.last_warnings.extend(editor.warnings)
        self._put(c, new)
        edit = (new & ~old) if positive else (old & ~new)
        if not edit.any():
            return
        ends_here = (
            not positive and self.follow.end_fraction is not None and edit.sum() >= self.follow.end_fraction * old.sum()
        )
        beyond = self._beyond(c) if ends_here else 0
        for d in (1, -1):
            if d == beyond:
                self._remove_beyond(c, d, edit)
            elif self.follow.follow_slices is None or self.follow.follow_slices > 0:
                self._follow(c, d, edit, positive, band3d)

    def _beyond(self, c: int) -> int:
        """The direction from slice ``c`` away from the bulk of the mask (+1 or -1)."""
        axis = _AXIS[self.view]
        other = tuple(a for a in range(3) if a != axis)
        per_slice = self._mask.sum(axis=other)
        return 1 if per_slice[c + 1 :].sum() <= per_slice[:c].sum() else -1

    def _remove_beyond(self, c: int, d: int, edit: np.ndarray) -> None:
        """The structure ends at slice ``c``: on the slices beyond, remove the mask's components
        that continue the removed region (3D-connected to it), slice after slice."""
        from scipy import ndimage

        n = self.slicer.n_slices(self.view)
        prev = edit
        s = c + d
        while 0 <= s < n:
            self._check_cancel()
            current = self._slice(s)
            if not current.any():
                return
            labels, _ = ndimage.label(current)
            touched = np.unique(labels[prev & current])
            touched = touched[touched > 0]
            if touched.size == 0:
                return
            gone = np.isin(labels, touched)
            self._put(s, current & ~gone)
            prev = gone
            s += d

    def _follow(
        self, c: int, d: int, edit: np.ndarray, positive: bool, band3d: tuple[float, float] | None = None
    ) -> None:
        """Repeat the click's edit on the next slices while the same error continues there: a
        positive edit while the missed pixel has the structure's intensity, a negative one while
        the removed region has the intensity of the region the click removed."""
        p = self.predictor
        cfg = self.follow
        n = self.slicer.n_slices(self.view)
        first = p.slice_context(self.view, c, self.structure)
        band = intensity_band(first.hu, self._slice(c) if positive else edit, p.config.propagation)
        row_mm, col_mm = first.pixel_mm
        pix_mm2 = row_mm * col_mm
        prev_edit = edit
        s = c + d
        steps = 0
        while 0 <= s < n and (cfg.follow_slices is None or steps < cfg.follow_slices):
            self._check_cancel()
            current = self._slice(s).copy()
            candidates = prev_edit & ~current if positive else prev_edit & current
            if not candidates.any() or (not positive and not current.any()):
                return
            rc = interior_point(candidates, (row_mm, col_mm))
            ctx = p.slice_context(self.view, s, self.structure)
            if positive and not (band[0] <= ctx.hu[rc] <= band[1]):
                return
            editor = SliceEditor(ctx, p.config.clicks, band3d)
            new = editor.positive(current, rc) if positive else editor.negative(current, rc)
            this_edit = (new & ~current) if positive else (current & ~new)
            area_mm2 = float(this_edit.sum()) * pix_mm2
            if area_mm2 < cfg.min_edit_mm2:
                return
            if not positive and not band[0] <= float(np.median(ctx.hu[this_edit])) <= band[1]:
                return  # not the tissue the click removed: the error does not continue
            overlap = float((this_edit & prev_edit).sum()) / max(1, int(this_edit.sum()))
            if overlap < cfg.min_overlap:
                return
            if area_mm2 > cfg.max_edit_growth * float(prev_edit.sum()) * pix_mm2 + cfg.min_edit_mm2:
                return
            self._put(s, new)
            prev_edit = this_edit
            s += d
            steps += 1

    def slice_box(self, c: int) -> tuple[int, int, int, int] | None:
        """Display-frame box of the mask on canonical slice ``c`` (None when empty)."""
        return bbox(self._slice(c))
