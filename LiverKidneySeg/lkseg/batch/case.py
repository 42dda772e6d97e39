"""The per-case function, split in three stages so the local runner can overlap them.

``prepare`` (skip decision, read, hash) -> ``infer`` (the engine) -> ``finish`` (outputs, summary
values, manifest). :func:`process_case` chains the three: it is what a Ray task runs, and the
local runner runs the very same stages on three threads, so both give identical outputs.

A case's outputs are written into a hidden temporary folder beside its final folder and renamed
into place after ``manifest.json`` is written: a case folder is complete or absent, never
half-written. Every stage catches the case's own errors and turns them into a ``failed``
:class:`~lkseg.batch.summary.CaseResult` (the batch goes on); a cancellation becomes ``cancelled``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lkseg.batch.caselog import case_context, case_log
from lkseg.batch.discovery import CaseInput
from lkseg.batch.engine import Engine, EngineSpec, engine_identity, get_engine, predict_with
from lkseg.batch.manifest import MANIFEST_NAME, DoneCheck, build_manifest, check_case, hash_inputs
from lkseg.batch.options import BatchOptions, Layout
from lkseg.batch.outputs import write_case_outputs
from lkseg.batch.summary import CaseResult, label_statistics
from lkseg.errors import CancelledError, InputError, ModelError
from lkseg.io.atomic import atomic_dir, atomic_write_text
from lkseg.progress import CancelToken, ProgressCallback
from lkseg.volume import Volume

__all__ = ["CaseJob", "LoadedCase", "finish_case", "infer_case", "prepare_case", "process_case", "skipped_result"]

log = logging.getLogger(__name__)

_MAX_WARNINGS = 20  # in the manifest and summary; the case log has all


@dataclass(frozen=True)
class CaseJob:
    """What every stage of a case needs besides the case itself (picklable).

    Attributes:
        layout: the batch's output layout.
        identity: the engine identity (model id, version) for manifests and skip decisions.
        options: the batch options.
    """

    layout: Layout
    identity: dict
    options: BatchOptions


@dataclass
class LoadedCase:
    """A case read and ready for inference."""

    case: CaseInput
    volume: Volume
    check: DoneCheck
    input_sha256: str
    timings: dict[str, float] = field(default_factory=dict)
    prediction: Any = None
    started: float = field(default_factory=time.perf_counter)


def _input_text(case: CaseInput) -> str:
    return f"{case.path}" + (f" [{case.series_uid}]" if case.series_uid else "")


def _failure(case: CaseInput, job: CaseJob, stage: str, exc: BaseException, reason: str = "") -> CaseResult:
    log_path = job.layout.log_path(case.case_id)
    if isinstance(exc, CancelledError):
        case_log(log_path, f"cancelled during {stage}")
        return CaseResult(case.case_id, "cancelled", _input_text(case), reason, stage=stage, log=str(log_path))
    case_log(
        log_path,
        f"FAILED during {stage}: {type(exc).__name__}: {exc}",
        exc=exc if not isinstance(exc, InputError) else None,
    )
    log.warning("case %s failed during %s: %s", case.case_id, stage, exc)
    return CaseResult(
        case.case_id,
        "failed",
        _input_text(case),
        reason,
        error=str(exc) or type(exc).__name__,
        error_type=type(exc).__name__,
        stage=stage,
        log=str(log_path),
    )


def skipped_result(case: CaseInput, job: CaseJob, check: DoneCheck) -> CaseResult:
    """The result of a case finished by an earlier run (values from its manifest)."""
    manifest = check.manifest or {}
    case_dir = job.layout.case_dir(case.case_id)
    outputs = {k: str(case_dir / v) for k, v in manifest.get("outputs", {}).items()}
    record = dict(manifest.get("record", {}))
    return CaseResult(
        case.case_id,
        "skipped",
        _input_text(case),
        check.reason,
        record,
        outputs,
        log=str(job.layout.log_path(case.case_id)),
    )


def _check_modality(case: CaseInput, volume: Volume) -> None:
    modality = (case.modality or volume.meta.get("modality") or "").upper()
    if modality and modality != "CT":
        raise InputError(f"modality is {modality}; LiverKidneySeg segments CT only", case.path)


def prepare_case(case: CaseInput, job: CaseJob, cancel: CancelToken | None = None) -> LoadedCase | CaseResult:
    """Decide whether the case must run; if so read it (and hash its bytes).

    Returns:
        A :class:`LoadedCase` to infer, or a ``skipped`` / ``failed`` / ``cancelled`` result.
    """
    from lkseg.io import read_image

    log_path = job.layout.log_path(case.case_id)
    with case_context(case.case_id, log_path):
        t0 = time.perf_counter()
        check: DoneCheck | None = None
        try:
            check = check_case(case, job.layout.case_dir(case.case_id), job.identity, job.options, cancel)
            if check.done:
                return skipped_result(case, job, check)
            case_log(log_path, f"start ({check.reason}): {case.describe()}")
            sha = check.input_sha256 or hash_inputs(case, cancel)
            if cancel is not None:
                cancel.raise_if_cancelled()
            volume = (
                read_image(case.path, series_uid=case.series_uid) if case.kind == "dicom" else read_image(case.path)
            )
            _check_modality(case, volume)
        except Exception as exc:
            return _failure(case, job, "read", exc, check.reason if check is not None else "")
        loaded = LoadedCase(case, volume, check, sha, started=t0)
        loaded.timings["read_s"] = round(time.perf_counter() - t0, 3)
        case_log(log_path, f"read {volume.describe()} in {loaded.timings['read_s']:.2f} s")
        return loaded


def infer_case(
    loaded: LoadedCase,
    engine: Engine,
    job: CaseJob,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> LoadedCase | CaseResult:
    """Run the engine on a loaded case (the prediction is stored on ``loaded``)."""
    case = loaded.case
    log_path = job.layout.log_path(case.case_id)
    with case_context(case.case_id, log_path):
        t0 = time.perf_counter()
        try:
            loaded.prediction = predict_with(engine, loaded.volume, job.options.structures, progress, cancel)
        except Exception as exc:
            return _failure(case, job, "infer", exc, loaded.check.reason)
        loaded.timings["infer_s"] = round(time.perf_counter() - t0, 3)
        stages = ", ".join(f"{k} {v:.2f} s" for k, v in (getattr(loaded.prediction, "timings", None) or {}).items())
        case_log(log_path, f"inference {loaded.timings['infer_s']:.2f} s" + (f" ({stages})" if stages else ""))
        return loaded


def finish_case(loaded: LoadedCase, job: CaseJob) -> CaseResult:
    """Write the outputs and the manifest into a temporary folder, then rename it into place.

    Not cancellable: a case whose inference finished is saved (it takes seconds), so a cancel
    loses at most the case being inferred.
    """
    case, pred = loaded.case, loaded.prediction
    layout = job.layout
    log_path = layout.log_path(case.case_id)
    case_dir = layout.case_dir(case.case_id)
    with case_context(case.case_id, log_path):
        t0 = time.perf_counter()
        try:
            with atomic_dir(case_dir) as tmp:
                outputs, extra = write_case_outputs(
                    case, loaded.volume, pred, job.options, job.identity, tmp, loaded.input_sha256
                )
                stats = label_statistics(pred.labels, pred.label_table)
                loaded.timings["write_s"] = round(time.perf_counter() - t0, 3)
                loaded.timings["total_s"] = round(sum(loaded.timings[k] for k in ("read_s", "infer_s", "write_s")), 3)
                record = _record(loaded, job, stats, extra, case_dir)
                input_info = {
                    "sha256": loaded.input_sha256,
                    "stat_key": loaded.check.stat_key,
                    "grid": loaded.volume.grid.to_dict(),
                }
                manifest = build_manifest(case, job.identity, job.options, input_info, outputs, record)
                atomic_write_text(tmp / MANIFEST_NAME, json.dumps(manifest, indent=2))
        except Exception as exc:
            return _failure(case, job, "write", exc, loaded.check.reason)
        case_log(
            log_path,
            f"done in {loaded.timings['total_s']:.2f} s (read {loaded.timings['read_s']:.2f}, infer {loaded.timings['infer_s']:.2f}, write {loaded.timings['write_s']:.2f}) -> {case_dir}",
        )
        files = {k: str(case_dir / v) for k, v in outputs.items()}
        return CaseResult(
            case.case_id, "done", _input_text(case), loaded.check.reason, record, files, log=str(log_path)
        )


def _record(loaded: LoadedCase, job: CaseJob, stats: dict, extra: dict, case_dir) -> dict:
    grid = loaded.volume.grid
    extra = dict(extra)
    warnings = [str(w) for w in (getattr(loaded.prediction, "warnings", None) or [])] + list(extra.pop("warnings", []))
    for w in warnings:
        case_log(job.layout.log_path(loaded.case.case_id), f"warning: {w}")
    if len(warnings) > _MAX_WARNINGS:  # all of them are in the case log
        warnings = [*warnings[:_MAX_WARNINGS], f"... and {len(warnings) - _MAX_WARNINGS} more (see the case log)"]
    plan = extra.pop("plan", None)
    if plan:  # the planning report's lesion counts and burden take precedence (one definition)
        stats = {**stats, "lesions": {**stats["lesions"], **plan["lesions"]}, "burden_pct": plan["burden_pct"]}
        stats["total_liver_volume_ml"] = plan["total_liver_volume_ml"]
        if plan.get("flr"):
            stats["flr"] = plan["flr"]
    return {
        **stats,
        **extra,
        "model_id": job.identity.get("model_id"),
        "model_version": job.identity.get("model_version"),
        "size_ijk": "x".join(str(s) for s in grid.size_ijk),
        "spacing_mm": "x".join(f"{s:.4g}" for s in grid.spacing),
        "timings": dict(loaded.timings),
        "engine_timings": {
            k: round(float(v), 3) for k, v in (getattr(loaded.prediction, "timings", None) or {}).items()
        },
        "warnings": warnings,
        "case_dir": str(case_dir),
    }


def _require_identity(engine: Engine, expected: dict) -> None:
    """A worker must run the model the manifests will name (a cluster node with another model
    version installed would otherwise write outputs under the wrong identity)."""
    actual = engine_identity(engine)
    keys = ("model_id", "model_version", "weights")
    if any(actual.get(k) != expected.get(k) for k in keys):
        raise ModelError(
            f"this worker's model is {actual.get('model_id')} {actual.get('model_version')} "
            f"(weights {actual.get('weights', '?')}), the batch runs {expected.get('model_id')} "
            f"{expected.get('model_version')} (weights {expected.get('weights', '?')}); install the same model on every node"
        )


def process_case(
    case: CaseInput,
    engine: Engine | EngineSpec | Callable[[], Engine],
    job: CaseJob,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> CaseResult:
    """The whole per-case function: skip check, read, infer, write. Never raises for a case's own
    errors (they come back as a ``failed`` result); the engine is built once per process.

    Args:
        case: the case.
        engine: an engine, or an :class:`EngineSpec`/factory (built and cached on first use).
        job: layout, engine identity and options.
        progress: receives the engine's progress of this case.
        cancel: checked between stages and by the engine.
    """
    loaded = prepare_case(case, job, cancel)
    if isinstance(loaded, CaseResult):
        return loaded
    try:
        engine_obj = get_engine(engine)
        _require_identity(engine_obj, job.identity)
    except Exception as exc:
        return _failure(case, job, "load model", exc, loaded.check.reason)
    loaded_or_result = infer_case(loaded, engine_obj, job, progress, cancel)
    if isinstance(loaded_or_result, CaseResult):
        return loaded_or_result
    return finish_case(loaded_or_result, job)
