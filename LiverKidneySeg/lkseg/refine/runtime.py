"""Inference back ends of a prompt model: eager PyTorch (the reference), ONNX Runtime, TorchScript.

All back ends expose the same two calls:

* ``encode(images)``: ``(N, 3, S, S)`` float32 model inputs -> ``(N, 256, 64, 64)`` embeddings;
* ``decode(embedding, coords, labels, mask_input, has_mask)``: one ``(1, 256, 64, 64)``
  embedding, prompt points ``(1, P, 2)`` in model-input pixels (x, y) with labels ``(1, P)``
  (1 positive, 0 negative, 2 / 3 box top-left / bottom-right corner, -1 padding), a mask prompt
  ``(1, 1, 256, 256)`` of logits and a flag ``(1,)`` -> low-resolution logits ``(1, 4, 256, 256)``
  (mask 0 is the single-mask output, 1..3 the multimask outputs) and predicted IoUs ``(1, 4)``.

The decoder graph (:class:`DecoderGraph`) embeds the points itself with the prompt encoder's
weights in a trace-friendly way; ``test_refine_runtime`` checks it against
``segment-anything``'s own ``PromptEncoder.forward`` and the ONNX graphs against eager PyTorch.

ONNX exports are cached under ``~/.cache/lkseg/onnx/<model>-<weights sha256[:16]>/`` (or
``$LKSEG_CACHE``), created on first use; each file's SHA-256 is recorded in a sidecar
``exports.json`` at export and verified before every load, so a damaged cache is rebuilt. The
record also holds everything else that shapes the graphs (:func:`export_key`: weights, torch,
onnx and onnxruntime versions - the int8 encoder is made by onnxruntime's quantizer -, opset and
export code version); any change exports again. ``backend="auto"`` falls back to eager PyTorch
with a warning when the ONNX sessions cannot be exported or built; an explicit ``"onnx"`` raises.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import warnings
from pathlib import Path
from typing import Literal

import numpy as np

from lkseg.cache import cache_root
from lkseg.errors import ModelError
from lkseg.refine.models import LoadedModel, file_sha256

__all__ = ["Backend", "DecoderGraph", "Engine", "cache_root", "make_engine"]

log = logging.getLogger(__name__)

Backend = Literal["onnx", "onnx-int8", "eager", "torchscript"]
Decoder = Literal["fast", "reference"]
#: environment variable that chooses the decoder graph when ``decoder="auto"`` (``fast`` or ``reference``)
DECODER_ENV = "LKSEG_PROMPT_DECODER"
#: environment variable that chooses the CPU back end of ``backend="auto"``
BACKEND_ENV = "LKSEG_PROMPT_BACKEND"
OPSET = 17
#: Version of the export code below (DecoderGraph, export arguments, quantization settings):
#: bump it whenever they change, so that cached graphs are exported again.
EXPORT_VERSION = 2
#: low-res logit outside a decoder window (:meth:`Engine.decode`): far below any decoded logit
OUTSIDE_WINDOW = -1000.0


def _decoder_graph_class():
    import torch

    class _DecoderGraph(torch.nn.Module):
        """Prompt encoder + mask decoder as one traceable graph (see module docstring)."""

        def __init__(self, network):
            super().__init__()
            pe = network.prompt_encoder
            self.mask_decoder = network.mask_decoder
            self.pe_layer = pe.pe_layer
            self.mask_downscaling = pe.mask_downscaling
            self.input_size = float(pe.input_image_size[0])
            weights = torch.cat([pe.point_embeddings[n].weight for n in range(4)], dim=0)  # (4, C)
            self.register_buffer("point_weights", weights.detach().clone(), persistent=False)
            self.register_buffer("not_a_point", pe.not_a_point_embed.weight.detach().clone(), persistent=False)
            self.register_buffer(
                "no_mask", pe.no_mask_embed.weight.detach().reshape(1, -1, 1, 1).clone(), persistent=False
            )
            self.register_buffer("dense_pe", pe.get_dense_pe().detach().clone(), persistent=False)

        def prompt_embeddings(self, coords, labels, mask_input, has_mask):
            """Sparse (1, P, C) and dense (1, C, 64, 64) prompt embeddings."""
            xy = (coords + 0.5) / self.input_size
            point_pe = self.pe_layer._pe_encoding(xy)  # (1, P, C)
            lab = labels.unsqueeze(-1)
            is_pad = (lab == -1).to(point_pe.dtype)
            sparse = point_pe * (1.0 - is_pad) + self.not_a_point * is_pad
            for n in range(4):
                sparse = sparse + (lab == n).to(point_pe.dtype) * self.point_weights[n]
            flag = has_mask.reshape(-1, 1, 1, 1)
            dense = flag * self.mask_downscaling(mask_input) + (1.0 - flag) * self.no_mask
            return sparse, dense

        def forward(self, embedding, coords, labels, mask_input, has_mask):
            sparse, dense = self.prompt_embeddings(coords, labels, mask_input, has_mask)
            masks, iou = self.mask_decoder.predict_masks(
                image_embeddings=embedding,
                image_pe=self.dense_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
            )
            return masks, iou

    return _DecoderGraph


def DecoderGraph(network):
    """Build the traceable decoder module for ``network`` (imports torch lazily)."""
    return _decoder_graph_class()(network).eval()


def decoder_graph(network, decoder: str = "fast"):
    """The decoder module of ``network``: ``"fast"`` (:mod:`lkseg.refine.fastdecoder`, the same
    numbers from cheaper products) or ``"reference"`` (:func:`DecoderGraph`)."""
    if decoder == "fast":
        from lkseg.refine.fastdecoder import FastDecoderGraph

        return FastDecoderGraph(network)
    if decoder == "reference":
        return DecoderGraph(network)
    raise ModelError(f"unknown decoder {decoder!r}; use fast or reference")


def resolve_decoder(decoder: str = "auto") -> str:
    """``"auto"`` -> ``$LKSEG_PROMPT_DECODER`` when set, else ``"fast"``; checks the value."""
    import os

    if decoder == "auto":
        decoder = os.environ.get(DECODER_ENV, "").strip().lower() or "fast"
    if decoder not in ("fast", "reference"):
        raise ModelError(f"unknown prompt decoder {decoder!r} (argument or ${DECODER_ENV}); use fast or reference")
    return decoder


class Engine:
    """Runs a prompt model's encoder and decoder on one back end (thread-safe).

    Use :func:`make_engine`. ``encode_batch`` is the batch size the encoder runs with (ONNX
    graphs of TinyViT have a fixed batch size; shorter batches are padded).
    """

    def __init__(
        self, model: LoadedModel, backend: Backend, device: str, threads: int | None, decoder: Decoder = "fast"
    ):
        self.model = model
        self.spec = model.spec
        self.backend = backend
        self.decoder_kind = decoder
        self.device = device
        self.threads = threads
        self._lock = threading.RLock()
        self.encode_batch = 1
        self.timings: dict[str, float] = {}
        #: images encoded and decoder runs so far (benchmarks and notes)
        self.calls = {"encode": 0, "decode": 0}
        #: seconds spent in the encoder and the decoder so far (inside the lock)
        self.seconds = {"encode": 0.0, "decode": 0.0}

    # -- implemented by subclasses ---------------------------------------------------------------
    def _encode(self, images: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _decode(
        self, embedding, coords, labels, mask_input, has_mask
    ) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def _decode_window(self, embedding, coords, labels, mask_input, has_mask, rows, cols):
        """Masks (1, 4, 4 R, 4 C) on the embedding cells ``rows`` x ``cols`` and IoUs (1, 4).
        This fallback decodes the whole frame and cuts the window out; the fast decoder's
        engines override it with the cheaper window graph."""
        masks, iou = self._decode(embedding, coords, labels, mask_input, has_mask)
        f = masks.shape[-1] // embedding.shape[-1]
        r = (rows[:, None] * f + np.arange(f)).ravel()
        c = (cols[:, None] * f + np.arange(f)).ravel()
        return masks[:, :, r[:, None], c[None, :]], iou

    # -- public ----------------------------------------------------------------------------------------
    def describe(self) -> str:
        """``"<model> <back end>, <decoder> decoder"`` (for logs, notes and the audit trail)."""
        return f"{self.spec.name} {self.backend}, {self.decoder_kind} decoder"

    def encode(self, images: np.ndarray) -> np.ndarray:
        """``(N, 3, S, S)`` float32 -> ``(N, 256, 64, 64)`` float32 embeddings."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        with self._lock:
            self.calls["encode"] += images.shape[0]
            start = time.perf_counter()
            out = self._encode(images)
            self.seconds["encode"] += time.perf_counter() - start
            return out

    def decode(
        self,
        embedding: np.ndarray,
        coords: np.ndarray,
        labels: np.ndarray,
        mask_input: np.ndarray | None = None,
        window: tuple[int, int, int, int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run prompt encoder + mask decoder; returns low-res logits (1, 4, 256, 256) and IoUs (1, 4).

        ``window = (r0, r1, c0, c1)``: embedding-grid cells (rows ``r0:r1``, columns ``c0:c1`` of
        the 64 x 64 grid; each is 4 x 4 low-res pixels) where the masks are computed; the
        logits equal the whole decode's there and are :data:`OUTSIDE_WINDOW` elsewhere (the
        output upscaling, half of a box decode's work, is local to each cell).
        """
        coords = np.ascontiguousarray(np.asarray(coords, dtype=np.float32).reshape(1, -1, 2))
        labels = np.ascontiguousarray(np.asarray(labels, dtype=np.float32).reshape(1, -1))
        if mask_input is None:
            mask = np.zeros((1, 1, 256, 256), dtype=np.float32)
            has = np.zeros((1,), dtype=np.float32)
        else:
            mask = np.ascontiguousarray(mask_input, dtype=np.float32).reshape(1, 1, 256, 256)
            has = np.ones((1,), dtype=np.float32)
        emb = np.ascontiguousarray(embedding, dtype=np.float32).reshape(1, 256, 64, 64)
        if window is None:
            with self._lock:
                self.calls["decode"] += 1
                start = time.perf_counter()
                out = self._decode(emb, coords, labels, mask, has)
                self.seconds["decode"] += time.perf_counter() - start
                return out
        grid = emb.shape[-1]
        r0, r1, c0, c1 = (int(v) for v in window)
        r0, c0 = max(0, r0), max(0, c0)
        r1, c1 = min(grid, r1), min(grid, c1)
        if r1 <= r0 or c1 <= c0:
            raise ValueError(f"empty decoder window {window}")
        rows, cols = np.arange(r0, r1, dtype=np.int64), np.arange(c0, c1, dtype=np.int64)
        with self._lock:
            self.calls["decode"] += 1
            start = time.perf_counter()
            part, iou = self._decode_window(emb, coords, labels, mask, has, rows, cols)
            self.seconds["decode"] += time.perf_counter() - start
        f = part.shape[-1] // (c1 - c0)
        masks = np.full((*part.shape[:2], grid * f, grid * f), OUTSIDE_WINDOW, dtype=np.float32)
        masks[:, :, r0 * f : r1 * f, c0 * f : c1 * f] = part
        return masks, iou


class EagerEngine(Engine):
    """Eager PyTorch: the reference back end (CPU or CUDA)."""

    def __init__(self, model: LoadedModel, device: str, threads: int | None, decoder: Decoder = "fast"):
        super().__init__(model, "eager", device, threads, decoder)
        import torch

        self._torch = torch
        self.network = model.network.to(device)
        self.decoder = decoder_graph(self.network, decoder).to(device)
        self.encode_batch = 4 if device.startswith("cuda") else 1
        self._window = hasattr(self.decoder, "forward_window")

    def _encode(self, images):
        torch = self._torch
        with torch.inference_mode():
            out = self.network.image_encoder(torch.from_numpy(images).to(self.device))
        return out.float().cpu().numpy()

    def _decode(self, embedding, coords, labels, mask, has):
        torch = self._torch
        dev = self.device
        with torch.inference_mode():
            masks, iou = self.decoder(
                torch.from_numpy(embedding).to(dev),
                torch.from_numpy(coords).to(dev),
                torch.from_numpy(labels).to(dev),
                torch.from_numpy(mask).to(dev),
                torch.from_numpy(has).to(dev),
            )
        return masks.float().cpu().numpy(), iou.float().cpu().numpy()

    def _decode_window(self, embedding, coords, labels, mask, has, rows, cols):
        if not self._window:
            return super()._decode_window(embedding, coords, labels, mask, has, rows, cols)
        torch = self._torch
        dev = self.device
        with torch.inference_mode():
            args = [torch.from_numpy(a).to(dev) for a in (embedding, coords, labels, mask, has, rows, cols)]
            masks, iou = self.decoder.forward_window(*args)
        return masks.float().cpu().numpy(), iou.float().cpu().numpy()


class TorchScriptEngine(EagerEngine):
    """``torch.jit.trace`` + ``torch.jit.freeze`` of the encoder (measured; CPU only)."""

    def __init__(self, model: LoadedModel, device: str, threads: int | None, decoder: Decoder = "fast"):
        super().__init__(model, device, threads, decoder)
        torch = self._torch
        self.backend = "torchscript"
        example = torch.zeros(1, 3, self.spec.input_size, self.spec.input_size, device=device)
        start = time.perf_counter()
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(self.network.image_encoder, example)
            self._encoder = torch.jit.freeze(traced.eval())
        self.timings["trace_s"] = time.perf_counter() - start
        self.encode_batch = 1

    def _encode(self, images):
        torch = self._torch
        outs = []
        with torch.inference_mode():
            for n in range(images.shape[0]):
                outs.append(self._encoder(torch.from_numpy(images[n : n + 1]).to(self.device)).float().cpu().numpy())
        return np.concatenate(outs, axis=0)


class OnnxEngine(Engine):
    """ONNX Runtime sessions for the encoder (fixed batch) and the decoder.

    ``quantized=True`` runs an encoder whose MatMul/Gemm weights are dynamically quantized to
    int8 (per channel; activations quantized on the fly): faster on CPUs without bf16, with
    embeddings close to but not equal to fp32 (the eager reference) - see the README's numbers.
    """

    def __init__(
        self,
        model: LoadedModel,
        device: str,
        threads: int | None,
        cache_dir: Path | None,
        encode_batch: int = 1,
        quantized: bool = False,
        decoder: Decoder = "fast",
    ):
        super().__init__(model, "onnx-int8" if quantized else "onnx", device, threads, decoder)
        import onnxruntime as ort

        root = Path(cache_dir) if cache_dir is not None else cache_root()
        folder = root / "onnx" / f"{model.spec.name}-{model.spec.sha256[:16]}"
        paths = ensure_onnx_exports(model, folder, encode_batch, self.timings, quantized, decoder)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # ONNX Runtime's worker threads otherwise spin for a while after each run, taking a core from
        # the numpy/torch work between runs (the hybrid stage decodes ~500 boxes, each followed by
        # mask work). Measured on the real-size input (469x388x210, 2 cores, one warm run each): the
        # hybrid stage 66.5 -> 57.3 s, encoder runs 38.4 -> 36.8 s, decoder runs 20.6 -> 16.0 s,
        # identical masks.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        start = time.perf_counter()
        self._enc = ort.InferenceSession(str(paths["encoder"]), opts, providers=providers)
        self._dec = ort.InferenceSession(str(paths["decoder"]), opts, providers=providers)
        self._dec_window = None
        if "decoder_window" in paths:
            self._dec_window = ort.InferenceSession(str(paths["decoder_window"]), opts, providers=providers)
        self.timings["session_s"] = time.perf_counter() - start
        self.encode_batch = encode_batch
        self.providers = self._enc.get_providers()

    def _encode(self, images):
        n = images.shape[0]
        b = self.encode_batch
        outs = []
        for start in range(0, n, b):
            chunk = images[start : start + b]
            if chunk.shape[0] < b:
                pad = np.zeros((b - chunk.shape[0], *chunk.shape[1:]), dtype=np.float32)
                chunk = np.concatenate([chunk, pad], axis=0)
            out = self._enc.run(None, {"image": chunk})[0]
            outs.append(out[: min(b, n - start)])
        return np.concatenate(outs, axis=0)

    def _decode(self, embedding, coords, labels, mask, has):
        masks, iou = self._dec.run(
            None,
            {"embedding": embedding, "coords": coords, "labels": labels, "mask_input": mask, "has_mask": has},
        )
        return masks, iou

    def _decode_window(self, embedding, coords, labels, mask, has, rows, cols):
        if self._dec_window is None:
            return super()._decode_window(embedding, coords, labels, mask, has, rows, cols)
        feed = {"embedding": embedding, "coords": coords, "labels": labels, "mask_input": mask, "has_mask": has}
        masks, iou = self._dec_window.run(None, {**feed, "rows": rows, "cols": cols})
        return masks, iou


# -- ONNX export and its cache -----------------------------------------------------------------------------
def _export_encoder(model: LoadedModel, path: Path, batch: int) -> None:
    import torch

    size = model.spec.input_size
    example = torch.zeros(batch, 3, size, size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.network.image_encoder,
            (example,),
            str(path),
            opset_version=OPSET,
            input_names=["image"],
            output_names=["embedding"],
            dynamo=False,
        )


def _export_decoder(model: LoadedModel, path: Path, decoder: str = "fast", window: bool = False) -> None:
    """Export the decoder graph; ``window``: the fast decoder's window graph (two more inputs,
    ``rows`` and ``cols``, int64 cell indices of any length)."""
    import torch

    graph = decoder_graph(model.network, decoder).cpu()
    example = (
        torch.zeros(1, 256, 64, 64),
        torch.zeros(1, 2, 2),
        torch.tensor([[2.0, 3.0]]),
        torch.zeros(1, 1, 256, 256),
        torch.zeros(1),
    )
    names = ["embedding", "coords", "labels", "mask_input", "has_mask"]
    dynamic = {"coords": {1: "points"}, "labels": {1: "points"}}
    if window:
        from lkseg.refine.fastdecoder import WindowGraph

        graph = WindowGraph(graph)
        example = (*example, torch.arange(8, 40), torch.arange(4, 30))
        names += ["rows", "cols"]
        dynamic.update({"rows": {0: "window_rows"}, "cols": {0: "window_cols"}})
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            example,
            str(path),
            opset_version=OPSET,
            input_names=names,
            output_names=["masks", "iou"],
            dynamic_axes=dynamic,
            dynamo=False,
        )


def _quantize_encoder(fp32: Path, path: Path) -> None:
    """Dynamic int8 quantization (per-channel weights) of the encoder's MatMul/Gemm nodes."""
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # the quantizer logs every node at INFO on the root logger
    try:
        with tempfile.TemporaryDirectory() as tmp:
            prepared = Path(tmp) / "prepared.onnx"
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            quantize_dynamic(
                str(prepared),
                str(path),
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Gemm"],
                per_channel=True,
            )
    finally:
        root.setLevel(level)


def ensure_onnx_exports(
    model: LoadedModel,
    folder: Path,
    encode_batch: int = 1,
    timings: dict | None = None,
    quantized: bool = False,
    decoder: str = "fast",
) -> dict[str, Path]:
    """Return the encoder and decoder ONNX files for ``model``, exporting them on first use.

    The folder is keyed by the weights' SHA-256; ``exports.json`` records each file's own
    SHA-256, checked before use (a mismatch re-exports). Writes are atomic (temp file + rename).
    """
    from lkseg.io import atomic_path, atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    record_path = folder / "exports.json"
    key = export_key(model)
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        stale = [name for name, value in key.items() if record.get(name) != value]
        if stale:
            log.info("%s: cached ONNX exports made with other %s; exporting again", folder, ", ".join(stale))
            record = {}
    except (OSError, json.JSONDecodeError):
        record = {}
    record.update(key)
    record.setdefault("files", {})
    wanted = {
        "encoder": f"encoder_b{encode_batch}.onnx",
        "decoder": "decoder_fast.onnx" if decoder == "fast" else "decoder.onnx",
    }
    if decoder == "fast":
        wanted["decoder_window"] = "decoder_fast_window.onnx"
    if quantized:
        wanted["encoder_int8"] = f"encoder_b{encode_batch}_int8.onnx"
    paths: dict[str, Path] = {}
    changed = False
    for role, name in wanted.items():
        path = folder / name
        known = record["files"].get(name)
        if path.is_file() and known and file_sha256(path) == known:
            paths[role] = path
            continue
        if path.exists():
            log.warning("%s: cached ONNX export does not match its recorded checksum; exporting again", path)
        start = time.perf_counter()
        log.info("exporting the %s of %s to ONNX (first use; cached in %s)", role, model.spec.name, folder)
        with atomic_path(path) as tmp:
            if role == "encoder":
                _export_encoder(model, tmp, encode_batch)
            elif role == "encoder_int8":
                _quantize_encoder(paths["encoder"], tmp)
            else:
                _export_decoder(model, tmp, decoder, window=role == "decoder_window")
        if timings is not None:
            timings[f"export_{role}_s"] = time.perf_counter() - start
        record["files"][name] = file_sha256(path)
        paths[role] = path
        changed = True
    if changed:
        atomic_write_text(record_path, json.dumps(record, indent=2))
    if quantized:
        paths["encoder"] = paths.pop("encoder_int8")
    return paths


def export_key(model: LoadedModel) -> dict:
    """Everything besides the export code's own files that changes the exported graphs."""
    import torch

    versions = {}
    for name in ("onnx", "onnxruntime"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return {
        "weights_sha256": model.spec.sha256,
        "torch": torch.__version__,
        "onnx": versions["onnx"],
        "onnxruntime": versions["onnxruntime"],
        "opset": OPSET,
        "export_version": EXPORT_VERSION,
    }


def cpu_backend() -> str:
    """The CPU back end of ``backend="auto"``: ``$LKSEG_PROMPT_BACKEND`` when set, else ``"onnx-int8"``."""
    import os

    value = os.environ.get(BACKEND_ENV, "").strip().lower() or "onnx-int8"
    if value not in ("onnx", "onnx-int8", "eager", "torchscript"):
        raise ModelError(f"${BACKEND_ENV}={value!r}; use onnx, onnx-int8, eager or torchscript")
    return value


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when available, else ``"cpu"``; other values pass through."""
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover
        return "cpu"


def make_engine(
    model: LoadedModel,
    backend: Backend | Literal["auto"] = "auto",
    device: str = "auto",
    threads: int | None = None,
    cache_dir: str | Path | None = None,
    decoder: Decoder | Literal["auto"] = "auto",
) -> Engine:
    """Build an :class:`Engine`.

    Args:
        model: from :func:`~lkseg.refine.models.load_prompt_model`.
        backend: ``"auto"`` (on the CPU ``$LKSEG_PROMPT_BACKEND``, else ONNX Runtime with the int8
            encoder; eager PyTorch on CUDA),
            ``"onnx"`` (fp32), ``"onnx-int8"``, ``"eager"`` (the fp32 reference) or ``"torchscript"``.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        threads: intra-op threads (default: torch's setting).
        cache_dir: cache root for ONNX exports (default: the user cache, see :func:`cache_root`);
            exports go to ``<root>/onnx/<model>-<sha256[:16]>/``.
        decoder: ``"auto"`` (``$LKSEG_PROMPT_DECODER``, else ``"fast"``), ``"fast"`` (the
            reassociated graph of :mod:`lkseg.refine.fastdecoder`; same masks, ~1.8x fewer
            operations) or ``"reference"`` (segment-anything's order of operations).
    """
    device = resolve_device(device)
    decoder = resolve_decoder(decoder)
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    automatic = backend == "auto"
    if automatic:
        backend = "eager" if device.startswith("cuda") else cpu_backend()
    if backend == "eager":
        return EagerEngine(model, device, threads, decoder)
    if backend == "torchscript":
        return TorchScriptEngine(model, device, threads, decoder)
    if backend in ("onnx", "onnx-int8"):
        try:
            return OnnxEngine(
                model,
                device,
                threads,
                Path(cache_dir) if cache_dir else None,
                quantized=backend == "onnx-int8",
                decoder=decoder,
            )
        except ImportError as exc:
            error = ModelError("the ONNX back end needs the 'onnxruntime' package (pip install onnxruntime)")
            cause = exc
        except Exception as exc:  # export, quantization or session creation (onnxruntime's own error types)
            error = ModelError(f"the ONNX Runtime back end of {model.spec.name} cannot be built: {exc}")
            cause = exc
        if not automatic:
            raise error from cause
        log.warning("%s; using eager PyTorch instead (slower on the CPU)", error)
        return EagerEngine(model, device, threads, decoder)
    raise ModelError(f"unknown back end {backend!r}; use auto, onnx, onnx-int8, eager or torchscript")
