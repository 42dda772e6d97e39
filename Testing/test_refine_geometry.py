"""Geometry of the prompt predictor without the network: slices, prompts and masks in every orientation.

A stub engine stands in for LiteMedSAM: its decoder returns "inside the box" logits, so a box
prompt must come back as exactly that box on the volume's own grid, whatever the storage order
(axial, flipped, sagittal, coronal, oblique) and pixel aspect.
"""

from __future__ import annotations

import numpy as np
import pytest

from lkseg.errors import InputError, PromptError
from lkseg.refine.combine import combine
from lkseg.refine.models import ModelSpec
from lkseg.refine.predictor import PredictorConfig, PromptPredictor
from lkseg.refine.slices import VIEWS, InputTransform, VolumeSlicer
from lkseg.volume import Volume


class BoxEngine:
    """Decoder = indicator of the prompt box in model coordinates (no network)."""

    def __init__(self, size: int = 256):
        self.spec = ModelSpec("stub", size, "minmax", False, "0" * 64)
        self.model = None
        self.backend = "stub"
        self.device = "cpu"
        self.encode_batch = 1
        self.encoded = 0

    def encode(self, images):
        self.encoded += images.shape[0]
        return np.zeros((images.shape[0], 256, 64, 64), dtype=np.float32)

    def decode(self, embedding, coords, labels, mask_input=None):
        coords = np.asarray(coords).reshape(-1, 2)
        labels = np.asarray(labels).reshape(-1)
        out = np.full((1, 4, 256, 256), -10.0, dtype=np.float32)
        if 2.0 in labels:
            (x0, y0), (x1, y1) = coords[labels == 2][0], coords[labels == 3][0]
            scale = 256 / self.spec.input_size
            yy, xx = np.mgrid[0:256, 0:256]
            # low-res pixel centres mapped back to model input coordinates
            cy, cx = (yy + 0.5) / scale - 0.5, (xx + 0.5) / scale - 0.5
            inside = (cx >= x0 - 0.5) & (cx <= x1 + 0.5) & (cy >= y0 - 0.5) & (cy <= y1 + 0.5)
            out[0, :, inside] = 10.0
        return out, np.ones((1, 4), dtype=np.float32)


def _ct(direction: np.ndarray, shape=(12, 40, 50), spacing=(0.8, 1.1, 2.5)) -> Volume:
    rng = np.random.default_rng(0)
    arr = rng.normal(40.0, 15.0, size=shape).astype(np.int16)
    arr[:, :3, :] = -1000  # some air: looks like a CT
    return Volume.from_array(arr, spacing=spacing, origin=(10.0, -20.0, 30.0), direction=direction)


@pytest.fixture()
def stub_predictor():
    p = PromptPredictor.with_engine(BoxEngine(), PredictorConfig(prefetch=0))
    yield p
    p.close()


def test_display_slice_and_masks_round_trip(direction):
    vol = _ct(direction)
    slicer = VolumeSlicer(vol)
    rng = np.random.default_rng(1)
    for view in VIEWS:
        axis = slicer.user_slice_axis(view)
        for user_index in (0, vol.shape[axis] - 1):
            c = slicer.user_to_canonical_slice(view, user_index)
            assert slicer.canonical_to_user_slice(view, c) == user_index
            user2d = rng.random(tuple(s for n, s in enumerate(vol.shape) if n != axis)) > 0.5
            disp = slicer.user_mask_to_display(view, user2d)
            assert disp.shape == slicer.display_shape(view)
            np.testing.assert_array_equal(slicer.display_mask_to_user(view, disp), user2d)
            # the display slice holds exactly the volume's voxels of that user slice
            hu_user = np.take(vol.array, user_index, axis=axis)
            np.testing.assert_array_equal(slicer.display_mask_to_user(view, slicer.display_slice(view, c)), hu_user)


def test_display_orientation_is_radiological():
    """Axial: anterior at the top, patient right on the image's left; coronal/sagittal: superior up."""
    vol = _ct(np.diag([-1.0, -1.0, 1.0]))  # RAS storage
    slicer = VolumeSlicer(vol)
    for view, (row_dir, col_dir) in {
        "axial": ([0, 1, 0], [1, 0, 0]),  # rows toward posterior (+y LPS), cols toward patient left (+x LPS)
        "coronal": ([0, 0, -1], [1, 0, 0]),
        "sagittal": ([0, 0, -1], [0, 1, 0]),
    }.items():
        c = 3
        ijk = slicer.display_to_canonical_ijk(view, c, np.array([[2.0, 2.0], [3.0, 2.0], [2.0, 3.0]]))
        lps = slicer.canonical.grid.index_to_lps(ijk)
        np.testing.assert_allclose(np.sign(np.round(lps[1] - lps[0], 6)), row_dir)
        np.testing.assert_allclose(np.sign(np.round(lps[2] - lps[0], 6)), col_dir)


