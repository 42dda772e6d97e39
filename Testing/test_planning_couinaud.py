"""Couinaud segments: against the phantom's exact segments (from its own vessel anatomy), on an
axial and a flipped anisotropic grid; segment resections; landmark files; bad input."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from lkseg.errors import InputError
from lkseg.labels import PRODUCT_LABELS, LabelTable
from lkseg.phantom import DETAILED, PhantomConfig, direction_from_orientation, generate_phantom
from lkseg.phantom.couinaud import couinaud_truth, exact_landmarks
from lkseg.planning import (
    PRESETS,
    CouinaudLandmarks,
    LabelIndex,
    PlanOptions,
    Resection,
    couinaud_segments,
    parse_segments,
    propose_landmarks,
    run_plan,
)
from lkseg.volume import Volume

SEED = 6  # not used to tune the automatic veins (seeds 1-5 were); in the bifurcation selection set (1-9, 20-29)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def per_segment_dice(labels: np.ndarray, truth: np.ndarray) -> list[float]:
    return [dice(labels == s, truth == s) for s in range(1, 9)]


@pytest.fixture(scope="module")
def axial():
    ph = generate_phantom(PhantomConfig(seed=SEED, noise_sd=0.0))
    return ph, couinaud_truth(ph), LabelIndex.build(ph.product_labels(), PRODUCT_LABELS)


@pytest.fixture(scope="module")
def flipped():
    """Same patient on a RAS-stored, anisotropic grid (i toward the right, j anterior)."""
    cfg = PhantomConfig(
        seed=SEED,
        noise_sd=0.0,
        size_ijk=(230, 275, 84),
        spacing=(1.8, 1.5, 3.0),
        direction=tuple(direction_from_orientation("RAS").reshape(-1)),
    )
    ph = generate_phantom(cfg)
    return ph, couinaud_truth(ph), LabelIndex.build(ph.product_labels(), PRODUCT_LABELS)


def test_truth_labels_every_liver_voxel_and_all_segments(axial):
    ph, truth, _ = axial
    liver = ph.mask("liver") | ph.mask("liver_tumor")
    assert np.array_equal(truth.array > 0, liver)
    assert set(np.unique(truth.array[liver])) == set(range(1, 9))


@pytest.mark.parametrize("case", ["axial", "flipped"])
def test_exact_landmarks_match_the_truth(case, request):
    ph, truth, index = request.getfixturevalue(case)
    result = couinaud_segments(index, exact_landmarks(ph))
    scores = per_segment_dice(result.labels.array, truth.array)
    assert min(scores) >= 0.85 and np.mean(scores) >= 0.95, np.round(scores, 3)
    # volumes are voxel counts of the segment map
    vox = ph.grid.voxel_volume_ml
    for s in range(1, 9):
        assert result.volumes_ml[s] == pytest.approx((result.labels.array == s).sum() * vox)


def test_same_landmarks_same_anatomy_on_both_grids(axial, flipped):
    """The RAS landmarks are grid-independent: segment volumes agree across the two grids."""
    a = couinaud_segments(axial[2], exact_landmarks(axial[0]))
    b = couinaud_segments(flipped[2], exact_landmarks(axial[0]))
    for s in (4, 5, 7, 8):  # the large segments: within 3% (different voxel sizes)
        assert b.volumes_ml[s] == pytest.approx(a.volumes_ml[s], rel=0.03)


def test_automatic_landmarks_from_the_vessel_segments(axial):
    """A phantom where the proposal works (regression guard). On the evaluation seeds 10-19 the
    automatic proposal reaches mean Dice 0.857, >= 0.85 on 7 of 10 (the bifurcation 20-45 mm
    off on 3, where the portal segment is cut): Testing/benchmarks/bench_couinaud.py."""
    ph, truth, index = axial
    lab = ph.labels.array
    auto = propose_landmarks(
        ph.grid, lab == DETAILED["hepatic_vein"], lab == DETAILED["portal_vein"], lab == DETAILED["inferior_vena_cava"]
    )
    assert auto.source.startswith("automatic")
    exact = exact_landmarks(ph)
    assert np.linalg.norm(np.subtract(auto.portal_bifurcation, exact.portal_bifurcation)) < 10.0
    scores = per_segment_dice(couinaud_segments(index, auto).labels.array, truth.array)
    assert np.mean(scores) >= 0.85, np.round(scores, 3)


@pytest.mark.parametrize("preset", ["right_hepatectomy", "left_lateral_sectionectomy"])
def test_segment_resection_flr_within_2_percent_of_truth(axial, preset):
    ph, truth, _ = axial
    segs = PRESETS[preset]
    result = run_plan(
        ph.product_labels(),
        PRODUCT_LABELS,
        PlanOptions(resection=Resection(segments=segs), landmarks=exact_landmarks(ph), surfaces=False),
    )
    # truth: parenchyma (product liver, tumours excluded) outside the resected truth segments
    liver = ph.mask("liver")
    kept = liver & ~np.isin(truth.array, segs)
    true_percent = 100.0 * kept.sum() / liver.sum()
    assert result.flr.flr_percent == pytest.approx(true_percent, abs=2.0)
    assert result.flr.resection == {"kind": "segments", "segments": list(segs)}
    info = result.to_dict()["couinaud"]
    assert [row["resected"] for row in info["segments"]] == [s in segs for s in range(1, 9)]
    # every liver tumour is placed in the segment holding most of its voxels in the truth map
    tumours = [les for les in result.lesions if les.structure == "liver_tumor" and les.organ == "liver"]
    assert tumours
    for les in tumours:
        box = tuple(slice(int(o), int(o) + n) for o, n in zip(les.offset, les.mask.shape))
        true_counts = np.bincount(truth.array[box][les.mask], minlength=9)
        shares = result.lesion_segments[les.label]
        assert max(shares, key=shares.get) == int(np.argmax(true_counts))
        assert sum(shares.values()) == pytest.approx(1.0)


def test_segments_and_plane_combine_as_union(axial):
    ph, _, index = axial
    from lkseg.planning import ResectionPlane, compute_flr

    cou = couinaud_segments(index, exact_landmarks(ph))
    pb = exact_landmarks(ph).portal_bifurcation
    plane = ResectionPlane(tuple(pb), (-1.0, 0.0, 0.0), "positive")  # everything left of the bifurcation
    only_segments = compute_flr(index, Resection(segments=(6, 7)), couinaud=cou)
    only_plane = compute_flr(index, Resection(planes=(plane,)), couinaud=cou)
    both = compute_flr(index, Resection(planes=(plane,), segments=(6, 7)), couinaud=cou)
    assert both.resected_ml > max(only_segments.resected_ml, only_plane.resected_ml)
    assert both.resected_ml <= only_segments.resected_ml + only_plane.resected_ml + 1e-6
    with pytest.raises(InputError, match="needs the segments"):
        compute_flr(index, Resection(segments=(6, 7)))


def test_landmarks_json_and_slicer_markups_round_trip(axial, tmp_path):
    ph, _, index = axial
    lm = exact_landmarks(ph)
    path = lm.save(tmp_path / "lm.json")
    again = CouinaudLandmarks.load(path)
    assert again == lm
    a = couinaud_segments(index, lm).labels.array
    assert np.array_equal(a, couinaud_segments(index, again).labels.array)  # reproducible from the file
    # the same points as a Slicer point list in LPS
    points = [("IVC", p) for p in lm.ivc] + [("PB", lm.portal_bifurcation)]
    points += [
        (f"{tag}-{i}", p)
        for tag, key in (("RHV", "right_hepatic_vein"), ("MHV", "middle_hepatic_vein"), ("LHV", "left_hepatic_vein"))
        for i, p in enumerate(getattr(lm, key))
    ]
    doc = {
        "markups": [
            {
                "type": "Fiducial",
                "coordinateSystem": "LPS",
                "controlPoints": [{"label": n, "position": [-p[0], -p[1], p[2]]} for n, p in points],
            }
        ]
    }
    mrk = tmp_path / "lm.mrk.json"
    mrk.write_text(json.dumps(doc))
    from_slicer = CouinaudLandmarks.load(mrk)
    assert np.allclose(from_slicer.right_hepatic_vein, lm.right_hepatic_vein)
    assert np.array_equal(a, couinaud_segments(index, from_slicer).labels.array)


def test_parse_segments_and_presets():
    assert parse_segments("5,6,7,8") == (5, 6, 7, 8)
    assert parse_segments("right-hepatectomy") == (5, 6, 7, 8)
    assert parse_segments("Left lateral sectionectomy") == (2, 3)
    assert parse_segments("segmentectomy 7") == (7,)
    assert parse_segments("segmentectomy:3") == (3,)
    for bad in ("9", "0,1", "hepatectomy", ""):
        with pytest.raises(InputError):
            parse_segments(bad)


# -- bad input ---------------------------------------------------------------------------------
def test_swapped_hepatic_veins_are_refused(axial):
    ph, _, index = axial
    lm = exact_landmarks(ph)
    swapped = replace(lm, right_hepatic_vein=lm.left_hepatic_vein, left_hepatic_vein=lm.right_hepatic_vein)
    with pytest.raises(InputError, match="contradictory hepatic vein landmarks"):
        couinaud_segments(index, swapped)


def test_landmark_outside_the_liver_is_refused(axial):
    ph, _, index = axial
    lm = exact_landmarks(ph)
    far = [*lm.middle_hepatic_vein[:-1], tuple(np.add(lm.middle_hepatic_vein[-1], (0.0, 120.0, 0.0)))]
    with pytest.raises(InputError, match="outside the liver"):
        couinaud_segments(index, replace(lm, middle_hepatic_vein=far))
    # a whole landmark file in LPS read as RAS (x and y negated) is refused, not mis-labelled
    flip = CouinaudLandmarks.from_dict({**lm.to_dict(), "coordinate_system": "LPS"})
    with pytest.raises(InputError, match=r"outside the liver|contradictory"):
        couinaud_segments(index, flip)


def test_portal_plane_above_the_liver_is_refused(axial):
    ph, _, index = axial
    lm = exact_landmarks(ph)
    liver = np.argwhere(ph.mask("liver"))
    top = ph.grid.index_to_ras(liver[np.argmax(liver[:, 0])][::-1].astype(float))
    with pytest.raises(InputError, match="portal plane"):
        couinaud_segments(index, replace(lm, portal_bifurcation=(top[0], top[1], top[2] + 5.0)))


def test_missing_landmarks_and_vein_near_ivc_only():
    with pytest.raises(InputError, match="missing: portal_bifurcation"):
        CouinaudLandmarks.from_dict(
            {
                "ivc": [[0, 0, 0]],
                "right_hepatic_vein": [[1, 0, 0]],
                "middle_hepatic_vein": [[0, 1, 0]],
                "left_hepatic_vein": [[-1, 0, 0]],
            }
        )
    lm = CouinaudLandmarks(((0, 0, 0), (0, 0, 50)), (0, 20, 0), ((3, 0, 10),), ((0, 30, 10),), ((-30, 5, 10),))
    arr = np.zeros((30, 30, 30), np.uint8)
    arr[5:25, 5:25, 5:25] = 1
    index = LabelIndex.build(
        Volume.from_array(arr, spacing=(3.0, 3.0, 3.0), origin=(30.0, 30.0, -20.0)), LabelTable({1: "liver"})
    )
    with pytest.raises(InputError, match="right hepatic vein landmarks all lie within"):
        couinaud_segments(index, lm)


def test_liver_in_two_pieces_is_refused(axial):
    ph, _, _ = axial
    arr = ph.product_labels().array.copy()
    liver_value = PRODUCT_LABELS.value_of("liver")
    spleen = arr == PRODUCT_LABELS.value_of("spleen")
    arr[spleen] = liver_value  # a second, separate "liver" piece of spleen size
    index = LabelIndex.build(ph.labels.with_array(arr), PRODUCT_LABELS)
    with pytest.raises(InputError, match="2 separate pieces"):
        couinaud_segments(index, exact_landmarks(ph))


def test_plan_command_with_landmarks_and_resect(axial, tmp_path, capsys):
    from lkseg.cli.main import main
    from lkseg.io import read_label_map, write_label_map

    ph, truth, _ = axial
    labels = write_label_map(ph.product_labels(), tmp_path / "labels.nii.gz")
    lm = exact_landmarks(ph).save(tmp_path / "landmarks.json")
    out = tmp_path / "out"
    args = ["plan", str(labels), "-o", str(out), "--landmarks", str(lm), "--resect", "right_hepatectomy"]
    code = main([*args, "--no-surfaces", "--reports", "json,csv,html", "--json"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())["result"]
    assert report["flr"]["resection"] == {"kind": "segments", "segments": [5, 6, 7, 8]}
    assert [row["segment"] for row in report["couinaud"]["segments"]] == list(range(1, 9))
    assert "Couinaud segments" in (out / "report.html").read_text()
    assert "couinaud_segment" in (out / "report.csv").read_text()
    # the written segment map and landmarks reproduce the assignment
    seg = read_label_map(out / "couinaud_segments.nii.gz")
    assert per_segment_dice(seg.array, truth.array) == pytest.approx(
        per_segment_dice(
            couinaud_segments(LabelIndex.build(ph.product_labels(), PRODUCT_LABELS), exact_landmarks(ph)).labels.array,
            truth.array,
        )
    )
    assert CouinaudLandmarks.load(out / "couinaud_landmarks.json") == CouinaudLandmarks.load(lm)
    # --resect without landmarks: a clear error, nothing written
    bad = tmp_path / "bad"
    assert main(["plan", str(labels), "-o", str(bad), "--resect", "5,6,7,8", "--no-surfaces"]) != 0
    assert "--landmarks" in capsys.readouterr().err and not bad.exists()


def test_run_plan_proposes_landmarks_from_vessel_segments(axial):
    ph, truth, _ = axial
    lab = ph.labels.array
    arr = ph.product_labels().array.copy()
    arr[lab == DETAILED["hepatic_vein"]] = 20
    arr[lab == DETAILED["portal_vein"]] = 21
    arr[lab == DETAILED["inferior_vena_cava"]] = 22
    table = LabelTable(
        {**dict(PRODUCT_LABELS.items()), 20: "hepatic_vein", 21: "portal_vein", 22: "inferior_vena_cava"}
    )
    result = run_plan(ph.labels.with_array(arr), table, PlanOptions(auto_landmarks=True, surfaces=False))
    assert result.couinaud.landmarks.source.startswith("automatic: IVC")
    # the vessels, labelled separately, are part of the liver region that gets segments
    assert np.mean(per_segment_dice(result.couinaud.labels.array, truth.array)) >= 0.85
    with pytest.raises(InputError, match="need hepatic_vein and portal_vein"):
        run_plan(ph.product_labels(), PRODUCT_LABELS, PlanOptions(auto_landmarks=True, surfaces=False))


def test_vein_plane_that_misses_the_liver_is_refused():
    """A liver that fills only the quadrant right-anterior of the IVC (azimuth 0-90 degrees
    around it, RAS: 0 = patient right, 90 = anterior): a left hepatic vein at 100 degrees, just
    outside the liver (within the 15 mm point tolerance), leaves the left lateral section
    (beyond the left vein) without any liver voxel: refused, not labelled."""
    arr = np.zeros((24, 30, 30), np.uint8)  # ZYX
    arr[2:22, 2:28, 2:28] = 1
    vol = Volume.from_array(arr, spacing=(2.0, 2.0, 3.0), origin=(10.0, -20.0, -30.0))
    index = LabelIndex.build(vol, LabelTable({1: "liver"}))
    ras = vol.grid.index_to_ras(np.argwhere(arr)[:, ::-1].astype(float))
    r0, a0 = ras[:, 0].min(), ras[:, 1].min()  # the IVC runs along the liver's right-posterior edge
    s_mid = float(np.median(ras[:, 2]))

    def vein(deg):
        t = np.radians(deg)
        return [(r0 + d * np.cos(t), a0 + d * np.sin(t), s_mid + 10.0) for d in (20.0, 30.0)]

    lm = CouinaudLandmarks(
        ivc=((r0, a0, s_mid - 30.0), (r0, a0, s_mid + 30.0)),
        portal_bifurcation=(r0 + 15.0, a0 + 15.0, s_mid),
        right_hepatic_vein=vein(10.0),
        middle_hepatic_vein=vein(45.0),
        left_hepatic_vein=vein(100.0),
    )
    with pytest.raises(InputError, match=r"left lateral \(2, 3\) section: a hepatic vein plane misses the liver"):
        couinaud_segments(index, lm)
    # the same veins turned 30 degrees back into the liver are accepted: the refusal is the plane
    ok = replace(lm, left_hepatic_vein=vein(70.0))
    assert set(np.unique(couinaud_segments(index, ok).labels.array[arr > 0])) >= {2, 4, 5, 6}


def test_auto_landmarks_without_an_ivc_segment_are_refused(axial, tmp_path, capsys):
    """`lkseg plan --auto-landmarks` on a label map with hepatic and portal veins but no IVC: a
    clear error naming the missing segment, nothing written (the former vertical-axis guess
    mis-labelled seed 6 at mean Dice 0.68)."""
    from lkseg.cli.main import main
    from lkseg.io import write_label_map

    ph, _, _ = axial
    lab = ph.labels.array
    arr = ph.product_labels().array.copy()
    arr[lab == DETAILED["hepatic_vein"]] = 20
    arr[lab == DETAILED["portal_vein"]] = 21
    assert "inferior_vena_cava" not in dict(PRODUCT_LABELS.items()).values()  # no IVC label in the map
    labels = write_label_map(ph.labels.with_array(arr), tmp_path / "labels.nii.gz")
    table = ",".join(f"{v}={n}" for v, n in PRODUCT_LABELS.items()) + ",20=hepatic_vein,21=portal_vein"
    out = tmp_path / "out"
    code = main(["plan", str(labels), "-o", str(out), "--label-table", table, "--auto-landmarks", "--no-surfaces"])
    assert code != 0
    err = capsys.readouterr().err
    assert "inferior_vena_cava" in err and "--landmarks" in err, err
    assert not out.exists()
    # the same with an IVC segment is proposed (the refusal is about the IVC only)
    lm = propose_landmarks(
        ph.grid, lab == DETAILED["hepatic_vein"], lab == DETAILED["portal_vein"], lab == DETAILED["inferior_vena_cava"]
    )
    assert lm.source.startswith("automatic: IVC")
    with pytest.raises(InputError, match="need an inferior_vena_cava segment"):
        propose_landmarks(ph.grid, lab == DETAILED["hepatic_vein"], lab == DETAILED["portal_vein"], None)


def _tube(shape, a, b, radius, spacing):
    """Boolean ZYX mask of a capsule from ``a`` to ``b`` (mm, in (z, y, x) order from index 0)."""
    zyx = np.indices(shape).reshape(3, -1).T * np.asarray(spacing)
    a, b = np.asarray(a, float), np.asarray(b, float)
    t = np.clip((zyx - a) @ (b - a) / ((b - a) @ (b - a)), 0, 1)
    return (np.linalg.norm(zyx - a - t[:, None] * (b - a), axis=1) <= radius).reshape(shape)


def test_portal_bifurcation_is_where_the_trunk_divides_by_volume():
    """Analytic tree (identity grid, 1.5 mm voxels): a thick trunk (r 6 mm) cut flat by the
    volume's edge (as a liver mask cuts it) and running 72 mm to its division at x = 72 mm into
    two long branches (r 4.5 mm), with a thin side branch (r 2 mm) leaving the trunk halfway. The division is where the trunk ends
    (not the widest branch point, not the side branch); a lone tube has no division: refused."""
    sp = (1.5, 1.5, 1.5)
    shape = (40, 100, 100)
    centre = 30.0
    split = (centre, 75.0, 72.0)
    mask = _tube(shape, (centre, 75.0, -10.0), split, 6.0, sp)  # cut flat at the border
    mask |= _tube(shape, split, (centre, 15.0, 130.0), 4.5, sp)
    mask |= _tube(shape, split, (centre, 135.0, 130.0), 4.5, sp)
    mask |= _tube(shape, (centre, 75.0, 42.0), (centre, 120.0, 30.0), 2.0, sp)
    grid = Volume.from_array(mask.astype(np.uint8), spacing=sp).grid
    from lkseg.planning.landmarks import _bifurcation

    truth = grid.index_to_ras(np.array(split[::-1]) / 1.5)
    assert np.linalg.norm(_bifurcation(grid, mask) - truth) < 6.0  # within one trunk radius
    with pytest.raises(InputError, match="no division into two large branches"):
        _bifurcation(grid, _tube(shape, (centre, 75.0, 12.0), (centre, 75.0, 130.0), 6.0, sp))


def test_automatic_bifurcation_where_the_widest_branch_point_was_42_mm_off():
    """Phantom seed 21 (a tuning seed): the former guess (widest skeleton branch point) lay at
    the trunk's entry into the liver, 42 mm from the division; the walk down the trunk finds it."""
    ph = generate_phantom(PhantomConfig(seed=21, noise_sd=0.0))
    lab = ph.labels.array
    auto = propose_landmarks(
        ph.grid, lab == DETAILED["hepatic_vein"], lab == DETAILED["portal_vein"], lab == DETAILED["inferior_vena_cava"]
    )
    assert np.linalg.norm(np.subtract(auto.portal_bifurcation, exact_landmarks(ph).portal_bifurcation)) < 10.0


