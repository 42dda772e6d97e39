"""What a segment edit costs the web server's event loop: the segment write and the redraw of the
four views (trame-slicer views rendered offscreen with software OpenGL, as in ``lkseg web``).

A phantom's exact labels become five segments of a ``WebSession``; then a 4x4-voxel change on one
slice is written (``setSegmentMask`` with its region, as the logic's edits do) with and without the
closed-surface (3D) representation, and each view is rendered. Prints milliseconds and the load.

    PYTHONPATH=LiverKidneySeg python Testing/benchmarks/bench_web_render.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _ms(seconds: float) -> int:
    return round(1000 * seconds)


def main() -> int:
    from trame_slicer.core import SlicerApp
    from trame_slicer.views import DirectViewFactory, ViewLayoutDefinition

    from lkseg.web.views import blockTriton

    blockTriton()
    from LiverKidneySegLib.segmentations import setSegmentMask
    from LiverKidneySegLib.volumes import gridFromNode
    from lkseg.io import read_label_map
    from lkseg.web.session import WebSession

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import web_harness as wh

    with tempfile.TemporaryDirectory(prefix="lkseg-bench-render-") as tmp:
        ph = Path(tmp) / "ph"
        wh.small_phantom(ph, "--seed", "2", "--liver-tumors", "5")
        app = SlicerApp()
        app.view_manager.register_factory(DirectViewFactory(do_render_offscreen=True))
        views = []
        for definition in (
            ViewLayoutDefinition.axial_view(),
            ViewLayoutDefinition.coronal_view(),
            ViewLayoutDefinition.sagittal_view(),
            ViewLayoutDefinition.threed_view(),
        ):
            view = app.view_manager.create_view(definition)
            view.render_window().SetSize(560, 430)
            views.append(view)
        session = WebSession(app, Path(tmp) / "work")
        session.openVolume(ph / "ct.nii.gz")
        labels = np.asarray(read_label_map(ph / "labels.nii.gz").array)
        grid = gridFromNode(session.volumeNode)
        node = session.segmentationNode
        ids = {}
        for value, name in ((1, "liver"), (2, "liver_tumor"), (3, "kidney_right"), (4, "kidney_left"), (7, "spleen")):
            ids[name] = session.logic._segmentId(node, name)
            setSegmentMask(node, ids[name], labels == value, grid)
        app.display_manager.show_volume_in_slice_background(session.volumeNode)
        app.display_manager.reset_views()
        region = (slice(19, 20), slice(40, 44), slice(40, 44))
        for surfaces in (True, False):
            if surfaces:
                node.CreateClosedSurfaceRepresentation()
            else:
                node.RemoveClosedSurfaceRepresentation()
            for view in views:
                view.render()
            for trial in range(3):
                mask = labels == 2
                mask[region] = bool(trial % 2)
                t0 = time.perf_counter()
                setSegmentMask(node, ids["liver_tumor"], mask, grid, region=region)
                written = time.perf_counter() - t0
                renders = []
                for view in views:
                    t = time.perf_counter()
                    view.render()
                    renders.append(_ms(time.perf_counter() - t))
                load = Path("/proc/loadavg").read_text().split()[0]
                print(
                    f"3D surfaces {'on ' if surfaces else 'off'}: segment write {_ms(written)} ms, renders "
                    f"axial/coronal/sagittal/3D {renders} ms (sum {sum(renders)}); load {load}"
                )
        session.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
