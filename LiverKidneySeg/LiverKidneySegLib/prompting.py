"""Prompt placement in the slice views, without Qt: what the widget does on markups and
interaction-node events (tested with real MRML nodes in slicer-core).

* A box is a ``vtkMRMLMarkupsROINode`` placed with **two clicks** (opposite corners) in any slice
  view. Slicer fires ``PointPositionDefinedEvent`` for the first corner already (size 0, two
  required points); the box is complete only once both corners are defined, when the ROI turns
  its two corner points into one centre point (``vtkMRMLMarkupsROINode::UpdateBoxROIFromControlPoints``).
  :func:`takeCompletedBox` returns the finished box's world corners and empties the ROI so that the
  next two clicks define the next box **in the same node** (a full ROI would make Slicer create a
  new, unobserved node). As many boxes as wanted, each its own undoable edit.
* Place buttons follow the interaction node (:func:`activePlaceRole`): right-click or Esc leaves
  place mode in Slicer, and the buttons must show it.
* Segment pickers are refilled only when their entries change and with signals blocked
  (:func:`refillCombo`), so a refresh never writes the parameter node and never loops.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from lkseg.errors import PromptError

__all__ = [
    "PLACE_ROLES",
    "activePlaceRole",
    "boxPlacementComplete",
    "otherPointRole",
    "refillCombo",
    "takeCompletedBox",
]

log = logging.getLogger(__name__)

#: Prompt roles (parameter-node attribute names) that are placed in the views.
PLACE_ROLES = ("positivePoints", "negativePoints", "promptBox")


def boxPlacementComplete(roiNode) -> bool:
    """Whether a box ROI has both corners placed (False after the first click, while the second
    corner follows the mouse, and for an empty ROI)."""
    if roiNode is None or roiNode.GetNumberOfControlPoints() == 0:
        return False
    if roiNode.GetNumberOfUndefinedControlPoints(True) > 0:  # a corner still follows the mouse
        return False
    return roiNode.GetNumberOfDefinedControlPoints() >= max(roiNode.GetRequiredNumberOfControlPoints(), 1)


def takeCompletedBox(roiNode, minimumSizeMm: float = 1e-3, clear: bool = True) -> np.ndarray | None:
    """The 8 world-RAS corners of a box that has just been completed, or None while it is being placed.

    With ``clear`` the ROI is emptied afterwards (ready for the next box in the same node); the
    widget clears it itself a moment later (not inside the markups widget's own event).

    Raises:
        PromptError: the two corners coincide in the slice (a zero-size box); the ROI is emptied.
    """
    from LiverKidneySegLib.markups import roiCornersWorld

    if not boxPlacementComplete(roiNode):
        return None
    size = np.asarray(roiNode.GetSize(), dtype=np.float64)
    corners = roiCornersWorld(roiNode)
    if clear:
        roiNode.RemoveAllControlPoints()  # resets the ROI to "two corners required"
    if np.count_nonzero(size > minimumSizeMm) < 2:
        raise PromptError("the box has zero size: click two opposite corners of the region in a slice view")
    return corners


def activePlaceRole(interactionNode, selectionNode, roleNodes: dict) -> str | None:
    """The role whose node Slicer is placing now (None when not in place mode or placing another node).

    Args:
        roleNodes: ``{role: markups node or None}``.
    """
    if interactionNode is None or interactionNode.GetCurrentInteractionMode() != interactionNode.Place:
        return None
    activeId = selectionNode.GetActivePlaceNodeID() if selectionNode is not None else None
    for role, node in roleNodes.items():
        if node is not None and activeId and node.GetID() == activeId:
            return role
    return None


def otherPointRole(role: str | None) -> str:
    """The point role one toggle switches to (positive <-> negative; positive when none)."""
    return "negativePoints" if role == "positivePoints" else "positivePoints"


def refillCombo(combo, items: Sequence[tuple[str, str]], current: str) -> bool:
    """Make a combo box list ``items`` (``(text, data)``) with ``current`` selected, without signals.

    The combo is rebuilt only when its entries differ; its signals are blocked throughout, so
    no ``currentIndexChanged`` reaches the parameter node (no refresh loop, no lost interaction).

    Returns:
        Whether the entries were rebuilt.
    """
    existing = [(combo.itemText(i), combo.itemData(i)) for i in range(combo.count)]
    wanted = [(str(text), str(data)) for text, data in items]
    blocked = combo.blockSignals(True)
    try:
        rebuilt = existing != wanted
        if rebuilt:
            combo.clear()
            for text, data in wanted:
                combo.addItem(text, data)
        index = max(combo.findData(current), 0) if wanted else -1
        if combo.currentIndex != index:
            combo.currentIndex = index
    finally:
        combo.blockSignals(blocked)
    return rebuilt