def test_bifurcation_at_the_centrelines_meeting_point_not_the_skeleton_node():
    """Analytic Y on an anisotropic grid (2.5 mm slices, 1.6 mm pixels): a 6.5 mm trunk from
    below divides into 5.5 and 4.5 mm branches rising to either side, all three centrelines
    meeting at one point (as the phantom's portal vein does). The skeleton's branch node lies
    5 mm below it (the medial axis bends toward the crotch); the least-squares crossing of the
    three arms' fitted lines is within 2.5 mm."""
    from lkseg.planning.landmarks import _bifurcation

    sp = (2.5, 1.6, 1.6)
    j = np.array([60.0, 72.0, 80.0])  # z, y, x mm
    mask = _tube((50, 90, 110), (-5.0, 72.0, 85.0), j, 6.5, sp)
    mask |= _tube(mask.shape, j, j + np.array([25.0, 5.0, -60.0]), 5.5, sp)
    mask |= _tube(mask.shape, j, j + np.array([30.0, -10.0, 70.0]), 4.5, sp)
    grid = Volume.from_array(mask.astype(np.uint8), spacing=sp[::-1]).grid
    truth = grid.index_to_ras(j[::-1] / np.array(sp[::-1]))
    assert np.linalg.norm(_bifurcation(grid, mask, refine=False) - truth) > 4.0  # the skeleton node
    assert np.linalg.norm(_bifurcation(grid, mask) - truth) < 2.5


