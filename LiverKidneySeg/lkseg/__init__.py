"""LiverKidneySeg core: CT segmentation of liver, kidneys and tumours, with surgical planning.

The core never imports ``slicer``, ``qt`` or ``ctk``. Arrays are numpy in ZYX (k, j, i) order and
always travel with their geometry inside a :class:`~lkseg.volume.Volume`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from lkseg.errors import (
    CancelledError,
    ChecksumError,
    GeometryMismatchError,
    InputError,
    LKSegError,
    ModelError,
)
from lkseg.volume import Grid, Volume

__all__ = [
    "CancelledError",
    "ChecksumError",
    "GeometryMismatchError",
    "Grid",
    "InputError",
    "LKSegError",
    "ModelError",
    "Volume",
    "__version__",
]
