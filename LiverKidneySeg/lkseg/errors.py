"""Exception hierarchy of the core.

Every error a user can cause (a bad file, a tampered model, a prompt outside the volume) is an
:class:`LKSegError` with a message that names the file or value and the problem. The CLI prints
these messages without a traceback (unless ``--debug``) and exits non-zero.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "CancelledError",
    "ChecksumError",
    "GeometryMismatchError",
    "InputError",
    "LKSegError",
    "ModelError",
    "PromptError",
]


class LKSegError(Exception):
    """Base class of all errors raised deliberately by LiverKidneySeg."""

    exit_code = 2


class InputError(LKSegError, ValueError):
    """An input file or value cannot be used (missing, unsupported, corrupt, wrong dimension...).

    Args:
        message: what is wrong.
        path: the offending file or folder, prefixed to the message when given.
    """

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        super().__init__(f"{path}: {message}" if path is not None else message)


class GeometryMismatchError(InputError):
    """Two volumes that must share one voxel grid do not (size, spacing, origin or direction)."""


class PromptError(LKSegError, ValueError):
    """An interactive prompt (point, box, slice index) is invalid for the current volume."""


class ModelError(LKSegError):
    """A model package is missing, malformed or incompatible."""


class ChecksumError(ModelError):
    """A weight file's SHA-256 does not match its manifest: the file is refused."""


class CancelledError(LKSegError):
    """Long work was cancelled through its :class:`~lkseg.progress.CancelToken`."""

    exit_code = 130