def test_points_voxel_and_ras_agree(direction):
    vol = _ct(direction)
    slicer = VolumeSlicer(vol)
    ijk = np.array([[3.0, 5.0, 7.0], [10.0, 20.0, 2.0]])
    ras = vol.grid.index_to_ras(ijk)
    a = slicer.user_points_to_canonical_ijk(ijk, "voxel")
    b = slicer.user_points_to_canonical_ijk(ras, "ras")
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(slicer.canonical_ijk_to_user(a), ijk, atol=1e-9)
    for view in VIEWS:
        s, rc = slicer.canonical_ijk_to_display(view, a)
        back = np.concatenate([slicer.display_to_canonical_ijk(view, int(s[n]), rc[n : n + 1]) for n in range(2)])
        np.testing.assert_allclose(back, a, atol=1e-9)


def test_input_transform_keeps_aspect():
    tr = InputTransform(h=100, w=50, row_mm=1.0, col_mm=4.0, size=256)  # 100 mm x 200 mm
    assert tr.resized == (128, 256)
    np.testing.assert_allclose(tr.to_model_xy([[99.0, 49.0]]), [[49.5 * 5.12 - 0.5, 99.5 * 1.28 - 0.5]], rtol=1e-6)
    np.testing.assert_allclose(tr.box_to_model((0, 0, 99, 49)), [0.0, 0.0, 255.0, 127.0], atol=1e-4)
    mask = np.zeros((100, 50), bool)
    mask[20:60, 10:30] = True
    back = tr.lowres_to_logits(tr.mask_to_lowres(mask)[0, 0]) > 0
    assert (back ^ mask).sum() <= 0.05 * mask.sum()
    img = tr.image_to_model(np.linspace(0, 1, 5000).reshape(100, 50), "minmax")
    assert img.shape == (3, 256, 256) and img[:, 128:, :].max() == 0.0 and abs(img.max() - 1.0) < 1e-6


@pytest.mark.parametrize("view", VIEWS)
def test_box_comes_back_on_the_volume_grid(stub_predictor, direction, view):
    vol = _ct(direction)
    stub_predictor.set_volume(vol)
    axis = stub_predictor.slicer.user_slice_axis(view)
    index_axis = 2 - axis  # i=0, j=1, k=2
    lo = np.array([4.0, 6.0, 3.0])
    hi = np.array([20.0, 25.0, 8.0])
    lo[index_axis] = hi[index_axis] = 5.0
    mask = stub_predictor.predict(view, 5, box=np.stack([lo, hi]))
    expected = np.zeros(vol.shape, bool)
    expected[int(lo[2]) : int(hi[2]) + 1, int(lo[1]) : int(hi[1]) + 1, int(lo[0]) : int(hi[0]) + 1] = True
    expected2d = np.take(expected, 5, axis=axis)
    assert mask.shape == expected2d.shape and mask.dtype == bool
    assert (mask ^ expected2d).sum() <= 0.1 * expected2d.sum(), "the box must come back where it was drawn"
    # the same box in RAS mm gives the same mask
    ras = vol.grid.index_to_ras(np.stack([lo, hi]))
    np.testing.assert_array_equal(stub_predictor.predict(view, None, box=ras, coords="ras"), mask)


def test_bad_prompts_raise_clear_errors(stub_predictor):
    vol = _ct(np.eye(3))
    stub_predictor.set_volume(vol)
    box = np.array([[4.0, 6.0, 5.0], [20.0, 25.0, 5.0]])
    with pytest.raises(PromptError, match="out of range"):
        stub_predictor.predict("axial", 99, box=box)
    with pytest.raises(PromptError, match="outside the volume"):
        stub_predictor.predict("axial", 5, points=[[500.0, 6.0, 5.0]])
    with pytest.raises(PromptError, match="outside the volume"):
        stub_predictor.predict("axial", 5, box=[[400.0, 400.0, 5.0], [420.0, 430.0, 5.0]])
    with pytest.raises(PromptError, match="inverted"):
        stub_predictor.predict("axial", 5, box=box[::-1])
    with pytest.raises(PromptError, match="empty"):
        stub_predictor.predict("axial", 5, box=[[4.0, 6.0, 5.0], [4.0, 25.0, 5.0]])
    with pytest.raises(PromptError, match="not on the slice"):
        stub_predictor.predict("axial", 7, box=box)
    with pytest.raises(PromptError, match="unknown view"):
        stub_predictor.predict("oblique", 5, box=box)
    with pytest.raises(PromptError, match="labels"):
        stub_predictor.predict("axial", 5, points=[[5.0, 6.0, 5.0]], labels=[3])
    with pytest.raises(PromptError, match="mask prior"):
        stub_predictor.predict("axial", 5, points=[[5.0, 6.0, 5.0]], mask_prior=np.zeros((3, 3), bool))
    with pytest.raises(PromptError, match="box or at least one point"):
        stub_predictor.predict("axial", 5)


