"""The web page's session and slice-view geometry without a browser (trame-slicer views, offscreen).

Truth: the phantom's own IJK->RAS matrix (written by the generator, read back from its JSON) and
its exact label map; volumes anisotropic and non-axial (sagittal acquisition, flipped axes).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("trame_slicer", reason="the web extra is not installed (pip install 'liverkidneyseg[web]')")
pytestmark = pytest.mark.mrml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def app():
    from trame_slicer.core import SlicerApp
    from trame_slicer.views import DirectViewFactory, ViewLayoutDefinition

    from lkseg.web.views import blockTriton

    blockTriton()
    slicerApp = SlicerApp()
    slicerApp.view_manager.register_factory(DirectViewFactory(do_render_offscreen=True))
    views = {}
    for definition in (ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.sagittal_view()):
        view = slicerApp.view_manager.create_view(definition)
        view.render_window().SetSize(300, 200)
        views[definition.singleton_tag] = view
    return slicerApp, views


def _phantom(out: Path, *args: str) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "lkseg",
            "phantom",
            "--size",
            "40",
            "36",
            "24",
            "--spacing",
            "4",
            "5",
            "6",
            "--no-seg-nrrd",
            *args,
            str(out),
        ],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    return out


@pytest.mark.parametrize("orientation", ["LPS", "PIL"])
def test_click_position_maps_to_the_voxel_under_it(app, tmp_path, orientation):
    from lkseg.io import read_label_map
    from lkseg.web.interaction import displayToRas, rasToDisplay
    from lkseg.web.session import WebSession

    slicerApp, views = app
    folder = _phantom(tmp_path / "ph", "--orientation", orientation)
    ijkToRas = np.asarray(json.loads((folder / "phantom.json").read_text())["geometry"]["ijk_to_ras"])
    session = WebSession(slicerApp, tmp_path / "work")
    session.openVolume(folder / "ct.nii.gz")
    truth = np.asarray(read_label_map(folder / "labels.nii.gz").array)
    # a liver voxel (exact label) and its RAS centre from the phantom's own matrix
    k, j, i = np.argwhere(truth == 1)[len(np.argwhere(truth == 1)) // 2]
    ras = (ijkToRas @ np.array([i, j, k, 1.0]))[:3]
    for tag, view in views.items():
        node = view.get_view_node()
        node.JumpSliceByOffsetting(*ras)
        view.render()
        xy = rasToDisplay(node, ras)
        assert abs(xy[2]) < 1e-6, f"{tag}: the point is not on the displayed slice"
        back = displayToRas(node, xy[0], xy[1])
        np.testing.assert_allclose(back, ras, atol=1e-6)
        axis = session.sliceAxis(node)
        # the slice view's normal is the index axis whose RAS direction is most parallel to it
        normal = np.array([node.GetSliceToRAS().GetElement(r, 2) for r in range(3)])
        columns = ijkToRas[:3, :3] / np.linalg.norm(ijkToRas[:3, :3], axis=0)
        assert axis == int(np.argmax(np.abs(normal @ columns)))
        assert session.sliceIndexAt(back, axis) == (i, j, k)[axis]
    session.closeCase()


def test_bad_file_keeps_the_open_case(app, tmp_path):
    from lkseg.errors import InputError
    from lkseg.web.session import WebSession

    slicerApp, _ = app
    folder = _phantom(tmp_path / "ph")
    session = WebSession(slicerApp, tmp_path / "work")
    node = session.openVolume(folder / "ct.nii.gz")
    bad = tmp_path / "corrupt.nii.gz"
    bad.write_bytes((folder / "ct.nii.gz").read_bytes()[:3000])
    with pytest.raises(InputError, match="truncated or corrupt"):
        session.openVolume(bad)
    assert session.volumeNode is node and node.GetScene() is slicerApp.scene
    assert session.segmentationNode is not None
    session.closeCase()


class _RecordingLogic:
    """Stands in for the module's logic: records which call a page correction makes."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        if name in ("refine", "click3D", "box3D"):
            return lambda *args, **kwargs: self.calls.append((name, args, kwargs)) or name
        raise AttributeError(name)

    def endRefineInteraction(self):
        self.calls.append(("endRefineInteraction", (), {}))


def test_corrections_route_as_in_the_slicer_module(app, tmp_path):
    """3D on: a click -> click3D (its sign), a box -> box3D, no mode; 3D off: refine with the box and
    EVERY point placed on the slice so far (as the module's point lists and box), until the slice,
    segment or mode changes or the interaction ends (then only the new prompt)."""
    from lkseg.web.session import WebSession

    slicerApp, _ = app
    folder = _phantom(tmp_path / "ph")
    session = WebSession(slicerApp, tmp_path / "work")
    session.openVolume(folder / "ct.nii.gz")
    logic = session._logic = _RecordingLogic()
    node = session.volumeNode
    ijkToRas = np.asarray(json.loads((folder / "phantom.json").read_text())["geometry"]["ijk_to_ras"])

    def ras(i, j, k):
        return (ijkToRas @ np.array([i, j, k, 1.0]))[:3]

    box = np.vstack([ras(5, 5, 10), ras(20, 18, 10)])
    p1, p2, n1 = ras(10, 10, 10).reshape(1, 3), ras(12, 11, 10).reshape(1, 3), ras(15, 15, 10).reshape(1, 3)

    assert session.correct("liver", 2, box=box, threeD=True, progress=print) == "box3D"
    _, args, kwargs = logic.calls[-1]
    assert args[:3] == (node, session.segmentationNode, "liver") and kwargs["axis"] == 2
    np.testing.assert_allclose(args[3], box)
    assert kwargs["progressCallback"] is print and kwargs["waitForCompletion"] is False
    for point, positive in ((p1, True), (n1, False)):
        key = "positive" if positive else "negative"
        assert session.correct("liver", 2, threeD=True, **{key: point}) == "click3D"
        _, args, kwargs = logic.calls[-1]
        np.testing.assert_allclose(args[3], point[0])
        assert kwargs["positive"] is positive and "mode" not in kwargs

    logic.calls.clear()
    session.correct("liver", 2, box=box, mode="add")
    session.correct("liver", 2, positive=p1, mode="add")
    session.correct("liver", 2, positive=p2, mode="add")
    session.correct("liver", 2, negative=n1, mode="add")
    refines = [c for c in logic.calls if c[0] == "refine"]
    assert len(refines) == 4 and all(c[2]["sliceIndex"] == 10 and c[2]["mode"] == "add" for c in refines)
    last = refines[-1][2]
    np.testing.assert_allclose(last["box"], box)
    np.testing.assert_allclose(last["positive"], np.vstack([p1, p2]))
    np.testing.assert_allclose(last["negative"], n1)
    # another mode (or slice, or segment) starts a new interaction: only the new prompt
    session.correct("liver", 2, positive=p1, mode="subtract")
    kwargs = logic.calls[-1][2]
    assert kwargs["box"] is None and kwargs["negative"] is None and len(kwargs["positive"]) == 1
    session.correct("liver", 2, positive=p2, mode="subtract")
    assert len(logic.calls[-1][2]["positive"]) == 2
    session.endInteraction()  # undo/redo, a 3D edit, a failed edit...
    session.correct("liver", 2, positive=p2, mode="subtract")
    assert len(logic.calls[-1][2]["positive"]) == 1
    session.correct("liver", 2, positive=p1, threeD=True)  # a 3D edit ends the slice interaction too
    assert session.interaction is None and ("endRefineInteraction", (), {}) in logic.calls
    session._logic = None
    session.closeCase()
