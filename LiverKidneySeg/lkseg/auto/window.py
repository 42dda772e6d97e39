"""Sliding-window inference with Gaussian blending, mirroring TTA, AMP and out-of-memory fallback.

Input arrays are one normalised image, ZYX (or IJK for models whose ``array_order`` is ``"ijk"``),
float32; the network sees tensors of shape (N, 1, D0, D1, D2) and returns logits (N, C, D0, D1, D2);
the result is a (C, D0, D1, D2) float32 array of softmax probabilities blended by
:func:`blend_windows` with Gaussian window weights: the placement and weights of MONAI's
``sliding_window_inference`` (mode ``"gaussian"``), which the tests check against MONAI, without
importing MONAI (4-4.5 s on this project's 2-core CPUs, measured after torch) when the networks
run on ONNX Runtime.

On a CUDA device a ``torch.cuda.OutOfMemoryError`` is retried with half the window batch, then
with the blended output kept in host memory, and finally on the CPU; each step is logged.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from lkseg.progress import CancelToken, ProgressCallback, report

__all__ = [
    "WindowConfig",
    "WindowRun",
    "blend_windows",
    "count_windows",
    "fit_roi",
    "gaussian_importance",
    "plan_windows",
    "run_sliding_window",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowConfig:
    """Settings of one sliding-window pass.

    Attributes:
        roi: window size in array axis order (D0, D1, D2) voxels.
        overlap: fraction of overlap between windows (0.25 = 25%), one for all axes or per axis.
        sw_batch_size: windows per forward pass.
        mirror_dims: array axes (0, 1, 2) to mirror for test-time augmentation; each adds a pass.
        amp: mixed precision on CUDA (bfloat16, float16 where bfloat16 is missing); the CPU computes float32.
    """

    roi: tuple[int, int, int]
    overlap: float | tuple[float, ...] = 0.25
    sw_batch_size: int = 2
    mirror_dims: tuple[int, ...] = ()
    amp: bool = True


@dataclass
class WindowRun:
    """Result of :func:`run_sliding_window`: probabilities and the device it finally ran on."""

    probabilities: np.ndarray
    device: object
    attempts: list[str]


def fit_roi(shape: Sequence[int], patch: Sequence[int], multiple: int = 16, grow: float = 1.5) -> tuple[int, int, int]:
    """Window size for an array of ``shape``: the training ``patch``, except along axes where the
    whole extent fits within ``grow`` x patch - there one window covers it (rounded up to a
    multiple of the network's total stride), which saves the overlap on small organ boxes."""
    roi = []
    for n, p in zip(shape, patch):
        if n <= p * grow:
            roi.append(max(multiple, int(math.ceil(n / multiple) * multiple)))
        else:
            roi.append(int(p))
    return tuple(roi)  # type: ignore[return-value]


def plan_windows(
    shape: Sequence[int], patch: Sequence[int], overlap: float = 0.25, multiple: int = 16, grow: float = 1.5
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Window size and per-axis overlap that cover ``shape`` with the fewest voxels computed.

    Along each axis the fewest windows of at most ``grow`` x patch that still overlap by
    ``overlap`` x patch are spread evenly (a 200-voxel box with a 112 patch gets 2 windows of 128
    instead of MONAI's 3 of 112); an axis that fits in one window gets exactly one. Sizes are
    multiples of ``multiple`` (the network's total stride). Returns (roi, overlaps) for
    :func:`monai.inferers.sliding_window_inference`.
    """
    roi, overlaps = [], []
    for n, p in zip(shape, patch):
        limit = max(multiple, int(p * grow) // multiple * multiple)
        if n <= limit:
            roi.append(max(multiple, int(math.ceil(n / multiple) * multiple)))
            overlaps.append(0.0)
            continue
        margin = math.ceil(overlap * p)
        k = 2
        while math.ceil((n + (k - 1) * margin) / k / multiple) * multiple > limit:
            k += 1
        size = int(math.ceil((n + (k - 1) * margin) / k / multiple) * multiple)
        interval = math.ceil((n - size) / (k - 1))
        roi.append(size)
        overlaps.append(1.0 - (interval + 0.5) / size)  # MONAI: interval = int(size * (1 - overlap))
    return tuple(roi), tuple(overlaps)  # type: ignore[return-value]


def count_windows(shape: Sequence[int], roi: Sequence[int], overlap: float | Sequence[float]) -> int:
    """Number of windows MONAI's sliding window places over ``shape`` (same rule as MONAI)."""
    overlaps = [overlap] * len(shape) if isinstance(overlap, (int, float)) else list(overlap)
    return math.prod(len(_window_starts(max(n, r), r, o)) for n, r, o in zip(shape, roi, overlaps))


def _window_starts(n: int, roi: int, overlap: float) -> list[int]:
    """Start indices of the windows along one axis of (padded) length ``n >= roi``: a step of
    ``int(roi * (1 - overlap))`` (at least 1), the last window moved back to end at ``n``."""
    if roi >= n:
        return [0]
    step = max(1, int(roi * (1 - overlap)))
    count = math.ceil((n - roi) / step) + 1
    return [min(i * step, n - roi) for i in range(count)]


def gaussian_importance(roi: Sequence[int], sigma_scale: float = 0.125, device=None):
    """Window weights: the product of per-axis Gaussians centred on the window (sigma =
    ``sigma_scale`` x the window's side), clamped below at their minimum or 1e-3, float32."""
    import torch

    weights = None
    for i, n in enumerate(roi):
        x = torch.arange(n, dtype=torch.float32, device=device) - (n - 1) / 2.0
        g = torch.exp(x**2 / (-2.0 * (n * sigma_scale) ** 2))
        weights = g if weights is None else weights.unsqueeze(-1) * g[(None,) * i]
    return weights.clamp_(min=max(float(weights.min()), 1e-3))


def blend_windows(image, roi, overlap, batch: int, predict, window_device, out_device):
    """Gaussian-weighted sliding window over ``image`` (a (1, 1, D0, D1, D2) tensor): the image is
    zero-padded (half before, half after) to at least ``roi``; windows of ``roi`` start every
    ``int(roi * (1 - overlap))`` voxels per axis (the last one flush with the end); ``predict``
    maps a (B, 1, *roi) batch to (B, C, *roi) probabilities; each voxel gets the
    importance-weighted mean of the windows covering it. Returns (1, C, D0, D1, D2) float32 on
    ``out_device``. The same placement and weights as MONAI's ``sliding_window_inference``
    (mode ``"gaussian"``, ``sigma_scale`` 0.125, constant padding), which the tests compare
    against."""
    import torch
    import torch.nn.functional as F

    shape = tuple(int(n) for n in image.shape[2:])
    overlaps = [overlap] * 3 if isinstance(overlap, (int, float)) else list(overlap)
    pads = [max(r - n, 0) for n, r in zip(shape, roi)]
    if any(pads):
        flat = []
        for p in reversed(pads):  # F.pad takes the last axis first
            flat += [p // 2, p - p // 2]
        image = F.pad(image, flat, mode="constant", value=0.0)
    padded = tuple(int(n) for n in image.shape[2:])
    starts = [_window_starts(n, r, o) for n, r, o in zip(padded, roi, overlaps)]
    corners = list(itertools.product(*starts))
    weight = gaussian_importance(roi, device=window_device)
    w_out = weight.to(out_device)
    out = count = None
    for first in range(0, len(corners), batch):
        group = corners[first : first + batch]
        windows = [tuple(slice(s, s + r) for s, r in zip(c, roi)) for c in group]
        x = torch.cat([image[(slice(None), slice(None), *w)] for w in windows]).to(window_device)
        prob = predict(x)
        if out is None:
            out = torch.zeros((1, prob.shape[1], *padded), dtype=torch.float32, device=out_device)
            count = torch.zeros((1, 1, *padded), dtype=torch.float32, device=out_device)
        weighted = (prob.float() * weight).to(out_device)
        for n, w in enumerate(windows):
            out[(slice(None), slice(None), *w)] += weighted[n : n + 1]
            count[(slice(None), slice(None), *w)] += w_out
    out /= count
    if any(pads):
        crop = tuple(slice(p // 2, p // 2 + n) for p, n in zip(pads, shape))
        out = out[(slice(None), slice(None), *crop)]
    return out


def _make_predictor(net, config: WindowConfig, device, cancel: CancelToken | None, on_batch: Callable[[], None]):
    import torch

    use_amp = config.amp and getattr(device, "type", "cpu") == "cuda"
    # bfloat16 keeps float32's range (float16 can overflow inside instance norm); float16 only
    # on GPUs without bfloat16
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    flips = [()] + [(2 + d,) for d in config.mirror_dims]

    def predict(window: torch.Tensor) -> torch.Tensor:
        if cancel is not None:
            cancel.raise_if_cancelled()
        total = None
        for dims in flips:
            x = torch.flip(window, dims) if dims else window
            with torch.autocast("cuda", dtype=amp_dtype, enabled=use_amp):
                logits = net(x)
            prob = torch.softmax(logits.float(), dim=1)
            if dims:
                prob = torch.flip(prob, dims)
            total = prob if total is None else total.add_(prob)
        on_batch()
        return total / len(flips) if len(flips) > 1 else total

    return predict


def _plan(device, sw_batch: int) -> list[tuple[object, int, bool]]:
    """(device, window batch, keep output on device) attempts, in order."""
    import torch

    if getattr(device, "type", "cpu") != "cuda":
        return [(device, sw_batch, True)]
    steps = []
    b = sw_batch
    while b >= 1:
        steps.append((device, b, True))
        b //= 2
    steps.append((device, 1, False))
    steps.append((torch.device("cpu"), sw_batch, True))
    return steps


def run_sliding_window(
    net,
    image: np.ndarray,
    config: WindowConfig,
    device,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> WindowRun:
    """Blend softmax probabilities of ``net`` over ``image`` (3D float32) with Gaussian windows.

    Returns:
        :class:`WindowRun` whose ``probabilities`` are (C, *image.shape) float32 on the host and
        ``device`` is where the network is after the run (the CPU after an OOM fallback).
    """
    import torch

    n_batches = math.ceil(count_windows(image.shape, config.roi, config.overlap) / max(1, config.sw_batch_size))
    attempts: list[str] = []
    last_error: BaseException | None = None
    for dev, batch, out_on_device in _plan(device, config.sw_batch_size):
        done = [0]
        total_batches = max(1, math.ceil(n_batches * config.sw_batch_size / batch))

        def on_batch(done=done, total_batches=total_batches) -> None:
            done[0] += 1
            report(progress, done[0] / total_batches, f"window batch {done[0]}/{total_batches}")

        param = next(net.parameters(), None)
        if param is not None and param.device != torch.device(dev):
            if torch.device(dev).type == "cpu":
                log.warning("CUDA out of memory even with batch 1: continuing on the CPU")
            net = net.to(dev)
        attempts.append(f"{dev} batch {batch}{'' if out_on_device else ' (output on host)'}")
        try:
            with torch.inference_mode():
                x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(dev)
                out = blend_windows(
                    x,
                    config.roi,
                    config.overlap,
                    batch,
                    _make_predictor(net, config, dev, cancel, on_batch),
                    dev,
                    dev if out_on_device else torch.device("cpu"),
                )
                probs = out[0].float().cpu().numpy()
            if not np.isfinite(probs).all():
                if config.amp and torch.device(dev).type == "cuda":
                    log.warning("non-finite probabilities under mixed precision; recomputing in float32")
                    return run_sliding_window(net, image, replace(config, amp=False), device, progress, cancel)
                raise RuntimeError("the network produced non-finite probabilities (NaN/inf)")
            return WindowRun(probs, dev, attempts)
        except torch.cuda.OutOfMemoryError as exc:
            last_error = exc
            log.warning("CUDA out of memory with %s; retrying with less memory", attempts[-1])
            del exc
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    raise RuntimeError(f"sliding-window inference failed after {attempts}") from last_error
