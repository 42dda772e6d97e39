"""LiteMedSAM prompt predictor on real CT: boxes, clicks, propagation, editing existing masks.

Uses slices 10..21 of the TotalSegmentator example_ct_sm (3 mm) and one session-wide ONNX
engine; every slice is encoded at most once per session (about 1 s each on 2 cores).
"""

from __future__ import annotations

import numpy as np
import pytest

from lkseg.errors import CancelledError
from lkseg.metrics import dice
from lkseg.progress import CancelToken
from lkseg.refine import InteractiveSegment, PredictorConfig, PromptPredictor, combine
from lkseg.refine.maskops import bbox, disk, interior_point
from lkseg.volume import Volume

LIVER, KIDNEY_R, KIDNEY_L, SPLEEN = 5, 2, 3, 1


def _box_of(mask2d: np.ndarray, k: int) -> np.ndarray:
    """Voxel box corners (i, j, k) of a 2D (j, i) mask on axial slice k."""
    j0, i0, j1, i1 = bbox(mask2d)
    return np.array([[i0, j0, k], [i1, j1, k]], dtype=float)


def test_box_on_one_slice_matches_the_reference(refine_predictor, refine_ct):
    _, labels = refine_ct
    k = 5
    for value, minimum in ((LIVER, 0.88), (KIDNEY_R, 0.85), (SPLEEN, 0.85)):
        ref = labels.array[k] == value
        mask = refine_predictor.predict("axial", k, box=_box_of(ref, k))
        assert mask.shape == ref.shape and mask.dtype == bool
        assert dice(mask, ref) >= minimum, f"label {value}: Dice {dice(mask, ref):.3f}"


def test_flipped_storage_gives_the_same_mask(refine_engine, refine_predictor, refine_ct):
    image, labels = refine_ct
    k = 5
    ref = labels.array[k] == KIDNEY_L
    box = _box_of(ref, k)
    expected = refine_predictor.predict("axial", k, box=box)
    # the same CT stored with i and k reversed (RAS-like storage): same voxels, other indices
    flipped = Volume.from_array(
        np.ascontiguousarray(image.array[::-1, :, ::-1]),
        image.spacing,
        image.grid.index_to_lps([image.shape[2] - 1, 0, image.shape[0] - 1]),
        image.direction @ np.diag([-1.0, 1.0, -1.0]),
    )
    other = PromptPredictor.with_engine(refine_engine, PredictorConfig(prefetch=0))
    try:
        other.set_volume(flipped)
        ras = image.grid.index_to_ras(box)
        mask = other.predict("axial", None, box=ras, coords="ras")
        np.testing.assert_array_equal(mask[:, ::-1], expected)
    finally:
        other.close()


def test_propagation_follows_the_kidney_and_stops_where_it_ends(refine_predictor, refine_ct):
    _, labels = refine_ct
    ref = labels.array == KIDNEY_R  # present on crop slices 0..8, absent on 9..11
    k = 4
    start = refine_predictor.predict("axial", k, box=_box_of(ref[k], k), structure="kidney_right")
    vol = refine_predictor.propagate("axial", k, start, structure="kidney_right")
    assert vol.shape == ref.shape
    assert dice(vol, ref) >= 0.85, f"3D Dice {dice(vol, ref):.3f}"
    assert not vol[10:].any(), "propagation ran past the end of the kidney"
    assert vol[:9].any(axis=(1, 2)).all(), "propagation stopped inside the kidney"


def test_propagation_can_be_cancelled(refine_predictor, refine_ct):
    _, labels = refine_ct
    token = CancelToken()
    token.cancel()
    ref = labels.array[4] == KIDNEY_R
    with pytest.raises(CancelledError):
        refine_predictor.propagate("axial", 4, ref, structure="kidney_right", cancel=token)


