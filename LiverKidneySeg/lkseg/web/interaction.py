"""Mouse tools in trame-slicer slice views: box (click-drag) and positive/negative clicks.

trame-slicer streams each view as images (trame-rca); the browser's mouse events come back to the
server and are replayed on the view's ``vtkRenderWindowInteractor``, where Slicer's
``vtkMRMLSliceViewInteractorStyle`` hands them to the displayable managers (window/level,
markups, crosshair...). While a correction tool is active, :class:`SliceTool` detaches that style
from the interactor and observes the interactor itself: the event's display position (pixels,
origin bottom-left of the view) is mapped to world RAS with the slice node's ``XYToRAS`` matrix --
the same mapping Slicer uses -- and handed to a callback. The mouse wheel still moves through the
slices. With the "navigate" tool the Slicer style is attached again.

:func:`rasToDisplay` is the inverse mapping; the page exposes it to tests (they compute where to
click from a RAS point of the phantom's exact labels).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

__all__ = ["TOOLS", "SliceTool", "displayToRas", "rasToDisplay"]

log = logging.getLogger(__name__)

TOOLS = ("navigate", "box", "positive", "negative")

#: drags shorter than this (pixels) are clicks
_MIN_BOX_PIXELS = 3


def _matrix(vtkMatrix) -> np.ndarray:
    return np.array([[vtkMatrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def displayToRas(sliceNode, x: float, y: float) -> np.ndarray:
    """View pixel (x right, y up, origin bottom-left) -> world RAS mm on the slice plane."""
    return (_matrix(sliceNode.GetXYToRAS()) @ np.array([x, y, 0.0, 1.0]))[:3]


def rasToDisplay(sliceNode, ras) -> np.ndarray:
    """World RAS mm -> view pixel ``(x, y, distance)``: ``distance`` is the point's offset (in
    slice-plane units) from the displayed slice."""
    xy = np.linalg.inv(_matrix(sliceNode.GetXYToRAS())) @ np.r_[np.asarray(ras, float).reshape(3), 1.0]
    return xy[:3]


class SliceTool:
    """The correction tool of one slice view.

    Args:
        view: a trame-slicer ``SliceView``.
        onBox: ``onBox(view, rasCorner0, rasCorner1)`` after a drag.
        onClick: ``onClick(view, ras, positive: bool)`` after a click.
        onFeedback: called when the drawn rectangle changes (the view must be re-rendered).
    """

    def __init__(
        self,
        view,
        onBox: Callable,
        onClick: Callable,
        onFeedback: Callable[[], None] | None = None,
    ):
        self.view = view
        self._onBox, self._onClick, self._onFeedback = onBox, onClick, onFeedback
        self.tool = "navigate"
        self._start: tuple[int, int] | None = None
        self._current: tuple[int, int] | None = None
        self._observers: list[int] = []
        self._rect = self._makeRectangle()

    # -- the view's Slicer interactor style ---------------------------------------------------
    @property
    def sliceNode(self):
        return self.view.get_view_node()

    def setTool(self, tool: str) -> None:
        if tool not in TOOLS:
            raise ValueError(f"unknown tool {tool!r}")
        if tool == self.tool:
            return
        interactor = self.view.interactor()
        style = self.view._interactor_observer  # trame-slicer 2.0 keeps Slicer's style there
        if tool == "navigate":
            for tag in self._observers:
                interactor.RemoveObserver(tag)
            self._observers = []
            style.SetInteractor(interactor)
        else:
            if self.tool == "navigate":
                style.SetInteractor(None)
                for event, fn in (
                    ("LeftButtonPressEvent", self._press),
                    ("MouseMoveEvent", self._move),
                    ("LeftButtonReleaseEvent", self._release),
                    ("MouseWheelForwardEvent", lambda *_: self._scroll(1)),
                    ("MouseWheelBackwardEvent", lambda *_: self._scroll(-1)),
                ):
                    self._observers.append(interactor.AddObserver(event, fn, 10.0))
        self.tool = tool
        self._start = self._current = None
        self._showRectangle(False)

    # -- events --------------------------------------------------------------------------------
    def _position(self) -> tuple[int, int]:
        x, y = self.view.interactor().GetEventPosition()
        return int(x), int(y)

    def _press(self, *_):
        self._start = self._current = self._position()
        log.debug("%s: press at %s (%s tool)", self.view.get_singleton_tag(), self._start, self.tool)

    def _move(self, *_):
        if self._start is None or self.tool != "box":
            return
        self._current = self._position()
        self._updateRectangle()

    def _release(self, *_):
        if self._start is None:
            return
        start, end = self._start, self._position()
        log.debug("%s: release at %s (%s tool)", self.view.get_singleton_tag(), end, self.tool)
        self._start = self._current = None
        self._showRectangle(False)
        node = self.sliceNode
        try:
            if self.tool == "box" and max(abs(end[0] - start[0]), abs(end[1] - start[1])) >= _MIN_BOX_PIXELS:
                self._onBox(self.view, displayToRas(node, *start), displayToRas(node, *end))
            elif self.tool in ("positive", "negative"):
                self._onClick(self.view, displayToRas(node, *end), self.tool == "positive")
        except Exception:  # the callbacks report errors on the page; never break the interactor
            log.exception("slice tool callback failed")

    def _scroll(self, direction: int):
        step = self.view.get_slice_step()
        self.view.set_slice_value(self.view.get_slice_value() + direction * step)

    # -- rectangle feedback -------------------------------------------------------------------
    def _makeRectangle(self):
        from vtkmodules.vtkCommonCore import vtkPoints
        from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData
        from vtkmodules.vtkRenderingCore import vtkActor2D, vtkPolyDataMapper2D

        points = vtkPoints()
        points.SetNumberOfPoints(4)
        lines = vtkCellArray()
        lines.InsertNextCell(5)
        for i in (0, 1, 2, 3, 0):
            lines.InsertCellPoint(i)
        poly = vtkPolyData()
        poly.SetPoints(points)
        poly.SetLines(lines)
        mapper = vtkPolyDataMapper2D()
        mapper.SetInputData(poly)
        actor = vtkActor2D()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(1.0, 0.85, 0.1)
        actor.GetProperty().SetLineWidth(2)
        actor.VisibilityOff()
        self.view.first_renderer().AddActor2D(actor)
        self._rectPoints, self._rectPoly = points, poly
        return actor

    def _updateRectangle(self):
        (x0, y0), (x1, y1) = self._start, self._current
        for i, (x, y) in enumerate(((x0, y0), (x1, y0), (x1, y1), (x0, y1))):
            self._rectPoints.SetPoint(i, x, y, 0)
        self._rectPoints.Modified()
        self._rectPoly.Modified()
        self._showRectangle(True)

    def _showRectangle(self, visible: bool):
        if bool(self._rect.GetVisibility()) != visible or visible:
            self._rect.SetVisibility(visible)
            self.view.schedule_render()
            if self._onFeedback:
                self._onFeedback()
