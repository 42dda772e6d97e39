"""``lkseg refine`` and ``lkseg refine-eval`` end to end on a few real CT slices."""

from __future__ import annotations

import numpy as np
import pytest

from lkseg.cli.main import main
from lkseg.io import read_label_map, write_image, write_label_map
from lkseg.metrics import dice
from lkseg.volume import Volume


@pytest.fixture(scope="module")
def small_case(refine_ct, refine_engine, tmp_path_factory):
    """Crop slices 3..7 of the refinement test CT to files (5 slices: few encodings per run)."""
    image, labels = refine_ct
    origin = image.grid.index_to_lps([0.0, 0.0, 3.0])
    folder = tmp_path_factory.mktemp("refine-cli")
    img = Volume.from_array(np.ascontiguousarray(image.array[3:8]), image.spacing, origin, image.direction)
    lab = Volume.from_array(np.ascontiguousarray(labels.array[3:8]), image.spacing, origin, image.direction)
    write_image(img, folder / "ct.nii.gz")
    write_label_map(lab, folder / "seg.nii.gz")
    return folder, img, lab


@pytest.fixture()
def shared_cache(monkeypatch, refine_cache_dir):
    monkeypatch.setenv("LKSEG_CACHE", str(refine_cache_dir))  # reuse the session's ONNX export


def _box(lab: Volume, value: int, k: int) -> list[str]:
    jj, ii = np.nonzero(lab.array[k] == value)
    return [str(v) for v in (ii.min(), jj.min(), k, ii.max(), jj.max(), k)]


def test_refine_cli_segments_one_structure_and_keeps_the_others(small_case, shared_cache, capsys):
    folder, img, lab = small_case
    damaged = lab.array.copy()
    damaged[damaged == 3] = 0  # the left kidney is missing from the "automatic" map
    write_label_map(lab.with_array(damaged), folder / "auto.nii.gz")
    out = folder / "out.nii.gz"
    argv = ["refine", str(folder / "ct.nii.gz"), "--seg", str(folder / "auto.nii.gz"), "--structure", "kidney_left"]
    argv += ["--label", "3", "--box", *_box(lab, 3, 2), "--max-slices", "1", "-o", str(out)]
    assert main(argv) == 0
    assert "kidney_left (label 3): 0.0 mL" in capsys.readouterr().out
    result = read_label_map(out, reference=img).array
    ref = lab.array == 3
    assert dice(result[1:4] == 3, ref[1:4]) >= 0.85
    assert not (result[[0, 4]] == 3).any(), "--max-slices 1 must stop after one slice each way"
    others = damaged != 0
    np.testing.assert_array_equal(result[others], damaged[others])
    # never overwrite silently
    assert main(argv) == 2
    assert "exists" in capsys.readouterr().err


def test_refine_cli_bad_prompts_are_clear_errors(small_case, shared_cache, capsys):
    folder, _, _lab = small_case
    base = ["refine", str(folder / "ct.nii.gz"), "--structure", "liver", "-o", str(folder / "bad.nii.gz")]
    assert main([*base, "--box", "10", "10", "2", "5", "40", "2"]) == 2
    assert "inverted box" in capsys.readouterr().err
    assert main([*base, "--point", "500", "10", "2"]) == 2
    assert "outside the volume" in capsys.readouterr().err
    assert main([*base, "--slice", "9", "--box", "10", "10", "9", "30", "40", "9"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(base) == 2
    assert "give a --box" in capsys.readouterr().err
    assert not (folder / "bad.nii.gz").exists()


def test_refine_eval_cli_prints_dice_per_interaction(small_case, shared_cache, capsys, tmp_path):
    folder, _, _ = small_case
    out_json = tmp_path / "eval.json"
    argv = ["refine-eval", str(folder / "ct.nii.gz"), str(folder / "seg.nii.gz"), "--labels", "3=kidney_left"]
    argv += ["--clicks", "2", "--json", str(out_json)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "kidney_left" in text and "box" in text and ("click 1" in text or "box 1" in text)
    assert "Dice AUC" in text
    import json

    payload = json.loads(out_json.read_text())
    assert payload["user"] == "largest-3d"
    steps = payload["structures"]["kidney_left"]
    assert steps[0]["step"] == "box" and steps[0]["dice"] >= 0.85
    assert steps[-1]["dice"] >= steps[0]["dice"] - 0.01
