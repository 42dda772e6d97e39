"""The refinement and planning parts of the module's widget (Qt; imported only by
``LiverKidneySeg.LiverKidneySegWidget``, never by the Logic or the tests outside Slicer).

The decisions are in Qt-free modules tested with slicer-core: ``LiverKidneySegLib.prompting`` (box
completion, place buttons, segment pickers) and ``LiverKidneySegLib.logic`` (refine, propagate,
undo, plan, report).
"""

from __future__ import annotations

import pathlib

import qt
import slicer
from slicer.i18n import tr as _

__all__ = ["RefinePlanWidgetMixin"]


class RefinePlanWidgetMixin:
    """Refinement (prompts, propagation, undo/redo) and planning/export of the widget.

    Expects the widget's ``ui``, ``logic``, ``_parameterNode``, ``_placeButtons``, ``_timer`` and
    the state attributes set in ``LiverKidneySegWidget.__init__``.
    """

    # -- refinement ---------------------------------------------------------------------------------
    def _roleNodes(self) -> dict:
        pn = self._parameterNode
        return {role: (getattr(pn, role) if pn else None) for role in self._placeButtons}

    def _syncPlaceButtons(self, caller=None, event=None) -> None:
        """The place buttons show what Slicer is placing (right-click/Esc leave place mode)."""
        from LiverKidneySegLib.prompting import activePlaceRole

        appLogic = slicer.app.applicationLogic()
        active = activePlaceRole(appLogic.GetInteractionNode(), appLogic.GetSelectionNode(), self._roleNodes())
        for role, button in self._placeButtons.items():
            wasBlocked = button.blockSignals(True)
            button.checked = role == active
            button.blockSignals(wasBlocked)

    def _setPlaceMode(self, role) -> None:
        interactionNode = slicer.app.applicationLogic().GetInteractionNode()
        if role is None:
            if interactionNode.GetCurrentInteractionMode() == interactionNode.Place:
                interactionNode.SwitchToViewTransformMode()
            return
        from LiverKidneySegLib.markups import createPromptNode

        node = getattr(self._parameterNode, role)
        if node is None:
            node = createPromptNode(slicer.mrmlScene, role)
            setattr(self._parameterNode, role, node)  # _updateGui observes it
        if role == "promptBox" and node.GetNumberOfControlPoints():
            node.RemoveAllControlPoints()  # a full ROI would make Slicer place into a new node
        selectionNode = slicer.app.applicationLogic().GetSelectionNode()
        selectionNode.SetReferenceActivePlaceNodeClassName(node.GetClassName())
        selectionNode.SetActivePlaceNodeID(node.GetID())
        interactionNode.SetPlaceModePersistence(True)  # as many points / boxes as wanted
        interactionNode.SetCurrentInteractionMode(interactionNode.Place)

    def onPlaceToggled(self, role: str, on: bool) -> None:
        if on and not self._ensureDependencies():  # checked before the first click, not after it
            on = False
        self._setPlaceMode(role if on else None)
        self._syncPlaceButtons()

    def onTogglePolarity(self) -> None:
        """One key switches between positive and negative clicks (and starts placing points)."""
        from LiverKidneySegLib.prompting import activePlaceRole, otherPointRole

        appLogic = slicer.app.applicationLogic()
        active = activePlaceRole(appLogic.GetInteractionNode(), appLogic.GetSelectionNode(), self._roleNodes())
        self._placeButtons[otherPointRole(active)].checked = True

    def onPromptPlaced(self, caller, event) -> None:
        from LiverKidneySegLib.markups import controlPointsWorld
        from LiverKidneySegLib.prompting import takeCompletedBox
        from lkseg.errors import PromptError

        if caller.IsA("vtkMRMLMarkupsROINode"):
            try:
                corners = takeCompletedBox(caller, clear=False)
                finished = corners is not None
            except PromptError as exc:  # a zero-size box: say so, nothing is predicted
                corners, finished = None, True
                self.ui.refineStatusLabel.text = str(exc)
            if finished:  # empty the ROI after Slicer's own handling: the next box goes to the same node
                qt.QTimer.singleShot(0, caller.RemoveAllControlPoints)
            if corners is None:
                return  # first corner placed: wait for the second
            self._box = corners
            self._lastPromptRas = corners.mean(axis=0)
        else:
            points = controlPointsWorld(caller)
            if not len(points):
                return
            self._lastPromptRas = points[-1]
        if self._parameterNode.refine3D:
            positiveNode = self._parameterNode.positivePoints
            positive = positiveNode is not None and caller.GetID() == positiveNode.GetID()
            kind = "box" if caller.IsA("vtkMRMLMarkupsROINode") else "click"
            prompt = self._box if kind == "box" else self._lastPromptRas
            self._box = None  # a 3D box is one action, not a prompt kept for the next clicks
            self._request3D((kind, prompt, positive, self._slice()[0]))
            return
        self._requestRefine()

    def onPromptMoved(self, caller, event) -> None:
        """A point dragged to a new place: re-predicts its slice; in 3D mode a click is an action
        of its own (moving its marker does not redo it)."""
        if self._parameterNode is not None and self._parameterNode.refine3D:
            self.ui.refineStatusLabel.text = _("3D mode: a moved point is not re-applied; Undo and click again.")
            return
        self.onPromptPlaced(caller, event)

    # -- 3D clicks and boxes (Logic click3D / box3D) --------------------------------------------
    def _request3D(self, action) -> None:
        """Apply a 3D click or box; those placed while an edit runs wait and are applied in order."""
        if self._pendingEdit is not None:
            self._queued3D.append(action)
            self.ui.refineStatusLabel.text = _("{n} click(s) waiting...").format(n=len(self._queued3D))
            return
        if self.logic.job is not None and not self.logic.job.finished:
            self.ui.refineStatusLabel.text = _("Wait for the automatic segmentation (or cancel it) before refining.")
            return
        from lkseg.errors import PromptError

        pn = self._parameterNode
        kind, ras, positive, axis = action
        with slicer.util.tryWithErrorDisplay(_("Refinement failed."), waitCursor=False):
            self._useSegmentEditorRules()
            self.logic.setRefineModel(pn.refineModel or "litemedsam", pn.device)
            common = dict(axis=axis, waitForCompletion=False, progressCallback=self._storeWorkerProgress)
            args = (pn.inputVolume, pn.outputSegmentation, self._refineSegmentName(), ras)
            try:
                if kind == "box":
                    self._pendingEdit = self.logic.box3D(*args, **common)
                else:
                    self._pendingEdit = self.logic.click3D(*args, positive=positive, **common)
            except PromptError as exc:  # e.g. a click outside the volume: say so, nothing changes
                self.ui.refineStatusLabel.text = str(exc)
                slicer.util.showStatusMessage(str(exc), 5000)
                return
            self._pendingKind = "refine3D"
            self.ui.refineStatusLabel.text = _("Editing in 3D...")
            self._timer.start()
        self._updateButtons()

    def _slice(self) -> tuple[int, int | None]:
        """``(axis, sliceIndex)`` of the slice view the last prompt was placed in (k axis when unknown)."""
        from LiverKidneySegLib.markups import sliceForPoint

        if self._lastPromptRas is None:
            return 2, None
        sliceNodes = slicer.util.getNodesByClass("vtkMRMLSliceNode")
        return sliceForPoint(self._parameterNode.inputVolume, self._lastPromptRas, sliceNodes)

    def _requestRefine(self) -> None:
        if self._pendingEdit is not None:
            self._refineQueued = True  # coalesce: one more prediction with all prompts when done
            return
        pn = self._parameterNode
        if self.logic.job is not None and not self.logic.job.finished:
            self.ui.refineStatusLabel.text = _("Wait for the automatic segmentation (or cancel it) before refining.")
            return
        from LiverKidneySegLib.markups import controlPointsWorld

        with slicer.util.tryWithErrorDisplay(_("Refinement failed."), waitCursor=False):
            self._useSegmentEditorRules()
            self.logic.setRefineModel(pn.refineModel or "litemedsam", pn.device)
            axis, sliceIndex = self._slice()  # the slice of the prompt just placed
            self._pendingEdit = self.logic.refine(
                pn.inputVolume,
                pn.outputSegmentation,
                self._refineSegmentName(),
                positive=controlPointsWorld(pn.positivePoints),
                negative=controlPointsWorld(pn.negativePoints),
                box=self._box,
                axis=axis,
                sliceIndex=sliceIndex,
                mode=pn.combineMode,
                waitForCompletion=False,
            )
            self._pendingKind = "refine"
            self.ui.refineStatusLabel.text = _("Predicting...")
            self._timer.start()
        self._updateButtons()

    def _useSegmentEditorRules(self) -> None:
        """Edits follow the masking/overwrite settings of the Segment Editor on this segmentation."""
        from LiverKidneySegLib.editrules import rulesForSegmentation

        self.logic.editRules = rulesForSegmentation(slicer.mrmlScene, self._parameterNode.outputSegmentation)

    def onClearPrompts(self) -> None:
        for role in self._placeButtons:
            node = getattr(self._parameterNode, role)
            if node is not None:
                node.RemoveAllControlPoints()
        self._lastPromptRas = None
        self._box = None
        self.logic.endRefineInteraction()
        self.ui.refineStatusLabel.text = _("Prompts cleared.")

    def onPropagate(self) -> None:
        if self._pendingEdit is not None and self._pendingKind in ("propagate", "refine3D"):
            self._pendingEdit.cancel()  # the button reads "Cancel" while propagating
            self._queued3D.clear()
            self.ui.refineStatusLabel.text = _("Cancelling...")
            return
        pn = self._parameterNode
        if self._pendingEdit is not None or not (pn and pn.inputVolume and pn.outputSegmentation):
            return
        with slicer.util.tryWithErrorDisplay(_("Propagation failed."), waitCursor=False):
            self._useSegmentEditorRules()
            self._workerProgress = (0.0, _("Propagating"))
            self._pendingEdit = self.logic.propagate(
                pn.inputVolume,
                pn.outputSegmentation,
                self._refineSegmentName(),
                axis=self._slice()[0],
                mode=pn.combineMode,
                waitForCompletion=False,
                progressCallback=self._storeWorkerProgress,
            )
            self._pendingKind = "propagate"
            self._timer.start()
        self._updateButtons()

    def _storeWorkerProgress(self, fraction, message) -> None:
        self._workerProgress = (fraction, message)  # called on the worker thread: no Qt here

    def _editFinished(self) -> None:
        from concurrent.futures import CancelledError as FutureCancelledError

        from lkseg.errors import CancelledError, PromptError

        pending, kind = self._pendingEdit, self._pendingKind
        self._pendingEdit, self._pendingKind = None, None
        with slicer.util.tryWithErrorDisplay(_("Refinement failed."), waitCursor=False):
            try:
                result = pending.finish()
            except (CancelledError, FutureCancelledError):  # by the token / before it ran
                what = _("3D edit") if kind == "refine3D" else _("Propagation")
                self.ui.refineStatusLabel.text = _("{what} cancelled; the segment is unchanged.").format(what=what)
                result = None
            except PromptError as exc:  # a prompt the model cannot use: a message, not a dialog
                self.ui.refineStatusLabel.text = str(exc)
                result = None
            if result is not None:
                text = _("{what}: {n} voxel(s) changed.").format(what=result.description, n=result.changedVoxels)
                warnings = getattr(result, "warnings", None)
                if warnings:
                    text += " " + " ".join(f"{w[0].upper()}{w[1:]}." for w in warnings)
                    slicer.util.showStatusMessage("; ".join(warnings), 5000)
                self.ui.refineStatusLabel.text = text
            self._refreshSegmentLists()
        if self._queued3D:
            self._request3D(self._queued3D.pop(0))
        elif self._refineQueued:
            self._refineQueued = False
            self._requestRefine()
        self._updateButtons()

    def onHistory(self, action: str) -> None:
        if self._pendingEdit is None:
            with slicer.util.tryWithErrorDisplay(_("Undo/redo failed."), waitCursor=True):
                edit = self.logic.undo() if action == "undo" else self.logic.redo()
                self.ui.refineStatusLabel.text = (
                    f"{action}: {edit.description}" if edit else _("Nothing to {action}.").format(action=action)
                )
                self._refreshSegmentLists()
        self._updateButtons()

    def onTimer(self) -> None:
        job = self.logic.job
        if job is not None and job.state == "running" and job.poll():
            self._jobFinished(job)
        if self._workerProgress is not None:
            fraction, message = self._workerProgress
            self.ui.refineStatusLabel.text = f"{message} {int(100 * fraction)}%"
            if self._task is not None:
                self.onProgress(fraction, message)
        if self._pendingEdit is not None and self._pendingEdit.done():
            self._workerProgress = None
            self._editFinished()
        if self._task is not None and self._task[0].done():
            self._taskFinished()
        if (job is None or job.finished) and self._pendingEdit is None and self._task is None:
            self._timer.stop()

    # -- Couinaud landmarks and segment resections ---------------------------------------------------
    def _setupCouinaud(self) -> None:
        """Preset combo, landmark point list widget, New/Propose buttons (called from setup)."""
        from LiverKidneySegLib.planning import presetChoices

        combo = self.ui.couinaudPresetComboBox
        combo.addItem(_("Preset..."), "")
        for label, segments in presetChoices():
            combo.addItem(label, segments)
        combo.connect("activated(int)", self.onCouinaudPreset)
        selector = self.ui.couinaudLandmarksWidget.markupsSelectorComboBox()
        selector.nodeTypes = ["vtkMRMLMarkupsFiducialNode"]
        selector.baseName = _("Couinaud landmarks")
        selector.noneEnabled = True
        selector.addEnabled = False  # "New landmark list" creates a labelled list instead
        # one place click per landmark without re-arming; right-click or Esc stops placing
        self.ui.couinaudLandmarksWidget.markupsPlaceWidget().placeModePersistency = True
        self.ui.couinaudLandmarksWidget.connect(
            "markupsNodeChanged()",
            lambda: self._setParameter("couinaudLandmarks", self.ui.couinaudLandmarksWidget.currentNode()),
        )
        self.ui.newLandmarksButton.connect("clicked()", self.onNewLandmarks)
        self.ui.proposeLandmarksButton.connect("clicked()", self.onProposeLandmarks)

    def _updateCouinaudGui(self) -> None:
        """Called from ``_updateGui`` (signals of the widgets do not write back while it runs)."""
        pn = self._parameterNode
        self.ui.couinaudResectionLineEdit.enabled = pn.resectionMode == "couinaud"
        self.ui.couinaudPresetComboBox.enabled = pn.resectionMode == "couinaud"
        if self.ui.couinaudLandmarksWidget.currentNode() is not pn.couinaudLandmarks:
            self.ui.couinaudLandmarksWidget.setCurrentNode(pn.couinaudLandmarks)

    def _vesselsPresent(self) -> bool:
        from LiverKidneySegLib.couinaud import hasVesselSegments

        pn = self._parameterNode
        return bool(pn and hasVesselSegments(pn.outputSegmentation))

    def onCouinaudPreset(self, index: int) -> None:
        segments = self.ui.couinaudPresetComboBox.itemData(index)
        if segments and self._parameterNode is not None:
            self._parameterNode.couinaudResection = segments
            self._parameterNode.resectionMode = "couinaud"

    def onNewLandmarks(self) -> None:
        """A list of unplaced, labelled landmarks; place mode fills them in order (IVC-1, IVC-2,
        PB, RHV-1, ...)."""
        from LiverKidneySegLib.couinaud import landmarkTemplate

        with slicer.util.tryWithErrorDisplay(_("Creating the landmark list failed."), waitCursor=False):
            node = landmarkTemplate(scene=slicer.mrmlScene, name=_("Couinaud landmarks"))
            node.CreateDefaultDisplayNodes()
            self._parameterNode.couinaudLandmarks = node
            self.ui.couinaudLandmarksWidget.setCurrentNode(node)
            self.ui.couinaudLandmarksWidget.placeActive(True)
            slicer.util.showStatusMessage(
                _(
                    "Click IVC-1, IVC-2 (on the IVC), PB (portal bifurcation), then 2 points along each hepatic vein "
                    "(right, middle, left) from the IVC outward; right-click to stop"
                ),
                8000,
            )

    def onProposeLandmarks(self) -> None:
        """Landmarks proposed from the vessel segments, into the selected point list (or a new one)."""
        pn = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Proposing Couinaud landmarks failed."), waitCursor=True):
            node = self.logic.proposeLandmarks(pn.inputVolume, pn.outputSegmentation, pn.couinaudLandmarks)
            if node.GetDisplayNode() is None:
                node.CreateDefaultDisplayNodes()
            pn.couinaudLandmarks = node
            slicer.util.showStatusMessage(
                _("Proposed {n} landmark point(s): check them and move any that is off.").format(
                    n=node.GetNumberOfControlPoints()
                ),
                8000,
            )

    # -- planning and export (planning and the report run on a worker thread) ------------------------
    def _planArgs(self) -> dict:
        from LiverKidneySegLib.planning import planArguments

        pn = self._parameterNode
        return planArguments(
            pn.resectionMode,
            heightCm=pn.patientHeight,
            weightKg=pn.patientWeight,
            resectionPlaneNode=pn.resectionPlane,
            resectionSegmentName=pn.resectionSegment or self.ui.resectionSegmentComboBox.currentData,
            couinaudResection=pn.couinaudResection,
            landmarksNode=pn.couinaudLandmarks,
            vesselsPresent=self._vesselsPresent(),
        )

    def _exportFolder(self) -> pathlib.Path:
        folder = str(self._parameterNode.exportFolder or "")
        if folder in ("", "."):
            raise ValueError(_("Choose an export folder first."))
        return pathlib.Path(folder)

    def _startTask(self, pending, what: str, onDone) -> None:
        self._task = (pending, what, onDone)
        self._workerProgress = (0.0, what)
        self.ui.progressBar.value = 0
        self.ui.progressBar.show()
        self._timer.start()
        self._updateButtons()

    def _taskFinished(self) -> None:
        pending, what, onDone = self._task
        self._task, self._workerProgress = None, None
        self.ui.progressBar.hide()
        with slicer.util.tryWithErrorDisplay(_("{what} failed.").format(what=what), waitCursor=False):
            onDone(pending.finish())
        self._updateButtons()

    def onComputePlan(self) -> None:
        pn = self._parameterNode
        if self._task is not None:
            return
        with slicer.util.tryWithErrorDisplay(_("Planning failed."), waitCursor=True):
            pending = self.logic.plan(
                pn.inputVolume,
                pn.outputSegmentation,
                tableNode=pn.resultsTable,
                couinaudSegmentationNode=pn.couinaudSegmentation,
                waitForCompletion=False,
                progressCallback=self._storeWorkerProgress,
                **self._planArgs(),
            )

            def done(outcome):
                pn.resultsTable = outcome[1]
                self.ui.resultsTableView.setMRMLTableNode(outcome[1])
                if outcome[0].couinaud is not None:
                    pn.couinaudSegmentation = self.logic.lastCouinaudSegmentation

            self._startTask(pending, _("Planning"), done)

    def onCreateModels(self) -> None:
        pn = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Creating models failed."), waitCursor=True):
            self.logic.createSurfaces(pn.outputSegmentation)
            self.logic.exportModels(pn.outputSegmentation)

    def onExportModels(self) -> None:
        pn = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Exporting models failed."), waitCursor=True):
            files = self.logic.exportModels(pn.outputSegmentation, self._exportFolder(), pn.exportFormat)
            slicer.util.showStatusMessage(
                _("Wrote {n} file(s) to {folder}").format(n=len(files), folder=files[0].parent), 5000
            )

    def onExportReport(self) -> None:
        pn = self._parameterNode
        if self._task is not None:
            return
        with slicer.util.tryWithErrorDisplay(_("Saving the report failed."), waitCursor=True):
            pending = self.logic.saveReport(
                pn.inputVolume,
                pn.outputSegmentation,
                self._exportFolder(),
                waitForCompletion=False,
                progressCallback=self._storeWorkerProgress,
                **self._planArgs(),
            )

            def done(path):
                slicer.util.showStatusMessage(_("Report saved: {path}").format(path=path), 5000)
                qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(path)))

            self._startTask(pending, _("Report"), done)
