"""Helpers for the Slicer-module tests (``test_slicer*.py``, ``test_mrml*.py``).

Importing this module puts ``LiverKidneySeg/`` (the scripted module folder, which holds
``LiverKidneySegLib``) on ``sys.path``. The MRML scene itself comes from the ``headless_slicer``
/ ``mrml_scene`` fixtures in ``conftest.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "LiverKidneySeg"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))


def sphere(shape_zyx: tuple[int, int, int], center_zyx, radius: float) -> np.ndarray:
    """Bool ZYX ball of ``radius`` voxels."""
    zz, yy, xx = np.ogrid[: shape_zyx[0], : shape_zyx[1], : shape_zyx[2]]
    c = center_zyx
    return (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= radius**2


# the deterministic stand-in predictor ships with the module (its self-test uses it too)
from LiverKidneySegLib.selftest import StandInPredictor as FakePromptPredictor  # noqa: E402

__all__ = ["FakePromptPredictor", "sphere"]
