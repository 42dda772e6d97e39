"""3D behaviour of interactive refinement without the network: propagation stop rules, 3D clicks,
undo/redo and the simulated user, against an analytic phantom's exact labels.

A *threshold engine* stands in for LiteMedSAM: its decoder outlines the pixels in the prompt box
whose intensity is within 40 HU of the box centre's (a box-prompted "segment the blob in the box").
The phantom is an ellipsoid organ whose HU drifts from 40 (bottom) to 64 (top) with a "heart"
(230 HU) on top of it and one artefact slice (-40 HU) inside it, so that a stop rule without
look-ahead stops at the artefact and one that follows blindly runs into the heart. The truth is
the ellipsoid's own formula, not the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest

from lkseg.metrics import dice
from lkseg.refine import FollowConfig, InteractiveSegment, PredictorConfig, PromptPredictor
from lkseg.refine.evaluation import largest_error_3d, simulate_structure
from lkseg.refine.models import ModelSpec
from lkseg.refine.propagation import intensity_band
from lkseg.volume import Volume

SHAPE = (40, 64, 64)  # (k, j, i)
SPACING = (2.0, 2.0, 3.0)  # (i, j, k) mm
BOTTOM, TOP, ARTEFACT = 8, 32, 14


def _ellipsoid(centre, radii):
    kk, jj, ii = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    return ((kk - centre[0]) / radii[0]) ** 2 + ((jj - centre[1]) / radii[1]) ** 2 + (
        (ii - centre[2]) / radii[2]
    ) ** 2 <= 1.0


def phantom():
    """(CT Volume, organ mask, heart mask); axial LPS storage, so canonical = storage."""
    organ = _ellipsoid((20, 32, 28), (12.4, 12, 14)) & (np.arange(SHAPE[0]) >= BOTTOM)[:, None, None]
    organ &= (np.arange(SHAPE[0]) <= TOP)[:, None, None]
    heart = _ellipsoid((38, 32, 30), (5.5, 11, 11)) & ~organ
    hu = np.full(SHAPE, -100.0)
    hu[:, :4, :] = -1000.0  # air in front of the body
    z = np.arange(SHAPE[0], dtype=float)[:, None, None]
    drift = 40.0 + 1.0 * (z - BOTTOM)
    hu = np.where(organ, np.broadcast_to(drift, SHAPE), hu)
    hu[ARTEFACT][organ[ARTEFACT]] = -40.0
    hu[heart] = 230.0
    image = Volume.from_array(hu.astype(np.int16), spacing=SPACING, origin=(0.0, 0.0, 0.0))
    return image, organ, heart


class ThresholdEngine:
    """Encoder = the windowed slice; decoder = box pixels within 40 HU of the box centre's value."""

    def __init__(self):
        self.spec = ModelSpec("threshold", 256, "imagenet", False, "0" * 64)
        self.model = None
        self.backend = "stub"
        self.device = "cpu"
        self.encode_batch = 1

    def encode(self, images):
        unit = (images[:, 0] * 58.395 + 123.675) / 255.0  # undo the ImageNet normalisation
        return unit[:, None].astype(np.float32)

    def decode(self, embedding, coords, labels, mask_input=None):
        unit = embedding[0, 0]
        coords = np.asarray(coords).reshape(-1, 2)
        labels = np.asarray(labels).reshape(-1)
        out = np.full((1, 1, 256, 256), -10.0, dtype=np.float32)
        if 2.0 in labels:
            (x0, y0), (x1, y1) = coords[labels == 2][0], coords[labels == 3][0]
            yy, xx = np.mgrid[0:256, 0:256]
            inside = (xx >= x0 - 0.5) & (xx <= x1 + 0.5) & (yy >= y0 - 0.5) & (yy <= y1 + 0.5)
            centre = unit[int(np.rint((y0 + y1) / 2)), int(np.rint((x0 + x1) / 2))]
            out[0, 0][inside & (np.abs(unit - centre) < 0.1)] = 10.0
        return out, np.ones((1, 1), dtype=np.float32)


@pytest.fixture()
def case():
    image, organ, heart = phantom()
    predictor = PromptPredictor.with_engine(ThresholdEngine(), PredictorConfig(prefetch=0, cache_slices=64))
    predictor.set_volume(image)
    yield predictor, organ, heart
    predictor.close()


def _box(mask2d: np.ndarray, k: int) -> np.ndarray:
    jj, ii = np.nonzero(mask2d)
    return np.array([[ii.min(), jj.min(), k], [ii.max(), jj.max(), k]], dtype=float)


