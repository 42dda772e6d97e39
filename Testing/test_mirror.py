"""A kidney the U-Net missed, found at the mirror image of the other one (lkseg.auto.mirror), with
a stand-in prompt model that answers each box with the true object filling most of it: the truth
is the scene's own construction, not the code under test."""

from __future__ import annotations

import numpy as np
import pytest
from test_auto import segmenter, tiny_package  # noqa: F401  (fixtures)
from test_hybrid import TABLE, OraclePredictor, _dice

from lkseg.auto.mirror import MirrorConfig, find_mirrored_kidney
from lkseg.auto.plausibility import BodyFacts
from lkseg.volume import Grid, Volume

SPACING_ZYX = (3.0, 2.5, 2.5)


def _scene(direction, right: str = "kidney", spacing_zyx=SPACING_ZYX):
    """A body (40 HU) with a spine on its midline and two kidneys (30 HU) in perirenal fat, the right
    one 9 mm lower and 5 mm more anterior than the left one's mirror image. ``right``: "kidney",
    "fat" (removed, its fossa a kidney-shaped block of fat that a prompt model would outline) or
    "liver" (the place taken by a large organ the U-Net labelled liver). Returns the volume, the
    truth (the prompt model's objects: 3 / 4 kidneys, 1 liver, 9 the fat block) and the U-Net's
    labels (left kidney only, plus the liver when there is one), all ZYX on the volume's grid
    (180 x 250 x 300 mm)."""
    shape = tuple(round(n / s) for n, s in zip((180.0, 250.0, 300.0), spacing_zyx))
    grid = Grid(shape, tuple(reversed(spacing_zyx)), (0.0, 0.0, 0.0), direction)
    kji = np.indices(shape, dtype=np.float32)
    ras = grid.index_to_ras(np.stack([kji[2], kji[1], kji[0]], axis=-1).reshape(-1, 3)).reshape(*shape, 3)
    centre = grid.index_to_ras(np.array([(shape[2] - 1) / 2, (shape[1] - 1) / 2, (shape[0] - 1) / 2]))
    x, y, z = (ras[..., a] - centre[a] for a in range(3))  # mm from the centre, RAS
    image = np.full(shape, -1000, np.int16)
    body = (np.abs(x) < 140) & (np.abs(y) < 110)
    image[body] = 40
    image[body & (np.abs(x) < 15) & (y > -70) & (y < -40)] = 400  # the spine, its back 70 mm behind the centre

    def ellipsoid(cx, cy, cz, rx=28.0, ry=25.0, rz=50.0):
        return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 <= 1.0

    left = ellipsoid(-65, -35, 5)  # RAS: the patient's left is -x
    right_twin = ellipsoid(65, -30, -4)
    truth = np.zeros(shape, np.uint8)
    for kidney in (left, right_twin):
        image[ellipsoid(*(c for c in _centre(kidney, x, y, z)), rx=36, ry=33, rz=58) & body] = -100  # fat
    image[left] = 30
    truth[left] = 4
    if right == "kidney":
        image[right_twin] = 30
        truth[right_twin] = 3
    elif right == "fat":
        truth[right_twin] = 9
    unet = np.where(truth == 4, 4, 0).astype(np.uint8)
    if right == "liver":
        liver = body & (x > 20) & (y > -80) & (y < 60) & (z > -60)
        image[liver] = 30
        truth[liver] = 1
        unet[liver] = 1
    return Volume(image, grid), truth, unet


def _centre(mask, x, y, z):
    return tuple(float(a[mask].mean()) for a in (x, y, z))


DIRECTIONS = [np.eye(3), np.diag([-1.0, -1.0, 1.0])]


@pytest.mark.parametrize("slice_mm", [3.0, 1.5], ids=["3mm-every-slice", "1.5mm-key-slices"])
@pytest.mark.parametrize("direction", DIRECTIONS, ids=["lps", "ras-stored"])
def test_a_missing_right_kidney_is_found_at_the_mirror_image_of_the_left(direction, slice_mm):
    """On 1.5 mm slices the prompt model is asked on every 3rd slice (4 mm key slices) and the
    slices between are interpolated."""
    volume, truth, unet = _scene(direction, spacing_zyx=(slice_mm, 2.5, 2.5))
    oracle = OraclePredictor(truth)
    labels = unet.copy()
    seen = []
    body = BodyFacts(volume.array, volume.grid)
    notes, added = find_mirrored_kidney(oracle, volume, labels, TABLE, body, progress=lambda f, m: seen.append((f, m)))
    assert len(notes) == 1 and notes[0].startswith("kidney mirror: right kidney (") and "found" in notes[0], notes
    assert added == "kidney_right"
    assert seen and all(0 <= f < 1 and "looking for the right kidney" in m for f, m in seen)
    asked = len(set(oracle.encodes))
    n_left = int(np.count_nonzero((truth == 4).any(axis=(1, 2))))
    assert asked == n_left if slice_mm == 3.0 else asked <= n_left // 3 + 2
    # the mirrored boxes (left kidney's slices) miss the right kidney's lowest 9 mm; the hybrid's
    # extension takes those later
    assert _dice(labels == 3, truth == 3) > 0.9
    assert np.array_equal(labels == 4, unet == 4)  # the found kidney is untouched