def _radiating_veins(names=("a", "b", "c")):
    """Analytic hepatic veins (1.5 mm voxels): an IVC (vertical cylinder, r 10 mm) and veins
    (r 5.5 mm) from a confluence on its axis outward and down to a division at 60 mm from the
    axis into two equal branches, each with a thin tributary halfway; vein ``c`` is cut (it
    starts 28 mm out, as a vein leaving the liver is). Returns grid, vein mask, IVC mask, the
    confluence and each vein's (azimuth in RAS degrees around the axis, distance of its division)."""
    sp = (1.5, 1.5, 1.5)
    shape = (64, 130, 130)
    c = np.array([80.0, 97.0, 97.0])  # confluence (z, y, x mm)
    ivc = _tube(shape, (0.0, 97.0, 97.0), (95.0, 97.0, 97.0), 10.0, sp)
    hv = np.zeros(shape, bool)
    ends = {}
    for name, deg in (("a", -30.0), ("b", 60.0), ("c", 150.0)):
        if name not in names:
            continue
        u = np.array([0.0, math.sin(math.radians(deg)), math.cos(math.radians(deg))])
        end = c + 60.0 * u + np.array([-30.0, 0.0, 0.0])
        ends[name] = end
        start = c + 28.0 * u + np.array([-14.0, 0.0, 0.0]) if name == "c" else c
        hv |= _tube(shape, start, end, 5.5, sp)
        for turn in (-35.0, 35.0):
            t = math.radians(deg + turn)
            hv |= _tube(shape, end, end + np.array([-10.0, 30 * math.sin(t), 30 * math.cos(t)]), 4.0, sp)
        mid = c + 0.5 * (end - c)
        hv |= _tube(shape, mid, mid + np.array([-15.0, 15 * u[2], -15 * u[1]]), 2.5, sp)
    hv &= ~ivc
    grid = Volume.from_array(hv.astype(np.uint8), spacing=sp).grid
    centre = grid.index_to_ras(c[::-1] / 1.5)
    truth = {}
    for name, end in ends.items():
        rel = (grid.index_to_ras(end[::-1] / 1.5) - centre)[:2]
        truth[name] = (math.degrees(math.atan2(rel[1], rel[0])), float(np.hypot(*rel)))
    return grid, hv, ivc, centre, truth


