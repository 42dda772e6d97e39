"""Prompt placement as Slicer's views do it (issue 10 items 3, 4 and 9), with real MRML nodes.

The box test drives a ``vtkMRMLMarkupsROINode`` through the same calls Slicer's markups widget
makes while placing (``vtkSlicerMarkupsWidget::UpdatePreviewPoint`` / ``PlacePoint`` ->
``vtkMRMLMarkupsDisplayNode::UpdateActiveControlPointWorld`` with a preview, then a defined
position), and the module's handler (:func:`takeCompletedBox`) on ``PointPositionDefinedEvent``.
"""

from __future__ import annotations

import numpy as np
import pytest

from lkseg.errors import PromptError

pytestmark = pytest.mark.mrml

IDENTITY = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]


class Placer:
    """Mouse moves and clicks of Slicer's markups widget in place mode, on one markups node."""

    def __init__(self, node):
        self.node, self.display, self.preview = node, node.GetDisplayNode(), -1

    def _update(self, position, status):
        import slicer
        import vtk

        data = slicer.vtkMRMLInteractionEventData()
        data.SetType(vtk.vtkCommand.MouseMoveEvent)
        data.SetWorldPosition(list(map(float, position)))
        index = self.preview if self.preview >= 0 else self.node.GetControlPointPlacementStartIndex()
        return self.display.UpdateActiveControlPointWorld(index, data, IDENTITY, "", "", status)

    def move(self, position):
        self.preview = self._update(position, self.node.PositionPreview)

    def click(self, position):
        self.move(position)
        self._update(position, self.node.PositionDefined)
        self.preview = -1


@pytest.fixture
def roi(headless_slicer, mrml_scene):
    from LiverKidneySegLib.markups import createPromptNode

    return createPromptNode(mrml_scene, "promptBox")


def _observeBoxes(roi):
    """What the widget does on PointPositionDefinedEvent: a box only once complete."""
    from LiverKidneySegLib.prompting import takeCompletedBox

    outcomes = []

    def onDefined(caller, event):
        try:
            outcomes.append(takeCompletedBox(caller, clear=False))
        except PromptError as exc:
            outcomes.append(exc)

    roi.AddObserver(roi.PointPositionDefinedEvent, onDefined)
    return outcomes