@pytest.mark.parametrize("direction", DIRECTIONS, ids=["lps", "ras-stored"])
@pytest.mark.parametrize("right", ["fat", "liver"])
def test_no_kidney_is_made_from_a_fat_block_or_another_organ(direction, right):
    """After a nephrectomy the fossa holds fat (here a kidney-shaped block the stand-in prompt model
    outlines); or the mirror image lies on an organ already labelled: nothing is added."""
    volume, truth, unet = _scene(direction, right)
    labels = unet.copy()
    notes, added = find_mirrored_kidney(
        OraclePredictor(truth), volume, labels, TABLE, BodyFacts(volume.array, volume.grid)
    )
    assert np.array_equal(labels, unet)
    assert len(notes) == 1 and notes[0].startswith("kidney mirror: no right kidney"), notes
    assert added is None
    expected = "HU" if right == "fat" else "on another organ"
    assert expected in notes[0], notes


def test_nothing_is_asked_with_both_or_neither_kidney_or_a_found_one_too_small():
    volume, truth, unet = _scene(np.eye(3))
    body = BodyFacts(volume.array, volume.grid)
    oracle = OraclePredictor(truth)
    both = truth.copy()
    assert find_mirrored_kidney(oracle, volume, both, TABLE, body) == ([], None) and np.array_equal(both, truth)
    none = np.zeros_like(unet)
    assert find_mirrored_kidney(oracle, volume, none, TABLE, body) == ([], None) and not none.any()
    labels = unet.copy()
    assert find_mirrored_kidney(oracle, volume, labels, TABLE, body, MirrorConfig(min_found_ml=1000.0)) == ([], None)
    assert oracle.decodes == 0


class _StandIn:
    class engine:  # what AutoSegmenter reads of a prompt predictor here
        @staticmethod
        def describe():
            return "stand-in"


@pytest.mark.parametrize(
    "changes, runs",
    [({}, True), ({"relocate": False}, False), ({"hybrid": "off"}, False), ({"mode": "unet"}, False)],
    ids=["hybrid", "relocate-off", "rule-off", "unet-mode"],
)
def test_the_mirror_runs_before_the_hybrid_stage_unless_turned_off(segmenter, monkeypatch, changes, runs):  # noqa: F811
    """Wiring: AutoSegmenter asks for the mirrored kidney in hybrid mode, after the locators and
    before the drawing, and not with relocation or ``HybridConfig.mirror_kidney`` off."""
    from dataclasses import replace

    from test_auto import BrightAs, body_volume

    from lkseg.auto import AutoOptions, hybrid, mirror
    from lkseg.auto.hybrid import HybridConfig, HybridOutcome
    from lkseg.auto.postprocess import PostprocessConfig

    seg = segmenter.with_options()
    seg.nets = {"fine": BrightAs(5), "coarse": BrightAs(5)}  # finds the bright blob (spleen)
    order = []
    monkeypatch.setattr(seg, "_prompt_predictor", lambda: (_StandIn(), None))
    found = "kidney mirror: right kidney (50.0 mL) found by the prompt model at the mirror image of the left kidney"
    monkeypatch.setattr(
        mirror, "find_mirrored_kidney", lambda *a, **k: order.append("mirror") or ([found], "kidney_right")
    )

    def drawn(predictor, volume, labels, *a, **k):
        order.append("hybrid")
        return HybridOutcome(labels=np.asarray(labels))

    monkeypatch.setattr(hybrid, "hybrid_refine", drawn)
    opts = AutoOptions(mode="hybrid", margin_mm=10, postprocess=PostprocessConfig(min_organ_ml=0.1))
    if changes.get("hybrid") == "off":
        changes = {"hybrid": HybridConfig(mirror_kidney=False)}
    result = seg.predict(body_volume(), options=replace(opts, **changes))
    assert result.volumes_ml["spleen"] > 0
    if runs:
        assert order == ["mirror", "hybrid"] and found in result.notes
        assert "kidney_mirror" in result.timings
        # a kidney only the mirror found is one for the user to review
        assert any(w.startswith("the right kidney was not found by the model") for w in result.warnings)
    else:
        assert "mirror" not in order and not any(n.startswith("kidney mirror") for n in result.notes)
