"""Kidney tumour metrics and R.E.N.A.L. scores on constructed kidney + tumour cases.

The kidney is an ellipsoid centred at RAS (0, 0, 0) with semi-axes 30 (R-L) x 25 (A-P) x 60
(S-I) mm; the renal pelvis an ellipsoid at (-12, 0, 0) with semi-axes 10 x 8 x 20 mm, so the
polar lines are at S = +20 and -20 mm and the axial midline at S = 0. Grid: 1 mm, i -> R,
j -> A, k -> S. Each case states its expected components and why.
"""

from __future__ import annotations

import numpy as np
import pytest

from lkseg.labels import LabelTable
from lkseg.planning import LabelIndex, complexity_of, find_lesions, nephrometry, score_e, score_l, score_n, score_r
from lkseg.volume import Volume

TABLE = LabelTable({3: "kidney_right", 4: "kidney_left", 5: "kidney_tumor", 8: "renal_pelvis"})
KIDNEY = ((0.0, 0.0, 0.0), (30.0, 25.0, 60.0))
PELVIS = ((-12.0, 0.0, 0.0), (10.0, 8.0, 20.0))


def build(tumours, *, pelvis=True, left_kidney=False, extent=((-50, 72), (-45, 45), (-72, 72))) -> Volume:
    """Label map with the kidney, its pelvis and spherical tumours ``(centre RAS, radius mm)``."""
    lo = np.array([e[0] for e in extent], float)
    hi = np.array([e[1] for e in extent], float)
    n = (hi - lo).astype(int) + 1
    direction = np.diag([-1.0, -1.0, 1.0])  # i -> +R, j -> +A, k -> +S
    origin_lps = np.array([-lo[0], -lo[1], lo[2]])
    shape = (n[2], n[1], n[0])
    k, j, i = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij", sparse=True)
    r_, a_, s_ = lo[0] + i, lo[1] + j, lo[2] + k

    def ell(c, r):
        return ((r_ - c[0]) / r[0]) ** 2 + ((a_ - c[1]) / r[1]) ** 2 + ((s_ - c[2]) / r[2]) ** 2 <= 1

    lab = np.zeros(shape, np.uint8)
    lab[ell(*KIDNEY)] = 3
    if left_kidney:  # a second kidney further left (negative R)
        lab[ell((-38.0, 0.0, 0.0), (6.0, 10.0, 30.0))] = 4
    if pelvis:
        lab[ell(*PELVIS)] = 8
    for c, r in tumours:
        lab[ell(c, (r, r, r))] = 5
    return Volume.from_array(lab, spacing=(1.0, 1.0, 1.0), origin=origin_lps, direction=direction)


def score(tumours, table=TABLE, **kwargs):
    labels = build(tumours, **kwargs)
    index = LabelIndex.build(labels, table)
    return nephrometry(index, find_lesions(index, "kidney_tumor"))


def test_score_tables():
    assert [score_r(d) for d in (10, 40.0, 40.01, 69.9, 70.0, 90)] == [1, 1, 2, 2, 3, 3]
    assert [score_e(f) for f in (1.0, 0.5, 0.49, 0.01, 0.0)] == [1, 1, 2, 2, 3]
    assert [score_n(d) for d in (20, 7.0, 6.9, 4.01, 4.0, 0)] == [1, 1, 2, 2, 3, 3]
    assert score_l(0.0, False, False) == 1  # entirely polar
    assert score_l(0.3, True, False) == 2  # crosses a polar line, < 50% between
    assert score_l(0.6, True, False) == 3  # > 50% across the polar line
    assert score_l(0.2, True, True) == 3  # crosses the axial midline
    assert score_l(1.0, False, False) == 3  # entirely between the lines
    assert [complexity_of(t) for t in (4, 6, 7, 9, 10, 12)] == ["low", "low", "moderate", "moderate", "high", "high"]


def test_small_endophytic_upper_pole_anterior():
    # 14 mm sphere at (0, 6, 42): fully inside the kidney (E=3), S 35..49 above the upper polar
    # line (L=1), >= 15 mm from the pelvis (N=1), mostly anterior to the coronal midplane (a).
    (s,) = score([((0.0, 6.0, 42.0), 7.0)])
    assert s.kidney == "kidney_right"
    assert s.max_diameter_mm == pytest.approx(15.0, abs=1.0)
    assert s.exophytic_fraction == 0.0 and s.E == 3
    assert s.polar_lines_ras_s_mm == pytest.approx((20.0, -20.0))
    assert s.fraction_above_upper == 1.0 and s.L == 1
    assert s.nearness_mm > 7 and s.N == 1
    assert s.anterior_fraction > 0.9 and s.anterior_posterior == "a"
    assert (s.R, s.E, s.N, s.L, s.total, s.complexity, s.notation) == (1, 3, 1, 1, 6, "low", "6a")


def test_large_exophytic_hilar_crossing():
    # 72 mm sphere centred on the lateral surface (32, 0, 0): R=3 (>= 7 cm), more than half
    # outside the renal outline (E=1), it reaches the pelvis (N=3), spans S -36..36 across both
    # polar lines and the midline (L=3), symmetric in A-P (x).
    (s,) = score([((32.0, 0.0, 0.0), 36.0)])
    assert s.max_diameter_mm >= 70.0 and s.R == 3
    assert s.exophytic_fraction > 0.5 and s.E == 1
    assert s.nearness_mm == 0.0 and s.N == 3
    assert s.crosses_midline and s.L == 3
    assert s.anterior_posterior == "x"
    assert (s.total, s.complexity, s.notation) == (10, "high", "10x")