def _slices(mask: np.ndarray) -> np.ndarray:
    return np.flatnonzero(mask.any(axis=(1, 2)))


def test_propagation_follows_a_drifting_organ_to_its_true_ends_without_leaking(case):
    predictor, organ, heart = case
    predictor.config.propagation.look_ahead = 2  # bridges the artefact slice (off by default)
    k = 20
    start = predictor.predict("axial", k, box=_box(organ[k], k))
    assert dice(start, organ[k]) > 0.95
    vol = predictor.propagate("axial", k, start)
    reached = _slices(vol)
    assert not (vol & heart).any(), "propagation leaked into the heart"
    assert reached.min() <= BOTTOM + 1 and reached.max() >= TOP - 1, f"stopped early: {reached.min()}..{reached.max()}"
    assert reached.min() >= BOTTOM and reached.max() <= TOP, f"ran past the organ: {reached.min()}..{reached.max()}"
    assert dice(vol, organ) >= 0.95
    assert vol[ARTEFACT].any(), "the artefact slice was not bridged"


def test_old_rules_stop_early_on_the_same_organ(case):
    """The same propagation with the start slice's HU band and no look-ahead (the rules before
    issue 14) stops at the artefact: what the look-ahead fixes; the default rules (no look-ahead)
    stop there too, but never run into the heart."""
    predictor, organ, heart = case
    k = 20
    vol = predictor.propagate("axial", k, predictor.predict("axial", k, box=_box(organ[k], k)))
    assert _slices(vol).min() > ARTEFACT and _slices(vol).max() >= TOP - 1 and not (vol & heart).any()
    predictor.config.propagation.band_slices = 0
    predictor.config.propagation.look_ahead = 0
    k = 20
    vol = predictor.propagate("axial", k, predictor.predict("axial", k, box=_box(organ[k], k)))
    reached = _slices(vol)
    assert reached.min() > ARTEFACT


def test_propagation_extent_is_bounded(case):
    predictor, organ, _ = case
    predictor.config.propagation.max_extent_mm = 9.0  # 3 slices of 3 mm
    k = 20
    vol = predictor.propagate("axial", k, predictor.predict("axial", k, box=_box(organ[k], k)))
    assert list(_slices(vol)) == list(range(k - 3, k + 4))


def test_positive_click_on_an_unreached_slice_propagates_until_it_meets_the_mask(case):
    predictor, organ, _ = case
    predictor.config.propagation.look_ahead = 2  # across the artefact slice
    initial = organ.copy()
    initial[:18] = False  # the mask does not reach the organ's lower part (slices 8..17)
    session = InteractiveSegment(predictor, None, "axial", initial=initial)
    k = 12
    jj, ii = np.argwhere(organ[k]).mean(axis=0).round().astype(int)
    session.click(np.array([ii, jj, k]), positive=True)
    out = session.mask
    np.testing.assert_array_equal(out[18:], initial[18:])  # the existing mask is never overwritten
    assert dice(out[:18], organ[:18]) >= 0.9, f"Dice of the filled part {dice(out[:18], organ[:18]):.3f}"
    assert _slices(out).min() >= BOTTOM


def test_box_on_an_unreached_slice_fills_only_the_empty_slices(case):
    predictor, organ, _ = case
    predictor.config.propagation.look_ahead = 2  # across the artefact slice
    initial = organ.copy()
    initial[:18] = False
    session = InteractiveSegment(predictor, None, "axial", initial=initial)
    session.box(11, _box(organ[11], 11))
    out = session.mask
    np.testing.assert_array_equal(out[18:], initial[18:])
    assert dice(out, organ) >= 0.95


def test_negative_click_on_a_run_on_slice_ends_the_structure(case):
    predictor, organ, heart = case
    leaked = organ | (heart & (np.arange(SHAPE[0]) <= TOP + 5)[:, None, None])  # ran 5 slices into the heart
    session = InteractiveSegment(predictor, None, "axial", initial=leaked)
    k = TOP + 3  # the middle of the leak, as the largest-3D-error user clicks
    jj, ii = np.argwhere(heart[k]).mean(axis=0).round().astype(int)
    session.click(np.array([ii, jj, k]), positive=False)
    out = session.mask
    assert not out[TOP + 1 :].any(), f"leaked slices left: {[s for s in _slices(out) if s > TOP]}"
    assert dice(out, organ) >= 0.97, "the organ itself was cut"
    # one user action: undo restores everything, redo re-applies it
    assert session.undo()
    np.testing.assert_array_equal(session.mask, leaked)
    assert session.redo()
    np.testing.assert_array_equal(session.mask, out)
    assert not session.redo() and session.can_undo


