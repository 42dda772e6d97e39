"""The automatic segmenter: load a model package once, segment many CTs.

Pipeline of :meth:`AutoSegmenter.predict` (each stage timed in ``AutoResult.timings``):

1. ``checks``: the input must look like a CT in HU (:mod:`lkseg.auto.checks`).
2. ``coarse``: the model grids are defined in the canonical orientation (``"LPS"``: the input
   grid permuted/flipped by :func:`lkseg.orientation.reorient_grid`, so no voxel is interpolated
   for that) at the model spacing; the coarse network labels the whole scan at low resolution and
   gives one padded box per organ (:mod:`lkseg.auto.cascade`). Without a cascade, one box covers
   the whole scan. Organs this misses are looked for again by the fine network over the whole
   scan and then, when the package has one, by a second locator (``locator2_*`` timings).
3. ``fine_resample`` / ``fine_infer``: inside each box the CT is sampled at the fine spacing,
   normalised (HU clip + z-score) and segmented by Gaussian-blended sliding windows
   (:mod:`lkseg.auto.window`), optionally with mirroring test-time augmentation.
4. ``resample_back``: the probabilities are resampled (trilinear, physical space) onto the exact
   input grid and the arg-max taken (:class:`lkseg.auto.sampling.ProbabilityField`: only voxels
   near label boundaries need interpolating); the label map is built in the canonical grid and
   put back into the input's storage order (permutation/flips only).
5. ``postprocess``: one piece per organ, lesions inside their organ, holes filled, kidney side by
   RAS x (:mod:`lkseg.auto.postprocess`).

The label map returned lies on the input grid voxel for voxel, with
:data:`lkseg.labels.PRODUCT_LABELS` values.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from lkseg.auto.cascade import (
    Box,
    bounding_box,
    covering_box,
    expand_to_multiple,
    find_organ_boxes,
    merge_boxes,
    sub_grid,
)
from lkseg.auto.checks import check_ct_volume
from lkseg.auto.hybrid import HybridConfig
from lkseg.auto.plausibility import BodyFacts, refuse_implausible_positions
from lkseg.auto.postprocess import PostprocessConfig, organ_groups, postprocess_labels
from lkseg.auto.sampling import ImageSampler, ProbabilityField
from lkseg.auto.window import WindowConfig, plan_windows, run_sliding_window
from lkseg.errors import InputError, LKSegError
from lkseg.labels import PRODUCT_LABELS, LabelTable, get_structure
from lkseg.models import ModelManifest, StageSpec, configure_threads, find_model, load_stage_network, resolve_device
from lkseg.models.checksum import verify_file
from lkseg.orientation import reorient_grid
from lkseg.progress import CancelToken, ProgressCallback, SubProgress, report
from lkseg.resample import grid_for_spacing
from lkseg.volume import Grid, Volume

__all__ = ["AutoOptions", "AutoResult", "AutoSegmenter"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AutoOptions:
    """Inference settings; ``None`` means "the model package's default".

    Attributes:
        cascade: run the coarse locator first (only when the package has one).
        tta: mirroring test-time augmentation along the package's ``mirror_axes``.
        overlap: sliding-window overlap fraction.
        sw_batch_size: windows per forward pass.
        margin_mm: padding of the organ boxes of the cascade.
        amp: float16 autocast on CUDA.
        return_probabilities: also return the winning probability and a normalised-entropy
            uncertainty map on the input grid.
        check_input: refuse inputs that do not look like CT.
        postprocess: postprocessing switches (default: all on).
        roi: ``"auto"`` (fewest windows of up to 1.5x the patch, see
            :func:`lkseg.auto.window.plan_windows`) or ``"patch"`` (MONAI's plain tiling).
        class_weights: structure name -> factor on that fine-stage probability before the
            arg-max (then renormalised); ``None``: the package's ``inference.class_weights``.
        mode: ``"hybrid"`` (the U-Net locates, the prompt model draws the organs, see
            :mod:`lkseg.auto.hybrid`), ``"unet"`` (the U-Net alone) or ``"auto"``: hybrid when the
            refine extra is installed, else the U-Net with one warning. The environment variable
            ``LKSEG_AUTO_MODE`` (``hybrid``/``unet``) replaces ``"auto"`` (the test suite sets
            ``unet`` for speed).
        hybrid: rules of the hybrid stage (default :class:`~lkseg.auto.hybrid.HybridConfig`).
        relocate: when the cascade's locator misses an organ or finds one implausibly small,
            run the fine network over the whole scan too and keep the result with more
            plausible organs (short slabs, tight fields of view); then, for organs still missing
            or small, ask the package's second locator (a ``coarse2`` stage) when it has one.
        context_mm: a scan shorter than this along the patient's head-foot axis is extended to
            it (edge slices repeated, half above and half below) before the networks see it, and
            their labels are cropped back to the scan: networks trained on whole abdomens read a
            thin slab floating in padding badly. ``0`` turns it off.
    """

    cascade: bool | None = None
    tta: bool = False
    overlap: float | None = None
    sw_batch_size: int | None = None
    margin_mm: float | None = None
    amp: bool = True
    return_probabilities: bool = False
    check_input: bool = True
    postprocess: PostprocessConfig | None = None
    roi: str = "auto"
    class_weights: dict[str, float] | None = None
    mode: str = "auto"
    hybrid: HybridConfig | None = None
    relocate: bool = True
    context_mm: float = 160.0


@dataclass
class AutoResult:
    """What :meth:`AutoSegmenter.predict` returns.

    Attributes:
        labels: uint8 label map on the exact input grid (ZYX), values of ``label_table``.
        label_table: value -> structure name (:data:`~lkseg.labels.PRODUCT_LABELS` values).
        timings: seconds per stage.
        warnings: problems the user should see (input doubts, organs not found, empty result).
        notes: what postprocessing changed.
        probability: (optional) float32 probability of the chosen label per voxel.
        uncertainty: (optional) float32 normalised entropy in [0, 1] per voxel.
        boxes_mm: the fine boxes, each ``(lps_min, lps_max)`` in mm (for display and debugging).
        mode: ``"hybrid"`` or ``"unet"``: what drew the organs (for the report's audit trail).
        lesions_reliable: False when the model's tumour/cyst outputs are phantom-trained (the demo
            model): they are kept but flagged as unreliable on real CT.
        prompt_backend: in hybrid mode, the prompt model and how it ran (e.g. ``"litemedsam
            onnx-int8, fast decoder"``; see :class:`lkseg.refine.PredictorConfig`), else None.
    """

    labels: Volume
    label_table: LabelTable
    timings: dict[str, float]
    warnings: list[str]
    notes: list[str] = field(default_factory=list)
    model_id: str = ""
    model_version: str = ""
    device: str = "cpu"
    cascade: bool = False
    probability: Volume | None = None
    uncertainty: Volume | None = None
    boxes_mm: list[tuple[list[float], list[float]]] = field(default_factory=list)
    mode: str = "unet"
    lesions_reliable: bool = True
    prompt_backend: str | None = None

    @property
    def empty(self) -> bool:
        return not bool(self.labels.array.any())

    @property
    def volumes_ml(self) -> dict[str, float]:
        """Structure name -> volume in mL (0 for structures not found)."""
        counts = np.bincount(self.labels.array.reshape(-1), minlength=max(self.label_table, default=0) + 1)
        ml = self.labels.grid.voxel_volume_ml
        return {name: float(counts[v]) * ml for v, name in self.label_table.items()}

    @property
    def found(self) -> list[str]:
        return [name for name, ml in self.volumes_ml.items() if ml > 0]

    def to_segmentation(self):
        """The result as a :class:`lkseg.segmentation.Segmentation` (colours and terminology)."""
        from lkseg.segmentation import Segmentation

        return Segmentation.from_label_volume(self.labels, self.label_table)


def head_foot_axis(grid: Grid) -> int:
    """Index axis (0 = i, 1 = j, 2 = k) of ``grid`` closest to the patient's head-foot (LPS z) axis."""
    return int(np.argmax(np.abs(np.asarray(grid.direction)[2, :])))


def extend_head_foot(volume: Volume, context_mm: float) -> tuple[Volume, tuple[slice, ...]] | None:
    """``volume`` with its first and last slices along the head-foot axis repeated until it spans
    ``context_mm`` (same spacing and direction; the origin moved so that every original voxel keeps
    its LPS position), and the ZYX slices that cut the original back out; None when it already does."""
    if context_mm <= 0:
        return None
    axis = head_foot_axis(volume.grid)
    spacing = volume.spacing[axis]
    n = volume.shape[2 - axis]  # ZYX array: index axis i is array axis 2
    missing = math.ceil((context_mm - n * spacing) / spacing)
    if missing <= 0:
        return None
    lo, hi = missing // 2, missing - missing // 2
    pad = [(0, 0)] * 3
    pad[2 - axis] = (lo, hi)
    array = np.pad(volume.array, pad, mode="edge")
    direction = np.asarray(volume.grid.direction, dtype=np.float64)
    origin = np.asarray(volume.grid.origin, dtype=np.float64) - lo * spacing * direction[:, axis]
    big = Volume.from_array(array, volume.spacing, origin, direction, dict(volume.meta))
    crop = [slice(None)] * 3
    crop[2 - axis] = slice(lo, lo + n)
    return big, tuple(crop)


@dataclass
class _Raw:
    """The U-Net's output before structures are selected."""

    labels: np.ndarray
    timer: _Timer
    warnings: list[str]
    notes: list[str]
    cascade: bool
    extras: dict


def _resolve_mode(mode: str) -> str:
    import os

    if mode not in ("auto", "hybrid", "unet"):
        raise InputError(f"unknown automatic mode {mode!r}; use auto, hybrid or unet")
    if mode == "auto":
        env = os.environ.get("LKSEG_AUTO_MODE", "").strip().lower()
        mode = env if env in ("hybrid", "unet") else "hybrid"
    return mode


def _weak_organs(volumes: dict[str, float], keep: list[str]) -> list[str]:
    """Organs wanted but absent or below the plausible adult minimum (mL)."""
    return [n for n in keep if _is_organ(n) and volumes.get(n, 0.0) < _PLAUSIBLE_ML[n][0]]


def _plausibility(volumes: dict[str, float]) -> float:
    """Sum over organs of the fraction of the plausible minimum volume reached (0..4)."""
    return sum(min(volumes.get(n, 0.0) / lo, 1.0) for n, (lo, _hi) in _PLAUSIBLE_ML.items())


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def add(self, key: str, start: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - start


class AutoSegmenter:
    """Load a model package once, then segment many CTs with :meth:`predict`.

    Args:
        model: a model id (``"lkseg-demo-abdomen"``, ``"id@version"``), a package folder, or a
            loaded :class:`~lkseg.models.ModelManifest`; ``None`` picks the default model.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        options: default inference options for every call.
        threads: CPU threads for torch (default: all CPUs this process may use).
        backend: ``"auto"`` (ONNX Runtime on the CPU when installed - somewhat faster there, see
            :mod:`lkseg.models.onnx` -, PyTorch on CUDA), ``"torch"`` or ``"onnx"``.

    Raises:
        ModelError / ChecksumError: the package is missing, malformed or its weights do not match.
    """

    def __init__(
        self,
        model: str | Path | ModelManifest | None = None,
        device: str = "auto",
        options: AutoOptions | None = None,
        threads: int | None = None,
        backend: str = "auto",
    ):
        t0 = time.perf_counter()
        self.manifest = model if isinstance(model, ModelManifest) else find_model(model)
        self.device = resolve_device(device)
        self.threads = configure_threads(threads)
        self.options = options or AutoOptions()
        self.nets: dict = {}
        self.backend = self._load_networks(backend)
        self.output_table, self._channel_map = _output_mapping(self.manifest)
        self.load_seconds = time.perf_counter() - t0
        log.info(
            "model %s@%s ready on %s in %.2f s", self.manifest.id, self.manifest.version, self.device, self.load_seconds
        )

    def _load_networks(self, backend: str) -> str:
        """Fill ``self.nets`` and return the back end: ``torch`` (eager), or ``onnx`` (ONNX Runtime;
        CPU only). ``auto``: ONNX Runtime on the CPU when it is installed, eager PyTorch on CUDA.

        The weights' SHA-256 is checked against the manifest first, whatever the back end. With a
        valid cached ONNX export of an lkseg package's stage, the PyTorch network is not built
        (nor MONAI imported): :func:`lkseg.models.onnx.onnx_network`.
        """
        from lkseg.models.onnx import onnx_available, onnx_network

        if backend not in ("auto", "torch", "onnx"):
            raise InputError(f"unknown back end {backend!r}; use auto, torch or onnx")
        stages = self.manifest.stages
        if backend == "onnx" and self.device.type != "cpu":
            log.warning("the ONNX back end runs on the CPU only; using PyTorch on %s", self.device)
        use_onnx = self.device.type == "cpu" and (backend == "onnx" or (backend == "auto" and onnx_available()))
        built: dict = {}

        def network(name: str):
            if name not in built:
                built[name] = load_stage_network(self.manifest, stages[name], self.device)
            return built[name]

        if use_onnx and self.manifest.framework == "lkseg" and self.manifest.folder is not None:
            for stage in stages.values():  # what load_stage_network checks before building
                verify_file(self.manifest.folder / stage.weights, self.manifest.weights[stage.weights])
        else:
            for name in stages:
                network(name)
        if use_onnx:
            try:
                self.nets = {
                    name: onnx_network(self.manifest, stage, lambda name=name: network(name), self.threads)
                    for name, stage in stages.items()
                }
                return "onnx"
            except LKSegError as exc:
                if backend == "onnx":
                    raise
                log.warning("ONNX Runtime back end unavailable (%s); using PyTorch", exc)
        self.nets = {name: network(name) for name in stages}
        return "torch"

    # -- public ------------------------------------------------------------------------------
    @property
    def structures(self) -> list[str]:
        """Structure names this model can produce."""
        return list(self.output_table.values())

    def predict(
        self,
        volume: Volume,
        structures: Sequence[str] | None = None,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        options: AutoOptions | None = None,
    ) -> AutoResult:
        """Segment ``volume`` (a CT in HU, any orientation).

        The U-Net runs first (with the cascade's locator; if it misses an organ the fine
        network also runs over the whole scan, and then, for organs still missing, the cascade
        with the package's second locator if it has one: see ``AutoOptions.relocate``), then in
        hybrid mode the prompt model redraws the organs (:mod:`lkseg.auto.hybrid`).

        Args:
            volume: the CT.
            structures: names to keep (default: all the model produces); lesions need their
                organ, which is then segmented too but not returned.
            progress: callback ``(fraction, message)``.
            cancel: token polled between sliding-window batches (within about a second).
            options: overrides the segmenter's default options for this call.

        Returns:
            :class:`AutoResult` with labels on the exact input grid.

        Raises:
            InputError: not a CT, too small, NaN voxels, unknown structure names.
            CancelledError: cancelled through ``cancel``.
        """
        opts = options or self.options
        keep = self._select(structures)
        return self._predict(volume, keep, opts, progress, cancel)

    def _predict_unet(self, volume, keep, opts, progress, cancel, locator: str = "coarse") -> _Raw:
        """The U-Net alone (checks, cascade, fine network, resampling, postprocessing); all labels
        of the model are kept (the caller drops the unwanted ones). ``locator`` names the stage
        that finds the boxes (``"coarse"``, or ``"coarse2"``: the package's second locator)."""
        extended = extend_head_foot(volume, opts.context_mm)
        if extended is not None:
            big, crop = extended
            # the input checks judge the scan the user gave (a 3-slice scan stays refused)
            warnings = check_ct_volume(volume) if opts.check_input else []
            raw = self._predict_unet(
                big, keep, replace(opts, context_mm=0.0, check_input=False), progress, cancel, locator
            )
            raw.warnings[:0] = warnings
            raw.labels = np.ascontiguousarray(raw.labels[crop])
            for key in ("probability", "uncertainty"):
                if raw.extras.get(key) is not None:
                    raw.extras[key] = np.ascontiguousarray(raw.extras[key][crop])
            axis = head_foot_axis(volume.grid)
            extent = volume.shape[2 - axis] * volume.spacing[axis]
            raw.notes.insert(
                0,
                f"context: the scan spans {extent:.0f} mm head-foot; its edge slices were repeated to "
                f"{opts.context_mm:.0f} mm for the networks and their labels cropped back to the scan",
            )
            return raw
        timer = _Timer()
        start = time.perf_counter()
        warnings = check_ct_volume(volume) if opts.check_input else []
        timer.add("checks", start)
        report(progress, 0.02, "checked input")
        plan = reorient_grid(volume.grid, self.manifest.orientation)
        canonical = plan.reoriented
        sampler = ImageSampler(volume)
        use_cascade = self.manifest.coarse is not None and (
            opts.cascade if opts.cascade is not None else self.manifest.inference.cascade
        )
        fine_grid = grid_for_spacing(canonical, self.manifest.fine.spacing)
        if use_cascade:
            start = time.perf_counter()
            boxes = self._locate(
                sampler,
                canonical,
                fine_grid,
                keep,
                opts,
                SubProgress(progress, 0.02, 0.15, "locating organs: "),
                cancel,
                locator,
            )
            timer.add("coarse", start)
        else:
            boxes = [Box((0, 0, 0), fine_grid.shape, ("all",))]
        if not boxes:
            warnings.append("no liver, kidney or spleen found: the scan may not show the abdomen; the result is empty")
            labels = np.zeros(volume.shape, dtype=np.uint8)
            return _Raw(labels, timer, warnings, [], use_cascade, {})
        probs, union = self._fine(
            sampler, fine_grid, boxes, opts, timer, SubProgress(progress, 0.15, 0.85, "segmenting: "), cancel
        )
        report(progress, 0.86, "resampling onto the input grid")
        start = time.perf_counter()
        weights = self.manifest.inference.class_weights if opts.class_weights is None else opts.class_weights
        if weights:
            _weigh_classes(probs, weights, self.manifest.fine.labels)
        union_grid = sub_grid(fine_grid, union)
        field = ProbabilityField(probs, union_grid)
        del probs
        target = covering_box(union_grid, Box((0, 0, 0), union.shape), canonical)
        labels_can = np.zeros(canonical.shape, dtype=np.uint8)
        prob_can = unc_can = None
        if opts.return_probabilities:
            prob_can = np.ones(canonical.shape, dtype=np.float32)
            unc_can = np.zeros(canonical.shape, dtype=np.float32)
        if target is not None:
            if cancel is not None:
                cancel.raise_if_cancelled()
            target_grid = sub_grid(canonical, target)
            labels_can[target.slices] = self._channel_map[field.argmax(target_grid)]
            if prob_can is not None:
                prob_can[target.slices], unc_can[target.slices] = field.confidence(target_grid)
        del field
        timer.add("resample_back", start)
        report(progress, 0.93, "postprocessing")
        start = time.perf_counter()
        notes: list[str] = []
        if target is not None:
            post = opts.postprocess or PostprocessConfig(min_organ_ml=self.manifest.inference.min_organ_ml)
            notes = postprocess_labels(labels_can[target.slices], target_grid, self.output_table, post)
        timer.add("postprocess", start)
        start = time.perf_counter()
        labels = np.ascontiguousarray(plan.undo_array(labels_can))
        prob_map = np.ascontiguousarray(plan.undo_array(prob_can)) if prob_can is not None else None
        unc_map = np.ascontiguousarray(plan.undo_array(unc_can)) if unc_can is not None else None
        timer.add("assemble", start)
        boxes_mm = [_box_mm(fine_grid, b) for b in boxes]
        report(progress, 1.0, "done")
        extras = {"probability": prob_map, "uncertainty": unc_map, "boxes_mm": boxes_mm}
        return _Raw(labels, timer, warnings, notes, use_cascade, extras)

    def _predict(self, volume: Volume, keep: list[str], opts: AutoOptions, progress, cancel) -> AutoResult:
        mode = _resolve_mode(opts.mode)
        fallback_warning = None
        predictor = None
        if mode == "hybrid":
            predictor, fallback_warning = self._prompt_predictor()
            if predictor is None:
                mode = "unet"
        share = 0.35 if mode == "hybrid" else 1.0
        # the U-Net's pass, a whole-scan pass when the locator misses an organ, and the second
        # locator's pass for organs still missing after both
        first = SubProgress(progress, 0.0, 0.5 * share)
        second = SubProgress(progress, 0.5 * share, 0.8 * share)
        third = SubProgress(progress, 0.8 * share, share)
        raw = self._predict_unet(volume, keep, opts, first, cancel)
        body = BodyFacts(volume.array, volume.grid)  # read once for every pass
        raw.notes.extend(
            refuse_implausible_positions(raw.labels, volume.array, volume.grid, self.output_table, body=body)
        )
        ml = volume.grid.voxel_volume_ml
        weak = _weak_organs(self._volumes(raw.labels, ml), keep)
        if raw.cascade and opts.relocate and opts.cascade is None and weak:
            full = self._predict_unet(volume, keep, replace(opts, cascade=False), second, cancel)
            full.notes.extend(
                refuse_implausible_positions(full.labels, volume.array, volume.grid, self.output_table, body=body)
            )
            before = _plausibility(self._volumes(raw.labels, ml))
            after = _plausibility(self._volumes(full.labels, ml))
            if after > before + 0.2:
                full.timer.timings.update({f"first_{k}": v for k, v in raw.timer.timings.items()})
                full.notes.append(
                    f"locator: the cascade missed or under-found {', '.join(weak)}; the fine network over the whole "
                    f"scan scored {after:.2f} organs of plausible size instead of {before:.2f} and was used"
                )
                full.cascade = False
                raw = full
            else:
                raw.timer.timings.update({f"relocate_{k}": v for k, v in full.timer.timings.items()})
                added = self._merge_organs(raw.labels, full.labels, weak, ml)
                raw.notes.append(
                    f"locator: {', '.join(weak)} missing or small after the cascade; "
                    + (
                        f"taken from the whole-scan network: {', '.join(added)}"
                        if added
                        else "the whole-scan network found no more"
                    )
                )
        if self.manifest.coarse2 is not None and opts.relocate and opts.cascade is None:
            weak = _weak_organs(self._volumes(raw.labels, ml), keep)
            if weak:
                self._ask_second_locator(volume, raw, weak, opts, body, third, cancel)
        if fallback_warning:
            raw.warnings.append(fallback_warning)
        rules = opts.hybrid or HybridConfig()
        if mode == "hybrid" and raw.labels.any() and opts.relocate and rules.mirror_kidney:
            from lkseg.auto.mirror import MirrorConfig, find_mirrored_kidney

            start = time.perf_counter()
            looking = SubProgress(progress, share, share, "")  # a message while it runs; the bar stays
            mirrored, added = find_mirrored_kidney(
                predictor,
                volume,
                raw.labels,
                self.output_table,
                body,
                MirrorConfig(sample_mm=rules.sample_mm),
                cancel,
                looking,
            )
            raw.notes.extend(mirrored)
            if added:
                raw.warnings.append(
                    f"the {get_structure(added).display.lower()} was not found by the model but drawn at the mirror image of the "
                    "other kidney: review it"
                )
            raw.timer.timings["kidney_mirror"] = time.perf_counter() - start
        if mode == "hybrid" and raw.labels.any():
            from lkseg.auto.hybrid import hybrid_refine

            post = opts.postprocess or PostprocessConfig(min_organ_ml=self.manifest.inference.min_organ_ml)
            out = hybrid_refine(
                predictor,
                volume,
                raw.labels,
                self.output_table,
                opts.hybrid,
                post,
                SubProgress(progress, share, 0.98, "drawing organs: "),
                cancel,
                phantom_lesions=self.phantom_trained,
            )
            raw.labels = np.ascontiguousarray(out.labels)
            raw.notes.extend(out.notes)
            raw.warnings.extend(out.warnings)
            raw.timer.timings.update(out.timings)
        result = self._result(volume, raw.labels, keep, raw.timer, raw.warnings, raw.notes, raw.cascade, raw.extras)
        result.mode = mode
        if mode == "hybrid" and predictor is not None:
            result.prompt_backend = predictor.engine.describe()
        result.lesions_reliable = not self.phantom_trained
        lesions = [n for n, ml in result.volumes_ml.items() if ml > 0 and not _is_organ(n)]
        if lesions and not result.lesions_reliable:
            result.warnings.append(
                f"{', '.join(lesions)} come from a model trained on synthetic phantoms and are unreliable on real CT: "
                "confirm or redraw each lesion (a box on a lesion gives its 3D mask: lkseg refine)"
            )
        report(progress, 1.0, "done")
        return result

    def _ask_second_locator(self, volume: Volume, raw: _Raw, weak: list[str], opts, body, progress, cancel) -> None:
        """Run the cascade again with the package's second locator (``coarse2``), its boxes only
        around ``weak`` (organs still missing or implausibly small), and copy those of them that it
        finds at a plausible size, in a plausible position, into free voxels of ``raw.labels``: an
        organ the first locator labelled is never changed. Notes say what was asked and taken."""
        alt = self._predict_unet(volume, weak, replace(opts, check_input=False), progress, cancel, "coarse2")
        refused = refuse_implausible_positions(alt.labels, volume.array, volume.grid, self.output_table, body=body)
        added = self._merge_organs(raw.labels, alt.labels, weak, volume.grid.voxel_volume_ml)
        raw.timer.timings.update({f"locator2_{k}": v for k, v in alt.timer.timings.items()})
        raw.notes.extend(f"second locator: {note}" for note in refused)
        raw.notes.append(
            f"second locator: {', '.join(weak)} missing or small after the first locator; "
            + (f"taken from the second: {', '.join(added)}" if added else "it found none of them")
        )
        log.info("second locator asked for %s, took %s", weak, added or "nothing")

    def _merge_organs(self, labels: np.ndarray, other: np.ndarray, organs: list[str], ml: float) -> list[str]:
        """Copy ``organs`` (with their lesions) that ``other`` holds at a plausible size into
        the free voxels of ``labels`` (in place); returns the organs copied."""
        added = []
        volumes = self._volumes(other, ml)
        value_of = {n: v for v, n in self.output_table.items()}
        groups = organ_groups(self.output_table)  # the lesions of each organ, as postprocessing groups them
        for organ in organs:
            if organ not in value_of or volumes.get(organ, 0.0) < _PLAUSIBLE_ML[organ][0]:
                continue
            piece = other == value_of[organ]
            grown = ndimage.binary_dilation(piece, iterations=2)
            lesions = next((les for members, les in groups.values() if value_of[organ] in members), [])
            if lesions:
                piece |= np.isin(other, lesions) & grown
            free = piece & (labels == 0)
            labels[free] = other[free]
            added.append(organ)
        return added

    @property
    def phantom_trained(self) -> bool:
        """True for a model package trained on synthetic phantoms (the demo model)."""
        text = f"{self.manifest.name} {self.manifest.task}".lower()
        return "phantom" in text

    def _volumes(self, labels: np.ndarray, ml: float) -> dict[str, float]:
        counts = np.bincount(labels.reshape(-1), minlength=max(self.output_table) + 1)
        return {name: float(counts[v]) * ml for v, name in self.output_table.items()}

    def _prompt_predictor(self):
        """The prompt model for the hybrid mode, loaded once: ``(predictor, None)``, or
        ``(None, warning)`` when the refine extra or its weights are missing (logged once)."""
        if getattr(self, "_prompt", None) is not None:
            return self._prompt, None
        try:
            from lkseg.refine import PredictorConfig, PromptPredictor

            self._prompt = PromptPredictor(
                device=str(self.device),
                # 96 slices (384 MiB at most): the extension beyond an organ's ends re-uses the
                # embeddings of its end slices instead of encoding them again
                config=PredictorConfig(prefetch=0, cache_slices=96, threads=self.threads),
            )
            return self._prompt, None
        except (ImportError, LKSegError, OSError) as exc:
            text = (
                f"hybrid segmentation unavailable ({exc}); the U-Net alone drew the organs "
                "(install the refine extra: pip install 'liverkidneyseg[refine]'; in 3D Slicer the module "
                "installs it after asking)"
            )
            if not getattr(self, "_prompt_warned", False):
                log.warning(text)
                self._prompt_warned = True
            return None, text

    # -- stages ------------------------------------------------------------------------------
    def _select(self, structures: Sequence[str] | None) -> list[str]:
        available = self.structures
        if not structures:
            return available
        unknown = [s for s in structures if s not in available]
        if unknown:
            raise InputError(f"model {self.manifest.id!r} does not segment {unknown}; it segments {available}")
        return list(structures)

    def _needed_organs(self, keep: list[str]) -> list[str]:
        groups = organ_groups(LabelTable(dict(enumerate(self.structures, start=1))))
        wanted = set(keep)
        organs = []
        for organ, (organ_values, lesion_values) in groups.items():
            names = {self.structures[v - 1] for v in organ_values + lesion_values}
            if names & wanted:
                organs.append(organ)
        return organs

    def _run(self, stage: StageSpec, image: np.ndarray, opts: AutoOptions, progress, cancel) -> np.ndarray:
        """Normalised ZYX image -> (C, Z, Y, X) probabilities of ``stage``."""
        ijk = self.manifest.array_order == "ijk"
        arr = image.transpose(2, 1, 0) if ijk else image
        patch = stage.patch_size if ijk else tuple(reversed(stage.patch_size))
        overlap = self.manifest.inference.overlap if opts.overlap is None else opts.overlap
        if opts.roi == "auto":
            roi, overlap = plan_windows(arr.shape, patch, overlap)
        else:
            roi = tuple(patch)
        mirror = ()
        if opts.tta:
            axes = self.manifest.inference.mirror_axes
            if not axes:
                log.warning("model %s was not trained with mirroring; test-time augmentation skipped", self.manifest.id)
            mirror = tuple(a if ijk else 2 - a for a in axes)
        config = WindowConfig(
            roi=roi,  # type: ignore[arg-type]
            overlap=overlap,
            # on a CPU a batch of windows is no faster, only bigger in memory
            sw_batch_size=opts.sw_batch_size
            or (1 if self.device.type == "cpu" else self.manifest.inference.sw_batch_size),
            mirror_dims=mirror,
            amp=opts.amp,
        )
        run = run_sliding_window(self.nets[stage.name], arr, config, self.device, progress, cancel)
        if run.device != self.device:
            log.warning("model moved to %s after running out of GPU memory (%s)", run.device, "; ".join(run.attempts))
            self.device = run.device
            self.nets = {k: n.to(run.device) for k, n in self.nets.items()}
        probs = run.probabilities
        return probs.transpose(0, 3, 2, 1) if ijk else probs

    def _normalise(self, image: np.ndarray) -> np.ndarray:
        return self.manifest.intensity.apply(image)

    def _locate(
        self, sampler: ImageSampler, canonical: Grid, fine_grid: Grid, keep, opts, progress, cancel, locator: str
    ) -> list[Box]:
        stage = self.manifest.stages[locator]
        coarse_grid = grid_for_spacing(canonical, stage.spacing)
        whole = Box((0, 0, 0), coarse_grid.shape)
        padded = expand_to_multiple(whole)
        image = self._normalise(sampler.sample(sub_grid(coarse_grid, padded)))
        probs = self._run(stage, image, opts, progress, cancel)
        inner = tuple(slice(a - p, b - p) for a, b, p in zip(whole.lo, whole.hi, padded.lo))
        coarse_labels = probs.argmax(axis=0).astype(np.uint8)[inner]
        organs = self._needed_organs(keep)
        found = find_organ_boxes(coarse_labels, coarse_grid, stage.labels, organs, self.manifest.inference.min_organ_ml)
        margin = self.manifest.inference.margin_mm if opts.margin_mm is None else opts.margin_mm
        boxes = [b for b in (covering_box(coarse_grid, box, fine_grid, margin) for box in found) if b is not None]
        merged = merge_boxes(boxes)
        log.info(
            "cascade: %d organ piece(s) -> %d box(es), %.1f%% of the fine grid",
            len(found),
            len(merged),
            100 * sum(b.size for b in merged) / max(1, math.prod(fine_grid.shape)),
        )
        return merged

    def _fine(
        self, sampler: ImageSampler, fine_grid: Grid, boxes: list[Box], opts, timer: _Timer, progress, cancel
    ) -> tuple[np.ndarray, Box]:
        stage = self.manifest.fine
        boxes = [expand_to_multiple(b) for b in boxes]
        union = bounding_box(boxes)
        channels = stage.num_classes
        probs: np.ndarray | None = None
        count = np.zeros(union.shape, dtype=np.float32) if len(boxes) > 1 else None
        total = sum(b.size for b in boxes)
        done = 0
        for box in boxes:
            start = time.perf_counter()
            image = self._normalise(sampler.sample(sub_grid(fine_grid, box)))
            timer.add("fine_resample", start)
            start = time.perf_counter()
            sub = SubProgress(progress, done / total, (done + box.size) / total)
            box_probs = self._run(stage, image, opts, sub, cancel)
            done += box.size
            channels = box_probs.shape[0]
            rel = tuple(slice(a - u, b - u) for a, b, u in zip(box.lo, box.hi, union.lo))
            if count is None:
                probs = box_probs
            else:
                if probs is None:
                    probs = np.zeros((channels, *union.shape), dtype=np.float32)
                probs[(slice(None), *rel)] += box_probs
                count[rel] += 1.0
            timer.add("fine_infer", start)
        assert probs is not None
        if count is not None:
            covered = count > 0
            probs[:, covered] /= count[covered]
            probs[0][~covered] = 1.0
        return probs, union

    def _result(self, volume, labels, keep, timer, warnings, notes, cascade, extras: dict | None = None) -> AutoResult:
        """Assemble the result; ``extras`` may hold ``probability``, ``uncertainty`` (arrays) and ``boxes_mm``."""
        extras = extras or {}
        prob_map, unc_map = extras.get("probability"), extras.get("uncertainty")
        start = time.perf_counter()
        drop = [v for v, name in self.output_table.items() if name not in keep]
        if drop:
            labels[np.isin(labels, drop)] = 0
        table = LabelTable({v: n for v, n in self.output_table.items() if n in keep})
        meta = {"model": f"{self.manifest.id}@{self.manifest.version}", "source": volume.meta.get("source")}
        result = AutoResult(
            labels=volume.with_array(labels, meta=meta),
            label_table=table,
            timings=timer.timings,
            warnings=list(warnings),
            notes=notes,
            model_id=self.manifest.id,
            model_version=self.manifest.version,
            device=str(self.device),
            cascade=cascade,
            probability=volume.with_array(prob_map, meta={}) if prob_map is not None else None,
            uncertainty=volume.with_array(unc_map, meta={}) if unc_map is not None else None,
            boxes_mm=extras.get("boxes_mm", []),
        )
        volumes = result.volumes_ml
        missing = [n for n in keep if volumes.get(n, 0) == 0 and _is_organ(n)]
        if result.empty:
            if not any("empty" in w for w in warnings):
                result.warnings.append("nothing was found: the result is empty")
        elif missing:
            wanted = [n for n in keep if _is_organ(n)]
            hint = ""
            if len(missing) >= 2 and len(missing) >= len(wanted) / 2:
                hint = "; the scan may not show the abdomen, or only part of it - review the result before use"
            result.warnings.append(f"not found: {', '.join(missing)}{hint}")
        result.warnings.extend(_implausible_volumes(volumes))
        timer.add("assemble", start)
        return result

    def with_options(self, **changes) -> AutoSegmenter:
        """This segmenter with some default options changed (networks shared, not reloaded)."""
        clone = object.__new__(AutoSegmenter)
        clone.__dict__.update(self.__dict__)
        clone.options = replace(self.options, **changes)
        return clone


#: Adult organ volumes (mL) outside which a result is flagged; deliberately wide (clinical.md:
#: liver ~1200-1800 mL, each kidney ~120-200 mL, spleen ~150-250 mL).
_PLAUSIBLE_ML = {
    "liver": (500.0, 5000.0),
    "kidney_right": (30.0, 600.0),
    "kidney_left": (30.0, 600.0),
    "spleen": (20.0, 2000.0),
}


def _implausible_volumes(volumes: dict[str, float]) -> list[str]:
    out = []
    for name, (lo, hi) in _PLAUSIBLE_ML.items():
        ml = volumes.get(name, 0.0)
        if ml > 0 and not lo <= ml <= hi:
            out.append(
                f"{name} volume {ml:.0f} mL is outside the plausible adult range {lo:.0f}-{hi:.0f} mL: review it"
            )
    return out


def _is_organ(name: str) -> bool:
    return name in ("liver", "kidney_right", "kidney_left", "spleen")


def _weigh_classes(probs: np.ndarray, weights: dict[str, float], labels: LabelTable) -> None:
    """Multiply channels of the (C, Z, Y, X) stack ``probs`` by their structure's factor and
    renormalise in place (a shift of the class priors: tumour voxels that the network calls
    uncertain go to the tumour when its factor is above 1)."""
    unknown = sorted(set(weights) - set(labels.values()))
    if unknown:
        raise InputError(f"class_weights name {unknown}, not labels of this model ({sorted(labels.values())})")
    for channel, name in labels.items():
        factor = float(weights.get(name, 1.0))
        if factor != 1.0:
            probs[channel] *= factor
    total = probs.sum(axis=0)
    np.maximum(total, 1e-12, out=total)
    probs /= total


def _box_mm(grid: Grid, box: Box) -> tuple[list[float], list[float]]:
    corners = np.array([[box.lo[2], box.lo[1], box.lo[0]], [box.hi[2] - 1, box.hi[1] - 1, box.hi[0] - 1]], dtype=float)
    lps = grid.index_to_lps(corners)
    return (np.round(lps.min(axis=0), 1).tolist(), np.round(lps.max(axis=0), 1).tolist())


def _output_mapping(manifest: ModelManifest) -> tuple[LabelTable, np.ndarray]:
    """Product label table of the model's structures and the channel -> product value lookup."""
    values: dict[int, str] = {}
    next_value = max(PRODUCT_LABELS) + 1
    for name in manifest.structures:
        try:
            values[PRODUCT_LABELS.value_of(name)] = name
        except KeyError:
            values[next_value] = name
            next_value += 1
    table = LabelTable(values)
    lut = np.zeros(max(256, manifest.fine.num_classes), dtype=np.uint8)
    for channel, name in manifest.fine.labels.items():
        if name in table.values():
            lut[channel] = table.value_of(name)
    return table, lut
