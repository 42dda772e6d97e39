"""Interactive refinement: the prompt predictor on one persistent worker thread, edits applied
to segments on the MRML thread, every edit undoable.

* :class:`RefineEngine` owns a single worker thread (``ThreadPoolExecutor(max_workers=1)``) on which
  the core :class:`lkseg.refine.PromptPredictor` is created once and lives; the volume is handed
  to it once per image (``set_volume``), and the predictor caches each slice's embedding, so a
  new click costs only the prompt decoder.
* :class:`Refiner` turns prompts into segment edits: a 2D mask on one slice (points / box) or a 3D
  mask (propagation) is combined with the segment (add / subtract / replace) and recorded in the
  :class:`~LiverKidneySegLib.history.EditHistory`.
* 3D clicks and boxes (:meth:`RefineEngine.edit3D`): the worker thread keeps one core
  :class:`lkseg.refine.InteractiveSegment` per (volume, segment, view axis), so a click reuses the
  predictor's cached embeddings and the segment's 3D state; it is (re)read from the segment
  whenever the segment was changed by anything else (the logic compares a fingerprint, see
  :mod:`LiverKidneySegLib.refine3d`). ``sessionStates`` (main thread) and the worker's sessions
  are kept in step: both are cleared when the engine's volume changes.

Axes: prompts are in voxel indices ``(i, j, k)``; a slice is the plane ``axis = sliceIndex``
(axis 0 = i, 1 = j, 2 = k); masks are numpy ZYX.
"""

from __future__ import annotations

import atexit
import logging
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from LiverKidneySegLib.history import EditHistory
from LiverKidneySegLib.markups import SlicePrompts
from LiverKidneySegLib.segmentations import segmentMask, setSegmentMask
from lkseg.errors import PromptError
from lkseg.volume import Volume

__all__ = [
    "COMBINE_MODES",
    "Edit3DOutcome",
    "Edit3DRequest",
    "PropagateRequest",
    "RefineEngine",
    "RefineResult",
    "Refiner",
    "SliceRequest",
    "combineMasks",
    "sliceRegion",
]

log = logging.getLogger(__name__)

CombineMode = Literal["add", "subtract", "replace"]
COMBINE_MODES: tuple[str, ...] = ("add", "subtract", "replace")


def sliceRegion(shape: tuple[int, int, int], axis: int, sliceIndex: int) -> tuple[slice, slice, slice]:
    """ZYX slices selecting the plane ``axis = sliceIndex`` (axis 0 = i, 1 = j, 2 = k)."""
    region = [slice(None)] * 3
    region[2 - axis] = slice(sliceIndex, sliceIndex + 1)
    return tuple(region)  # type: ignore[return-value]


def combineMasks(base: np.ndarray, mask: np.ndarray, mode: str, region: tuple[slice, ...] | None = None) -> np.ndarray:
    """Combine a segment (bool ZYX) with a predicted mask.

    Args:
        base: current segment, bool ZYX.
        mask: prediction, bool, same shape as ``base[region]``.
        mode: "add" (union), "subtract" (remove the mask) or "replace" (the region becomes the mask).
        region: where the prediction applies (a slice, or None for the whole volume).

    Returns:
        A new bool array; voxels outside ``region`` are unchanged.
    """
    if mode not in COMBINE_MODES:
        raise PromptError(f"combine mode must be one of {COMBINE_MODES}, got {mode!r}")
    region = region or (slice(None),) * 3
    out = np.array(base, dtype=bool, copy=True)
    current = out[region]
    mask = np.asarray(mask, dtype=bool).reshape(current.shape)
    if mode == "add":
        out[region] = current | mask
    elif mode == "subtract":
        out[region] = current & ~mask
    else:
        out[region] = mask
    return out


@dataclass
class SliceRequest:
    """A 2D prediction: prompts on one slice, the prior mask clicks edit (2D, or None), the
    structure (chooses the HU window)."""

    prompts: SlicePrompts
    prior: np.ndarray | None = None
    structure: str | None = None


@dataclass
class PropagateRequest:
    """A 3D propagation from ``mask2d`` on slice ``sliceIndex`` of index axis ``axis``."""

    axis: int
    sliceIndex: int
    mask2d: np.ndarray
    structure: str | None = None
    progress: Callable[[float, str], None] | None = None
    cancel: object = None


