"""Per-case manifests: what makes a case "finished", and the decision to skip or redo it.

A finished case's folder holds ``manifest.json``, written last inside the folder before the folder
is renamed into place. It records the input (SHA-256 of its bytes, plus a cheap key of file sizes
and modification times), the model (id, version, weights digest when known) and the options that
shape the outputs. A rerun skips a case when all three match and its outputs exist, and redoes it
otherwise, saying why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from lkseg import __version__
from lkseg.batch.discovery import CaseInput
from lkseg.batch.options import BatchOptions
from lkseg.io.atomic import atomic_write_text
from lkseg.progress import CancelToken

__all__ = [
    "MANIFEST_NAME",
    "SCHEMA",
    "DoneCheck",
    "build_manifest",
    "check_case",
    "hash_inputs",
    "read_manifest",
    "stat_key",
]

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
SCHEMA = 1
_CHUNK = 1 << 20


def _rel_name(case: CaseInput, path: Path) -> str:
    if case.kind == "dicom" and path.is_relative_to(case.path):
        return path.relative_to(case.path).as_posix()
    return path.name


def stat_key(case: CaseInput) -> str:
    """A cheap key of the input files' names, sizes and modification times (no reading)."""
    h = hashlib.sha1()
    for path in case.files:
        st = path.stat()
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def hash_inputs(case: CaseInput, cancel: CancelToken | None = None) -> str:
    """SHA-256 over the input files' relative names and bytes, in sorted order (hex)."""
    h = hashlib.sha256()
    for path in case.files:
        h.update(_rel_name(case, path).encode() + b"\0")
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
        if cancel is not None:
            cancel.raise_if_cancelled()
    return h.hexdigest()


def read_manifest(case_dir: Path) -> dict | None:
    """The manifest of a finished case, or ``None`` when there is none (or it is unreadable)."""
    path = case_dir / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("unreadable manifest %s (%s); the case will be redone", path, exc)
        return None
    return data if isinstance(data, dict) else None


@dataclass
class DoneCheck:
    """Whether a case can be skipped.

    Attributes:
        done: True when the case is finished with this input, model and options.
        reason: why it runs (``"new"``, ``"input changed"``, ``"model changed ..."``...) or
            ``"finished"``.
        manifest: the existing manifest, if any.
        input_sha256: the input hash when it had to be computed (reused for the new manifest).
        stat_key: the input's :func:`stat_key`.
    """

    done: bool
    reason: str
    manifest: dict | None
    input_sha256: str | None
    stat_key: str


def _model_change(old: dict, identity: dict) -> str | None:
    keys = ("model_id", "model_version", "weights")
    if all(old.get(k) == identity.get(k) for k in keys):
        return None
    before = f"{old.get('model_id')} {old.get('model_version')}"
    after = f"{identity.get('model_id')} {identity.get('model_version')}"
    return f"model changed ({before} -> {after})" if before != after else "model weights changed"


def check_case(
    case: CaseInput,
    case_dir: Path,
    identity: dict,
    options: BatchOptions,
    cancel: CancelToken | None = None,
    quick: bool = False,
) -> DoneCheck:
    """Decide whether ``case`` is already finished in ``case_dir`` (see the module docstring).

    Hashes the input only when its size/modification-time key changed, or when
    ``options.rehash``; an unchanged hash then refreshes the key in the manifest. With
    ``quick=True`` nothing is hashed: a case that would need hashing is reported as not done
    (reason ``"to verify"``), for a cheap first pass.
    """
    key = stat_key(case)
    if options.force:
        return DoneCheck(False, "forced", read_manifest(case_dir), None, key)
    manifest = read_manifest(case_dir)
    if manifest is None:
        return DoneCheck(False, "new", None, None, key)
    if manifest.get("schema") != SCHEMA or manifest.get("status") != "done":
        return DoneCheck(False, "manifest from another version", manifest, None, key)
    change = _model_change(manifest.get("model", {}), identity)
    if change:
        return DoneCheck(False, change, manifest, None, key)
    if manifest.get("options") != options.fingerprint(case.meta):
        return DoneCheck(False, "options changed", manifest, None, key)
    missing = [name for name in manifest.get("outputs", {}).values() if not (case_dir / name).exists()]
    if missing:
        return DoneCheck(False, f"output missing: {missing[0]}", manifest, None, key)
    recorded = manifest.get("input", {})
    if not options.rehash and recorded.get("stat_key") == key:
        return DoneCheck(True, "finished", manifest, recorded.get("sha256"), key)
    if quick:
        return DoneCheck(False, "to verify", manifest, None, key)
    sha = hash_inputs(case, cancel)
    if sha != recorded.get("sha256"):
        return DoneCheck(False, "input changed", manifest, sha, key)
    if recorded.get("stat_key") != key:  # same bytes, touched or moved: remember the new key
        manifest["input"]["stat_key"] = key
        atomic_write_text(case_dir / MANIFEST_NAME, json.dumps(manifest, indent=2))
    return DoneCheck(True, "finished (input re-hashed)", manifest, sha, key)


def build_manifest(
    case: CaseInput,
    identity: dict,
    options: BatchOptions,
    input_info: dict,
    outputs: dict[str, str],
    record: dict,
) -> dict:
    """The manifest of a finished case.

    Args:
        case: the case.
        identity: :func:`~lkseg.batch.engine.engine_identity` of the engine used.
        options: the batch options (only their fingerprint is stored).
        input_info: ``{"sha256", "stat_key"}`` of the input, plus its geometry when known.
        outputs: output kind -> file name relative to the case folder.
        record: the case's summary values, timings and warnings (rebuilds the summary CSV on
            later runs without reading the outputs).
    """
    return {
        "schema": SCHEMA,
        "status": "done",
        "case_id": case.case_id,
        "input": {**case.to_dict(), **input_info},
        "model": dict(identity),
        "options": options.fingerprint(case.meta),
        "outputs": dict(outputs),
        "record": record,
        "lkseg_version": __version__,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
