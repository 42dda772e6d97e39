from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lkseg import Volume
from lkseg.cli.main import main
from lkseg.io import write_label_map
from lkseg.metrics import compute_metrics, dice, jaccard, mask_metrics, surface_distances


def _sphere(shape, centre_mm, radius_mm, spacing):
    """Boolean ZYX mask of a ball; spacing (si, sj, sk), centre (x=i, y=j, z=k) in mm."""
    kk, jj, ii = np.indices(shape, dtype=np.float64)
    x, y, z = ii * spacing[0], jj * spacing[1], kk * spacing[2]
    return (x - centre_mm[0]) ** 2 + (y - centre_mm[1]) ** 2 + (z - centre_mm[2]) ** 2 <= radius_mm**2


def _analytic_offset_spheres(r, d):
    """Dice, ASSD, HD95 and HD of two balls of radius r whose centres are d apart.

    A surface point p = c_a + r u of ball A is at distance |sqrt(r^2 + d^2 - 2 r d t) - r| from the
    surface of ball B, with t = cos(angle) uniform in [-1, 1] for uniform points on the sphere.
    """
    v_ball = 4 / 3 * math.pi * r**3
    v_int = math.pi * (4 * r + d) * (2 * r - d) ** 2 / 12
    t = np.linspace(-1, 1, 200001)
    dist = np.abs(np.sqrt(r * r + d * d - 2 * r * d * t) - r)
    return 2 * v_int / (2 * v_ball), float(dist.mean()), float(np.percentile(dist, 95)), float(dist.max())


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 0.8, 2.0)])
def test_offset_spheres_match_analytic_values(spacing):
    r, d = 20.0, 8.0
    shape = (int(70 / spacing[2]), int(70 / spacing[1]), int(80 / spacing[0]))
    a = _sphere(shape, (30, 35, 35), r, spacing)
    b = _sphere(shape, (30 + d, 35, 35), r, spacing)
    want_dice, want_assd, want_hd95, want_hd = _analytic_offset_spheres(r, d)
    m = mask_metrics(a, b, spacing)
    half_voxel = max(spacing) / 2
    assert m.dice == pytest.approx(want_dice, abs=0.01)
    assert abs(m.assd_mm - want_assd) < half_voxel
    assert abs(m.hd95_mm - want_hd95) < half_voxel
    assert abs(m.hd_mm - want_hd) < half_voxel
    assert m.voe == pytest.approx(1 - m.jaccard)
    assert m.rvd == pytest.approx((a.sum() - b.sum()) / b.sum())
    voxel_ml = np.prod(spacing) / 1000
    assert m.ref_ml == pytest.approx(b.sum() * voxel_ml)
    assert m.ref_ml == pytest.approx(4 / 3 * math.pi * r**3 / 1000, rel=0.03)


def test_identical_masks_and_empty_conventions():
    a = _sphere((20, 20, 20), (10, 10, 10), 6, (1, 1, 1))
    m = mask_metrics(a, a, (1, 1, 1))
    assert (m.dice, m.assd_mm, m.hd95_mm, m.hd_mm, m.rvd) == (1.0, 0.0, 0.0, 0.0, 0.0)
    empty = np.zeros_like(a)
    both_empty = mask_metrics(empty, empty, (1, 1, 1))
    assert both_empty.dice == 1.0 and both_empty.hd_mm == 0.0 and math.isnan(both_empty.rvd)
    miss = mask_metrics(empty, a, (1, 1, 1))
    assert miss.dice == 0.0 and math.isinf(miss.hd95_mm) and miss.rvd == -1.0
    assert miss.to_dict()["hd95_mm"] is None


def test_surface_distances_respect_anisotropic_spacing_and_border():
    # two slabs 3 voxels apart along k: the distance is 3 * sk whatever si, sj are
    a = np.zeros((12, 5, 5), bool)
    b = np.zeros_like(a)
    a[2:4] = True
    b[6:8] = True
    d_ab, d_ba = surface_distances(a, b, (0.5, 0.7, 2.5))
    assert d_ab.min() == pytest.approx(3 * 2.5)
    assert d_ba.min() == pytest.approx(3 * 2.5)
    assert dice(a, b) == 0.0 and jaccard(a, a) == 1.0


def test_compute_metrics_matches_by_name_and_checks_grid():
    spacing = (1.0, 1.0, 2.0)
    liver = _sphere((30, 40, 40), (20, 20, 30), 10, spacing)
    pred = np.zeros(liver.shape, np.uint8)
    pred[liver] = 1
    ref = np.zeros(liver.shape, np.uint8)
    ref[liver] = 5  # TotalSegmentator-style value
    pv = Volume.from_array(pred, spacing)
    rv = Volume.from_array(ref, spacing)
    out = compute_metrics(pv, rv, labels={1: "liver"}, ref_labels={5: "liver"})
    assert out["liver"].dice == 1.0
    from lkseg.errors import GeometryMismatchError

    with pytest.raises(GeometryMismatchError):
        compute_metrics(pv, Volume.from_array(ref, (1.0, 1.0, 2.5)))