@dataclass
class Edit3DRequest:
    """A 3D click or box for the worker's :class:`~lkseg.refine.InteractiveSegment`.

    Attributes:
        key: the session, ``(segmentationNodeId, segmentId, structure, axis)``.
        axis: index axis normal to the slice (0 = i, 1 = j, 2 = k).
        point: ``(3,)`` continuous ``(i, j, k)`` of a click, or None.
        positive: click polarity.
        box: ``(2, 3)`` ``(i, j, k)`` minimum and maximum corners on slice ``sliceIndex``, or None.
        sliceIndex: the box's slice along ``axis``.
        structure: structure name (HU window and band).
        initial: the segment's bool ZYX mask when the session must be (re)read from it, else None.
        drop: session keys the main thread forgot (least recently used): dropped here too.
    """

    key: tuple
    axis: int
    point: np.ndarray | None = None
    positive: bool = True
    box: np.ndarray | None = None
    sliceIndex: int | None = None
    structure: str | None = None
    initial: np.ndarray | None = None
    drop: tuple = ()
    progress: Callable[[float, str], None] | None = None
    cancel: object = None


@dataclass
class Edit3DOutcome:
    """What one 3D click or box changed: ``region`` (ZYX slices of the changed bounding box, None
    when nothing changed) with the bool ``before``/``after`` blocks there, the core's warnings."""

    region: tuple[slice, slice, slice] | None
    before: np.ndarray | None
    after: np.ndarray | None
    warnings: list[str] = field(default_factory=list)
    reread: bool = False


#: Engines with a running worker, kept alive until shut down: a predictor dropped by the garbage
#: collector with its native threads still running aborts the process at exit.
_LIVE_ENGINES: set = set()


@atexit.register
def _shutdownEngines() -> None:
    """Stop worker threads and predictors before the interpreter tears down."""
    for engine in list(_LIVE_ENGINES):
        try:
            engine.shutdown()
        except Exception as exc:
            log.debug("engine shutdown at exit: %s", exc)


def _defaultPredictorFactory(model: str, device: str):
    from lkseg.refine.predictor import PromptPredictor

    return PromptPredictor(model=model, device=device)