def test_undo_history_is_sparse_and_bounded(case):
    predictor, organ, _ = case
    session = InteractiveSegment(predictor, None, "axial", max_history=3)
    masks = [session.mask]
    for k in (16, 20, 24, 28):
        session.box(k, _box(organ[k], k), propagate=False)
        assert (session.mask != masks[-1]).any()
        masks.append(session.mask)
    assert session.history_bytes() < 3 * organ.size  # not three full-volume copies
    for expected in masks[-2:0:-1]:
        assert session.undo()
        np.testing.assert_array_equal(session.mask, expected)
    assert not session.undo(), "more than max_history actions kept"


def test_positive_click_on_air_is_refused_with_a_warning(case):
    predictor, organ, _ = case
    session = InteractiveSegment(predictor, None, "axial", initial=organ)
    session.click(np.array([30, 1, 20]), positive=True)  # row 1 is air
    np.testing.assert_array_equal(session.mask, organ)
    assert any("air" in w for w in session.last_warnings)
    assert not session.can_undo  # nothing changed: nothing to undo


def test_largest_error_3d_picks_the_biggest_component_and_its_centre():
    pred = np.zeros((30, 40, 40), bool)
    ref = np.zeros_like(pred)
    kk, jj, ii = np.ogrid[:30, :40, :40]
    big_missed = (kk - 15) ** 2 + (jj - 20) ** 2 + (ii - 10) ** 2 <= 36  # radius 6 voxels
    small_extra = (kk - 5) ** 2 + (jj - 30) ** 2 + (ii - 30) ** 2 <= 9
    ref |= big_missed
    pred |= small_extra
    assert largest_error_3d(pred, ref, (1.0, 1.0, 1.0)) == ((15, 20, 10), True)
    pred2 = pred | big_missed  # now only the extra blob is wrong
    assert largest_error_3d(pred2, ref, (1.0, 1.0, 1.0)) == ((5, 30, 30), False)
    assert largest_error_3d(ref, ref, (1.0, 1.0, 1.0)) is None


def test_simulated_user_reaches_the_organ_and_the_curve_is_reported(case):
    """With the old stop rules the box's propagation stops early (at the artefact and before the
    top); the largest-3D-error user then prompts the unreached parts and gets the organ."""
    predictor, organ, _ = case
    predictor.config.propagation.band_slices = 0
    predictor.config.propagation.look_ahead = 0
    result = simulate_structure(predictor, organ, "organ", clicks=3, follow=FollowConfig())
    assert result.steps[0].kind == "box" and result.box_dice < 0.9
    assert result.final_dice >= 0.95, [round(st.dice, 3) for st in result.steps]
    assert all(b.dice > a.dice for a, b in zip(result.steps, result.steps[1:]))
    assert np.isfinite(result.dice_auc) and result.dice_auc <= len(result.steps) - 2
    with pytest.raises(Exception, match="unknown simulated user"):
        simulate_structure(predictor, organ, "organ", clicks=1, user="oracle")


def test_intensity_band_is_one_function_for_clicks_and_propagation():
    from lkseg.refine.clicks import ClickConfig, SliceEditor
    from lkseg.refine.propagation import PropagationConfig

    hu = np.array([[100.0, 110, 90, 100], [100, 100, 300, -50]])
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], bool)
    # hand computation: median 100, MAD 0 -> half-width min_band_hu = 40
    assert intensity_band(hu, mask, PropagationConfig()) == (60.0, 140.0)

    class Ctx:
        pass

    ctx = Ctx()
    ctx.hu, ctx.pixel_mm, ctx.shape = hu, (1.0, 1.0), hu.shape
    ctx.window = type("W", (), {"apply": staticmethod(lambda a: a)})()
    editor = SliceEditor(ctx, ClickConfig())
    assert editor._band(mask, (0, 0)) == (60.0, 140.0)


def test_probability_map_stops_propagation_where_it_falls(case):
    predictor, organ, _ = case
    prob = np.where(organ & (np.arange(SHAPE[0]) <= 26)[:, None, None], 0.9, 0.05).astype(np.float32)
    k = 20
    vol = predictor.propagate("axial", k, predictor.predict("axial", k, box=_box(organ[k], k)), probability=prob)
    assert _slices(vol).max() == 26
    with pytest.raises(Exception, match="probability map has shape"):
        predictor.propagate("axial", k, organ[k], probability=prob[:5])


