"""The audit trail of a report: inputs and their SHA-256, model id/version, prompts, edits,
parameters, software versions, time and command line."""

from __future__ import annotations

import datetime as _dt
import hashlib
import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Provenance", "collect_provenance", "file_sha256"]

#: Keys of a label map's ``meta`` that describe how it was made (written by the automatic and
#: interactive engines when known).
_MODEL_KEYS = ("model_id", "model_version", "model_sha256", "algorithm_name", "algorithm_version", "device")


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file; for a folder (a DICOM series), of its files' relative paths and
    contents in sorted order."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode("utf-8") + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


@dataclass
class Provenance:
    """Where a report's numbers come from (JSON-ready)."""

    inputs: dict[str, dict] = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    prompts: list = field(default_factory=list)
    edits: list = field(default_factory=list)
    parameters: dict = field(default_factory=dict)
    software: dict = field(default_factory=dict)
    created_utc: str = ""
    command: list[str] | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _software() -> dict:
    from lkseg import __version__

    out = {"lkseg": __version__, "python": platform.python_version(), "platform": platform.platform()}
    if "vtkmodules.vtkCommonCore" in sys.modules:
        out["vtk"] = sys.modules["vtkmodules.vtkCommonCore"].vtkVersion.GetVTKVersion()
    for mod in ("numpy", "scipy", "SimpleITK", "fast_simplification"):
        module = sys.modules.get(mod)
        version = getattr(module, "__version__", None) if module else None
        if module is not None and version is None and hasattr(module, "Version_VersionString"):
            version = module.Version_VersionString()  # SimpleITK
        if version:
            out[mod] = str(version)
    return out


def collect_provenance(
    inputs: Mapping[str, str | Path | None] | None = None,
    *,
    labels_meta: Mapping | None = None,
    parameters: Mapping | None = None,
    command: Sequence[str] | None = None,
    prompts: Sequence | None = None,
    edits: Sequence | None = None,
) -> Provenance:
    """Build the audit trail.

    Args:
        inputs: role -> file/folder (``{"image": "ct.nii.gz", "labels": "seg.nrrd"}``); each is
            hashed. None values are skipped.
        labels_meta: the label map's ``meta``; model id/version, prompts and edits are taken from
            it when present (keys ``model_id``, ``model_version``, ``prompts``, ``edits``, ...).
        parameters: the planning parameters (planes, height/weight, liver quality, ...).
        command: the command line.
        prompts / edits: interactive prompts and edits, when known (added to those in the meta).
    """
    prov = Provenance(
        parameters=dict(parameters or {}),
        software=_software(),
        created_utc=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        command=list(command) if command is not None else None,
    )
    for role, path in (inputs or {}).items():
        if path is None:
            continue
        p = Path(path)
        entry: dict = {"path": str(p)}
        if p.exists():
            entry["sha256"] = file_sha256(p)
            entry["bytes"] = (
                p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
            )
        else:
            entry["sha256"] = None
            entry["note"] = "file not found when the report was written"
        prov.inputs[role] = entry
    meta = dict(labels_meta or {})
    prov.model = {k: meta[k] for k in _MODEL_KEYS if meta.get(k) is not None}
    prov.prompts = list(meta.get("prompts") or []) + list(prompts or [])
    prov.edits = list(meta.get("edits") or []) + list(edits or [])
    return prov
