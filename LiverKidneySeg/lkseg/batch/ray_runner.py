"""Distributed mode: the per-case function as Ray tasks (optional extra ``ray``).

Each case is one task running :func:`lkseg.batch.case.process_case`, the same stages as the local
runner, so the outputs are identical. Each Ray worker process builds the engine once and caches it
for the following tasks. Tasks request ``ray_cpus_per_task`` CPUs, and ``ray_gpus_per_task`` GPUs
when the cluster has any (the engine's ``device="auto"`` then finds the GPU Ray assigned).

Requirements on a real cluster: every node has this package (and the model) installed, and the
input and output folders are on a filesystem that every node sees at the same path (NFS, a
shared volume). The driver decides which cases are already finished (a cheap check of manifests
and file sizes/dates); workers hash, read, infer and write.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence

from lkseg.batch.case import CaseJob, process_case, skipped_result
from lkseg.batch.caselog import install_case_logging
from lkseg.batch.discovery import CaseInput
from lkseg.batch.engine import Engine, EngineSpec, engine_identity, get_engine
from lkseg.batch.manifest import check_case
from lkseg.batch.options import BatchOptions, Layout
from lkseg.batch.reporting import Reporter
from lkseg.batch.summary import CaseResult
from lkseg.errors import LKSegError
from lkseg.progress import CancelToken

__all__ = ["connect", "ray_available", "run_ray"]

log = logging.getLogger(__name__)


def ray_available() -> bool:
    """Whether the optional ``ray`` package can be imported."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def connect(address: str) -> bool:
    """Connect to Ray unless already connected; return True when this call started the connection.

    Args:
        address: ``"local"`` starts a private single-machine instance; ``"auto"`` joins the
            cluster this machine belongs to (started with ``ray start``); anything else is a
            cluster address (``"ray://head:10001"`` for Ray Client, ``"head:6379"``).
    """
    try:
        import ray
    except ImportError as exc:
        raise LKSegError("distributed mode needs Ray: pip install 'liverkidneyseg[ray]'") from exc
    if ray.is_initialized():
        return False
    try:
        if address == "local":
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise LKSegError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from exc
    return True


def _identity(source: Engine | EngineSpec | Callable[[], Engine]) -> dict:
    """The engine identity; for a spec read from the model manifest, without loading weights."""
    if isinstance(source, EngineSpec):
        return source.identity()
    return engine_identity(get_engine(source, key=("driver", id(source))))


def _run_case(case: CaseInput, engine_box: list, cache_key: str, job: CaseJob) -> CaseResult:
    """Body of a Ray task (module-level so workers import it instead of unpickling code)."""
    source = engine_box[0]
    try:
        import ray

        if isinstance(source, ray.ObjectRef):
            ref = source
            source = functools.partial(ray.get, ref)
    except ImportError:  # pragma: no cover - only runs on Ray workers
        pass
    engine = source if isinstance(source, EngineSpec) else functools.partial(get_engine, source, cache_key)
    with install_case_logging():
        return process_case(case, engine, job)


def _slots(resources: dict, options: BatchOptions) -> tuple[int, float]:
    gpus = float(resources.get("GPU", 0.0))
    gpus_per_task = options.ray_gpus_per_task if gpus > 0 else 0.0
    slots = max(math.floor(float(resources.get("CPU", 1.0)) / options.ray_cpus_per_task), 1)
    if gpus_per_task > 0:
        slots = min(slots, max(math.floor(gpus / gpus_per_task), 1))
    return slots, gpus_per_task


def run_ray(
    cases: Sequence[CaseInput],
    source: Engine | EngineSpec | Callable[[], Engine],
    layout: Layout,
    options: BatchOptions,
    reporter: Reporter,
    cancel: CancelToken,
) -> tuple[dict, float]:
    """Process ``cases`` as Ray tasks; returns (engine identity, time processing started)."""
    import ray

    started_here = connect(options.ray or "auto")
    try:
        identity = _identity(source)
        job = CaseJob(layout, identity, options)
        slots, gpus_per_task = _slots(ray.cluster_resources(), options)
        limit = options.workers or slots
        log.info(
            "Ray: %d slot(s), %s case(s) in flight, %.3g CPU and %.3g GPU per task",
            slots,
            limit,
            options.ray_cpus_per_task,
            gpus_per_task,
        )
        if isinstance(source, EngineSpec):
            if source.threads is None:  # one torch thread per reserved CPU
                source = dataclasses.replace(source, threads=max(1, int(options.ray_cpus_per_task)))
            box: list = [source]
        else:
            box = [ray.put(source)]  # shipped once; each worker deserialises it once (cached)
        cache_key = f"ray-engine-{uuid.uuid4().hex}"
        task = ray.remote(_run_case).options(
            num_cpus=options.ray_cpus_per_task, num_gpus=gpus_per_task, max_retries=1, name="lkseg-batch-case"
        )
        t_proc = time.perf_counter()
        todo: list[CaseInput] = []
        for case in cases:  # cheap driver-side pass: finished cases need no task
            check = check_case(case, layout.case_dir(case.case_id), identity, options, quick=True)
            if check.done:
                reporter.add(skipped_result(case, job, check))
            else:
                todo.append(case)
        inflight: dict = {}
        queue_ = list(reversed(todo))
        while (queue_ or inflight) and not cancel.cancelled:
            while queue_ and len(inflight) < limit:
                case = queue_.pop()
                inflight[task.remote(case, box, cache_key, job)] = case
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0.5)
            for ref in ready:
                case = inflight.pop(ref)
                reporter.add(_collect(ref, case, job))
        if cancel.cancelled:
            for ref, case in inflight.items():
                ray.cancel(ref, force=True)
                reporter.add(CaseResult(case.case_id, "cancelled", str(case.path), "interrupted"))
        return identity, t_proc
    finally:
        if started_here:
            ray.shutdown()


def _collect(ref, case: CaseInput, job: CaseJob) -> CaseResult:
    import ray

    try:
        return ray.get(ref)
    except Exception as exc:  # the worker died (out of memory, killed) or the task was cancelled
        log.warning("Ray task of case %s failed: %s", case.case_id, exc)
        return CaseResult(
            case.case_id,
            "failed",
            str(case.path),
            error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            error_type=type(exc).__name__,
            stage="ray task",
            log=str(job.layout.log_path(case.case_id)),
        )
