"""Device selection (``"auto"``: CUDA when present, else CPU) and CPU thread settings."""

from __future__ import annotations

import logging
import os

from lkseg.errors import InputError

__all__ = ["configure_threads", "resolve_device"]

log = logging.getLogger(__name__)


def resolve_device(device: str | None = "auto"):
    """A ``torch.device`` for ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    ``"auto"`` picks CUDA when a device is available and falls back to the CPU otherwise.

    Raises:
        InputError: an unknown name, or CUDA asked for on a machine without it.
    """
    import torch

    name = (device or "auto").lower()
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} asked for, but no CUDA GPU is available (use 'cpu' or 'auto')")
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise InputError(f"unknown device {device!r}") from None
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
        return dev
    raise InputError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op CPU threads: ``threads`` if given, else every CPU this process may use.

    Returns the number set. Torch's default counts physical cores; on small machines (2 vCPUs)
    using all logical CPUs is measurably faster for convolutions.
    """
    import torch

    if threads is None:
        try:
            threads = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - macOS / Windows
            threads = os.cpu_count() or 1
    threads = max(1, int(threads))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
        log.debug("torch intra-op threads set to %d", threads)
    return threads