def test_a_lesion_isodense_with_a_tube_is_not_followed_along_it():
    """A tumour (radius 4 voxels) sits on a vessel-like tube of the SAME intensity running through
    every slice: an organ's propagation follows the tube to the volume's ends, a lesion's stops
    within its own in-plane diameter of the start slice and still covers the whole sphere."""
    shape, centre = (40, 48, 48), (20, 24, 24)
    kk, jj, ii = np.ogrid[: shape[0], : shape[1], : shape[2]]
    sphere = (kk - centre[0]) ** 2 + (jj - centre[1]) ** 2 + (ii - centre[2]) ** 2 <= 4.0**2
    tube = (jj - centre[1]) ** 2 + (ii - centre[2]) ** 2 <= 2.0**2
    hu = np.full(shape, -100.0)
    hu[:, :3, :] = -1000.0
    hu[sphere | np.broadcast_to(tube, shape)] = 60.0
    image = Volume.from_array(hu.astype(np.int16), spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0))
    predictor = PromptPredictor.with_engine(ThresholdEngine(), PredictorConfig(prefetch=0, cache_slices=64))
    try:
        predictor.set_volume(image)
        k = centre[0]
        box = _box(sphere[k], k)
        out = {}
        for structure in ("liver", "liver_tumor"):
            m2d = predictor.predict("axial", k, box=box, structure=structure)
            out[structure] = predictor.propagate("axial", k, m2d, structure=structure)
    finally:
        predictor.close()
    organ_slices = np.flatnonzero(out["liver"].any(axis=(1, 2)))
    assert organ_slices.min() == 0 and organ_slices.max() == shape[0] - 1  # followed the tube (no bound)
    lesion = out["liver_tumor"]
    slices = np.flatnonzero(lesion.any(axis=(1, 2)))
    diameter_slices = 9  # the start slice's extent: 9 pixels of 2 mm = 18 mm = 9 slices of 2 mm
    assert slices.min() >= k - diameter_slices and slices.max() <= k + diameter_slices, slices
    assert lesion[sphere].all(), "the lesion's own voxels were not all reached"


@pytest.mark.parametrize("keep", [0.5, None], ids=["contrast-rule", "rule-off"])
def test_a_lesion_propagation_stops_where_its_contrast_with_the_organ_ends(keep):
    """A hypodense lesion (0 HU, a cylinder of radius 5 voxels on slices 16-24) inside an organ
    (120 HU) continues as a vessel of its size (70 HU) above and below. The vessel passes every
    other rule here (the HU rules are off: a subtle lesion passes them), so without the contrast
    rule the lesion runs on along the vessel to the extent bound; with it, it stops where its
    contrast with the surroundings halves (120 -> 50 HU), at the lesion's own ends."""
    shape, (cj, ci) = (40, 48, 48), (24, 24)
    _, jj, ii = np.ogrid[: shape[0], : shape[1], : shape[2]]
    disc = np.broadcast_to((jj - cj) ** 2 + (ii - ci) ** 2 <= 5.0**2, shape)
    on = (np.arange(shape[0]) >= 16) & (np.arange(shape[0]) <= 24)
    lesion_truth = disc & on[:, None, None]
    hu = np.full(shape, -100.0)
    hu[:, :3, :] = -1000.0
    hu[:, 6:42, 6:42] = 120.0  # the organ
    hu[disc] = 70.0  # the vessel
    hu[lesion_truth] = 0.0
    image = Volume.from_array(hu.astype(np.int16), spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0))
    predictor = PromptPredictor.with_engine(ThresholdEngine(), PredictorConfig(prefetch=0, cache_slices=64))
    predictor.config.propagation.lesion_contrast_keep = keep
    predictor.config.propagation.max_median_shift_hu = None
    predictor.config.propagation.min_intensity_fraction = 0.0
    try:
        predictor.set_volume(image)
        k = 20
        m2d = predictor.predict("axial", k, box=_box(lesion_truth[k], k), structure="liver_tumor")
        lesion = predictor.propagate("axial", k, m2d, structure="liver_tumor")
    finally:
        predictor.close()
    slices = np.flatnonzero(lesion.any(axis=(1, 2)))
    if keep is None:
        assert slices.min() < 14 and slices.max() > 26, slices  # ran on along the vessel
    else:
        assert slices.min() == 16 and slices.max() == 24, slices
        assert dice(lesion, lesion_truth) > 0.95