def test_interpolar_near_collecting_system():
    # 16 mm sphere at (11.5, 0, 0): 5.5 mm lateral to the pelvis surface at R = -2 (N=2),
    # entirely between the polar lines (L=3), deep inside the kidney (E=3).
    (s,) = score([((11.5, 0.0, 0.0), 8.0)])
    assert s.nearness_mm == pytest.approx(5.5, abs=1.0) and s.N == 2
    assert s.fraction_between == 1.0 and s.L == 3
    assert s.E == 3 and s.R == 1
    assert (s.total, s.complexity) == (9, "moderate")


def test_partly_exophytic_posterior_lower_pole():
    # 24 mm sphere at (13, -13, -22): its centre ~7 mm under the posterolateral surface, so a
    # minority bulges out (E=2); S -34..-10 crosses the lower polar line with < 50% between the
    # lines (L=2); posterior (p); about 10 mm from the pelvis (N=1).
    (s,) = score([((13.0, -13.0, -22.0), 12.0)])
    assert 0.0 < s.exophytic_fraction < 0.5 and s.E == 2
    assert s.crosses_polar_line and not s.crosses_midline and 0 < s.fraction_between < 0.5 and s.L == 2
    assert s.anterior_posterior == "p"
    assert s.N == 1
    assert (s.total, s.notation) == (6, "6p")


def test_without_collecting_system_the_sinus_of_a_filled_kidney_is_estimated():
    # no pelvis segment and the kidney label fills the whole ellipsoid (it includes its sinus, no
    # hilar notch): the sinus is estimated as the kidney's convex hull (its outline's face centres
    # reach +-60.5 mm in S) shrunk to 55% about its medial hull point, so the polar lines lie at
    # S = +-0.55 x 60.5 = +-33.3 mm, i.e. the voxel centres at +-33. The 14 mm upper-pole tumour
    # (S 35..49) lies entirely above the upper line (L=1).
    table = LabelTable({3: "kidney_right", 5: "kidney_tumor"})
    (s,) = score([((0.0, 6.0, 42.0), 7.0)], table=table, pelvis=False)
    assert s.sinus_source.startswith("estimated from the kidney's shape") and "no hilar notch" in s.sinus_source
    assert s.polar_lines_ras_s_mm == pytest.approx((33.0, -33.0), abs=1.0)
    assert s.fraction_above_upper == 1.0 and s.L == 1
    assert s.N is not None and s.total is not None


def test_without_collecting_system_or_laterality_n_and_l_are_not_available():
    # 50 mm sphere on the lateral surface: R=2, E=1; no pelvis segment and a kidney without
    # laterality (its medial side, hence its sinus, unknown) -> N, L, total not available
    table = LabelTable({3: "kidney", 5: "kidney_tumor"})
    (s,) = score([((30.0, 0.0, 0.0), 25.0)], table=table, pelvis=False)
    assert s.R == 2 and s.E == 1
    assert s.N is None and s.L is None and s.total is None and s.complexity is None
    assert "collecting-system" in s.notes["nearness_mm"] and "laterality" in s.notes["nearness_mm"]
    assert "N, L" in s.notes["total"]


def test_tumour_outside_kidney_and_laterality():
    # one tumour touching only the left kidney, one floating in fat
    scores = score([((-38.0, 0.0, 33.0), 4.0), ((45.0, 30.0, 50.0), 5.0)], left_kidney=True)
    by_kidney = {s.kidney: s for s in scores}
    assert set(by_kidney) == {"kidney_left", None}
    outside = by_kidney[None]
    assert outside.total is None and outside.E is None and "outside its organ" in outside.notes["total"]
    assert outside.R == 1  # the size is still measured


def test_padua_tables_and_two_cases():
    from lkseg.planning.padua import padua_risk, padua_size

    assert [padua_size(d) for d in (30, 40.0, 40.5, 70.0, 70.5)] == [1, 1, 2, 2, 3]
    assert [padua_risk(t) for t in (6, 7, 8, 9, 10, 14)] == [
        "low",
        "low",
        "intermediate",
        "intermediate",
        "high",
        "high",
    ]
    # medial, mid-kidney, endophytic 16 mm tumour overlapping the pelvis (x -22..-2): middle (2),
    # endophytic (3), medial rim (2), sinus and collecting system involved (2, 2), <= 4 cm (1) = 12
    # lateral upper-pole tumour whose centre lies outside the kidney: polar (1), >= 50% exophytic
    # (1), lateral (1), sinus/collecting system not involved (1, 1), <= 4 cm (1) = 6
    scores = score([((-20.0, 0.0, 0.0), 8.0), ((25.0, 0.0, 45.0), 8.0)])
    medial = next(s for s in scores if s.centroid_ras[0] < 0).padua
    lateral = next(s for s in scores if s.centroid_ras[0] > 0).padua
    assert (medial.polar, medial.exophytic, medial.rim, medial.sinus, medial.collecting_system, medial.size) == (
        2,
        3,
        2,
        2,
        2,
        1,
    )
    assert (medial.total, medial.risk) == (12, "high")
    assert (lateral.polar, lateral.exophytic, lateral.rim, lateral.sinus, lateral.collecting_system, lateral.size) == (
        1,
        1,
        1,
        1,
        1,
        1,
    )
    assert (lateral.total, lateral.risk) == (6, "low")


def test_padua_without_collecting_system_segment_has_no_total():
    table = LabelTable({3: "kidney_right", 5: "kidney_tumor"})
    (s,) = score([((30.0, 0.0, 0.0), 25.0)], table=table, pelvis=False)
    assert s.padua.size == 2 and s.padua.exophytic == 1 and s.padua.rim == 1
    assert s.padua.collecting_system is None and s.padua.total is None
    assert "collecting_system" in s.padua.notes["total"]
