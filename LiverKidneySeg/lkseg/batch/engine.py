"""The segmentation engine a batch runs: a protocol, a picklable spec, identity and a per-process cache.

The runner needs only ``engine.predict(volume, progress=..., cancel=...)`` returning an object
with ``.labels`` (a label :class:`~lkseg.volume.Volume` on the input's exact grid),
``.label_table`` (value -> structure name), ``.timings`` (stage -> seconds) and ``.warnings``,
plus an identity (``model_id``, ``version``) recorded in every case manifest.
:class:`lkseg.auto.AutoSegmenter` is such an engine; tests use cheap fakes.

An :class:`EngineSpec` names an engine without loading it, so a Ray worker can build its own copy
(once per worker process, see :func:`get_engine`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from lkseg.errors import ModelError
from lkseg.progress import CancelToken, ProgressCallback
from lkseg.volume import Volume

__all__ = [
    "Engine",
    "EngineResult",
    "EngineSpec",
    "clear_engine_cache",
    "engine_identity",
    "get_engine",
    "predict_with",
]

log = logging.getLogger(__name__)


@runtime_checkable
class Engine(Protocol):
    """What the batch runner needs from a segmentation engine."""

    def predict(
        self, volume: Volume, *, progress: ProgressCallback | None = None, cancel: CancelToken | None = None
    ) -> Any:
        """Segment ``volume``; return an object with ``labels``, ``label_table``, ``timings``, ``warnings``."""


@dataclass
class EngineResult:
    """A minimal engine result (what :class:`lkseg.auto.AutoResult` also provides).

    Attributes:
        labels: label map on the input's grid (ZYX, integer values of ``label_table``).
        label_table: value -> structure name (e.g. :data:`lkseg.labels.PRODUCT_LABELS`).
        timings: stage name -> seconds.
        warnings: human-readable remarks about this case.
    """

    labels: Volume
    label_table: Mapping[int, str]
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class EngineSpec:
    """Names the automatic engine without loading it (picklable; built once per process).

    Attributes:
        model: a model id from the registry, a model package folder, or ``None`` for the default.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        threads: torch CPU threads (``None``: every CPU the process may use; the Ray runner sets
            the CPUs reserved per task so parallel tasks do not oversubscribe a node).
    """

    model: str | None = None
    device: str = "auto"
    threads: int | None = None

    def build(self) -> Engine:
        """Load the engine (verifies the model's checksums)."""
        try:
            from lkseg.auto import AutoSegmenter
        except ImportError as exc:  # pragma: no cover - depends on the installed core
            raise ModelError(f"the automatic engine is not available ({exc})") from exc
        return AutoSegmenter(self.model, device=self.device, threads=self.threads)

    def identity(self) -> dict[str, str]:
        """The identity the built engine will have, read from the model's manifest (no weights loaded)."""
        from lkseg.models import find_model

        manifest = find_model(self.model)
        return {
            "model_id": str(manifest.id),
            "model_version": str(manifest.version),
            "engine": "AutoSegmenter",
            "weights": _digest(manifest.weights),
        }


def _first_attr(obj: Any, names: tuple[str, ...]) -> Any:
    for name in names:
        parts = name.split(".")
        value = obj
        for part in parts:
            value = value.get(part) if isinstance(value, Mapping) else getattr(value, part, None)
            if value is None:
                break
        if value is not None and not callable(value):
            return value
    return None


def engine_identity(engine: Any) -> dict[str, str]:
    """``{"model_id", "model_version", "engine"}`` of an engine, for manifests and skip decisions.

    Looks for ``model_id``/``version`` attributes, then a ``manifest`` with ``id``/``version``.
    A weights digest, when the engine exposes one (``weights_sha256``), is included so that
    retrained weights under an unchanged version still count as a changed model.
    """
    model_id = _first_attr(engine, ("model_id", "manifest.id", "manifest.model_id"))
    version = _first_attr(engine, ("model_version", "version", "manifest.version"))
    if model_id is None:
        raise ModelError(f"engine {type(engine).__name__} has no model id (give it a 'model_id' attribute)")
    ident = {"model_id": str(model_id), "model_version": str(version or "unknown"), "engine": type(engine).__name__}
    digest = _first_attr(engine, ("weights_sha256", "fingerprint", "manifest.weights"))
    if isinstance(digest, Mapping):  # a model manifest's {file: sha256}
        digest = _digest(digest)
    if digest is not None:
        ident["weights"] = str(digest)
    return ident


def _digest(weights: Mapping[str, str]) -> str:
    text = json.dumps({str(k): str(v) for k, v in weights.items()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_CACHE: dict[Any, Engine] = {}
_CACHE_LOCK = threading.Lock()


def get_engine(source: Engine | EngineSpec | Callable[[], Engine], key: Any = None) -> Engine:
    """The engine for ``source``: itself if it already is one, else built once per process and cached.

    Args:
        source: an engine, an :class:`EngineSpec` (cached by its value), or a zero-argument
            factory (cached under ``key`` when given, otherwise called every time).
        key: cache key for factories.
    """
    if hasattr(source, "predict") and not isinstance(source, EngineSpec):
        return source  # type: ignore[return-value]
    if not isinstance(source, EngineSpec) and not callable(source):
        raise TypeError(f"not an engine, EngineSpec or factory: {source!r}")
    cache_key = source if isinstance(source, EngineSpec) else key
    if cache_key is None:
        return source()  # type: ignore[operator]
    with _CACHE_LOCK:
        engine = _CACHE.get(cache_key)
        if engine is None:
            log.info("loading engine %s", source)
            engine = source.build() if isinstance(source, EngineSpec) else source()
            _CACHE[cache_key] = engine
    return engine


def clear_engine_cache() -> None:
    """Forget cached engines (tests; frees their memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def predict_with(
    engine: Engine,
    volume: Volume,
    structures: tuple[str, ...] | None,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
) -> Any:
    """Call ``engine.predict`` with keyword arguments (``structures`` only when restricted)."""
    kwargs: dict[str, Any] = {"progress": progress, "cancel": cancel}
    if structures is not None:
        kwargs["structures"] = list(structures)
    result = engine.predict(volume, **kwargs)
    for name in ("labels", "label_table"):
        if getattr(result, name, None) is None:
            raise ModelError(f"engine {type(engine).__name__} returned no {name}")
    volume.grid.require_same(result.labels.grid, "engine's label map")
    return result
