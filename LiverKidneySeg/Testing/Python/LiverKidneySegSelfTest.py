"""Self test of the LiverKidneySeg module, run inside a real 3D Slicer.

ctest runs it through ``slicer_add_python_unittest`` (see CMakeLists.txt); by hand:
``Slicer --python-code "import slicer.testing; slicer.testing.runUnitTest(['<this folder>'], 'LiverKidneySegSelfTest')"``.

It exercises what the pytest suite cannot outside Slicer: the module's GUI (the .ui loads, every
``SlicerParameterName`` binds to the parameter node, Apply/Cancel, the refinement buttons and
shortcuts exist), then the Logic's segment / refine / undo on a phantom through the application's
own scene and module logics.
"""

import unittest

import slicer


class LiverKidneySegSelfTest(unittest.TestCase):
    """GUI and logic checks inside the Slicer application."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def _widget(self):
        slicer.util.selectModule("LiverKidneySeg")
        widget = slicer.util.getModuleWidget("LiverKidneySeg")
        self.assertIsNotNone(widget, "the LiverKidneySeg module did not load")
        return widget

    def test_gui_binds_the_parameter_node(self):
        widget = self._widget()
        parameterNode = widget.logic.getParameterNode()
        # every SlicerParameterName was connected (connectGui raises otherwise); round trip a few
        parameterNode.combineMode = "subtract"
        self.assertEqual(widget.ui.combineModeComboBox.currentText, "subtract")
        widget.ui.deviceComboBox.currentIndex = widget.ui.deviceComboBox.findText("cpu")
        self.assertEqual(parameterNode.device, "cpu")
        parameterNode.patientHeight = 172.0
        self.assertAlmostEqual(widget.ui.patientHeightSpinBox.value, 172.0)
        widget.ui.replaceExistingCheckBox.checked = True
        self.assertTrue(parameterNode.replaceExisting)
        # structures checkboxes are synced by hand
        widget.ui.spleenCheckBox.checked = False
        self.assertNotIn("spleen", parameterNode.structures)
        widget.ui.spleenCheckBox.checked = True
        self.assertIn("spleen", parameterNode.structures)

    def test_apply_becomes_cancel_and_refine_buttons_follow_inputs(self):
        from LiverKidneySegLib.selftest import phantomVolumeNode

        widget = self._widget()
        self.assertFalse(widget.ui.applyButton.enabled)
        _phantom, volumeNode = phantomVolumeNode(slicer.mrmlScene)
        parameterNode = widget.logic.getParameterNode()
        parameterNode.inputVolume = volumeNode
        self.assertTrue(widget.ui.applyButton.enabled)
        self.assertEqual(widget.ui.applyButton.text, "Apply")
        self.assertFalse(widget.ui.positivePointsButton.enabled)  # no segmentation yet
        parameterNode.outputSegmentation = widget.logic.newSegmentationNode(volumeNode)
        self.assertTrue(widget.ui.positivePointsButton.enabled)
        self.assertEqual(len(widget._shortcuts), 8)

    def test_place_buttons_follow_the_interaction_node(self):
        from LiverKidneySegLib.selftest import phantomVolumeNode

        widget = self._widget()
        _phantom, volumeNode = phantomVolumeNode(slicer.mrmlScene, size=(32, 32, 8))
        parameterNode = widget.logic.getParameterNode()
        parameterNode.inputVolume = volumeNode
        parameterNode.outputSegmentation = widget.logic.newSegmentationNode(volumeNode)
        widget._dependenciesChecked = True  # no install dialog in a test
        interactionNode = slicer.app.applicationLogic().GetInteractionNode()
        widget.ui.negativePointsButton.checked = True
        self.assertEqual(interactionNode.GetCurrentInteractionMode(), interactionNode.Place)
        interactionNode.SwitchToViewTransformMode()  # what a right-click in a view does
        self.assertFalse(widget.ui.negativePointsButton.checked)
        widget.onTogglePolarity()  # one key: positive, then negative
        self.assertTrue(widget.ui.positivePointsButton.checked)
        widget.onTogglePolarity()
        self.assertTrue(widget.ui.negativePointsButton.checked)
        self.assertFalse(widget.ui.positivePointsButton.checked)
        widget.ui.boxButton.checked = True
        self.assertFalse(widget.ui.negativePointsButton.checked)
        widget.ui.boxButton.checked = False
        self.assertEqual(interactionNode.GetCurrentInteractionMode(), interactionNode.ViewTransform)

    def test_logic_segment_refine_undo(self):
        import LiverKidneySeg

        tester = LiverKidneySeg.LiverKidneySegTest()
        tester.runTest()