def test_a_box_needs_both_corners_and_many_boxes_use_the_same_node(roi, mrml_scene):
    outcomes = _observeBoxes(roi)
    placer = Placer(roi)
    placer.move((0.0, 0.0, 12.0))
    placer.click((0.0, 0.0, 12.0))
    assert outcomes == [None], "the first corner must not start a prediction (it is a zero-size box)"
    placer.move((6.0, 9.0, 12.0))
    placer.click((10.0, 20.0, 12.0))
    assert len(outcomes) == 2 and outcomes[1] is not None
    corners = outcomes[1]
    assert corners.shape == (8, 3)
    np.testing.assert_allclose(corners[:, :2].min(axis=0), [0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(corners[:, :2].max(axis=0), [10.0, 20.0], atol=1e-9)
    np.testing.assert_allclose(corners[:, 2].mean(), 12.0, atol=1e-9)  # centred on the clicked slice
    # the widget empties the ROI afterwards; the next two clicks make a second box in the same node
    roi.RemoveAllControlPoints()
    before = mrml_scene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode")
    placer.click((20.0, 20.0, 15.0))
    assert outcomes[2] is None
    placer.click((30.0, 40.0, 15.0))
    np.testing.assert_allclose(outcomes[3][:, :2].min(axis=0), [20.0, 20.0], atol=1e-9)
    np.testing.assert_allclose(outcomes[3][:, :2].max(axis=0), [30.0, 40.0], atol=1e-9)
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode") == before


def test_zero_size_box_is_refused_and_cleared(roi):
    outcomes = _observeBoxes(roi)
    placer = Placer(roi)
    placer.click((5.0, 5.0, 3.0))
    placer.click((5.0, 5.0, 3.0))  # both corners on the same spot
    assert outcomes[0] is None and isinstance(outcomes[1], PromptError) and "zero size" in str(outcomes[1])
    from LiverKidneySegLib.prompting import takeCompletedBox

    roi.RemoveAllControlPoints()
    assert takeCompletedBox(roi) is None  # an empty ROI is no box


def test_box_prompt_reaches_the_predictor_on_the_clicked_slice(headless_slicer, mrml_scene, roi):
    """A box drawn on an axial slice of an LPS volume becomes the (i, j) box on that k slice."""
    import slicer_helpers

    from LiverKidneySegLib.logic import LiverKidneySegLogicBase
    from LiverKidneySegLib.prompting import takeCompletedBox
    from LiverKidneySegLib.refinement import RefineEngine
    from LiverKidneySegLib.segmentations import findSegmentId, segmentMask
    from LiverKidneySegLib.volumes import ijkToWorld, volumeToNode
    from lkseg.volume import Volume

    volume = Volume.from_array(np.zeros((8, 20, 30), np.int16), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    node = volumeToNode(volume, scene=mrml_scene, name="CT")
    fake = slicer_helpers.FakePromptPredictor()
    logic = LiverKidneySegLogicBase(mrml_scene, RefineEngine(predictorFactory=lambda m, d: fake))
    try:
        seg = logic.newSegmentationNode(node)
        a, b = ijkToWorld(node, np.array([[4.0, 3.0, 5.0], [12.0, 9.0, 5.0]]))
        placer = Placer(roi)
        placer.click(a)
        assert takeCompletedBox(roi, clear=False) is None
        placer.click(b)
        corners = takeCompletedBox(roi)
        logic.refine(node, seg, "liver", box=corners, axis=2)
        expected = np.zeros(volume.shape, bool)
        expected[5, 3:10, 4:13] = True
        np.testing.assert_array_equal(segmentMask(seg, findSegmentId(seg, "liver"), volume.grid), expected)
    finally:
        logic.cleanup()


def test_place_buttons_follow_the_interaction_node(headless_slicer, mrml_scene):
    """Right-click or Esc in a view switches Slicer back to view-transform mode: no role is active."""
    from LiverKidneySegLib.markups import createPromptNode
    from LiverKidneySegLib.prompting import activePlaceRole, otherPointRole

    interaction = mrml_scene.AddNewNodeByClass("vtkMRMLInteractionNode")
    selection = mrml_scene.AddNewNodeByClass("vtkMRMLSelectionNode")
    nodes = {role: createPromptNode(mrml_scene, role) for role in ("positivePoints", "negativePoints", "promptBox")}
    assert activePlaceRole(interaction, selection, nodes) is None
    selection.SetReferenceActivePlaceNodeClassName("vtkMRMLMarkupsFiducialNode")
    selection.SetActivePlaceNodeID(nodes["negativePoints"].GetID())
    interaction.SetCurrentInteractionMode(interaction.Place)
    assert activePlaceRole(interaction, selection, nodes) == "negativePoints"
    interaction.SwitchToViewTransformMode()  # what a right-click does
    assert activePlaceRole(interaction, selection, nodes) is None
    other = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    selection.SetActivePlaceNodeID(other.GetID())
    interaction.SetCurrentInteractionMode(interaction.Place)
    assert activePlaceRole(interaction, selection, nodes) is None  # placing someone else's points
    assert otherPointRole("positivePoints") == "negativePoints"
    assert otherPointRole("negativePoints") == otherPointRole(None) == "positivePoints"


class FakeCombo:
    """A QComboBox's behaviour that matters here: currentIndexChanged on clear/add/select unless blocked."""

    def __init__(self, onChanged):
        self.items, self._index, self._blocked, self.onChanged = [], -1, False, onChanged
        self.clears = 0

    count = property(lambda self: len(self.items))

    def itemText(self, i):
        return self.items[i][0]

    def itemData(self, i):
        return self.items[i][1]

    def findData(self, data):
        return next((i for i, item in enumerate(self.items) if item[1] == data), -1)

    def blockSignals(self, block):
        old, self._blocked = self._blocked, block
        return old

    def _set(self, index):
        if index != self._index:
            self._index = index
            if not self._blocked:
                self.onChanged(index)

    currentIndex = property(lambda self: self._index, _set)

    def clear(self):
        self.clears += 1
        self.items = []
        self._set(-1)

    def addItem(self, text, data):
        self.items.append((text, data))
        if self._index < 0:
            self._set(0)


def test_segment_lists_refresh_without_a_loop():
    """A refresh must not write the parameter node (which refreshes again): counted."""
    from LiverKidneySegLib.prompting import refillCombo

    counts = {"refresh": 0, "writes": 0}
    state = {"refineSegment": "Liver tumor"}
    items = [("Liver", "Liver"), ("Liver tumor", "Liver tumor"), ("Spleen (new)", "Spleen")]

    def refresh():
        counts["refresh"] += 1
        if counts["refresh"] > 20:
            raise RecursionError("refresh loop")
        refillCombo(combo, items, state["refineSegment"])

    def onChanged(index):  # the widget's combo -> parameter node -> observer -> refresh
        counts["writes"] += 1
        state["refineSegment"] = combo.itemData(index) if index >= 0 else ""
        refresh()

    combo = FakeCombo(onChanged)
    refresh()
    refresh()  # e.g. after every refinement edit
    assert counts == {"refresh": 2, "writes": 0}
    assert combo.clears == 1 and combo.currentIndex == 1 and state["refineSegment"] == "Liver tumor"
    items.append(("Kidney", "Kidney"))
    refresh()
    assert combo.clears == 2 and combo.currentIndex == 1 and counts["writes"] == 0