def test_call_order_and_non_ct(stub_predictor):
    with pytest.raises(RuntimeError, match="set_volume"):
        stub_predictor.predict("axial", 0, box=[[0, 0, 0], [3, 3, 0]])
    mr = Volume.from_array(np.random.default_rng(0).uniform(0, 800, (8, 30, 30)).astype(np.float32), meta={})
    with pytest.raises(InputError, match="does not look like a CT"):
        stub_predictor.set_volume(mr)
    with pytest.raises(InputError, match="modality is MR"):
        stub_predictor.set_volume(_ct(np.eye(3)).with_array(_ct(np.eye(3)).array, meta={"modality": "MR"}))


def test_negative_click_without_mask_warns_and_returns_empty(stub_predictor):
    stub_predictor.set_volume(_ct(np.eye(3)))
    result = stub_predictor.predict_result("axial", 5, points=[[10.0, 10.0, 5.0]], labels=[0])
    assert not result.mask.any()
    assert any("no mask to edit" in w for w in result.warnings)


def test_point_capable_model_gets_the_points_directly(direction):
    engine = BoxEngine()
    engine.spec = ModelSpec("sam_vit_b", 1024, "imagenet", True, "1" * 64)
    calls = []
    original = engine.decode

    def record(embedding, coords, labels, mask_input=None):
        calls.append((np.asarray(coords).reshape(-1, 2), np.asarray(labels).reshape(-1)))
        return original(embedding, coords, labels, mask_input)

    engine.decode = record
    p = PromptPredictor.with_engine(engine, PredictorConfig(prefetch=0))
    try:
        vol = _ct(direction)
        p.set_volume(vol)
        k_axis = 2 - p.slicer.user_slice_axis("axial")
        pts = np.array([[5.0, 6.0, 4.0], [8.0, 9.0, 4.0]])
        pts[:, k_axis] = 4.0
        p.predict("axial", 4, points=pts, labels=[1, 0])
        coords, labels = calls[-1]
        np.testing.assert_array_equal(labels, [1.0, 0.0, -1.0])  # two clicks + SAM's padding point
        # the decoder sees them at the model pixels of the clicked voxels
        c = p.slicer.user_to_canonical_slice("axial", 4)
        _, rc = p.slicer.canonical_ijk_to_display("axial", p.slicer.user_points_to_canonical_ijk(pts, "voxel"))
        tr = p.slice_context("axial", c).transform
        np.testing.assert_allclose(coords[:2], tr.to_model_xy(rc), atol=1e-4)
    finally:
        p.close()


def test_prefetch_fills_neighbours(direction):
    engine = BoxEngine()
    p = PromptPredictor.with_engine(engine, PredictorConfig(prefetch=2, cache_slices=8))
    try:
        p.set_volume(_ct(direction))
        corners = p.slicer.canonical_ijk_to_user(np.array([[4.0, 6.0, 5.0], [20.0, 25.0, 5.0]]))
        p.predict("axial", None, box=np.stack([corners.min(axis=0), corners.max(axis=0)]))
        assert p.wait_prefetch(30)
        c = 5
        window = next(iter(p.cache._data))[3]
        for s in (3, 4, 6, 7):
            assert (p._volume_id, "axial", s, window) in p.cache
        assert engine.encoded == 5
        assert p.slicer.canonical_to_user_slice("axial", c) is not None
    finally:
        p.close()


