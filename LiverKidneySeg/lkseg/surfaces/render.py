"""Offscreen rendering of surface meshes to a PNG (no display needed).

VTK picks an offscreen render window; on a machine without an X server it falls back to EGL
(it may log one "bad X server connection" warning first; see ``../shared/docs/measured.md``).
The camera looks from anterior (patient's right on the image's left, superior up), like an
anatomical frontal view. Organs are translucent so that lesions show through.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lkseg.errors import LKSegError
from lkseg.io.atomic import atomic_write_bytes
from lkseg.surfaces.mesh import SurfaceMesh

__all__ = ["RenderError", "render_png", "render_png_bytes"]

log = logging.getLogger(__name__)

_VIEWS = {
    # view name: (direction from the centre to the camera in RAS, view-up in RAS)
    "anterior": ((0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
    "posterior": ((0.0, -1.0, 0.0), (0.0, 0.0, 1.0)),
    "right": ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
    "left": ((-1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
    "superior": ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0)),
    "inferior": ((0.0, 0.0, -1.0), (0.0, 1.0, 0.0)),
}


class RenderError(LKSegError):
    """Offscreen OpenGL rendering is not available on this machine."""


@contextlib.contextmanager
def _quiet_x11_fallback():
    """Without a display VTK first tries X11, logs "bad X server connection", then falls back to
    EGL; hide that warning (only when DISPLAY is unset, restoring the logger afterwards)."""
    if os.environ.get("DISPLAY"):
        yield
        return
    from vtkmodules.vtkCommonCore import vtkLogger

    old = vtkLogger.GetCurrentVerbosityCutoff()
    vtkLogger.SetStderrVerbosity(vtkLogger.VERBOSITY_ERROR)
    try:
        yield
    finally:
        vtkLogger.SetStderrVerbosity(old)


def _load_llvm_users_first() -> None:
    """Import triton (when installed) before the first OpenGL context exists.

    Without a GPU, VTK's offscreen context comes from Mesa (EGL/llvmpipe), which loads the system
    ``libLLVM``. triton bundles its own LLVM; loaded after Mesa's, its static initialisers crash
    the process with a segmentation fault (seen with torch 2.14 / triton and Mesa's LLVM 15).
    torch imports triton lazily (``torchvision`` pulls in ``torch._dynamo``), so rendering a
    report and then refining with LiteMedSAM in the same process crashed. Loaded in the other
    order both work; this import costs about 0.3 s once.
    """
    import importlib.util
    import sys

    if "triton" in sys.modules:
        return
    try:
        if importlib.util.find_spec("triton") is None:
            return
        import triton  # noqa: F401
    except Exception as exc:  # a broken triton must not stop the rendering
        log.debug("triton not pre-loaded before OpenGL: %s", exc)


def render_png_bytes(
    meshes: Sequence[SurfaceMesh],
    size: tuple[int, int] = (800, 600),
    view: str = "anterior",
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> bytes:
    """Render meshes offscreen; return PNG bytes.

    Raises:
        RenderError: no usable offscreen OpenGL context.
    """
    _load_llvm_users_first()
    import vtkmodules.vtkRenderingOpenGL2  # noqa: F401  (registers the OpenGL render window)
    from vtkmodules.vtkIOImage import vtkPNGWriter
    from vtkmodules.vtkRenderingCore import (
        vtkActor,
        vtkPolyDataMapper,
        vtkRenderer,
        vtkRenderWindow,
        vtkWindowToImageFilter,
    )

    if view not in _VIEWS:
        raise ValueError(f"unknown view {view!r}; choose from {sorted(_VIEWS)}")
    meshes = [m for m in meshes if m.n_triangles > 0]
    if not meshes:
        raise RenderError("nothing to render: no surface has triangles")
    renderer = vtkRenderer()
    renderer.SetBackground(*background)
    # no depth peeling: 4x faster on software OpenGL; opaque lesions are drawn before the
    # translucent organs, so they still show through them correctly
    renderer.SetUseDepthPeeling(False)
    for mesh in meshes:
        mapper = vtkPolyDataMapper()
        mapper.SetInputData(mesh.to_polydata())
        mapper.ScalarVisibilityOff()
        actor = vtkActor()
        actor.SetMapper(mapper)
        prop = actor.GetProperty()
        prop.SetColor(*mesh.color)
        prop.SetOpacity(float(mesh.opacity))
        prop.SetSpecular(0.2)
        prop.SetSpecularPower(20)
        renderer.AddActor(actor)
    with _quiet_x11_fallback():
        window = vtkRenderWindow()
    window.SetOffScreenRendering(True)
    window.SetAlphaBitPlanes(True)
    window.SetMultiSamples(0)
    window.AddRenderer(renderer)
    window.SetSize(int(size[0]), int(size[1]))
    direction, up = _VIEWS[view]
    pts = np.concatenate([m.points for m in meshes])
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    centre = 0.5 * (lo + hi)
    radius = 0.5 * float(np.linalg.norm(hi - lo)) or 1.0
    camera = renderer.GetActiveCamera()
    camera.SetFocalPoint(*centre)
    camera.SetPosition(*(centre + 4.0 * radius * np.asarray(direction)))
    camera.SetViewUp(*up)
    camera.SetViewAngle(30.0)
    renderer.ResetCamera()
    renderer.ResetCameraClippingRange()
    try:
        with _quiet_x11_fallback():
            window.Render()
    except Exception as exc:
        raise RenderError(f"offscreen rendering failed: {exc}") from exc
    if not window.IsCurrent() and window.GetClassName() == "vtkRenderWindow":
        raise RenderError("no offscreen OpenGL context (neither X11 nor EGL/OSMesa available)")
    grab = vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.ReadFrontBufferOff()
    grab.Update()
    writer = vtkPNGWriter()
    writer.WriteToMemoryOn()
    writer.SetInputConnection(grab.GetOutputPort())
    writer.Write()
    data = bytes(memoryview(writer.GetResult()))
    window.Finalize()
    if len(data) < 100:
        raise RenderError("offscreen rendering produced no image")
    return data


def render_png(
    meshes: Sequence[SurfaceMesh], path: str | Path, size: tuple[int, int] = (800, 600), view: str = "anterior"
) -> Path:
    """Render meshes offscreen to a PNG file (atomic write)."""
    return atomic_write_bytes(path, render_png_bytes(meshes, size=size, view=view))