def test_cli_metrics_table_and_json(tmp_path, capsys):
    spacing = (1.0, 1.0, 1.5)
    a = _sphere((30, 40, 40), (20, 20, 22), 9, spacing).astype(np.uint8)
    b = _sphere((30, 40, 40), (22, 20, 22), 9, spacing).astype(np.uint8)
    write_label_map(Volume.from_array(a, spacing), tmp_path / "pred.nii.gz")
    write_label_map(Volume.from_array(b, spacing), tmp_path / "ref.nrrd")
    rc = main(
        [
            "metrics",
            str(tmp_path / "pred.nii.gz"),
            str(tmp_path / "ref.nrrd"),
            "--labels",
            "1=liver",
            "--json",
            str(tmp_path / "m.json"),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "liver" in out and "HD95" in out
    data = json.loads((tmp_path / "m.json").read_text())
    want = mask_metrics(a.astype(bool), b.astype(bool), spacing)
    assert data["structures"]["liver"]["dice"] == pytest.approx(want.dice)


def test_cli_metrics_grid_mismatch_is_a_clean_error(tmp_path, capsys):
    a = np.zeros((5, 6, 7), np.uint8)
    write_label_map(Volume.from_array(a, (1, 1, 1)), tmp_path / "pred.nii.gz")
    write_label_map(Volume.from_array(a, (1, 1, 2)), tmp_path / "ref.nii.gz")
    rc = main(["metrics", str(tmp_path / "pred.nii.gz"), str(tmp_path / "ref.nii.gz")])
    err = capsys.readouterr().err
    assert rc != 0
    assert "pred.nii.gz" in err and "spacing" in err and "Traceback" not in err


def test_cli_metrics_matches_seg_nrrd_segments_by_name(tmp_path, capsys):
    from lkseg.io.segnrrd import write_seg_nrrd
    from lkseg.segmentation import Segmentation

    spacing = (1.0, 1.0, 1.5)
    liver = _sphere((30, 40, 40), (20, 20, 22), 9, spacing)
    kidney = _sphere((30, 40, 40), (8, 8, 10), 4, spacing)
    pred = np.zeros(liver.shape, np.uint8)
    pred[liver], pred[kidney] = 1, 3
    ref = np.zeros(liver.shape, np.uint8)
    ref[liver], ref[kidney] = 7, 2  # other values, same names
    write_seg_nrrd(
        Segmentation.from_label_volume(Volume.from_array(pred, spacing), {1: "liver", 3: "kidney_right"}),
        tmp_path / "p.seg.nrrd",
    )
    write_seg_nrrd(
        Segmentation.from_label_volume(Volume.from_array(ref, spacing), {7: "liver", 2: "kidney_right"}),
        tmp_path / "r.seg.nrrd",
    )
    assert main(["metrics", str(tmp_path / "p.seg.nrrd"), str(tmp_path / "r.seg.nrrd")]) == 0
    lines = {ln.split()[0]: ln.split() for ln in capsys.readouterr().out.splitlines() if ln and ln[0].isalpha()}
    assert float(lines["liver"][1]) == 1.0 and float(lines["kidney_right"][1]) == 1.0


def test_hd95_conventions_on_a_hand_computed_asymmetric_case(tmp_path, capsys):
    """Two collinear rows of voxels, spacing 2 mm along i: S = i 0..9, G = i 0..29 (G contains S).

    Every voxel of a one-voxel-thick row is a surface voxel. d(S->G) = 0 for all 10 voxels of S;
    d(G->S) = 2 * max(0, i - 9) mm = [0]*10 + [2, 4, ..., 40]. With numpy's linear percentile:
    directed: P95(d(S->G)) = 0, P95(d(G->S)) at rank 0.95 * 29 = 27.55 -> 36 + 0.55 * 2 = 37.1;
    pooled (MedPy): 40 values [0]*20 + [2..40], rank 0.95 * 39 = 37.05 -> 36 + 0.05 * 2 = 36.1.
    HD = 40, ASSD = 2 * (1 + ... + 20) / 40 = 10.5.
    """
    pred = np.zeros((3, 3, 32), bool)
    ref = np.zeros_like(pred)
    pred[1, 1, 0:10] = True
    ref[1, 1, 0:30] = True
    spacing = (2.0, 1.0, 1.0)
    m = mask_metrics(pred, ref, spacing)
    assert m.hd95_mm == pytest.approx(37.1)  # max of directed P95 (surface-distance / MONAI)
    assert m.hd95_pooled_mm == pytest.approx(36.1)  # pooled P95 (MedPy hd95)
    assert m.hd_mm == pytest.approx(40.0) and m.assd_mm == pytest.approx(10.5)
    # symmetric in its arguments, as both conventions are
    swapped = mask_metrics(ref, pred, spacing)
    assert (swapped.hd95_mm, swapped.hd95_pooled_mm) == pytest.approx((37.1, 36.1))
    # the CLI names the convention in its table and its JSON
    write_label_map(Volume.from_array(pred.astype(np.uint8), spacing), tmp_path / "p.nii.gz")
    write_label_map(Volume.from_array(ref.astype(np.uint8), spacing), tmp_path / "r.nii.gz")
    assert (
        main(["metrics", str(tmp_path / "p.nii.gz"), str(tmp_path / "r.nii.gz"), "--json", str(tmp_path / "m.json")])
        == 0
    )
    assert "directed 95th percentiles" in capsys.readouterr().out
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["structures"]["1"]["hd95_pooled_mm"] == pytest.approx(36.1)
    assert "MedPy" in data["hd95_convention"]
    import lkseg.metrics

    assert "MedPy/LiTS convention" not in lkseg.metrics.__doc__