class RefineEngine:
    """The prompt predictor on one persistent worker thread.

    Args:
        model: prompt model name or checkpoint ("litemedsam").
        device: "auto", "cpu" or "cuda".
        predictorFactory: ``factory(model, device) -> predictor`` (tests inject a stand-in); the
            predictor follows :class:`lkseg.refine.PromptPredictor`: ``set_volume(volume)``,
            ``slicer.user_slice_axis(view)``, ``predict(view, slice_index, points=, labels=, box=,
            mask_prior=, coords="voxel", structure=)`` and ``propagate(view, slice_index, mask2d,
            structure=, progress=, cancel=)``.
    """

    def __init__(self, model: str = "litemedsam", device: str = "auto", predictorFactory: Callable | None = None):
        self.model, self.device = model, device
        self._factory = predictorFactory or _defaultPredictorFactory
        self._executor: ThreadPoolExecutor | None = None
        self._predictor = None
        self._volumeKey: object = None
        self._sessions: dict = {}  # worker thread: 3D session key -> InteractiveSegment
        #: main thread: 3D session key -> the segment's fingerprint after the logic's last write
        #: (the worker's session equals the segment while it is unchanged), least recent first
        self.sessionStates: OrderedDict = OrderedDict()
        self.maxSessions = 3
        self._submittedVolumeKey: object = None

    def noteVolume(self, key: object) -> None:
        """Main thread: the next job uses the volume ``key``; when it differs from the previous
        job's, the worker will set the new volume and drop its 3D sessions, so their states go too."""
        if key != self._submittedVolumeKey:
            self._submittedVolumeKey = key
            self.sessionStates.clear()

    def _submit(self, fn, *args) -> Future:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lkseg-refine")
            _LIVE_ENGINES.add(self)
        return self._executor.submit(fn, *args)

    def _submitFor(self, fn, volume: Volume, key: object, *args) -> Future:
        self.noteVolume(key)
        return self._submit(fn, volume, key, *args)

    # -- runs on the worker thread ----------------------------------------------------------
    def _ready(self, volume: Volume, key: object):
        if self._predictor is None:
            log.info("loading prompt model %s on %s", self.model, self.device)
            self._predictor = self._factory(self.model, self.device)
        if key != self._volumeKey:
            self._predictor.set_volume(volume)
            self._volumeKey = key
            self._sessions.clear()  # they hold the previous volume's slicer
        return self._predictor

    @staticmethod
    def _viewFor(predictor, axis: int) -> str:
        """The predictor's anatomical view whose slices are normal to index axis ``axis``."""
        for view in ("axial", "coronal", "sagittal"):
            if 2 - predictor.slicer.user_slice_axis(view) == axis:
                return view
        raise PromptError(f"no view slices index axis {axis}")  # pragma: no cover - reorient is a permutation

    def _predictSlice(self, volume: Volume, key: object, request: SliceRequest) -> np.ndarray:
        predictor = self._ready(volume, key)
        prompts = request.prompts
        box = None
        if prompts.box is not None:
            lo, hi = (np.array(c, dtype=np.float64) for c in prompts.box)
            lo[prompts.axis] = hi[prompts.axis] = prompts.sliceIndex  # the ROI's thickness is irrelevant in 2D
            box = np.stack([lo, hi])
        return np.asarray(
            predictor.predict(
                self._viewFor(predictor, prompts.axis),
                prompts.sliceIndex,
                points=prompts.points if len(prompts.points) else None,
                labels=prompts.labels if len(prompts.labels) else None,
                box=box,
                mask_prior=request.prior,
                coords="voxel",
                structure=request.structure,
            ),
            dtype=bool,
        )

    def _propagate(self, volume: Volume, key: object, request: PropagateRequest) -> np.ndarray:
        predictor = self._ready(volume, key)
        return np.asarray(
            predictor.propagate(
                self._viewFor(predictor, request.axis),
                request.sliceIndex,
                request.mask2d,
                structure=request.structure,
                progress=request.progress,
                cancel=request.cancel,
            ),
            dtype=bool,
        )

    def _edit3D(self, volume: Volume, key: object, request: Edit3DRequest) -> Edit3DOutcome:
        from lkseg.refine.session import InteractiveSegment

        predictor = self._ready(volume, key)
        for old in request.drop:
            self._sessions.pop(old, None)
        session = self._sessions.get(request.key)
        if request.initial is not None or session is None:
            if request.initial is None:  # pragma: no cover - the main thread's bookkeeping prevents it
                raise RuntimeError("the 3D editing state was lost; click again")
            # max_history=1: the logic's EditHistory is the undo stack; only the last change is read
            session = InteractiveSegment(
                predictor,
                request.structure,
                self._viewFor(predictor, request.axis),
                initial=request.initial,
                max_history=1,
            )
            self._sessions[request.key] = session
        try:
            if request.box is not None:
                session.box(
                    request.sliceIndex, request.box, progress=request.progress, cancel=request.cancel, return_mask=False
                )
            else:
                session.click(
                    request.point, request.positive, progress=request.progress, cancel=request.cancel, return_mask=False
                )
        except BaseException:
            self._sessions.pop(request.key, None)  # the main thread re-reads the segment next time
            raise
        change = session.last_change()
        warnings = list(session.last_warnings)
        if change is None:
            return Edit3DOutcome(None, None, None, warnings, request.initial is not None)
        return Edit3DOutcome(*change, warnings, request.initial is not None)

    # -- API (any thread) -------------------------------------------------------------------
    def predictSlice(self, volume: Volume, key: object, request: SliceRequest) -> Future:
        """Future of the bool 2D mask (the slice's ZYX plane with the axis removed).

        Args:
            volume: the CT; ``key`` identifies it (the predictor re-reads the volume when it changes).
            request: prompts, prior and structure.
        """
        return self._submitFor(self._predictSlice, volume, key, request)

    def propagate(self, volume: Volume, key: object, request: PropagateRequest) -> Future:
        """Future of a bool ZYX 3D mask grown from one slice's mask."""
        return self._submitFor(self._propagate, volume, key, request)

    def edit3D(self, volume: Volume, key: object, request: Edit3DRequest) -> Future:
        """Future of the :class:`Edit3DOutcome` of a 3D click or box (main thread: the caller
        keeps :attr:`sessionStates` in step, see :mod:`LiverKidneySegLib.refine3d`)."""
        return self._submitFor(self._edit3D, volume, key, request)

    def warmUp(self, volume: Volume, key: object) -> Future:
        """Load the model and set the volume in the background (before the first click)."""
        return self._submitFor(self._ready, volume, key)

    def shutdown(self) -> None:
        """Stop the worker thread (waits for the running job) and drop the predictor."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        if self._predictor is not None and hasattr(self._predictor, "close"):
            self._predictor.close()  # stops the predictor's own prefetch thread (the worker is gone)
        self._executor, self._predictor, self._volumeKey = None, None, None
        self._sessions.clear()
        self.sessionStates.clear()
        self._submittedVolumeKey = None
        _LIVE_ENGINES.discard(self)


@dataclass
class RefineResult:
    """What one refinement did: the segment, the number of voxels changed, the history entry;
    for 3D clicks and boxes also the core's ``warnings`` (e.g. a click on air was ignored) and the
    changed ``region`` (ZYX slices of its bounding box, None when nothing changed)."""

    segmentId: str
    changedVoxels: int
    description: str
    warnings: list[str] = field(default_factory=list)
    region: tuple[slice, slice, slice] | None = None


class Refiner:
    """Applies prompt predictions to segments, with undo/redo.

    Clicks on one slice form an *interaction*: every new prompt re-predicts the slice from all of
    its prompts and combines that prediction with the segment **as it was before the
    interaction's first prompt**, so a negative point can take back what an earlier positive
    point added. Each placement is still its own undo step. The interaction ends when the
    segment, slice or mode changes, or on :meth:`endInteraction` (prompts cleared, undo, redo).

    Args:
        engine: the :class:`RefineEngine`.
        history: shared :class:`EditHistory`.
    """

    def __init__(self, engine: RefineEngine, history: EditHistory | None = None):
        self.engine = engine
        self.history = history if history is not None else EditHistory()
        self._interaction: tuple | None = None
        self._base: np.ndarray | None = None

    def endInteraction(self) -> None:
        """Forget the current interaction's base (the next prompt starts a new one)."""
        self._interaction, self._base = None, None

    def applyMask(
        self,
        segmentationNode,
        segmentId: str,
        volume: Volume,
        mask: np.ndarray,
        mode: str,
        region,
        description: str,
        base: np.ndarray | None = None,
        rules=None,
    ) -> RefineResult:
        """Combine ``mask`` into the segment on ``region`` (on the MRML thread) and record the edit.

        Only this segment is written. Args:
            base: the segment's voxels in ``region`` to combine with (default: the current ones).
            rules: :class:`~LiverKidneySegLib.editrules.EditRules` limiting where voxels may change
                (Segment Editor's masking/overwrite); None: everywhere.
        """
        before = segmentMask(segmentationNode, segmentId, volume.grid)
        start = before.copy()
        if base is not None:
            start[region or (slice(None),) * 3] = base
        after = combineMasks(start, mask, mode, region)
        if rules is not None and not rules.unrestricted:
            from LiverKidneySegLib.editrules import applyEditRules, editableMask

            after = applyEditRules(before, after, *editableMask(rules, segmentationNode, segmentId, volume))
        edit = self.history.record(segmentationNode, segmentId, before, after, volume.grid, description, within=region)
        if edit is not None:
            setSegmentMask(segmentationNode, segmentId, after, volume.grid, region=edit.region)  # only what changed
        return RefineResult(segmentId, 0 if edit is None else edit.changedVoxels, description)

    def sliceBase(
        self, segmentationNode, segmentId: str, volume: Volume, prompts: SlicePrompts, mode: str
    ) -> np.ndarray:
        """The slice voxels the current interaction combines with (starts one when needed)."""
        key = (segmentationNode.GetID(), segmentId, prompts.axis, prompts.sliceIndex, mode, volume.grid.shape)
        if key != self._interaction or self._base is None:
            region = sliceRegion(volume.grid.shape, prompts.axis, prompts.sliceIndex)
            self._base = segmentMask(segmentationNode, segmentId, volume.grid)[region].copy()
            self._interaction = key
        return self._base
