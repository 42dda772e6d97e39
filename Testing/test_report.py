"""Reports: JSON audit trail, CSV rows, self-contained HTML (checked in headless Chromium)."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from lkseg.io import write_label_map
from lkseg.labels import LabelTable
from lkseg.orientation import reorient
from lkseg.planning import Patient, PlanOptions, Resection, ResectionPlane, run_plan
from lkseg.report import collect_provenance, overlay_png, render_html, slice_through, write_report


@pytest.fixture(scope="module")
def reported(planning_abdomen, tmp_path_factory):
    labels, table = planning_abdomen
    out = tmp_path_factory.mktemp("report")
    labels = labels.with_array(
        labels.array,
        meta={
            "model_id": "lkseg-demo-unet",
            "model_version": "0.1.0",
            "prompts": [{"view": "axial", "box": [1, 2, 3, 4]}],
        },
    )
    label_path = write_label_map(labels, out / "labels.nii.gz")
    rng = np.random.default_rng(0)
    hu = np.choose(labels.array, [-100, 110, 60, 180, 180, 120, 10, 120, 30]) + rng.normal(0, 10, labels.shape)
    ct = labels.with_array(hu.astype(np.int16), meta={})
    plane = ResectionPlane((0.0, 0.0, 0.0), (1.0, 0.0, 0.0), "negative")  # keep patient-right liver
    options = PlanOptions(resection=Resection(planes=(plane,)), patient=Patient(180, 80, "chemotherapy"))
    result = run_plan(labels, table, options, image=ct)
    prov = collect_provenance(
        {"labels": label_path, "image": None},
        labels_meta=labels.meta,
        parameters={"liver_quality": "chemotherapy"},
        edits=[{"op": "add", "segment": "liver"}],
    )
    written = write_report(result, out, labels, table, image=ct, provenance=prov)
    return result, written, label_path


def test_json_report_is_complete_audit_trail(reported):
    result, written, label_path = reported
    doc = json.loads(written["json"].read_text())
    assert doc["schema"] == "lkseg.plan.report/1" and doc["coordinate_system"].startswith("RAS")
    prov = doc["provenance"]
    assert prov["inputs"]["labels"]["sha256"] == hashlib.sha256(label_path.read_bytes()).hexdigest()
    assert "image" not in prov["inputs"]  # None inputs are skipped
    assert prov["model"] == {"model_id": "lkseg-demo-unet", "model_version": "0.1.0"}
    assert prov["prompts"] == [{"view": "axial", "box": [1, 2, 3, 4]}] and prov["edits"][0]["op"] == "add"
    assert prov["software"]["lkseg"] and prov["created_utc"].endswith("+00:00")
    res = doc["result"]
    assert res["volumes"]["liver"]["volume_ml"] == pytest.approx(result.volumes["liver"].volume_ml)
    flr = res["flr"]
    assert flr["bsa_m2"] == pytest.approx(2.0) and flr["stlv_ml"] == pytest.approx(1740.15)
    assert flr["threshold_percent"] == 30.0 and flr["verdict"] in ("sufficient", "insufficient")
    assert res["renal"][0]["R"] == 1 and "hilar" in res["renal"][0]["not_available"]
    assert {les["structure"] for les in res["lesions"]} == {"liver_tumor", "kidney_tumor"}
    assert "Vauthey" in doc["methods"]["stlv"] and "Mosteller" in doc["methods"]["bsa"]


def test_csv_one_row_per_structure_lesion_and_measure(reported):
    result, written, _ = reported
    rows = list(csv.DictReader(io.StringIO(written["csv"].read_text())))
    kinds = [r["kind"] for r in rows]
    assert kinds.count("structure") == len(result.volumes)
    assert kinds.count("lesion") == len(result.lesions) == 2
    liver = next(r for r in rows if r["kind"] == "structure" and r["name"] == "liver")
    assert float(liver["volume_ml"]) == pytest.approx(result.volumes["liver"].volume_ml, abs=1e-3)
    assert float(liver["mesh_volume_ml"]) == pytest.approx(result.volumes["liver"].mesh_volume_ml, abs=1e-3)
    kt = next(r for r in rows if r["kind"] == "lesion" and r["name"] == "kidney_tumor")
    assert int(kt["renal_total"]) == result.renal[0].total and kt["organ"] == "kidney_right"
    sflr = next(r for r in rows if r["name"] == "sflr_percent")
    assert sflr["unit"] == "%" and float(sflr["value"]) == pytest.approx(result.flr.sflr_percent, abs=1e-3)


def _embedded_pngs(html: str) -> list[np.ndarray]:
    return [
        np.asarray(Image.open(io.BytesIO(base64.b64decode(m))).convert("RGB"))
        for m in re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    ]


def test_html_is_self_contained_with_pictures(reported):
    _, written, _ = reported
    html = written["html"].read_text()
    pictures = _embedded_pngs(html)
    assert len(pictures) == 3  # axial, coronal, 3D
    assert all(p.shape[0] > 100 and p.shape[1] > 100 for p in pictures)
    assert not re.search(r'(src|href)="(?!data:)', html)  # nothing external
    for text in ("Future liver remnant", "sFLR", "R.E.N.A.L.", "Audit trail", "<svg", "@media print"):
        assert text in html
    for name in ("axial", "coronal", "3d"):
        assert written[f"png_{name}"].exists()


def test_html_escapes_names_and_marks_not_available(planning_abdomen):
    labels, _ = planning_abdomen
    arr = (labels.array == 1).astype(np.uint8)
    result = run_plan(labels.with_array(arr), LabelTable({1: "liver<script>"}), PlanOptions(surfaces=False))
    html = render_html(result)
    assert "<script>" not in html.lower() and "iver&lt;script&gt;" in html
    assert "not available" in html  # no resection: FLR not available


def test_axial_picture_is_radiological_on_any_storage_order(planning_abdomen):
    labels, table = planning_abdomen
    where = slice_through(labels, (40.0, 10.0, 40.0))
    lps = np.asarray(Image.open(io.BytesIO(overlay_png(labels, table, "axial", where["axial"]))))
    ras_labels, _ = reorient(labels, "RAS")  # flipped storage: same anatomy
    ras = np.asarray(
        Image.open(
            io.BytesIO(overlay_png(ras_labels, table, "axial", slice_through(ras_labels, (40.0, 10.0, 40.0))["axial"]))
        )
    )
    assert np.array_equal(lps, ras)
    # the liver (patient right, RAS x = +40) is on the left half of the picture
    liver_rgb = np.round(0.4 * np.array(table.structures()[1].color) * 255)
    mask = np.all(np.abs(lps[..., :3].astype(int) - liver_rgb) <= 2, axis=-1)
    cols = np.nonzero(mask)[1]
    assert cols.size and cols.mean() < lps.shape[1] / 2


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_html_renders_in_headless_chromium(reported, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    _, written, _ = reported
    shot = tmp_path / "report.png"
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        "--window-size=1200,2600",
        f"--screenshot={shot}",
        written["html"].as_uri(),
    ]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert shot.exists(), "chromium wrote no screenshot"
    page = np.asarray(Image.open(shot).convert("RGB"))
    # the embedded axial picture is drawn pixel for pixel: one of its rows must appear in the page
    axial = _embedded_pngs(written["html"].read_text())[0]
    row = axial[axial.shape[0] // 2].tobytes()
    assert any(row in page_row.tobytes() for page_row in page), "the axial picture is not visible in the rendered page"
