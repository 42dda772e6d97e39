"""Phantom geometry on any grid, the narrow-band rasteriser, the writer and ``lkseg phantom``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lkseg.io import read_image, read_label_map
from lkseg.labels import PRODUCT_LABELS
from lkseg.phantom import PhantomConfig, direction_from_orientation, generate_phantom, oblique_direction, write_phantom
from lkseg.resample import resample_array_to_grid

SEED = 7
REF = {"size_ijk": (128, 128, 84), "spacing": (3.2, 3.2, 3.0)}  # 410 x 410 x 252 mm
ORGANS = ("liver", "kidney_right", "kidney_left", "spleen")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


@pytest.fixture(scope="module")
def reference():
    return generate_phantom(PhantomConfig(seed=SEED, noise_sd=0.0, **REF))


GRIDS = {
    # flipped (RAS storage) and anisotropic
    "ras_anisotropic": {
        "direction": direction_from_orientation("RAS"),
        "size_ijk": (164, 118, 63),
        "spacing": (2.5, 3.5, 4.0),
    },
    # permuted: a sagittal stack (i posterior, j inferior, k left)
    "sagittal": {
        "direction": direction_from_orientation("PIL"),
        "size_ijk": (128, 84, 128),
        "spacing": (3.2, 3.0, 3.2),
    },
    # double oblique
    "oblique": {
        "direction": oblique_direction(oblique_direction(np.eye(3), 17.0, "x"), -10.0, "z"),
        "size_ijk": (150, 150, 110),
        "spacing": (3.2, 3.2, 3.0),
    },
}


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_same_physical_anatomy_on_any_grid(reference, name):
    spec = GRIDS[name]
    cfg = PhantomConfig(
        seed=SEED,
        noise_sd=0.0,
        direction=tuple(np.asarray(spec["direction"]).reshape(-1)),
        size_ijk=spec["size_ijk"],
        spacing=spec["spacing"],
    )
    ph = generate_phantom(cfg)
    assert ph.image.grid.orientation == cfg.grid().orientation
    moved = resample_array_to_grid(ph.product_labels().array, ph.grid, reference.grid, "nearest")
    ref = reference.product_labels().array
    for organ in ORGANS:
        value = PRODUCT_LABELS.value_of(organ)
        assert _dice(moved == value, ref == value) > 0.9, (name, organ)
        assert ph.volumes_ml[organ] == pytest.approx(reference.volumes_ml[organ], rel=0.04), (name, organ)
    # lesions are reported at the same physical place
    for a, b in zip(ph.lesions, reference.lesions):
        assert a["center_ras"] == b["center_ras"] and a["diameter_mm"] == b["diameter_mm"]
    # the images agree too (HU at the same physical points)
    img = resample_array_to_grid(
        ph.image.array.astype(np.float32), ph.grid, reference.grid, "nearest", default_value=-1000
    )
    liver = (ref == 1) & (moved == 1)
    assert abs(np.median(img[liver]) - np.median(reference.image.array[liver])) < 5


def test_body_centre_and_field_of_view_offsets(reference):
    moved = generate_phantom(PhantomConfig(seed=SEED, noise_sd=0.0, center_lps=(12.0, -6.0, 30.0), **REF))
    # the grid follows the body centre: same voxels, shifted origin, shifted lesion coordinates
    assert np.array_equal(moved.labels.array, reference.labels.array)
    assert np.allclose(np.subtract(moved.grid.origin, reference.grid.origin), (12.0, -6.0, 30.0))
    shifted = generate_phantom(PhantomConfig(seed=SEED, noise_sd=0.0, fov_center_lps=(0.0, 0.0, 30.0), **REF))
    # a field of view 30 mm (10 slices) higher: the anatomy moves down by 10 slices in the array
    assert np.array_equal(shifted.labels.array[:-10], reference.labels.array[10:])


def test_narrow_band_painting_equals_per_voxel_painting():
    from lkseg.phantom.anatomy import build_anatomy
    from lkseg.phantom.raster import paint

    cfg = PhantomConfig.for_orientation("PIL", 13.0, seed=4, size_ijk=(90, 70, 90), spacing=(2.2, 2.6, 2.2))
    anatomy = build_anatomy(cfg)
    fast = paint(cfg.grid(), anatomy.layers, narrow_band=True)
    slow = paint(cfg.grid(), anatomy.layers, narrow_band=False, threads=1)
    assert np.array_equal(fast[0], slow[0])
    assert np.array_equal(fast[1], slow[1])
    assert fast[2] == slow[2]


# -- writer and CLI ---------------------------------------------------------------------------
def test_write_phantom_files_reload(tmp_path):
    ph = generate_phantom(
        PhantomConfig(
            seed=3,
            size_ijk=(80, 70, 40),
            spacing=(5.0, 5.5, 6.0),
            direction=tuple(np.diag([-1.0, -1.0, 1.0]).reshape(-1)),
        )
    )
    paths = write_phantom(ph, tmp_path / "out")
    assert {"ct", "labels", "labels_detailed", "json"} <= set(paths)
    ct = read_image(paths["ct"])
    assert ct.grid.same_as(ph.grid) and np.array_equal(ct.array, ph.image.array)
    labels = read_label_map(paths["labels"], reference=ct)
    assert np.array_equal(labels.array, ph.product_labels().array)
    detailed = read_label_map(paths["labels_detailed"], reference=ct)
    assert np.array_equal(detailed.array, ph.labels.array)
    facts = json.loads(paths["json"].read_text())
    vox = ph.grid.voxel_volume_ml
    counts = np.bincount(labels.array.ravel(), minlength=8)
    for value, name in PRODUCT_LABELS.items():
        assert facts["volumes_ml"][name] == pytest.approx(counts[value] * vox, abs=1e-3)
    assert facts["labels"] == PRODUCT_LABELS.to_json()
    assert facts["geometry"]["orientation"] == "RAS"
    assert np.allclose(facts["geometry"]["ijk_to_ras"], ph.grid.ijk_to_ras)
    assert PhantomConfig.from_dict(facts["config"]) == ph.config
    assert not list(tmp_path.glob("out/.*tmp*"))  # no temporary files left


def test_seg_nrrd_loads_in_slicerio(tmp_path):
    pytest.importorskip("lkseg.io.segnrrd")
    slicerio = pytest.importorskip("slicerio")
    ph = generate_phantom(PhantomConfig(seed=2, size_ijk=(64, 64, 36), spacing=(6.5, 6.5, 7.0)))
    paths = write_phantom(ph, tmp_path)
    seg = slicerio.read_segmentation(str(paths["seg_nrrd"]))
    names = {s["name"]: s["labelValue"] for s in seg["segments"]}
    expected = {"Liver", "Liver tumor", "Right kidney", "Left kidney", "Kidney tumor", "Kidney cyst", "Spleen"}
    assert expected <= set(names)
    assert names["Liver"] == 1 and names["Spleen"] == 7
    voxels = seg["voxels"] if seg["voxels"].ndim == 3 else seg["voxels"][0]
    assert (voxels == 1).sum() == (ph.product_labels().array == 1).sum()


def test_cli_writes_files_with_the_requested_geometry(tmp_path, capsys):
    from lkseg.cli.main import main

    out = tmp_path / "cli"
    argv = ["phantom", str(out), "--seed", "4", "--size", "60", "52", "30", "--spacing", "7", "8", "8.5"]
    argv += [
        "--orientation",
        "RAS",
        "--oblique",
        "10",
        "--noise",
        "8",
        "--kidney-tumor",
        "endophytic",
        "--progress-lines",
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "LKSEG_PROGRESS 1.000" in text and "kidney_right" in text and str(out / "ct.nii.gz") in text
    ct = read_image(out / "ct.nii.gz")
    expected = PhantomConfig.for_orientation("RAS", 10.0, seed=4, size_ijk=(60, 52, 30), spacing=(7, 8, 8.5)).grid()
    assert ct.grid.same_as(expected, tol=1e-4)
    assert read_label_map(out / "labels.nii.gz", reference=ct).array.max() <= 7
    facts = json.loads((out / "phantom.json").read_text())
    assert facts["config"]["noise_sd"] == 8.0 and facts["config"]["kidney_tumor"] == "endophytic"


def test_cli_rejects_bad_values(tmp_path, capsys):
    from lkseg.cli.main import main

    assert main(["phantom", str(tmp_path), "--orientation", "LLS"]) != 0
    assert "orientation" in capsys.readouterr().err
    assert main(["phantom", str(tmp_path), "--spacing", "1", "-2", "1"]) != 0
    assert "spacing" in capsys.readouterr().err
    assert not (tmp_path / "ct.nii.gz").exists()


def test_dicom_series_with_patient_size(tmp_path):
    pytest.importorskip("lkseg.io.dicom")
    import pydicom

    ph = generate_phantom(PhantomConfig(seed=6, size_ijk=(48, 48, 12), spacing=(8.0, 8.0, 10.0)))
    paths = write_phantom(ph, tmp_path, dicom=True, seg_nrrd=False)
    files = sorted(paths["dicom"].iterdir())
    assert len(files) == 12
    ds = pydicom.dcmread(files[0])
    assert float(ds.PatientSize) == pytest.approx(ph.meta["height_cm"] / 100, abs=0.01)
    assert float(ds.PatientWeight) == pytest.approx(ph.meta["weight_kg"], abs=0.1)
    back = read_image(paths["dicom"])
    assert back.grid.same_as(ph.grid, tol=1e-3)
    assert np.array_equal(back.array, ph.image.array)
