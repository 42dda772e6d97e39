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