def test_vein_trunks_traced_from_the_ivc_to_their_division():
    """Each traced trunk lies along its vein (azimuth within 4 degrees at every point), reaches
    its division (60 mm from the axis) and stops there (not along a branch beyond it, nor at
    the tributary); the cut vein is found from its own piece; two veins only: refused."""
    from lkseg.planning.landmarks import _ivc_axis, _vein_trunks

    grid, hv, ivc, centre, truth = _radiating_veins()
    trunks = _vein_trunks(grid, hv, _ivc_axis(grid, ivc, (0.0, 95.0)))
    assert len(trunks) == 3
    found = set()
    for pts in trunks:
        rel = pts[:, :2] - centre[:2]
        r, az = np.hypot(rel[:, 0], rel[:, 1]), np.degrees(np.arctan2(rel[:, 1], rel[:, 0]))
        name = min(truth, key=lambda n: abs((az.mean() - truth[n][0] + 180) % 360 - 180))
        found.add(name)
        assert np.all(np.abs((az - truth[name][0] + 180) % 360 - 180) < 4.0), (name, np.round(az))
        assert abs(r.max() - truth[name][1]) < 6.0, (name, r.max())
        assert r.min() < (32.0 if name == "c" else 20.0)
    assert found == set(truth)
    grid, hv, ivc, _, _ = _radiating_veins(("a", "b"))
    with pytest.raises(InputError, match="2 distinct vein trunk"):
        _vein_trunks(grid, hv, _ivc_axis(grid, ivc, (0.0, 95.0)))