def test_positive_click_adds_the_missed_part_only_near_the_click(refine_predictor, refine_ct):
    _, labels = refine_ct
    k = 5
    ref = labels.array[k] == SPLEEN
    r0, c0, r1, c1 = bbox(ref)
    centre = (r0 + (r1 - r0) // 3, (c0 + c1) // 2)
    hole = disk(ref.shape, centre, (4, 4)) & ref
    damaged = ref & ~hole
    rc = interior_point(hole)
    mask = refine_predictor.predict(
        "axial", k, points=[[rc[1], rc[0], k]], labels=[1], mask_prior=damaged, structure="spleen"
    )
    recovered = (mask & hole).sum() / hole.sum()
    assert recovered >= 0.7, f"only {recovered:.0%} of the missed region was added"
    far = ~disk(ref.shape, rc, (12, 12))
    np.testing.assert_array_equal(mask[far], damaged[far])


def test_negative_click_removes_the_wrong_region_only(refine_predictor, refine_ct):
    _image, labels = refine_ct
    k = 5
    kidney = labels.array[k] == KIDNEY_L
    r0, _c0, _r1, c1 = bbox(kidney)
    # a leak: a block of the fat/bowel next to the kidney wrongly included
    leak = np.zeros_like(kidney)
    leak[r0 : r0 + 5, c1 + 1 : c1 + 7] = True
    leak &= labels.array[k] == 0
    wrong = kidney | leak
    rc = interior_point(leak)
    mask = refine_predictor.predict(
        "axial", k, points=[[rc[1], rc[0], k]], labels=[0], mask_prior=wrong, structure="kidney_left"
    )
    removed = 1.0 - (mask & leak).sum() / leak.sum()
    assert removed >= 0.7, f"only {removed:.0%} of the wrong region was removed"
    assert (mask & kidney).sum() >= 0.9 * kidney.sum(), "the click removed the kidney too"
    far = ~disk(kidney.shape, rc, (12, 12))
    np.testing.assert_array_equal(mask[far], wrong[far])


def test_clicks_correct_an_existing_mask_touching_only_the_prompted_region(refine_predictor, refine_ct):
    _image, labels = refine_ct
    # an "automatic" label map whose liver misses a block on slice 6 (other labels present too)
    auto = labels.array.copy()
    k = 6
    liver = labels.array[k] == LIVER
    # a 6 x 6 block well inside the liver (centred on its innermost pixel)
    r, c = interior_point(liver)
    block = np.zeros_like(liver)
    block[r - 3 : r + 3, c - 3 : c + 3] = True
    block &= liver
    assert block.sum() >= 30, "the test's missed block must be inside the liver"
    auto[k][block] = 0
    session = InteractiveSegment(refine_predictor, "liver", "axial", initial=auto == LIVER)
    rc = interior_point(block)
    session.click(np.array([rc[1], rc[0], k]), positive=True)
    edited = session.mask
    assert (edited[k] & block).sum() >= 0.7 * block.sum()
    changed = edited ^ (auto == LIVER)
    slices = np.flatnonzero(changed.any(axis=(1, 2)))
    assert set(slices) <= set(range(k - 2, k + 3)), f"slices far from the click changed: {slices}"
    merged = combine(auto, edited, LIVER, "replace")
    others = (auto != LIVER) & (auto != 0)
    np.testing.assert_array_equal(merged[others], auto[others])
    assert session.undo() and not (session.mask ^ (auto == LIVER)).any()


def test_box_then_click_session_improves_the_kidney(refine_predictor, refine_ct):
    _, labels = refine_ct
    ref = labels.array == KIDNEY_L
    session = InteractiveSegment(refine_predictor, "kidney_left", "axial")
    k = 5
    session.box(k, _box_of(ref[k], k))
    before = dice(session.mask, ref)
    assert before >= 0.85
    # click at the centre of the largest missed/wrong region on the worst slice
    from lkseg.refine.evaluation import next_click

    c, rc, positive = next_click(list(session._mask), list(session.slicer.user_volume_to_canonical(ref)), (3.0, 3.0))
    session.click_display(c, rc, positive)
    assert dice(session.mask, ref) >= before - 1e-9