def test_combine_modes_touch_one_label_only():
    labels = np.zeros((4, 6, 6), np.uint8)
    labels[:, :3, :] = 1  # liver
    labels[:, 3:, :3] = 3  # right kidney
    mask = np.zeros_like(labels, bool)
    mask[1:3, 2:5, 1:5] = True  # overlaps liver, kidney and background
    added = combine(labels, mask, 1, "add")
    assert np.all(added[labels == 3] == 3), "another structure was changed"
    assert np.all(added[mask & (labels == 0)] == 1)
    subtracted = combine(labels, mask, 1, "subtract")
    assert np.all(subtracted[mask & (labels == 1)] == 0) and np.all(subtracted[labels == 3] == 3)
    replaced = combine(labels, mask, 1, "replace")
    assert np.all((replaced == 1) == ((mask & (labels != 3)) | np.zeros_like(mask)))
    assert np.all(replaced[labels == 3] == 3)
    region = np.zeros_like(mask)
    region[1] = True
    confined = combine(labels, mask, 1, "replace", region=region)
    np.testing.assert_array_equal(confined[[0, 2, 3]], labels[[0, 2, 3]])
    vol = Volume.from_array(labels, spacing=(1, 1, 2))
    out = combine(vol, mask, 1, "add")
    assert isinstance(out, Volume) and out.grid.same_as(vol.grid)
    np.testing.assert_array_equal(labels, vol.array)  # input untouched
    with pytest.raises(InputError):
        combine(labels, mask, 0, "add")
    with pytest.raises(InputError):
        combine(labels, mask, 1, "merge")


@pytest.mark.parametrize("n_in, n_out", [(642, 256), (512, 256), (469, 256), (300, 256), (97, 31)])
def test_shrinking_averages_the_area_each_model_pixel_covers(n_in, n_out):
    """The truth is the mean over each output pixel's span, read off the input with every pixel
    repeated ``n_out`` times (each output pixel then spans exactly ``n_in`` samples); a whole
    factor also against PIL's box filter. The fine pattern of a 0.57 mm slice averages out
    instead of aliasing as point sampling (bilinear without antialiasing) does."""
    from PIL import Image

    from lkseg.refine.slices import resize_2d

    rng = np.random.default_rng(7)
    column = rng.random((n_in, 3)).astype(np.float32)
    truth = np.repeat(column.astype(np.float64), n_out, axis=0).reshape(n_out, n_in, 3).mean(axis=1)
    np.testing.assert_allclose(resize_2d(column, n_out, 3), truth, atol=1e-5)
    np.testing.assert_allclose(resize_2d(column.T.copy(), 3, n_out), truth.T, atol=1e-5)
    img = rng.random((2 * n_out, n_in)).astype(np.float32)
    pil = np.asarray(Image.fromarray(img, mode="F").resize((n_in, n_out), Image.Resampling.BOX))
    np.testing.assert_allclose(resize_2d(img, n_out, n_in), pil, atol=1e-5)
    stripes = np.tile(np.array([0.0, 1.0], np.float32), (n_in, n_in // 2))  # one-pixel columns
    out = resize_2d(stripes, n_out, n_out)
    assert np.abs(out[:, 1:-1] - 0.5).max() < 0.5 * n_out / (n_in // 2 * 2) + 1e-5  # sampling gives 0 or 1


@pytest.mark.parametrize("shape, size", [((100, 50), (128, 256)), ((200, 300), (256, 256)), ((300, 100), (256, 171))])
def test_enlarging_interpolates_like_torch_bilinear(shape, size):
    """An axis that grows (or one that grows while the other shrinks) is read as PyTorch's bilinear
    resize reads it; an axis that shrinks, by area. When nothing shrinks, ``resize_2d`` is torch's
    resize exactly (3 mm slices stay bit-identical) and the linear weights, which serve the mixed
    case, agree with it too."""
    import torch
    import torch.nn.functional as F

    from lkseg.refine.slices import resize_2d, resize_weights

    img = np.random.default_rng(3).random(shape).astype(np.float32)
    ours = resize_2d(img, *size)
    if size[0] >= shape[0] and size[1] >= shape[1]:
        ref = F.interpolate(torch.from_numpy(img)[None, None], size=size, mode="bilinear", align_corners=False)
        np.testing.assert_array_equal(ours, ref[0, 0].numpy())
        by_weights = (resize_weights(shape[1], size[1]) @ (resize_weights(shape[0], size[0]) @ img).T).T
        np.testing.assert_allclose(by_weights, ref[0, 0].numpy(), atol=1e-5)
    else:  # rows shrink (area: block means when the factor is whole), columns grow (bilinear)
        factor = shape[0] // size[0] if shape[0] % size[0] == 0 else None
        cols = F.interpolate(
            torch.from_numpy(img)[None, None], size=(shape[0], size[1]), mode="bilinear", align_corners=False
        )
        cols = cols[0, 0].numpy()
        if factor:
            np.testing.assert_allclose(ours, cols.reshape(size[0], factor, size[1]).mean(axis=1), atol=1e-5)
        assert abs(float(ours.mean()) - float(cols.mean())) < 1e-3
