"""Atomic file writing: write to a temporary file beside the target, then rename.

A crash, a kill or an exception never leaves a half-written output under the final name, and a
failed write leaves the previous file (if any) untouched.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = ["KNOWN_SUFFIXES", "atomic_dir", "atomic_path", "atomic_write_bytes", "atomic_write_text", "full_suffix"]

#: Multi-part suffixes recognised before the plain last suffix.
KNOWN_SUFFIXES = (".seg.nrrd", ".nii.gz", ".seg.nhdr", ".tar.gz")


def full_suffix(path: str | Path) -> str:
    """The file-type suffix, multi-part when known: ``a.nii.gz`` -> ``.nii.gz``."""
    name = Path(path).name.lower()
    for suffix in KNOWN_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(path).suffix.lower()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path (same folder, same suffix) to write; rename it onto ``path`` on
    success, delete it on failure. Parent folders are created.

    The temporary name keeps the suffix so writers that choose the format by extension
    (SimpleITK, VTK) write the right format.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = full_suffix(target)
    stem = target.name[: len(target.name) - len(suffix)] if suffix else target.name
    tmp = target.with_name(f".{stem}.tmp-{os.getpid()}-{secrets.token_hex(4)}{suffix}")
    try:
        yield tmp
        if not tmp.exists():
            raise OSError(f"{target}: the writer produced no file")
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Like :func:`atomic_path` for a folder (e.g. a DICOM series): built aside, then renamed.

    An existing folder at ``path`` is replaced only after the new one is complete.
    """
    import shutil

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)
