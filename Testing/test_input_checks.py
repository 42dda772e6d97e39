"""Input checks that run before any model is loaded, and CT checks whose messages agree with
the image (truth: hand-built arrays whose lowest value and share of negative voxels are known)."""

from __future__ import annotations

import numpy as np
import pytest

from lkseg.errors import InputError
from lkseg.io import write_image
from lkseg.volume import Volume


def _soft_tissue(shape=(40, 48, 48), seed=0) -> np.ndarray:
    """Soft tissue only (20..80 HU): a CT cropped inside the abdomen."""
    return np.random.default_rng(seed).integers(20, 80, size=shape).astype(np.int16)


def test_tightly_cropped_ct_with_some_gas_is_warned_not_refused():
    from lkseg.auto import check_ct_volume

    arr = _soft_tissue()
    arr[20, 20:23, 20:23] = -1000  # a bubble of bowel gas: 9 voxels, 0.01 % of the image
    assert np.percentile(arr, 0.5) >= 0 and arr.min() == -1000
    warnings = check_ct_volume(
        Volume.from_array(arr, (1.0, 1.0, 2.0))
    )  # before the fix: "no voxel below 0 HU (lowest -1000)"
    assert len(warnings) == 1 and "no air or almost none" in warnings[0] and "-1000" in warnings[0]


@pytest.mark.parametrize(("lowest", "phrase"), [(0, "no voxel below 0 HU"), (-5, "no voxel below -10 HU")])
def test_no_negative_values_is_refused_with_a_true_lowest_value(lowest, phrase):
    from lkseg.auto import check_ct_volume

    arr = _soft_tissue()
    arr[0, 0, 0] = lowest
    with pytest.raises(InputError, match=phrase) as err:
        check_ct_volume(Volume.from_array(arr, (1.0, 1.0, 2.0)))
    assert f"lowest {lowest}," in str(err.value)


def test_few_slightly_negative_values_and_no_air_is_refused_consistently():
    from lkseg.auto import check_ct_volume

    arr = _soft_tissue().astype(np.float32)
    arr.reshape(-1)[::1000] = -50.0  # 0.1 % of voxels at -50: noise, no fat, no air
    with pytest.raises(InputError) as err:
        check_ct_volume(Volume.from_array(arr, (1.0, 1.0, 2.0)))
    message = str(err.value)
    assert "almost no voxel below 0 HU" in message and "lowest -50" in message and "has no voxel below" not in message


def _fail_model_load(monkeypatch):
    import lkseg.auto

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(lkseg.auto, "AutoSegmenter", refuse)


def test_segment_checks_the_input_before_loading_the_model(tmp_path, monkeypatch, capsys):
    from lkseg.cli.main import main

    _fail_model_load(monkeypatch)
    assert main(["segment", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "out")]) == 2
    assert "no such file" in capsys.readouterr().err
    mr = np.random.default_rng(1).random((40, 48, 48)).astype(np.float32) * 800  # MR-like: 0..800, no negatives
    write_image(Volume.from_array(mr, (1.0, 1.0, 2.0)), tmp_path / "mr.nii.gz")
    assert main(["segment", str(tmp_path / "mr.nii.gz"), "-o", str(tmp_path / "out")]) == 2
    assert "not a CT" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
