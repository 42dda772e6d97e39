"""R.E.N.A.L. N and L from the renal sinus derived from the kidney's own geometry (no
collecting-system segment), against the same scores from the phantom's exact renal sinus."""

from __future__ import annotations

import numpy as np
import pytest

from lkseg.labels import LabelTable
from lkseg.phantom import DETAILED, PhantomConfig, generate_phantom
from lkseg.planning import PlanOptions, run_plan


def _labels(ph, kidney_parts, pelvis_segment: bool):
    table = {1: "kidney_tumor", 2: "kidney_right", 3: "kidney_left"}
    lut = np.zeros(256, np.uint8)
    lut[DETAILED["kidney_tumor"]] = 1
    for value, side in ((2, "right"), (3, "left")):
        for part in kidney_parts:
            lut[DETAILED[f"kidney_{side}_{part}"]] = value
    if pelvis_segment:
        table[4] = "renal_pelvis"
        lut[DETAILED["kidney_right_pelvis"]] = lut[DETAILED["kidney_left_pelvis"]] = 4
    return ph.labels.with_array(lut[ph.labels.array]), LabelTable(table)


def _score(ph, kidney_parts, pelvis_segment=False, image=None):
    labels, table = _labels(ph, kidney_parts, pelvis_segment)
    (s,) = run_plan(labels, table, PlanOptions(surfaces=False), image=image).renal
    return s


@pytest.fixture(scope="module", params=[2, 6])
def phantom(request):
    return generate_phantom(PhantomConfig(seed=request.param, kidney_cyst=False, n_liver_tumors=0))


def test_derived_sinus_gives_the_exact_sinus_scores(phantom):
    truth = _score(phantom, ("cortex", "medulla"), pelvis_segment=True)
    assert truth.sinus_source == "segment: renal_pelvis" and truth.N is not None and truth.L is not None
    # a parenchyma-only kidney segment: the sinus is its medial concavity
    derived = _score(phantom, ("cortex", "medulla"))
    assert derived.sinus_source.startswith("geometric")
    assert (derived.N, derived.L) == (truth.N, truth.L)
    assert derived.total is not None and derived.notation
    # PADUA from the same geometry: the sinus-dependent components agree with the exact sinus
    for part in ("polar", "sinus", "rim", "exophytic", "size"):
        assert getattr(derived.padua, part) == getattr(truth.padua, part), part
    assert truth.padua.total is not None and derived.padua.total is None  # no collecting system segment
    # a kidney segment that includes the sinus (this product's): with the enhanced CT the sinus
    # fat and urine inside it are found by density
    with_ct = _score(phantom, ("cortex", "medulla", "pelvis"), image=phantom.image)
    assert "HU" in with_ct.sinus_source
    assert (with_ct.N, with_ct.L) == (truth.N, truth.L)


def test_kidney_including_its_sinus_without_ct_is_not_guessed(phantom):
    s = _score(phantom, ("cortex", "medulla", "pelvis"))
    assert s.N is None and s.L is None and s.total is None
    assert "seems to include the sinus" in s.notes["nearness_mm"]
