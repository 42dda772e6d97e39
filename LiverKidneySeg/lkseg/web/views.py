"""trame-slicer view helpers of the page: a test marker in each view, and the triton guard.

``sliceViewUi`` / ``threeDViewUi`` fill each view's box: trame-slicer's own gutter (slice slider,
buttons) plus an invisible ``lks-view-<name>`` element that tests use to find the view on the page.
"""

from __future__ import annotations

import logging

__all__ = ["blockTriton", "fastVtkImports", "sliceViewUi", "threeDViewUi"]

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


def fastVtkImports() -> bool:
    """Make ``import vtkmodules.vtkX`` look its library up in a cached listing of the folder.

    VTK 9.6's import hook (``vtkmodules.VTKMetaHook``) globs the ``vtkmodules`` folder (~900
    files) once per module: the ~150 modules that slicer-core and trame-slicer import cost 0.3-0.8 s
    of the server's start (measured with cProfile: 842 ``Path.glob`` calls). Same rule, one listing
    per folder: a file named ``<module>.`` or ``<module>-`` with a ``.so``/``.pyd`` suffix. Returns
    False (and changes nothing) when this VTK has no such hook.
    """
    import vtkmodules

    original = getattr(vtkmodules, "find_lib_path", None)
    if original is None or getattr(original, "_lksegCached", False) or not hasattr(vtkmodules, "LIB_EXTS"):
        return False
    from pathlib import Path

    listings: dict[str, list[Path]] = {}

    def find_lib_path(paths, vtk_module_name):
        for ext in vtkmodules.LIB_EXTS:
            for base in paths:
                files = listings.get(str(base))
                if files is None:
                    try:
                        files = listings[str(base)] = sorted(Path(base).iterdir())
                    except OSError:
                        files = listings[str(base)] = []
                for f in files:
                    name = f.name
                    if name.startswith(vtk_module_name) and name[len(vtk_module_name) : len(vtk_module_name) + 1] in (
                        ".",
                        "-",
                    ):
                        resolved = f.resolve()
                        if resolved.is_file() and ext in resolved.suffixes:
                            return str(resolved)
        return None

    find_lib_path._lksegCached = True
    vtkmodules.find_lib_path = find_lib_path
    return True


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
