"""SHA-256 verification of model weight files: a file whose digest differs from its manifest is refused."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from lkseg.errors import ChecksumError, ModelError

__all__ = ["ChecksumState", "check_weights", "sha256_file", "verify_file"]

ChecksumState = Literal["ok", "mismatch", "missing"]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: str | Path, expected: str) -> None:
    """Raise unless ``path`` exists and its SHA-256 equals ``expected``.

    Raises:
        ModelError: the file is missing.
        ChecksumError: the digest differs (tampered or corrupt file).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: weight file is missing (the model package is incomplete)")
    actual = sha256_file(path)
    if actual != expected.lower():
        raise ChecksumError(
            f"{path}: SHA-256 mismatch - the weight file was modified or corrupted and is refused "
            f"(manifest {expected[:16]}..., file {actual[:16]}...)"
        )


def check_weights(folder: str | Path, weights: dict[str, str]) -> dict[str, ChecksumState]:
    """State of each weight file of a package without raising: ``ok``, ``mismatch`` or ``missing``."""
    states: dict[str, ChecksumState] = {}
    for name, expected in weights.items():
        path = Path(folder) / name
        if not path.is_file():
            states[name] = "missing"
        else:
            states[name] = "ok" if sha256_file(path) == expected.lower() else "mismatch"
    return states
