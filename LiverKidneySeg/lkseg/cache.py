"""The user cache folder of LiverKidneySeg (ONNX exports of the automatic and prompt models)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    """``$LKSEG_CACHE``, else ``$XDG_CACHE_HOME/lkseg`` or ``~/.cache/lkseg`` (read at call time)."""
    env = os.environ.get("LKSEG_CACHE", "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "lkseg"
