from __future__ import annotations

import numpy as np
import pytest

from conftest import DIRECTIONS
from lkseg import Grid, InputError, Volume
from lkseg.errors import GeometryMismatchError
from lkseg.orientation import reorient
from lkseg.resample import grid_for_spacing, resample_labels_to_grid, resample_to_grid, resample_to_spacing


def _volume(direction, shape=(9, 11, 13), spacing=(0.7, 1.3, 2.5), origin=(10.0, -20.0, 30.0), seed=0):
    rng = np.random.default_rng(seed)
    return Volume.from_array(rng.normal(size=shape).astype(np.float32), spacing, origin, direction)


def test_index_lps_ras_round_trip(direction):
    vol = _volume(direction)
    ijk = np.array([[0, 0, 0], [3, 4, 2], [12, 10, 8], [1.5, 2.25, 3.75]])
    lps = vol.grid.index_to_lps(ijk)
    np.testing.assert_allclose(vol.grid.lps_to_index(lps), ijk, atol=1e-9)
    ras = vol.grid.index_to_ras(ijk)
    np.testing.assert_allclose(ras[:, :2], -lps[:, :2])
    np.testing.assert_allclose(ras[:, 2], lps[:, 2])
    np.testing.assert_allclose(vol.grid.ras_to_index(ras), ijk, atol=1e-9)
    # homogeneous matrix agrees with the vector functions (Slicer IJKToRAS)
    h = np.c_[ijk, np.ones(len(ijk))] @ vol.grid.ijk_to_ras.T
    np.testing.assert_allclose(h[:, :3], ras, atol=1e-9)


def test_origin_is_voxel_zero_and_spacing_along_axes():
    direction = DIRECTIONS["oblique"]
    vol = _volume(direction)
    np.testing.assert_allclose(vol.grid.index_to_lps([0, 0, 0]), vol.origin)
    step_i = vol.grid.index_to_lps([1, 0, 0]) - np.asarray(vol.origin)
    step_k = vol.grid.index_to_lps([0, 0, 1]) - np.asarray(vol.origin)
    assert np.linalg.norm(step_i) == pytest.approx(0.7)
    assert np.linalg.norm(step_k) == pytest.approx(2.5)
    np.testing.assert_allclose(step_k / 2.5, direction[:, 2])


def test_array_is_read_only_and_zyx():
    vol = _volume(np.eye(3))
    assert vol.grid.size_ijk == (13, 11, 9)
    with pytest.raises(ValueError):
        vol.array[0, 0, 0] = 1


def test_sitk_round_trip_keeps_geometry(direction):
    vol = _volume(direction)
    back = Volume.from_sitk(vol.to_sitk())
    assert back.grid.same_as(vol.grid, tol=1e-9)
    np.testing.assert_array_equal(back.array, vol.array)
    # SimpleITK's own index->point agrees with ours
    img = vol.to_sitk()
    np.testing.assert_allclose(
        img.TransformContinuousIndexToPhysicalPoint((3.0, 4.0, 2.0)), vol.grid.index_to_lps([3, 4, 2]), atol=1e-9
    )


@pytest.mark.parametrize("target", ["LPS", "RAS", "LAS", "SAL"])
def test_reorient_is_exact_and_reversible(direction, target):
    vol = _volume(direction)
    out, plan = reorient(vol, target)
    if np.allclose(np.abs(direction), np.round(np.abs(direction))):
        assert out.grid.orientation == target
    # every voxel keeps its physical position and value
    rng = np.random.default_rng(1)
    for _ in range(20):
        ijk = np.array([rng.integers(0, n) for n in vol.grid.size_ijk])
        new_ijk = np.rint(out.grid.lps_to_index(vol.grid.index_to_lps(ijk))).astype(int)
        assert vol.array[ijk[2], ijk[1], ijk[0]] == out.array[new_ijk[2], new_ijk[1], new_ijk[0]]
    back = plan.undo(out)
    assert back.grid.same_as(vol.grid, tol=1e-12)
    np.testing.assert_array_equal(back.array, vol.array)


