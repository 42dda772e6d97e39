"""trame-slicer view helpers of the page: a test marker in each view, and the triton guard.

``sliceViewUi`` / ``threeDViewUi`` fill each view's box: trame-slicer's own gutter (slice slider,
buttons) plus an invisible ``lks-view-<name>`` element that tests use to find the view on the page.
"""

from __future__ import annotations

import logging

__all__ = ["blockTriton", "sliceViewUi", "threeDViewUi"]

log = logging.getLogger(__name__)


def blockTriton() -> None:
    """Tell torch that triton is absent (call before the first view renders).

    The views render with Mesa's llvmpipe (software OpenGL), which loads its LLVM; triton (torch's
    GPU kernel compiler, imported by torch when the refinement model loads) brings another LLVM,
    and loading it after a view has rendered crashes the process (SIGSEGV in libtriton's
    initialisers; reproduced with slicer-core 5.12.4 / vtk 9.6 / torch + triton of this
    environment). The server never compiles kernels: eager torch needs no triton.
    """
    import sys

    if "triton" not in sys.modules:
        sys.modules["triton"] = None  # "import triton" then raises ImportError, which torch handles
        log.info("triton disabled in the web server (its LLVM clashes with Mesa's)")


def _marker(viewId: str) -> None:
    """An invisible element inside each view's box: tests find the view on the page by its id."""
    from trame.widgets import html

    html.Div(id=f"lks-view-{viewId}", style="display: none;")


def sliceViewUi(server, viewId, view) -> None:
    from trame_slicer.app.ui import create_vertical_slice_view_gutter_ui

    _marker(viewId)
    create_vertical_slice_view_gutter_ui(server, viewId, view)


def threeDViewUi(server, viewId, view) -> None:
    from trame_slicer.app.ui import create_vertical_view_gutter_ui

    _marker(viewId)
    create_vertical_view_gutter_ui(server, viewId, view)
