"""Shared pytest fixtures.

The real CT scans live in ``../shared/data/real-ct`` beside the project root (CI has them there
too); tests that need them skip with a clear reason when the folder is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]
REAL_CT = ROOT.parent / "shared" / "data" / "real-ct"


@pytest.fixture(scope="session")
def real_ct_dir() -> Path:
    """``../shared/data/real-ct``; skips the test when it is not there."""
    if not REAL_CT.is_dir():
        pytest.skip(f"real CT data not found at {REAL_CT} (expected beside the project root)")
    return REAL_CT


def rotation(axis: str, degrees: float) -> np.ndarray:
    """3x3 rotation matrix about an LPS axis ('x', 'y' or 'z')."""
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


#: Directions used by geometry round-trip tests: identity, flipped (RAS storage), permuted
#: (sagittal, coronal), and oblique.
DIRECTIONS = {
    "axial_lps": np.eye(3),
    "flipped_ras": np.diag([-1.0, -1.0, 1.0]),
    "sagittal": np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], dtype=float),
    "coronal_flipped": np.array([[-1, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=float),
    "oblique": rotation("z", 17.0) @ rotation("x", -11.0) @ np.diag([1.0, -1.0, -1.0]),
}


@pytest.fixture(params=sorted(DIRECTIONS))
def direction(request) -> np.ndarray:
    return DIRECTIONS[request.param]


# -- 3D Slicer module (MRML adapters on slicer-core) ----------------------------------------------
@pytest.fixture(scope="session")
def headless_slicer():
    """slicer-core set up as 3D Slicer itself does (application logic, module logics registered
    before any segmentation node exists; ``slicer.mrmlScene`` and ``slicer.modules`` set).
    Skips when slicer-core is not installed."""
    pytest.importorskip("slicer_core", reason="slicer-core (pip install slicer-core) is needed for MRML tests")
    import sys

    module_dir = str(ROOT / "LiverKidneySeg")
    if module_dir not in sys.path:
        sys.path.insert(0, module_dir)
    from LiverKidneySegLib.headless import setupHeadlessSlicer

    return setupHeadlessSlicer()


@pytest.fixture
def mrml_scene(headless_slicer):
    """The headless MRML scene; every node a test adds is removed afterwards."""
    yield headless_slicer.scene
    headless_slicer.clear()