def test_reorient_channels_first_arrays():
    vol = _volume(DIRECTIONS["sagittal"])
    out, plan = reorient(vol)
    stack = np.stack([out.array, out.array * 2])
    undone = plan.undo_array(stack)
    np.testing.assert_array_equal(undone[1], vol.array * 2)


def test_resample_round_trip_smooth_image(direction):
    # a smooth function of physical position survives up- and down-sampling
    grid = Grid((20, 22, 24), (1.5, 1.0, 2.0), (5.0, 6.0, -7.0), direction)
    kk, jj, ii = np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij")
    lps = grid.index_to_lps(np.stack([ii, jj, kk], -1).reshape(-1, 3))
    values = np.sin(lps[:, 0] / 9.0) + np.cos(lps[:, 1] / 11.0) + lps[:, 2] / 40.0
    vol = Volume(values.reshape(grid.shape).astype(np.float32), grid)
    up = resample_to_spacing(vol, (0.75, 0.75, 0.75))
    back = resample_to_grid(up, vol.grid)
    assert back.grid.same_as(vol.grid)
    inner = (slice(2, -2),) * 3
    assert np.abs(back.array[inner] - vol.array[inner]).max() < 0.02


def test_grid_for_spacing_keeps_extent():
    grid = Grid((100, 200, 300), (0.78, 0.78, 2.0), (1.0, 2.0, 3.0), DIRECTIONS["oblique"])
    new = grid_for_spacing(grid, (1.5, 1.5, 3.0))
    assert new.size_ijk == (156, 104, 67)
    # centre of the field of view unchanged
    c_old = grid.index_to_lps((np.array(grid.size_ijk) - 1) / 2)
    c_new = new.index_to_lps((np.array(new.size_ijk) - 1) / 2)
    assert np.linalg.norm(c_old - c_new) < 1.6


def test_label_resampling_nearest_and_one_hot_are_exact_on_same_grid_and_keep_labels():
    grid = Grid((30, 30, 30), (1.0, 1.0, 1.0))
    kk, jj, ii = np.indices(grid.shape)
    labels = np.zeros(grid.shape, np.uint8)
    labels[(ii - 15) ** 2 + (jj - 15) ** 2 + (kk - 15) ** 2 < 100] = 1
    labels[(ii - 15) ** 2 + (jj - 15) ** 2 + (kk - 15) ** 2 < 16] = 2
    vol = Volume(labels, grid)
    coarse = resample_to_spacing(vol, (2.0, 2.0, 2.0), "label_linear")
    assert set(np.unique(coarse.array)) == {0, 1, 2}
    assert coarse.array.dtype == np.uint8
    back = resample_labels_to_grid(coarse.array, coarse.grid, grid)
    dice = 2 * np.sum((back > 0) & (labels > 0)) / (np.sum(back > 0) + np.sum(labels > 0))
    assert dice > 0.9
    same = resample_to_grid(vol, grid, "nearest")
    np.testing.assert_array_equal(same.array, labels)


def test_bad_geometry_is_rejected():
    with pytest.raises(InputError, match="orthonormal"):
        Volume.from_array(np.zeros((2, 2, 2)), direction=[[1, 0, 0], [0, 2, 0], [0, 0, 1]])
    with pytest.raises(InputError, match="positive"):
        Volume.from_array(np.zeros((2, 2, 2)), spacing=(1, 0, 1))
    with pytest.raises(InputError, match="3D"):
        Volume.from_array(np.zeros((2, 2)))


def test_require_same_names_the_difference():
    a = Grid((4, 5, 6), (1.0, 1.0, 2.0))
    with pytest.raises(GeometryMismatchError, match="spacing"):
        a.require_same(Grid((4, 5, 6), (1.0, 1.0, 2.5)))
    with pytest.raises(GeometryMismatchError, match="size"):
        a.require_same(Grid((4, 5, 7), (1.0, 1.0, 2.0)))
    with pytest.raises(GeometryMismatchError, match="direction"):
        a.require_same(Grid((4, 5, 6), (1.0, 1.0, 2.0), direction=np.diag([-1.0, -1, 1])))
