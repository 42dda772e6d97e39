"""The prompt predictor: set a volume once, then cheap 2D predictions from boxes and clicks.

Pattern of segment-anything's ``SamPredictor``: :meth:`PromptPredictor.set_volume` once, then
many :meth:`~PromptPredictor.predict` calls; :meth:`~PromptPredictor.propagate` turns a slice
mask into a 3D mask. Image embeddings are cached per ``(view, slice, HU window)`` in a bounded
LRU, and a background worker precomputes the neighbouring slices of the one last used.

Coordinates (see :mod:`lkseg.refine.slices`): points are ``(N, 3)`` arrays of voxel indices
``(i, j, k)`` of the volume (``coords="voxel"``) or RAS millimetres (``coords="ras"``); a box is
two opposite corners ``(2, 3)`` in the same system; returned masks are bool arrays on the
volume's own grid (a 2D slice is ``volume.array`` with the view's axis removed, a 3D mask has
``volume.shape``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lkseg.errors import InputError, PromptError
from lkseg.progress import CancelToken, ProgressCallback
from lkseg.refine.cache import EmbeddingCache, Prefetcher
from lkseg.refine.clicks import ClickConfig, SliceEditor
from lkseg.refine.maskops import bbox
from lkseg.refine.propagation import PropagationConfig, propagate_from
from lkseg.refine.slices import HUWindow, InputTransform, VolumeSlicer, window_for
from lkseg.volume import Volume

__all__ = ["PredictorConfig", "PromptPredictor", "SliceResult", "check_ct"]

log = logging.getLogger(__name__)


@dataclass
class PredictorConfig:
    """Tuning of a :class:`PromptPredictor` (defaults are the measured best, see README).

    Attributes:
        backend: ``"auto"`` (ONNX Runtime with an int8 encoder on CPU, eager PyTorch on CUDA),
            ``"onnx"`` (fp32), ``"onnx-int8"``, ``"eager"`` (fp32 reference) or ``"torchscript"``.
        decoder: ``"auto"`` (``$LKSEG_PROMPT_DECODER``, else ``"fast"``), ``"fast"`` (the
            mask decoder with reassociated image-side products, :mod:`lkseg.refine.fastdecoder`:
            the same masks up to rounding, about half the operations) or ``"reference"``.
        threads: intra-op threads (default: torch's setting).
        cache_slices: LRU capacity in slices (4 MiB each).
        prefetch: neighbouring slices precomputed on each side in the background (0 = off).
        cache_dir: cache root for ONNX exports (default ``~/.cache/lkseg``).
        clicks: how clicks edit masks with a box-trained model.
        propagation: how 3D propagation steps and stops.
    """

    backend: str = "auto"
    decoder: str = "auto"
    threads: int | None = None
    cache_slices: int = 64
    prefetch: int = 2
    cache_dir: str | Path | None = None
    clicks: ClickConfig = field(default_factory=ClickConfig)
    propagation: PropagationConfig = field(default_factory=PropagationConfig)


@dataclass
class SliceResult:
    """One 2D prediction: ``mask`` (bool, volume grid), the model's IoU estimate and warnings."""

    mask: np.ndarray
    score: float
    view: str
    slice_index: int
    warnings: list[str] = field(default_factory=list)


def check_ct(volume: Volume) -> None:
    """Raise :class:`InputError` when ``volume`` does not look like a CT in Hounsfield units.

    A CT holds air or fat (values below -200 HU) and soft tissue (values above 0), spread over
    hundreds of HU; an MR, a PET or a normalised image does not. ``meta["modality"]``, when
    known, must be ``CT``.
    """
    modality = str(volume.meta.get("modality") or "").upper()
    if modality and modality != "CT":
        raise InputError(f"the image modality is {modality}; interactive refinement needs a CT in Hounsfield units")
    arr = volume.array
    step = max(1, arr.size // 2_000_000)
    sample = arr.reshape(-1)[::step].astype(np.float32)
    p01, p99 = np.percentile(sample, [0.5, 99.5])
    if not (p01 <= -200.0 and p99 >= 0.0 and p99 - p01 >= 300.0):
        raise InputError(
            f"the image does not look like a CT in Hounsfield units (0.5-99.5th percentiles {p01:.0f} .. {p99:.0f}); "
            "pass check_ct=False to segment it anyway"
        )


class _SliceContext:
    """One display slice prepared for the model (lazy embedding)."""

    def __init__(self, predictor: PromptPredictor, view: str, c: int, window: HUWindow):
        self.view, self.c, self.window = view, c, window
        slicer = predictor._slicer
        self.hu = np.asarray(slicer.display_slice(view, c), dtype=np.float32)
        self.pixel_mm = slicer.pixel_mm(view)
        self.transform = InputTransform(self.hu.shape[0], self.hu.shape[1], *self.pixel_mm, predictor.spec.input_size)
        self._predictor = predictor
        self.embedding = predictor._embedding(view, c, window)

    @property
    def shape(self) -> tuple[int, int]:
        return self.hu.shape

    def decode(
        self,
        box_rc: tuple[int, int, int, int] | None = None,
        points_rc: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        prior: np.ndarray | None = None,
        within_mm: float | None = None,
    ) -> tuple[np.ndarray, float]:
        """Run the decoder; returns logits on the display slice (h, w) and the IoU estimate.

        ``within_mm``: only the pixels within this distance of the box (and the points) are
        wanted: the decoder computes the mask on the embedding cells covering them (the same
        logits there, at about two thirds of the time of a whole-slice decode) and the logits
        elsewhere are very negative (no mask). ``None``: the whole slice.
        """
        return self._predictor._decode(self, box_rc, points_rc, point_labels, prior, within_mm)


def _decoder_window(xy: np.ndarray, tr: InputTransform, within_mm: float, grid: int) -> tuple[int, int, int, int]:
    """Embedding-grid cells ``(r0, r1, c0, c1)`` (half-open) covering every model pixel within
    ``within_mm`` of the prompt points ``xy`` (model x, y; box corners included), plus one cell
    so that the bilinear resize to the display slice near the window's edge reads decoded logits
    only where it matters."""
    cell = tr.size / grid  # model pixels per cell
    model_mm = max(tr.h * tr.row_mm, tr.w * tr.col_mm) / tr.size  # one model pixel (square)
    pad = within_mm / model_mm
    x0, y0 = np.min(xy, axis=0) - pad
    x1, y1 = np.max(xy, axis=0) + pad
    r0, c0 = int(np.floor(y0 / cell)) - 1, int(np.floor(x0 / cell)) - 1
    r1, c1 = int(np.floor(y1 / cell)) + 2, int(np.floor(x1 / cell)) + 2
    return max(0, r0), min(grid, r1), max(0, c0), min(grid, c1)


class PromptPredictor:
    """Interactive 2D/3D segmentation of one CT volume with a SAM-family model.

    Args:
        model: ``"litemedsam"`` (default) or the path of a SAM / MedSAM checkpoint.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        config: tuning, see :class:`PredictorConfig`.
        checkpoint_kind: architecture of a checkpoint file (``sam_vit_b`` ... ``medsam``).
        checkpoint_sha256: digest pinned by the user for a checkpoint without an official one.

    Example::

        p = PromptPredictor()
        p.set_volume(ct)
        m2d = p.predict("axial", 40, box=[[100, 120, 40], [180, 200, 40]])
        m3d = p.propagate("axial", 40, m2d, structure="liver")
    """

    def __init__(
        self,
        model: str | Path = "litemedsam",
        device: str = "auto",
        config: PredictorConfig | None = None,
        checkpoint_kind: str | None = None,
        checkpoint_sha256: str | None = None,
    ):
        from lkseg.refine.models import load_prompt_model
        from lkseg.refine.runtime import make_engine

        self.config = config or PredictorConfig()
        loaded = load_prompt_model(model, kind=checkpoint_kind, expected_sha256=checkpoint_sha256)
        engine = make_engine(
            loaded, self.config.backend, device, self.config.threads, self.config.cache_dir, self.config.decoder
        )
        self._setup(engine)

    @classmethod
    def with_engine(cls, engine, config: PredictorConfig | None = None) -> PromptPredictor:
        """A predictor on an existing :class:`~lkseg.refine.runtime.Engine` (shares its model;
        tests and custom back ends)."""
        self = cls.__new__(cls)
        self.config = config or PredictorConfig()
        self._setup(engine)
        return self

    def _setup(self, engine) -> None:
        self.engine = engine
        self.model = engine.model
        self.spec = engine.spec
        self.cache = EmbeddingCache(self.config.cache_slices)
        self._prefetcher = Prefetcher(self._compute_key, self.cache)
        self._slicer: VolumeSlicer | None = None
        self._volume_id = 0
        self._lock = threading.RLock()

    # -- volume ------------------------------------------------------------------------------------
    def set_volume(self, volume: Volume, *, check_ct_values: bool = True) -> None:
        """Use ``volume`` (a CT in HU) for the following predictions; clears the embedding cache.

        Raises:
            InputError: not a 3D volume, or (with ``check_ct_values``) not a CT in HU.
        """
        if not isinstance(volume, Volume):
            raise InputError(f"set_volume needs an lkseg Volume, got {type(volume).__name__}")
        if check_ct_values:
            check_ct(volume)
        with self._lock:
            self._prefetcher.cancel_pending()
            self._prefetcher.wait_idle(timeout=60.0)
            self.cache.clear()
            self._slicer = VolumeSlicer(volume)
            self._volume_id += 1

    @property
    def volume(self) -> Volume:
        return self._require().volume

    @property
    def slicer(self) -> VolumeSlicer:
        return self._require()

    def _require(self) -> VolumeSlicer:
        if self._slicer is None:
            raise RuntimeError("call set_volume(volume) before predict() or propagate()")
        return self._slicer

    def close(self) -> None:
        """Stop the background worker (also done at interpreter exit)."""
        self._prefetcher.stop()

    # -- embeddings ------------------------------------------------------------------------------------
    def _model_input(self, view: str, c: int, window: HUWindow) -> np.ndarray:
        slicer = self._require()
        hu = slicer.display_slice(view, c)
        tr = InputTransform(hu.shape[0], hu.shape[1], *slicer.pixel_mm(view), self.spec.input_size)
        return tr.image_to_model(window.apply(hu), self.spec.normalisation)

    def _compute_key(self, key) -> np.ndarray:
        volume_id, view, c, window = key
        if volume_id != self._volume_id:
            raise RuntimeError("stale prefetch request")
        return self.engine.encode(self._model_input(view, c, window)[None])

    def _embedding(self, view: str, c: int, window: HUWindow) -> np.ndarray:
        key = (self._volume_id, view, c, window)
        emb = self.cache.get(key)
        if emb is None:
            self._prefetcher.wait_if_busy_with(key)
            emb = self.cache.get(key)
        if emb is None:
            emb = self._compute_key(key)
            self.cache.put(key, emb)
        return emb

    def precompute(
        self,
        view: str,
        canonical_slices: list[int],
        window: HUWindow,
        cancel: CancelToken | None = None,
    ) -> None:
        """Encode several canonical slices in batches of the engine's batch size (foreground)."""
        todo = [c for c in canonical_slices if (self._volume_id, view, c, window) not in self.cache]
        batch = max(1, self.engine.encode_batch)
        for start in range(0, len(todo), batch):
            if cancel is not None:
                cancel.raise_if_cancelled()
            chunk = todo[start : start + batch]
            images = np.stack([self._model_input(view, c, window) for c in chunk])
            embs = self.engine.encode(images)
            for n, c in enumerate(chunk):
                self.cache.put((self._volume_id, view, c, window), embs[n : n + 1])

    def prefetch_around(self, view: str, c: int, window: HUWindow, radius: int | None = None) -> None:
        """Ask the background worker for the slices around canonical slice ``c`` (nearest first)."""
        radius = self.config.prefetch if radius is None else radius
        if radius <= 0:
            return
        n = self._require().n_slices(view)
        keys = []
        for d in range(1, radius + 1):
            for s in (c + d, c - d):
                if 0 <= s < n:
                    keys.append((self._volume_id, view, s, window))
        self._prefetcher.request(keys)

    def wait_prefetch(self, timeout: float = 120.0) -> bool:
        return self._prefetcher.wait_idle(timeout)

    def slice_context(self, view: str, c: int, structure: str | None = None) -> _SliceContext:
        """The prepared canonical slice ``c`` of ``view`` (computes or reuses its embedding)."""
        return _SliceContext(self, view, c, window_for(structure))

    # -- decoding --------------------------------------------------------------------------------------
    def _decode(
        self, ctx: _SliceContext, box_rc, points_rc, point_labels, prior, within_mm: float | None = None
    ) -> tuple[np.ndarray, float]:
        tr = ctx.transform
        coords, labels = [], []
        if points_rc is not None and len(points_rc):
            coords.append(tr.to_model_xy(points_rc))
            labels.append(np.asarray(point_labels, dtype=np.float32).reshape(-1))
        if box_rc is not None:
            coords.append(tr.box_to_model(box_rc).reshape(2, 2))
            labels.append(np.array([2.0, 3.0], dtype=np.float32))
        elif coords:  # points without a box get SAM's padding point
            coords.append(np.zeros((1, 2), dtype=np.float32))
            labels.append(np.array([-1.0], dtype=np.float32))
        if not coords:
            raise PromptError("a prediction needs a box or at least one point")
        mask_input = None if prior is None else tr.mask_to_lowres(prior, magnitude=self.config.clicks.prior_logit)
        xy = np.concatenate(coords)
        window = None
        if within_mm is not None:
            window = _decoder_window(xy[np.concatenate(labels) >= 0], tr, within_mm, ctx.embedding.shape[-1])
        args = (ctx.embedding, xy[None], np.concatenate(labels)[None], mask_input)
        low, iou = self.engine.decode(*args) if window is None else self.engine.decode(*args, window=window)
        return tr.lowres_to_logits(low[0, 0]), float(iou[0, 0])

    # -- prompts -----------------------------------------------------------------------------------------
    def _resolve_slice(self, view: str, slice_index: int | None, prompt_ijk: list[np.ndarray]) -> int:
        slicer = self._require()
        if slice_index is not None:
            if isinstance(slice_index, bool) or not float(slice_index).is_integer():
                raise PromptError(f"slice index must be an integer, got {slice_index!r}")
            return slicer.user_to_canonical_slice(view, int(slice_index))
        if not prompt_ijk:
            raise PromptError("give slice_index or at least one point or box to place the prompt")
        s, _ = slicer.canonical_ijk_to_display(view, prompt_ijk[0][:1])
        c = int(np.rint(s[0]))
        if not 0 <= c < slicer.n_slices(view):
            raise PromptError(f"the prompt lies outside the volume (slice {c} of 0..{slicer.n_slices(view) - 1})")
        return c

    def _to_display(self, view: str, c: int, ijk: np.ndarray, what: str) -> np.ndarray:
        slicer = self._require()
        s, rc = slicer.canonical_ijk_to_display(view, ijk)
        off = np.abs(s - c) > 0.5 + 1e-3
        if np.any(off):
            n = int(np.flatnonzero(off)[0])
            raise PromptError(f"{what} {n} lies on {view} slice {s[n]:.1f}, not on the slice being edited ({c})")
        return rc

    def _prompts_to_display(self, view, slice_index, points, labels, box, coords):
        slicer = self._require()
        ijk_list = []
        pts_ijk = box_ijk = None
        if points is not None and len(np.atleast_1d(points)):
            pts_ijk = slicer.user_points_to_canonical_ijk(points, coords)
            ijk_list.append(pts_ijk)
        if box is not None:
            corners = np.asarray(box, dtype=np.float64)
            if corners.shape != (2, 3):
                raise PromptError(f"a box is two opposite corners, shape (2, 3), got {corners.shape}")
            box_ijk = slicer.user_points_to_canonical_ijk(corners, coords)
            ijk_list.append(box_ijk)
            if coords == "voxel":
                axis = 2 - slicer.user_slice_axis(view)  # index axis of the slice direction (0=i,1=j,2=k)
                inplane = [a for a in range(3) if a != axis]
                if np.any(corners[1, inplane] < corners[0, inplane]):
                    raise PromptError(f"inverted box {corners.tolist()}: give the minimum corner first")
        c = self._resolve_slice(view, slice_index, ijk_list)
        h, w = slicer.display_shape(view)
        pts_rc = lab = box_rc = None
        if pts_ijk is not None:
            pts_rc = self._to_display(view, c, pts_ijk, "point")
            lab = np.asarray(labels if labels is not None else np.ones(len(pts_rc)), dtype=np.float32).reshape(-1)
            if lab.shape[0] != pts_rc.shape[0]:
                raise PromptError(f"{pts_rc.shape[0]} points but {lab.shape[0]} labels")
            if not np.all(np.isin(lab, (0.0, 1.0))):
                raise PromptError(f"point labels must be 1 (positive) or 0 (negative), got {lab.tolist()}")
            rounded = np.rint(pts_rc)
            outside = (rounded[:, 0] < 0) | (rounded[:, 0] >= h) | (rounded[:, 1] < 0) | (rounded[:, 1] >= w)
            if np.any(outside):
                n = int(np.flatnonzero(outside)[0])
                raise PromptError(
                    f"point {np.asarray(points).reshape(-1, 3)[n].tolist()} ({coords}) lies outside the volume"
                )
        if box_ijk is not None:
            rc = self._to_display(view, c, box_ijk, "box corner")
            r0, r1 = np.sort(rc[:, 0])
            c0, c1 = np.sort(rc[:, 1])
            if r1 < 0 or c1 < 0 or r0 > h - 1 or c0 > w - 1:
                raise PromptError(f"the box {np.asarray(box).tolist()} ({coords}) lies outside the volume")
            clipped = (max(r0, 0.0), max(c0, 0.0), min(r1, h - 1.0), min(c1, w - 1.0))
            if clipped != (r0, c0, r1, c1):
                log.warning("box clipped to the volume")
            box_rc = tuple(round(v) for v in clipped)
            if box_rc[2] - box_rc[0] < 1 or box_rc[3] - box_rc[1] < 1:
                raise PromptError(f"the box {np.asarray(box).tolist()} is empty (less than 2 pixels wide or high)")
        return c, pts_rc, lab, box_rc

    # -- public 2D ------------------------------------------------------------------------------------------
    def predict(
        self,
        view: str,
        slice_index: int | None = None,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_prior: np.ndarray | None = None,
        coords: str = "voxel",
        structure: str | None = None,
    ) -> np.ndarray:
        """Predict a 2D mask on one slice; see :meth:`predict_result` (this returns only the mask)."""
        return self.predict_result(view, slice_index, points, labels, box, mask_prior, coords, structure).mask

    def predict_result(
        self,
        view: str,
        slice_index: int | None = None,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_prior: np.ndarray | None = None,
        coords: str = "voxel",
        structure: str | None = None,
    ) -> SliceResult:
        """Predict a 2D mask on slice ``slice_index`` of ``view``.

        Args:
            view: ``"axial"``, ``"coronal"`` or ``"sagittal"`` (anatomical, whatever the storage order).
            slice_index: index along the volume's own axis that ``view`` slices; None = the slice
                of the first point or box.
            points: ``(N, 3)`` clicks, voxel ``(i, j, k)`` or RAS mm (``coords``).
            labels: ``(N,)`` 1 = positive (add), 0 = negative (remove); default all positive.
            box: ``(2, 3)`` opposite corners (voxel: minimum corner first).
            mask_prior: the current 2D mask of this slice (volume grid, view axis removed) that
                clicks edit; with a box-trained model and no box, clicks edit this mask.
            coords: ``"voxel"`` or ``"ras"``.
            structure: structure name (chooses the HU window), e.g. ``"liver"``.

        Returns:
            :class:`SliceResult` whose ``mask`` is a bool 2D array on the volume's grid.

        Raises:
            PromptError: prompt outside the volume, empty or inverted box, slice out of range,
                points on another slice, bad labels.
        """
        slicer = self._require()
        slicer.check_view(view)
        c, pts_rc, lab, box_rc = self._prompts_to_display(view, slice_index, points, labels, box, coords)
        prior = None if mask_prior is None else slicer.user_mask_to_display(view, np.asarray(mask_prior).astype(bool))
        if box_rc is None and pts_rc is None:
            raise PromptError("a prediction needs a box or at least one point")
        with self._lock:
            ctx = self.slice_context(view, c, structure)
            self.prefetch_around(view, c, ctx.window)
            mask, score, warns = self._predict_display(ctx, pts_rc, lab, box_rc, prior)
        for text in warns:
            log.warning(text)
        user = slicer.display_mask_to_user(view, mask)
        return SliceResult(user, score, view, slicer.canonical_to_user_slice(view, c), warns)

    def _predict_display(self, ctx, pts_rc, lab, box_rc, prior) -> tuple[np.ndarray, float, list[str]]:
        if self.spec.supports_points:
            logits, score = ctx.decode(box_rc, pts_rc, lab, prior)
            return logits > 0, score, []
        editor = SliceEditor(ctx, self.config.clicks)
        return editor.run(box_rc, pts_rc, lab, prior)

    # -- public 3D ------------------------------------------------------------------------------------------
    def propagate(
        self,
        view: str,
        slice_index: int,
        mask2d: np.ndarray,
        structure: str | None = None,
        max_slices: int | None = None,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        probability: np.ndarray | None = None,
    ) -> np.ndarray:
        """Extend a slice mask through the neighbouring slices in both directions.

        Each next slice is prompted with the previous slice's box (grown by a margin) and, if
        configured, its mask; propagation stops where the structure ends (mask vanishes, shrinks
        abruptly, leaves the previous mask or changes intensity; see
        :mod:`lkseg.refine.propagation`).

        Args:
            view: slicing direction.
            slice_index: the slice of ``mask2d`` (volume's own index).
            mask2d: bool 2D mask on that slice (volume grid, view axis removed).
            structure: structure name (HU window).
            max_slices: at most this many slices on each side (default: no limit).
            progress, cancel: progress callback and cancel token (checked every slice).
            probability: optional probability map of the structure on the volume's grid (0..1,
                e.g. the U-Net's); propagation also stops where its mean in the mask is low.

        Returns:
            bool 3D mask with ``volume.shape``.
        """
        slicer = self._require()
        slicer.check_view(view)
        c = slicer.user_to_canonical_slice(view, slice_index)
        start = slicer.user_mask_to_display(view, np.asarray(mask2d).astype(bool))
        if bbox(start) is None:
            log.warning("propagate: the start mask is empty; nothing to propagate")
            return np.zeros(slicer.volume.shape, dtype=bool)
        prob_c = None
        if probability is not None:
            probability = np.asarray(probability, dtype=np.float32)
            if probability.shape != slicer.volume.shape:
                raise PromptError(f"probability map has shape {probability.shape}; the volume is {slicer.volume.shape}")
            prob_c = slicer.user_volume_to_canonical(probability)
        with self._lock:
            canon = propagate_from(self, view, c, start, structure, max_slices, progress, cancel, probability=prob_c)
        return slicer.canonical_volume_to_user(canon)
