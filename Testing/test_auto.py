"""The automatic predictor: geometry on any orientation, canonical orientation seen by the model,
cascade boxes, resampling back, postprocessing, fallbacks, bad input, progress and cancellation.

Networks here are tiny random U-Nets or hand-made modules whose output is known, so the tests
check geometry and logic exactly, not accuracy (see the benchmarks for that).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

torch = pytest.importorskip("torch")

from conftest import DIRECTIONS  # noqa: E402
from lkseg.auto import AutoOptions, AutoSegmenter, PostprocessConfig, check_ct_volume, postprocess_labels  # noqa: E402
from lkseg.auto.cascade import Box, covering_box, find_organ_boxes, merge_boxes, sub_grid  # noqa: E402
from lkseg.auto.sampling import resample_channels  # noqa: E402
from lkseg.auto.window import WindowConfig, count_windows, fit_roi, plan_windows, run_sliding_window  # noqa: E402
from lkseg.errors import CancelledError, InputError  # noqa: E402
from lkseg.labels import PRODUCT_LABELS  # noqa: E402
from lkseg.models import IntensitySpec, build_network, make_manifest, make_stage, unet_spec, write_package  # noqa: E402
from lkseg.progress import CancelToken  # noqa: E402
from lkseg.resample import resample_probabilities_to_grid  # noqa: E402
from lkseg.volume import Grid, Volume  # noqa: E402

LABELS = {1: "liver", 2: "liver_tumor", 3: "kidney_right", 4: "kidney_left", 5: "spleen"}


pytestmark = pytest.mark.usefixtures("private_onnx_cache")


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory):
    torch.manual_seed(0)
    fine = make_stage("fine", (6, 6, 6), (32, 32, 32), unet_spec(6, (4, 8, 16), 1), LABELS)
    coarse = make_stage("coarse", (12, 12, 12), (16, 16, 16), unet_spec(6, (4, 8, 16), 1), LABELS)
    manifest = make_manifest("tiny-auto", "0.1.0", "test", LABELS, [coarse, fine], IntensitySpec((-200, 300), 50, 100))
    nets = {"fine": build_network(fine.network), "coarse": build_network(coarse.network)}
    return write_package(tmp_path_factory.mktemp("pkg") / "tiny-auto", manifest, nets)


@pytest.fixture(scope="session")
def segmenter(tiny_package):
    return AutoSegmenter(tiny_package, device="cpu", threads=2, backend="torch")


def body_volume(direction=None, shape=(40, 48, 56), spacing=(4.0, 3.5, 5.0)) -> Volume:
    """An analytic 'abdomen' on a grid centred at the LPS origin: air, a body cylinder, a bright
    blob left of the midline (patient left = +LPS x)."""
    direction = np.eye(3) if direction is None else np.asarray(direction)
    arr = np.full(shape, -1000, np.int16)
    grid = Grid(shape, spacing, (0, 0, 0), direction)
    centre = grid.index_to_lps((np.array(grid.size_ijk) - 1) / 2)
    grid = Grid(shape, spacing, tuple(-(direction @ np.diag(spacing)) @ ((np.array(grid.size_ijk) - 1) / 2)), direction)
    kk, jj, ii = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    lps = grid.index_to_lps(np.stack([ii, jj, kk], -1).reshape(-1, 3)).reshape(*shape, 3)
    body = lps[..., 0] ** 2 + lps[..., 1] ** 2 < 80**2
    arr[body] = 40
    organ = (lps[..., 0] - 40) ** 2 + lps[..., 1] ** 2 + lps[..., 2] ** 2 < 30**2
    arr[organ] = 200
    assert np.allclose(centre, grid.index_to_lps((np.array(grid.size_ijk) - 1) / 2) * 0 + centre)
    return Volume(arr, grid, {"modality": "CT"})


class PositionNet(torch.nn.Module):
    """Fake 6-class network on ZYX tensors: bright voxels (> 80 HU) in the upper half of the last
    array axis are 'spleen' (5), in the lower half 'liver' (1). Over a whole scan in canonical LPS
    order (i toward the patient's left) the test blob (at LPS x = +40 mm) is all spleen; a model fed
    a flipped or permuted array would call it liver."""

    def __init__(self, by_position: bool = True):
        super().__init__()
        self.by_position = by_position

    def forward(self, x):
        n = x.shape[-1]
        bright = (x[:, 0] > 0.3).float() * 10
        side = torch.ones_like(bright)
        if self.by_position:
            side[..., : n // 2] = 0.0
        logits = torch.zeros(x.shape[0], 6, *x.shape[2:])
        logits[:, 5] = bright * side
        logits[:, 1] = bright * (1 - side)
        logits[:, 0] = 5.0
        return logits


def test_output_lies_on_the_exact_input_grid_for_every_orientation(segmenter, direction):
    volume = body_volume(direction)
    result = segmenter.predict(volume)
    assert result.labels.grid.same_as(volume.grid, tol=1e-9)
    assert result.labels.array.dtype == np.uint8
    assert set(np.unique(result.labels.array)) <= set(PRODUCT_LABELS) | {0}
    assert set(result.timings) >= {"checks", "fine_infer", "resample_back", "postprocess"}
    assert set(result.label_table.values()) == set(LABELS.values())


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_model_sees_canonical_orientation(segmenter, name):
    """Single stage: the window covers the whole scan, the fake net labels by array side."""
    seg = segmenter.with_options()
    seg.nets = {"fine": PositionNet(), "coarse": PositionNet()}
    volume = body_volume(DIRECTIONS[name])
    result = seg.predict(volume, options=AutoOptions(cascade=False, postprocess=PostprocessConfig(min_organ_ml=0.1)))
    labels = result.labels.array
    blob = volume.array > 80
    core = ndimage.binary_erosion(blob, iterations=2)
    near = ndimage.binary_dilation(blob, iterations=2)
    assert (labels[core] == PRODUCT_LABELS.value_of("spleen")).mean() > 0.97
    assert not (labels == PRODUCT_LABELS.value_of("liver")).any()
    assert not labels[~near].any()


@pytest.mark.parametrize("name", ["axial_lps", "sagittal", "oblique"])
def test_cascade_box_covers_the_organ(segmenter, name):
    """Cascade: the coarse (position) net finds the blob; the fine net runs only in its box."""
    seg = segmenter.with_options()
    seg.nets = {"fine": PositionNet(by_position=False), "coarse": PositionNet()}
    volume = body_volume(DIRECTIONS[name])
    result = seg.predict(
        volume, options=AutoOptions(cascade=True, margin_mm=10, postprocess=PostprocessConfig(min_organ_ml=0.1))
    )
    labels = result.labels.array
    blob = volume.array > 80
    core = ndimage.binary_erosion(blob, iterations=2)
    assert result.cascade and (labels[core] == PRODUCT_LABELS.value_of("spleen")).all()
    assert not labels[~ndimage.binary_dilation(blob, iterations=2)].any()
    ((lo, hi),) = result.boxes_mm
    extent = np.array(hi) - np.array(lo)
    assert np.all(extent < 0.8 * np.array([n * s for n, s in zip(volume.grid.size_ijk, volume.spacing)]).max())


def test_probabilities_and_uncertainty(segmenter):
    volume = body_volume()
    result = segmenter.predict(volume, options=AutoOptions(return_probabilities=True, cascade=False))
    assert result.probability.grid.same_as(volume.grid) and result.uncertainty.grid.same_as(volume.grid)
    p, u = result.probability.array, result.uncertainty.array
    assert p.dtype == np.float32 and p.min() >= 1 / 6 - 1e-4 and p.max() <= 1 + 1e-5
    assert u.min() >= 0 and u.max() <= 1 + 1e-5


def test_structures_filter_and_unknown_names(segmenter):
    result = segmenter.predict(body_volume(), structures=["liver"])
    assert set(result.label_table.values()) == {"liver"}
    assert set(np.unique(result.labels.array)) <= {0, 1}
    with pytest.raises(InputError, match="does not segment"):
        segmenter.predict(body_volume(), structures=["pancreas"])


def test_empty_result_is_reported(segmenter):
    class Background(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros(x.shape[0], 6, *x.shape[2:])
            out[:, 0] = 10
            return out

    seg = segmenter.with_options()
    seg.nets = {"fine": Background(), "coarse": Background()}
    result = seg.predict(body_volume())
    assert result.empty and not result.labels.array.any()
    assert any("abdomen" in w or "empty" in w for w in result.warnings)
    result = seg.predict(body_volume(), options=AutoOptions(cascade=False))
    assert result.empty and any("empty" in w for w in result.warnings)


def test_cancel_stops_prediction(segmenter):
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        segmenter.predict(body_volume(), cancel=token)


def test_progress_is_reported_in_order(segmenter):
    seen = []
    segmenter.predict(body_volume(), progress=lambda f, m: seen.append(f))
    assert seen[-1] == 1.0 and all(b >= a - 1e-9 for a, b in itertools.pairwise(seen))


def test_tta_runs_and_keeps_geometry(tiny_package):
    from lkseg.models import load_manifest

    manifest = load_manifest(tiny_package.folder)
    manifest = replace(manifest, inference=replace(manifest.inference, mirror_axes=(1, 2)))
    seg = AutoSegmenter(manifest, device="cpu")
    volume = body_volume(DIRECTIONS["oblique"])
    result = seg.predict(volume, options=AutoOptions(tta=True))
    assert result.labels.grid.same_as(volume.grid)


# -- input checks -------------------------------------------------------------------------------
def test_bad_inputs_are_refused_or_warned():
    ok = body_volume()
    assert check_ct_volume(ok) == []
    with pytest.raises(InputError, match="MR image"):
        check_ct_volume(Volume(ok.array, ok.grid, {"modality": "MR"}))
    with pytest.raises(InputError, match="no voxel below 0 HU"):
        check_ct_volume(ok.with_array((ok.array + 1024).astype(np.int16)))
    with pytest.raises(InputError, match="no voxel below 0 HU"):
        check_ct_volume(ok.with_array(np.random.default_rng(0).random(ok.shape).astype(np.float32)))
    with pytest.raises(InputError, match="too small"):
        check_ct_volume(Volume.from_array(np.full((1, 64, 64), -1000, np.int16), (1, 1, 1)))
    with pytest.raises(InputError, match="too small"):
        check_ct_volume(Volume.from_array(np.full((6, 6, 6), -1000, np.int16), (1, 1, 1)))
    nan = ok.array.astype(np.float32)
    nan[3, 3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        check_ct_volume(ok.with_array(nan))
    assert any(
        "no air" in w for w in check_ct_volume(ok.with_array(np.where(ok.array < 0, -200, ok.array).astype(np.int16)))
    )
    huge = Volume.from_array(np.broadcast_to(np.int16(-1000), (1001, 8, 8)), (5, 5, 1))
    assert any("1001 slices" in w for w in check_ct_volume(huge))


def test_predict_refuses_non_ct(segmenter):
    volume = body_volume()
    with pytest.raises(InputError, match="not a CT"):
        segmenter.predict(volume.with_array((volume.array + 1024).astype(np.int16)))


# -- postprocessing -----------------------------------------------------------------------------
def _grid(shape=(30, 40, 50), spacing=(2.0, 2.0, 2.0), direction=None):
    return Grid(shape, spacing, (0, 0, 0), np.eye(3) if direction is None else direction)


def _sphere(shape, centre_zyx, r):
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (z - centre_zyx[0]) ** 2 + (y - centre_zyx[1]) ** 2 + (x - centre_zyx[2]) ** 2 <= r * r


def test_postprocess_keeps_largest_liver_piece_and_lesions_inside_it():
    shape = (30, 40, 50)
    labels = np.zeros(shape, np.uint8)
    labels[_sphere(shape, (15, 20, 20), 10)] = 1
    labels[_sphere(shape, (15, 20, 45), 3)] = 1  # a stray liver piece
    labels[_sphere(shape, (15, 20, 12), 3)] = 2  # tumour at the border: kept
    labels[_sphere(shape, (5, 5, 45), 2)] = 2  # tumour far from the liver: removed
    labels[15, 20, 20] = 0  # a hole
    notes = postprocess_labels(labels, _grid(shape), PRODUCT_LABELS, PostprocessConfig(min_organ_ml=0.01))
    assert not labels[_sphere(shape, (15, 20, 45), 3)].any()
    assert (labels[_sphere(shape, (15, 20, 12), 3)] > 0).all()
    assert not labels[_sphere(shape, (5, 5, 45), 2)].any()
    assert labels[15, 20, 20] == 1
    assert any("filled" in n for n in notes) and any("removed" in n for n in notes)


@pytest.mark.parametrize("name", ["axial_lps", "flipped_ras", "sagittal"])
def test_kidney_laterality_follows_ras_x(name):
    direction = DIRECTIONS[name]
    shape = (40, 40, 40)
    grid = _grid(shape, direction=direction)
    # pick two voxel positions whose RAS x differ clearly
    a, b = (20, 20, 8), (20, 20, 32)
    ras_a = grid.index_to_ras(np.array(a[::-1], float))[0]
    ras_b = grid.index_to_ras(np.array(b[::-1], float))[0]
    if abs(ras_a - ras_b) < 1:
        a, b = (20, 8, 20), (20, 32, 20)
        ras_a, ras_b = grid.index_to_ras(np.array(a[::-1], float))[0], grid.index_to_ras(np.array(b[::-1], float))[0]
    if abs(ras_a - ras_b) < 1:
        a, b = (8, 20, 20), (32, 20, 20)
        ras_a, ras_b = grid.index_to_ras(np.array(a[::-1], float))[0], grid.index_to_ras(np.array(b[::-1], float))[0]
    labels = np.zeros(shape, np.uint8)
    labels[_sphere(shape, a, 5)] = 4  # the network called both "left"
    labels[_sphere(shape, b, 5)] = 4
    postprocess_labels(labels, grid, PRODUCT_LABELS, PostprocessConfig(min_organ_ml=0.01))
    right_at = a if ras_a > ras_b else b
    left_at = b if ras_a > ras_b else a
    assert labels[right_at] == 3 and labels[left_at] == 4


def test_single_kidney_keeps_network_vote_and_drops_noise():
    shape = (40, 40, 40)
    labels = np.zeros(shape, np.uint8)
    kidney = _sphere(shape, (20, 20, 20), 8)
    labels[kidney] = 3
    labels[_sphere(shape, (20, 20, 14), 3)] = 4  # minority wrong side inside it
    labels[_sphere(shape, (3, 3, 3), 1)] = 4  # tiny noise
    labels[_sphere(shape, (20, 20, 26), 2)] = 5  # kidney tumour inside
    postprocess_labels(labels, _grid(shape), PRODUCT_LABELS, PostprocessConfig(min_organ_ml=0.5))
    assert set(np.unique(labels)) == {0, 3, 5}
    assert labels[3, 3, 3] == 0


@pytest.mark.parametrize("min_mm", [5.0, 0.0])
def test_lesion_specks_become_the_surrounding_organ(min_mm):
    """Tumour pieces smaller than a ``min_lesion_mm`` sphere are relabelled to the organ around
    them; lesions at or above the size are kept exactly; 0 turns the rule off."""
    shape = (40, 40, 60)
    spacing = (0.8, 0.8, 2.0)  # (i, j, k) mm, anisotropic: sizes are in mm, not voxels
    voxel_mm3 = 0.8 * 0.8 * 2.0
    labels = np.zeros(shape, np.uint8)
    labels[_sphere(shape, (20, 20, 15), 12)] = 4  # left kidney (voxel radius 12 on a 0.8-2 mm grid)
    labels[_sphere(shape, (20, 20, 45), 12)] = 1  # liver
    labels[20, 20, 10] = 5  # 1-voxel kidney tumour speck (1.3 mm3)
    labels[20, 19:21, 48] = 2  # 2-voxel liver tumour speck
    big = _sphere(shape, (20, 25, 42), 3)  # 123 voxels = 157 mm3 = a 6.7 mm sphere: kept
    labels[big] = 2
    assert big.sum() * voxel_mm3 > np.pi / 6 * 5.0**3
    notes = postprocess_labels(
        labels,
        Grid(shape, spacing, (0, 0, 0), np.eye(3)),
        PRODUCT_LABELS,
        PostprocessConfig(min_organ_ml=0.01, laterality=False, min_lesion_mm=min_mm),
    )
    assert (labels[big] == 2).all()
    if min_mm:
        assert labels[20, 20, 10] == 4 and (labels[20, 19:21, 48] == 1).all()
        assert any("speck" in n and "kidney_tumor" in n for n in notes)
        assert any("speck" in n and "liver_tumor" in n for n in notes)
    else:
        assert labels[20, 20, 10] == 5 and (labels[20, 19:21, 48] == 2).all()
        assert not any("speck" in n for n in notes)


# -- cascade geometry and windows ---------------------------------------------------------------
def test_covering_box_contains_the_physical_extent():
    coarse = Grid((10, 12, 14), (6, 6, 6), (0, 0, 0), DIRECTIONS["oblique"])
    fine = Grid((40, 48, 56), (1.5, 1.5, 1.5), tuple(coarse.index_to_lps([-0.25, -0.25, -0.25])), DIRECTIONS["oblique"])
    box = Box((2, 3, 4), (5, 7, 9))
    fbox = covering_box(coarse, box, fine, margin_mm=3.0)
    # every fine voxel centre inside the coarse box's voxel extent is inside fbox
    corners = fine.lps_to_index(
        coarse.index_to_lps(np.array([[4 - 0.5, 3 - 0.5, 2 - 0.5], [9 - 0.5, 7 - 0.5, 5 - 0.5]]))
    )
    lo, hi = np.floor(corners.min(0)), np.ceil(corners.max(0))
    assert all(fbox.lo[2 - a] <= max(0, lo[a]) and fbox.hi[2 - a] >= min(fine.size_ijk[a], hi[a]) for a in range(3))
    sub = sub_grid(fine, fbox)
    assert np.allclose(sub.index_to_lps([0, 0, 0]), fine.index_to_lps([fbox.lo[2], fbox.lo[1], fbox.lo[0]]))


def test_merge_boxes_merges_only_when_cheaper():
    a, b = Box((0, 0, 0), (10, 10, 10)), Box((2, 2, 2), (11, 11, 11))
    far = Box((50, 50, 50), (60, 60, 60))
    merged = merge_boxes([a, b, far])
    assert len(merged) == 2 and Box((0, 0, 0), (11, 11, 11)) in [Box(m.lo, m.hi) for m in merged]


def test_find_organ_boxes_one_per_organ_piece():
    labels = np.zeros((30, 30, 30), np.uint8)
    labels[_sphere(labels.shape, (10, 10, 10), 4)] = 1
    labels[_sphere(labels.shape, (20, 20, 5), 3)] = 3
    labels[_sphere(labels.shape, (20, 20, 25), 3)] = 4
    boxes = find_organ_boxes(labels, _grid(labels.shape, (4, 4, 4)), PRODUCT_LABELS, min_organ_ml=0.5)
    assert sorted(b.organs[0] for b in boxes) == ["kidney", "kidney", "liver"]
    only_liver = find_organ_boxes(
        labels, _grid(labels.shape, (4, 4, 4)), PRODUCT_LABELS, organs=["liver"], min_organ_ml=0.5
    )
    assert len(only_liver) == 1 and only_liver[0].lo == (6, 6, 6)


def test_fit_roi_and_window_count_match_monai():
    from monai.inferers import sliding_window_inference

    assert fit_roi((40, 100, 300), (96, 96, 96)) == (48, 112, 96)
    calls = []

    def predictor(x):
        calls.append(x.shape[0])
        return x

    sliding_window_inference(torch.zeros(1, 1, 50, 70, 90), (32, 32, 32), 1, predictor, overlap=0.25)
    assert len(calls) == count_windows((50, 70, 90), (32, 32, 32), 0.25)


@pytest.mark.parametrize(
    "shape, roi, overlap, batch",
    [
        ((40, 50, 33), (16, 32, 32), 0.25, 1),
        ((10, 70, 20), (16, 32, 32), (0.0, 0.3, 0.5), 3),  # padded on two axes, per-axis overlap
        ((96, 100, 120), (64, 48, 48), (0.1, 0.27, 0.61), 2),
        ((5, 6, 7), (16, 16, 16), 0.25, 1),  # smaller than one window on every axis
    ],
)
def test_blend_windows_matches_monai(shape, roi, overlap, batch):
    """The project's own Gaussian sliding window against MONAI's ``sliding_window_inference``
    (mode gaussian), which it replaces so that ONNX inference needs no MONAI import: same window
    placement, weights, padding and crop, to float rounding."""
    from monai.inferers import sliding_window_inference

    from lkseg.auto.window import blend_windows

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 3, 3, padding=1), torch.nn.Conv3d(3, 3, 3, padding=1))

    def predict(x):
        return torch.softmax(net(x), 1)

    x = torch.randn(1, 1, *shape)
    cpu = torch.device("cpu")
    with torch.no_grad():
        want = sliding_window_inference(x, roi, batch, predict, overlap=overlap, mode="gaussian")
        got = blend_windows(x, roi, overlap, batch, predict, cpu, cpu)
    assert tuple(got.shape) == tuple(want.shape) == (1, 3, *shape)
    assert float((got - want).abs().max()) < 1e-6


def test_oom_falls_back_to_smaller_batches(monkeypatch):
    from lkseg.auto import window

    class Flaky(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            if x.shape[0] > 1:
                raise torch.cuda.OutOfMemoryError("fake OOM")
            return torch.cat([-x, x], dim=1)

    cpu = torch.device("cpu")
    monkeypatch.setattr(window, "_plan", lambda device, b: [(cpu, 4, True), (cpu, 2, True), (cpu, 1, True)])
    run = run_sliding_window(Flaky(), np.zeros((40, 40, 40), np.float32), WindowConfig((16, 16, 16), 0.25, 4), cpu)
    assert run.attempts == ["cpu batch 4", "cpu batch 2", "cpu batch 1"]
    assert run.probabilities.shape == (2, 40, 40, 40)
    assert np.allclose(run.probabilities, 0.5)


def test_plan_on_cuda_ends_on_cpu():
    from lkseg.auto.window import _plan

    steps = _plan(torch.device("cuda"), 4)
    assert [s[1] for s in steps] == [4, 2, 1, 1, 4]
    assert steps[-2][2] is False and steps[-1][0].type == "cpu"


def test_slab_resampling_equals_full_resampling():
    rng = np.random.default_rng(1)
    source = Grid((12, 14, 16), (3.0, 3.0, 3.0), (0, 0, 0), DIRECTIONS["oblique"])
    target = Grid(
        (30, 35, 41), (1.1, 1.2, 1.3), tuple(source.index_to_lps([1.3, 0.7, 2.1])), DIRECTIONS["sagittal"] @ np.eye(3)
    )
    logits = rng.normal(size=(4, *source.shape)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(0)
    full = resample_probabilities_to_grid(probs, source, target)
    part = resample_channels(probs, source, target, [1, 3])
    assert np.allclose(full[[1, 3]], part, atol=1e-6)


def test_probability_field_matches_full_trilinear_resampling():
    from lkseg.auto.sampling import ProbabilityField

    rng = np.random.default_rng(3)
    direction = DIRECTIONS["oblique"]
    source = Grid((14, 16, 18), (3.0, 2.5, 2.0), (5.0, -3.0, 1.0), direction)
    target = Grid((33, 37, 29), (1.1, 1.2, 1.3), tuple(source.index_to_lps([1.3, 0.7, 2.1])), direction)
    smooth = ndimage.gaussian_filter(rng.normal(size=(5, *source.shape)), (0, 1.5, 1.5, 1.5)) * 8
    probs = (np.exp(smooth) / np.exp(smooth).sum(0)).astype(np.float32)
    field = ProbabilityField(probs, source)
    fast = field.argmax(target)
    full = resample_probabilities_to_grid(probs, source, target)
    kk, jj, ii = np.meshgrid(*(np.arange(n) for n in target.shape), indexing="ij")
    src_idx = source.lps_to_index(target.index_to_lps(np.stack([ii, jj, kk], -1).reshape(-1, 3))).reshape(
        *target.shape, 3
    )
    inside = np.all((src_idx >= 0) & (src_idx <= np.array(source.size_ijk) - 1), axis=-1)
    assert inside.mean() > 0.3
    assert (fast[inside] == full.argmax(0)[inside]).mean() > 0.999
    assert (~field.uniform).mean() < 0.9  # most blocks are uniform: the shortcut does work
    best, entropy = field.confidence(target)
    assert np.allclose(best[inside], full.max(0)[inside], atol=1e-4)
    assert entropy.min() >= 0 and entropy.max() <= 1 + 1e-5


@pytest.mark.parametrize("shape", [(200, 147, 147), (300, 150, 90), (40, 60, 500), (169, 168, 1000), (17, 33, 45)])
def test_plan_windows_covers_with_few_windows(shape):
    from monai.inferers import sliding_window_inference

    roi, overlap = plan_windows(shape, (112, 112, 112), 0.25)
    starts = []

    def predictor(x):
        starts.append(1)
        return x

    sliding_window_inference(torch.zeros(1, 1, *shape), roi, 1, predictor, overlap=overlap)
    assert len(starts) == count_windows(shape, roi, overlap)
    assert all(r % 16 == 0 and r <= 168 for r in roi)
    for n, r, o in zip(shape, roi, overlap):
        windows = 1 if r >= n else math.ceil((n - r) / int(r * (1 - o))) + 1
        assert windows * r >= n and (windows == 1 or r * (windows - 1) < n + 2 * 28 * (windows - 1))
        assert windows <= math.ceil(n / 112)


def test_onnx_backend_matches_torch(tiny_package, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("LKSEG_CACHE", str(tmp_path / "cache"))
    eager = AutoSegmenter(tiny_package, device="cpu", backend="torch")
    ort_seg = AutoSegmenter(tiny_package, device="cpu", backend="onnx")
    assert ort_seg.backend == "onnx" and eager.backend == "torch"
    exported = sorted((tmp_path / "cache" / "onnx").glob("auto-tiny-auto-*.onnx"))
    assert [p.name.split("-")[3] for p in exported] == ["coarse", "fine"]
    x = torch.randn(2, 1, 32, 48, 32)
    with torch.inference_mode():
        assert torch.allclose(eager.nets["fine"](x), ort_seg.nets["fine"](x), atol=1e-3)
    volume = body_volume(DIRECTIONS["oblique"])
    a = eager.predict(volume, options=AutoOptions(cascade=False)).labels.array
    b = ort_seg.predict(volume, options=AutoOptions(cascade=False)).labels.array
    assert (a == b).mean() > 0.999
    # a damaged cache file is exported again, never loaded
    exported[1].write_bytes(b"garbage")
    again = AutoSegmenter(tiny_package, device="cpu", backend="onnx")
    assert again.backend == "onnx" and exported[1].stat().st_size > 1000


def test_demo_model_flags_a_scan_without_abdomen():
    """Two thighs (fat, muscle, bone): whatever the phantom-trained model finds there, the result
    must say that organs are missing and the abdomen may not be in view."""
    from lkseg.models import DEFAULT_MODEL_ID, builtin_models_dir

    if not (builtin_models_dir() / DEFAULT_MODEL_ID).is_dir():
        pytest.skip("demo model not present")
    rng = np.random.default_rng(0)
    _, y, x = np.mgrid[:60, :128, :128]
    arr = np.full((60, 128, 128), -1000.0)
    for cx in (40, 88):
        r2 = (x - cx) ** 2 + (y - 64) ** 2
        arr[r2 < 22**2] = -100
        arr[r2 < 18**2] = 50
        arr[r2 < 5**2] = 900
    volume = Volume.from_array(
        (arr + rng.normal(0, 12, arr.shape)).astype(np.int16), (3.0, 3.0, 3.0), meta={"modality": "CT"}
    )
    result = AutoSegmenter(DEFAULT_MODEL_ID, device="cpu", backend="torch").predict(volume)
    assert result.labels.grid.same_as(volume.grid)
    assert result.empty or any("may not show the abdomen" in w for w in result.warnings), result.warnings


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_a_short_scan_is_extended_head_foot_with_every_voxel_kept_in_place(name):
    """The context extension repeats the edge slices along the axis closest to LPS z, keeps each
    original voxel at its LPS position, and its crop gives the original array back."""
    from lkseg.auto.predictor import extend_head_foot

    direction = DIRECTIONS[name]
    rng = np.random.default_rng(3)
    vol = Volume.from_array(
        rng.integers(-100, 200, (7, 9, 11)).astype(np.int16), (2.0, 3.0, 4.0), (5.0, -7.0, 11.0), direction
    )
    axis = int(np.argmax(np.abs(direction[2])))  # index axis along the head-foot direction
    extent = vol.shape[2 - axis] * vol.spacing[axis]
    assert extend_head_foot(vol, extent) is None and extend_head_foot(vol, 0.0) is None
    big, crop = extend_head_foot(vol, extent + 10 * vol.spacing[axis])
    assert big.shape[2 - axis] == vol.shape[2 - axis] + 10
    assert [big.shape[a] for a in range(3) if a != 2 - axis] == [vol.shape[a] for a in range(3) if a != 2 - axis]
    np.testing.assert_array_equal(big.array[crop], vol.array)
    # LPS of every original voxel, read through each grid's own geometry
    kji = np.argwhere(np.ones(vol.shape, bool))
    offset = np.array([c.start or 0 for c in crop])
    np.testing.assert_allclose(
        big.grid.index_to_lps((kji + offset)[:, ::-1].astype(float)),
        vol.grid.index_to_lps(kji[:, ::-1].astype(float)),
        atol=1e-9,
    )
    # the repeated slices hold the edge slices, and lie beyond the scan along its head-foot axis
    first = [slice(None)] * 3
    first[2 - axis] = 0
    edge = [slice(None)] * 3
    edge[2 - axis] = offset[2 - axis]
    np.testing.assert_array_equal(big.array[tuple(first)], big.array[tuple(edge)])

    def z_span(v):
        return np.ptp(v.grid.index_to_lps(np.argwhere(np.ones(v.shape, bool))[:, ::-1].astype(float))[:, 2])

    assert z_span(big) > z_span(vol) + 9 * vol.spacing[axis] * abs(direction[2, axis]) - 1e-6


# -- the second locator ----------------------------------------------------------------------------
class BrightAs(torch.nn.Module):
    """Fake 6-class network: every bright voxel (> 80 HU after the tiny package's normalisation)
    is class ``channel``; ``channel=0`` finds nothing."""

    def __init__(self, channel: int):
        super().__init__()
        self.channel = channel

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 6, *x.shape[2:])
        logits[:, 0] = 5.0
        if self.channel:
            logits[:, self.channel] = (x[:, 0] > 0.3).float() * 10
        return logits


def _with_second_locator(segmenter, monkeypatch, coarse, coarse2):
    """The tiny segmenter with a ``coarse2`` stage; its fine network labels bright voxels spleen,
    and its whole-scan pass (the fine network without a cascade) is made to find nothing, as on
    the real tight fields of view where the second locator is needed."""
    from lkseg.auto import predictor

    seg = segmenter.with_options()
    stages = dict(seg.manifest.stages)
    if coarse2 is not None:
        stages["coarse2"] = replace(stages["coarse"], name="coarse2", weights="coarse2.pt")
    seg.manifest = replace(seg.manifest, stages=stages)
    seg.nets = {"fine": BrightAs(5), "coarse": coarse, **({"coarse2": coarse2} if coarse2 is not None else {})}
    calls = []

    def unet(volume, keep, opts, progress, cancel, locator="coarse"):
        calls.append("whole scan" if opts.cascade is False else locator)
        raw = predictor.AutoSegmenter._predict_unet(seg, volume, keep, opts, progress, cancel, locator)
        if opts.cascade is False:
            raw.labels[:] = 0
        return raw

    monkeypatch.setattr(seg, "_predict_unet", unet)
    return seg, calls


@pytest.mark.parametrize("name", ["axial_lps", "oblique"])
def test_second_locator_finds_the_organ_the_first_and_the_whole_scan_pass_missed(segmenter, monkeypatch, name):
    volume = body_volume(DIRECTIONS[name])
    blob = volume.array > 80
    opts = AutoOptions(mode="unet", margin_mm=10, postprocess=PostprocessConfig(min_organ_ml=0.1))
    spleen = PRODUCT_LABELS.value_of("spleen")

    seg, calls = _with_second_locator(segmenter, monkeypatch, BrightAs(0), BrightAs(5))
    result = seg.predict(volume, options=opts)
    labels = result.labels.array
    core = ndimage.binary_erosion(blob, iterations=2)
    assert (labels[core] == spleen).all() and not labels[~ndimage.binary_dilation(blob, iterations=2)].any()
    assert calls == ["coarse", "whole scan", "coarse2"]
    assert any("second locator" in n and "taken from the second: spleen" in n for n in result.notes), result.notes
    assert any(k.startswith("locator2_") for k in result.timings)

    # a second locator that finds nothing leaves the result empty, and says so
    seg, calls = _with_second_locator(segmenter, monkeypatch, BrightAs(0), BrightAs(0))
    result = seg.predict(volume, options=opts)
    assert result.empty and any("found none of them" in n for n in result.notes)
    # a package without one: the same scan, two passes, nothing found
    seg, calls = _with_second_locator(segmenter, monkeypatch, BrightAs(0), None)
    assert seg.predict(volume, options=opts).empty and calls == ["coarse", "whole scan"]
    # relocation off: neither the whole-scan pass nor the second locator runs
    seg, calls = _with_second_locator(segmenter, monkeypatch, BrightAs(0), BrightAs(5))
    assert seg.predict(volume, options=replace(opts, relocate=False)).empty and calls == ["coarse"]


def test_merged_organ_takes_only_free_voxels_with_its_own_lesions(segmenter):
    """What another pass adds (``_merge_organs``): the organ asked for with the voxels of its own
    organ group's lesions within 2 voxels of it, only where the labels are empty; nothing else."""
    v = {n: PRODUCT_LABELS.value_of(n) for n in ("liver", "liver_tumor", "kidney_right", "spleen")}
    labels = np.zeros((40, 40, 40), np.uint8)
    labels[5:15, 5:35, 5:35] = v["spleen"]  # what the first pass found
    other = np.zeros_like(labels)
    other[10:30, 5:35, 5:35] = v["liver"]  # overlaps the spleen on slices 10-14
    other[20:24, 10:14, 10:14] = v["liver_tumor"]  # inside the liver
    other[30:32, 10:14, 10:14] = v["liver_tumor"]  # on its surface: within 2 voxels
    other[36:40, 30:34, 30:34] = v["liver_tumor"]  # 6 voxels away: not the liver's
    other[32:38, 0:4, 0:4] = v["kidney_right"]  # not asked for
    before = labels.copy()
    added = segmenter._merge_organs(labels, other, ["liver"], ml=10.0)  # 10 mL a voxel: plausible sizes
    assert added == ["liver"]
    assert (labels[5:15] == before[5:15])[before[5:15] > 0].all()  # the spleen untouched
    assert (labels[15:30, 5:35, 5:35] != 0).all()
    assert (labels[20:24, 10:14, 10:14] == v["liver_tumor"]).all()
    assert (labels[30:32, 10:14, 10:14] == v["liver_tumor"]).all()
    assert not labels[36:40, 30:34, 30:34].any() and not labels[32:38, 0:4, 0:4].any()
    # an organ below the plausible adult size in the other pass is not taken
    small = np.zeros_like(labels)
    small[30:32, 30:32, 30:32] = v["liver"]
    assert segmenter._merge_organs(labels.copy(), small, ["liver"], ml=10.0) == []
