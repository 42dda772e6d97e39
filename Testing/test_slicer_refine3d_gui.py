"""The module widget's 3D click path outside Slicer: ``LiverKidneySeg.py`` loaded with the Qt
stand-ins of ``test_slicer_module`` and a permissive stand-in for the .ui widgets; the Logic,
the markups nodes, the worker thread and the prompt model (the threshold engine inside the core
predictor, see ``test_slicer_refine3d``) are real.

Checked: a + point placed in 3D mode becomes one ``click3D`` on the worker (the GUI thread only
starts it and applies it from its timer), points placed while one runs are applied in order, each
is one undo step, the core's warnings and a click outside the volume reach the status line.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest
from test_refine_3d import BOTTOM, TOP
from test_slicer_module import module  # noqa: F401 - the module fixture (LiverKidneySeg.py with stubs)
from test_slicer_refine3d import Case

pytestmark = pytest.mark.mrml


class Anything:
    """A stand-in widget: any attribute is another stand-in, any call does nothing."""

    def __getattr__(self, name):
        value = Anything()
        object.__setattr__(self, name, value)
        return value

    def __call__(self, *args, **kwargs):
        return None


@pytest.fixture
def widget(module, mrml_scene, monkeypatch):  # noqa: F811 - the imported fixture
    import slicer.util

    from LiverKidneySegLib.markups import createPromptNode

    statusBar = []  # Slicer's main-window status bar (no main window here)
    monkeypatch.setattr(slicer.util, "showStatusMessage", lambda text, duration=0: statusBar.append(text))

    case = Case(mrml_scene)
    w = module.LiverKidneySegWidget.__new__(module.LiverKidneySegWidget)
    module.LiverKidneySegWidget.__init__(w)
    w.ui, w._timer, w.logic = Anything(), Anything(), case.logic
    w.ui.refineStatusLabel.text = ""
    w._refreshSegmentLists = lambda: None  # Qt combo boxes (refilling is tested in test_mrml_prompting)
    w._placeButtons = {"positivePoints": Anything(), "negativePoints": Anything(), "promptBox": Anything()}
    w._parameterNode = SimpleNamespace(
        refine3D=True,
        positivePoints=createPromptNode(mrml_scene, "positivePoints"),
        negativePoints=createPromptNode(mrml_scene, "negativePoints"),
        promptBox=None,
        inputVolume=case.node,
        outputSegmentation=case.seg,
        refineSegment="Liver",
        refineModel="litemedsam",
        device="auto",
        combineMode="add",
    )
    w.statusBar = statusBar
    yield w, case
    case.close()


def _place(w, case, role, ijk):
    node = getattr(w._parameterNode, role)
    node.AddControlPointWorld(*[float(v) for v in case.ras(ijk)])
    start = time.perf_counter()
    w.onPromptPlaced(node, None)
    return time.perf_counter() - start


def _runTimer(w, timeout=60.0):
    end = time.monotonic() + timeout
    while w._pendingEdit is not None and time.monotonic() < end:
        time.sleep(0.02)
        w.onTimer()
    assert w._pendingEdit is None, "the edit did not finish"


def test_points_in_3d_mode_are_clicks_applied_in_order(widget):
    w, case = widget
    initial = case.organ.copy()
    initial[:18] = False
    initial[28:] = False
    case.write(case.liverId, initial)
    jj, ii = np.argwhere(case.organ[12]).mean(axis=0).round().astype(int)
    placed = _place(w, case, "positivePoints", [ii, jj, 12])
    assert w._pendingEdit is not None and w._pendingKind == "refine3D"
    jj2, ii2 = np.argwhere(case.organ[30]).mean(axis=0).round().astype(int)
    _place(w, case, "positivePoints", [ii2, jj2, 30])  # placed while the first one runs
    assert len(w._queued3D) == 1 and "waiting" in w.ui.refineStatusLabel.text
    _runTimer(w)
    _runTimer(w)
    out = case.read()
    np.testing.assert_array_equal(out[18:28], initial[18:28])
    assert all(out[k].any() for k in range(BOTTOM + 1, TOP)), np.flatnonzero(out.any(axis=(1, 2)))
    assert len(case.logic.history) == 2 and "voxel(s) changed" in w.ui.refineStatusLabel.text
    assert placed < 0.5, f"placing a point blocked the GUI thread for {placed:.2f} s"
    np.testing.assert_array_equal(case.read(case.spleenId), case.heart)


def test_warnings_and_errors_reach_the_status_line(widget):
    w, case = widget
    case.write(case.liverId, case.organ)
    _place(w, case, "positivePoints", [30, 1, 20])  # air in front of the body
    _runTimer(w)
    assert "air" in w.ui.refineStatusLabel.text and "0 voxel(s)" in w.ui.refineStatusLabel.text
    assert any("air" in text for text in w.statusBar)
    _place(w, case, "negativePoints", [30, 30, 60])  # beyond the last slice
    assert w._pendingEdit is None and "outside the volume" in w.ui.refineStatusLabel.text
    assert "outside the volume" in w.statusBar[-1]
    np.testing.assert_array_equal(case.read(), case.organ)
    assert not case.logic.canUndo


def test_slice_mode_keeps_the_old_behaviour(widget):
    w, case = widget
    w._parameterNode.refine3D = False
    case.write(case.liverId, case.organ & (np.arange(case.organ.shape[0]) != 20)[:, None, None])
    jj, ii = np.argwhere(case.organ[20]).mean(axis=0).round().astype(int)
    _place(w, case, "positivePoints", [ii, jj, 20])
    assert w._pendingKind == "refine"
    _runTimer(w)
    out = case.read()
    changed = np.flatnonzero(
        (out != (case.organ & (np.arange(case.organ.shape[0]) != 20)[:, None, None])).any(axis=(1, 2))
    )
    assert list(changed) == [20]  # one slice only