def test_automatic_veins_where_the_azimuth_peaks_took_a_branch():
    """Phantom seed 25 (selection set): the former proposal (azimuth peaks of thick vein voxels)
    put the middle vein 56-86 degrees off and the left 22-32 off (mean Dice 0.64); the traced
    trunks follow the exact veins within 10 degrees from 15 to 40 mm from the IVC."""
    from lkseg.planning.couinaud import _Frame

    ph = generate_phantom(PhantomConfig(seed=25, noise_sd=0.0))
    lab = ph.labels.array
    auto = _Frame(
        propose_landmarks(
            ph.grid,
            lab == DETAILED["hepatic_vein"],
            lab == DETAILED["portal_vein"],
            lab == DETAILED["inferior_vena_cava"],
        )
    )
    exact = _Frame(exact_landmarks(ph))
    r = np.linspace(15.0, 40.0, 6)
    for key in ("right_hepatic_vein", "middle_hepatic_vein", "left_hepatic_vein"):
        off = np.degrees(np.abs((auto.azimuth(key, r) - exact.azimuth(key, r) + np.pi) % (2 * np.pi) - np.pi))
        assert np.all(off < 10.0), (key, np.round(off))


def test_bifurcation_of_a_portal_tree_cut_into_pieces():
    """Analytic portal vein (2.5 mm slices): a short trunk stub (cut by the liver's edge), a right
    branch dividing 46 mm out into two thick branches (the widest lumen lies in that junction)
    and a left branch cut 3-22 mm from the division (it leaves the liver and re-enters). On the
    stub's piece alone the walk from the widest lumen finds the right branch's division, ~49 mm
    off; with the pieces joined across the gap the bifurcation is within 4 mm."""
    from lkseg.planning.landmarks import _bifurcation

    sp = (2.5, 1.6, 1.6)
    shape = (50, 90, 140)
    j = np.array([50.0, 72.0, 110.0])  # the division (z, y, x mm)
    mask = _tube(shape, (44.0, 72.0, 111.0), j, 6.0, sp)
    rd = j + np.array([10.0, 5.0, -45.0])
    mask |= _tube(shape, j, rd, 5.5, sp)
    mask |= _tube(shape, rd, rd + np.array([25.0, 20.0, -40.0]), 5.5, sp)
    mask |= _tube(shape, rd, rd + np.array([-20.0, -20.0, -40.0]), 5.5, sp)
    u = np.array([10.0, -15.0, 45.0]) / np.linalg.norm([10.0, -15.0, 45.0])
    along = ((np.indices(shape).reshape(3, -1).T * np.asarray(sp) - j) @ u).reshape(shape)
    mask |= _tube(shape, j, j + 70 * u, 4.5, sp) & ((along < 3) | (along > 22))
    grid = Volume.from_array(mask.astype(np.uint8), spacing=sp[::-1]).grid
    truth = grid.index_to_ras(j[::-1] / np.array(sp[::-1]))
    assert np.linalg.norm(_bifurcation(grid, mask, bridge_mm=0.0) - truth) > 30.0
    assert np.linalg.norm(_bifurcation(grid, mask) - truth) < 4.0
