"""Options of a batch run and the layout of its output folder.

Only the options that change a case's outputs (which outputs, mesh formats, planning settings,
structures) enter the resume fingerprint; how the run is executed (workers, Ray, device) does not,
so a cohort started locally can be finished on a cluster without redoing anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lkseg.errors import InputError

__all__ = ["MESH_FORMATS", "OUTPUT_KINDS", "BatchOptions", "Layout", "batch_cli_args", "parse_plan_options"]

#: Per-case outputs. ``dicom_seg`` applies to DICOM inputs only.
OUTPUT_KINDS = ("seg_nrrd", "nifti", "dicom_seg", "meshes", "plan")
#: Mesh formats the surfaces module exports.
MESH_FORMATS = ("glb", "stl", "obj", "vtp", "ply")
#: Planning settings accepted by ``--plan key=value`` (and CSV columns of the same names).
PLAN_KEYS = ("height_cm", "weight_kg", "liver_quality", "resection_plane")
#: Planning settings that only a case list can give (they belong to one patient).
CASE_ONLY_PLAN_KEYS = ("resection_plane",)
LIVER_QUALITIES = ("normal", "chemotherapy", "steatosis", "cirrhosis")


@dataclass(frozen=True)
class BatchOptions:
    """How a batch runs and what it writes.

    Attributes:
        outputs: which per-case outputs to write, from :data:`OUTPUT_KINDS`.
        mesh_formats: surface formats when ``"meshes"`` is in ``outputs`` (``glb`` holds every
            structure, coloured, in one file; the others write one file per structure).
        plan: planning settings for every case (``height_cm``, ``weight_kg``, ``liver_quality``);
            per-case CSV columns of the same names override them.
        structures: restrict the engine to these structure names (``None``: all of the model's).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` for the engine.
        workers: local runner: threads that write outputs (planning, meshes) while the next case
            is inferred (``None``: one; ``0``: the inference thread writes each case itself);
            Ray runner: at most this many cases in flight (``None`` or ``0``: as many as the
            cluster's CPU/GPU slots allow).
        prefetch: local runner: cases read ahead of inference by a reader thread (bounded
            queue; ``0``: the inference thread reads each case itself).
        force: redo every case even if its manifest says it is finished.
        rehash: hash every input's bytes even when size and modification time are unchanged.
        ray: ``None`` for the local runner; ``"auto"``/``"local"`` or a cluster address
            (``"ray://host:10001"``, ``"host:6379"``) for the Ray runner.
        ray_cpus_per_task / ray_gpus_per_task: resources requested per case on Ray (GPUs only
            when the cluster has any).
    """

    outputs: tuple[str, ...] = OUTPUT_KINDS
    mesh_formats: tuple[str, ...] = ("glb",)
    plan: dict[str, str] = field(default_factory=dict)
    structures: tuple[str, ...] | None = None
    device: str = "auto"
    workers: int | None = None
    prefetch: int = 2
    force: bool = False
    rehash: bool = False
    ray: str | None = None
    ray_cpus_per_task: float = 1.0
    ray_gpus_per_task: float = 1.0

    def __post_init__(self) -> None:
        unknown = set(self.outputs) - set(OUTPUT_KINDS)
        if unknown:
            raise InputError(f"unknown output kind(s) {sorted(unknown)}; choose from {', '.join(OUTPUT_KINDS)}")
        bad = set(self.mesh_formats) - set(MESH_FORMATS)
        if bad:
            raise InputError(f"unknown mesh format(s) {sorted(bad)}; choose from {', '.join(MESH_FORMATS)}")
        object.__setattr__(self, "outputs", tuple(k for k in OUTPUT_KINDS if k in self.outputs))
        object.__setattr__(self, "mesh_formats", tuple(dict.fromkeys(self.mesh_formats)))
        object.__setattr__(self, "plan", parse_plan_options(self.plan))
        if self.structures is not None:
            object.__setattr__(self, "structures", tuple(self.structures))
        if (self.workers is not None and self.workers < 0) or self.prefetch < 0:
            raise InputError(f"workers and prefetch must be >= 0, got {self.workers} and {self.prefetch}")
        if self.ray_cpus_per_task <= 0 or self.ray_gpus_per_task < 0:
            raise InputError("ray_cpus_per_task must be > 0 and ray_gpus_per_task >= 0")

    def fingerprint(self, case_meta: dict[str, str] | None = None) -> dict:
        """The options that determine a case's outputs (stored in, and compared with, its manifest)."""
        plan = dict(self.plan)
        plan.update({k: v for k, v in (case_meta or {}).items() if k in PLAN_KEYS})
        return {
            "outputs": list(self.outputs),
            "mesh_formats": list(self.mesh_formats) if "meshes" in self.outputs else [],
            "plan": dict(sorted(plan.items())) if "plan" in self.outputs else {},
            "structures": list(self.structures) if self.structures is not None else None,
        }


def batch_cli_args(
    source: str | Path,
    output: str | Path,
    model: str | None = None,
    options: BatchOptions | None = None,
    progress_lines: bool = True,
) -> list[str]:
    """The ``lkseg`` arguments that run this batch out of process (e.g. ``PythonSlicer -m lkseg
    <args>`` from the Slicer module, polled by a timer): ``["batch", SOURCE, OUTPUT, ...]``.

    Only settings that differ from the defaults are written; ``--no-progress-bar`` is always
    given (a child process has no terminal), ``--progress-lines`` when asked.
    """
    opts = options or BatchOptions()
    default = BatchOptions()
    args = ["batch", str(source), str(output)]
    if model is not None:
        args += ["--model", str(model)]
    if opts.device != default.device:
        args += ["--device", opts.device]
    if opts.outputs != default.outputs:
        args += ["--outputs", ",".join(opts.outputs)]
    if opts.mesh_formats != default.mesh_formats:
        args += ["--mesh-formats", ",".join(opts.mesh_formats)]
    if opts.plan:
        args += ["--plan", ",".join(f"{k}={v}" for k, v in opts.plan.items())]
    if opts.structures is not None:
        args += ["--structures", ",".join(opts.structures)]
    if opts.workers is not None:
        args += ["--workers", str(opts.workers)]
    for name in ("prefetch", "ray_cpus_per_task", "ray_gpus_per_task"):
        if getattr(opts, name) != getattr(default, name):
            args += [f"--{name.replace('_', '-')}", f"{getattr(opts, name):g}"]
    if opts.ray:
        args += ["--ray", opts.ray]
    args += [flag for flag, on in (("--force", opts.force), ("--rehash", opts.rehash)) if on]
    args += ["--no-progress-bar"] + (["--progress-lines"] if progress_lines else [])
    return args


def parse_plan_options(spec: str | dict | None) -> dict[str, str]:
    """Parse ``"height_cm=178,weight_kg=80,liver_quality=cirrhosis"`` (or a dict) into checked strings."""
    if spec is None:
        return {}
    items = (
        spec.items() if isinstance(spec, dict) else (p.partition("=")[::2] for p in str(spec).split(",") if p.strip())
    )
    out: dict[str, str] = {}
    for key, value in items:
        key, value = str(key).strip().replace("-", "_"), str(value).strip()
        if key in CASE_ONLY_PLAN_KEYS:
            raise InputError(
                f"{key} belongs to one patient: give it per case in a CSV case list (a {key!r} column), not for the whole batch"
            )
        if key not in PLAN_KEYS:
            shared = [k for k in PLAN_KEYS if k not in CASE_ONLY_PLAN_KEYS]
            raise InputError(
                f"unknown planning setting {key!r}; use {', '.join(shared)} (e.g. --plan height_cm=178,weight_kg=80)"
            )
        if key == "liver_quality" and value not in LIVER_QUALITIES:
            raise InputError(f"liver_quality must be one of {', '.join(LIVER_QUALITIES)}, got {value!r}")
        if key in ("height_cm", "weight_kg"):
            try:
                float(value)
            except ValueError:
                raise InputError(f"{key} must be a number, got {value!r}") from None
        out[key] = value
    return out


@dataclass(frozen=True)
class Layout:
    """Where a batch writes, under its output folder ``root``::

    root/cases/<case_id>/   the case's outputs and manifest.json (appears complete or not at all)
    root/logs/<case_id>.log one log per case (appended by every attempt)
    root/summary.csv        one row per case: volumes, tumour counts, timings, status
    root/failures.csv       the cases that failed in the last run, with stage and error
    root/batch.json         the last run: options, model, counts, throughput
    """

    root: Path

    @property
    def cases(self) -> Path:
        return self.root / "cases"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def case_dir(self, case_id: str) -> Path:
        return self.cases / case_id

    def log_path(self, case_id: str) -> Path:
        return self.logs / f"{case_id}.log"

    @property
    def summary_csv(self) -> Path:
        return self.root / "summary.csv"

    @property
    def failures_csv(self) -> Path:
        return self.root / "failures.csv"

    @property
    def run_json(self) -> Path:
        return self.root / "batch.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lkseg-batch.lock"
