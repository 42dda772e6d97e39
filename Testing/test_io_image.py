"""NIfTI / NRRD / MetaImage images and label maps: exact geometry round trips, real TotalSegmentator CT."""

from __future__ import annotations

import numpy as np
import pytest

from lkseg.errors import GeometryMismatchError, InputError
from lkseg.io import read_image, read_label_map, read_segmentation, write_image, write_label_map
from lkseg.volume import Volume


def _volume(direction, dtype=np.int16) -> Volume:
    rng = np.random.default_rng(11)
    arr = rng.integers(-1000, 1500, size=(5, 6, 7)).astype(dtype)
    return Volume.from_array(arr, (0.7, 1.3, 2.5), (10.123, -20.5, 30.25), direction)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha"])
def test_image_round_trip_keeps_geometry(tmp_path, direction, suffix):
    vol = _volume(direction)
    path = write_image(vol, tmp_path / f"img{suffix}")
    back = read_image(path)
    assert back.grid.same_as(vol.grid, tol=1e-5), (back.grid.describe(), vol.grid.describe())
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.dtype == vol.dtype and back.meta["format"] == suffix.lstrip(".")


def test_float_image_and_label_map_round_trip(tmp_path, direction):
    vol = _volume(direction).astype(np.float32)
    back = read_image(write_image(vol, tmp_path / "f.nii.gz"))
    np.testing.assert_array_equal(back.array, vol.array)
    labels = vol.with_array((np.abs(vol.array) % 5).astype(np.uint8))
    path = write_label_map(labels, tmp_path / "labels.nii.gz")
    got = read_label_map(path, reference=vol)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got.array, labels.array)
    seg = read_segmentation(path, reference=vol, table={1: "liver", 2: "spleen"})
    assert seg.names[:2] == ["Liver", "Spleen"] and seg.segment("Label 3").value == 3


def test_detached_header_write_is_complete(tmp_path):
    vol = _volume(np.eye(3))
    path = write_image(vol, tmp_path / "d.nhdr")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0] == "d.nhdr" and len(names) == 2  # header + data file, no staging leftovers
    np.testing.assert_array_equal(read_image(path).array, vol.array)


def test_label_map_grid_mismatch_names_file_and_difference(tmp_path):
    vol = _volume(np.eye(3))
    shifted = Volume.from_array(np.zeros(vol.shape, np.uint8), vol.spacing, (10.123, -20.5, 35.0), vol.direction)
    path = write_label_map(shifted, tmp_path / "mask.nii.gz")
    with pytest.raises(GeometryMismatchError, match=r"mask\.nii\.gz.*origin"):
        read_label_map(path, reference=vol)
    with pytest.raises(InputError, match="negative"):
        read_label_map(write_image(vol, tmp_path / "ct.nii.gz"))


def test_totalsegmentator_niftis(real_ct_dir):
    ts = real_ct_dir / "totalsegmentator"
    ct = read_image(ts / "example_ct.nii.gz")
    assert ct.grid.size_ijk == (122, 101, 112)
    np.testing.assert_allclose(ct.spacing, (3.0, 3.0, 3.0), atol=1e-4)
    # NIfTI stored in RAS+ order: in LPS the direction is diag(-1, -1, 1), i.e. code "RAS"
    np.testing.assert_allclose(ct.direction, np.diag([-1.0, -1.0, 1.0]), atol=1e-6)
    assert ct.grid.orientation == "RAS"
    small = read_image(ts / "example_ct_sm.nii.gz")
    labels = read_label_map(ts / "example_seg.nii.gz", reference=small)
    volumes = {
        name: np.count_nonzero(labels.array == value) * labels.grid.voxel_volume_ml
        for value, name in [(5, "liver"), (2, "kidney_right"), (3, "kidney_left")]
    }
    assert volumes["liver"] == pytest.approx(1043, rel=0.01)
    assert volumes["kidney_right"] == pytest.approx(107, rel=0.02)
    assert volumes["kidney_left"] == pytest.approx(99, rel=0.02)
    # the mask of the small slab does not fit the full scan's grid
    with pytest.raises(GeometryMismatchError, match="example_seg"):
        read_label_map(ts / "example_seg.nii.gz", reference=ct)
    full_labels = read_label_map(ts / "example_seg_fast_force_split.nii.gz", reference=ct)
    assert full_labels.grid.same_as(ct.grid)
