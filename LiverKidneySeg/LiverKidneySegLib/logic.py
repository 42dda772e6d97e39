"""The module's logic without any GUI: usable from the Slicer Python console, scripts and tests.

``LiverKidneySeg.LiverKidneySegLogic`` (the scripted module's Logic class) is this class plus
Slicer's ``ScriptedLoadableModuleLogic`` (parameter node). Everything here raises exceptions
(:class:`~lkseg.errors.LKSegError` for user-caused problems) and never shows dialogs.

Example (Slicer Python console)::

    logic = slicer.util.getModuleLogic("LiverKidneySeg")
    seg = logic.segment(getNode("CT"))                  # automatic, waits until done
    logic.refine(getNode("CT"), seg, "Liver tumor", positive=getNode("P"), mode="add")  # one slice
    r = logic.click3D(getNode("CT"), seg, "Liver", [10.0, -40.0, 120.0])  # a 3D click (world RAS mm)
    print(r.changedVoxels, r.warnings)
    logic.box3D(getNode("CT"), seg, "Spleen", [[60, -10, 80], [120, 40, 80]])  # a box, propagated
    logic.undo()                                        # takes back the whole box
    summary = logic.runBatch("/data/cohort", "/data/out")  # a whole cohort, resumable
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from LiverKidneySegLib.autoseg import SegmentationJob, SegmentOptions
from LiverKidneySegLib.batch import BatchJob, summaryTable
from LiverKidneySegLib.couinaud import CouinaudLogicMixin
from LiverKidneySegLib.history import EditHistory
from LiverKidneySegLib.markups import (
    SlicePrompts,
    arrayPrompts,
    checkPromptsInsideVolume,
    controlPointsWorld,
    slicePrompts,
)
from LiverKidneySegLib.planning import PlanningLogicMixin
from LiverKidneySegLib.refine3d import Refine3DLogicMixin
from LiverKidneySegLib.refinement import (
    PropagateRequest,
    RefineEngine,
    Refiner,
    RefineResult,
    SliceRequest,
    sliceRegion,
)
from LiverKidneySegLib.segmentations import (
    findSegmentId,
    segmentMask,
    segmentStructureName,
    setReferenceGeometry,
    styleSegment,
)
from LiverKidneySegLib.surfaces import createClosedSurface, exportSegmentsToFiles, exportSegmentsToModels
from LiverKidneySegLib.tables import tableFromRows
from LiverKidneySegLib.volumes import gridFromNode, volumeFromNode
from lkseg.errors import InputError, PromptError
from lkseg.labels import get_structure
from lkseg.volume import Volume

__all__ = ["LiverKidneySegLogicBase", "PendingEdit"]

log = logging.getLogger(__name__)


class PendingEdit:
    """A refinement computed on the worker thread, applied to MRML by :meth:`finish` (main thread)."""

    def __init__(self, future, apply: Callable[[np.ndarray], RefineResult], cancelToken=None):
        self.future = future
        self._apply = apply
        self._cancelToken = cancelToken
        self.result: RefineResult | None = None

    def done(self) -> bool:
        return self.future.done()

    def cancel(self) -> None:
        """Stop the computation (propagation checks between slices); ``finish()`` then raises."""
        self.future.cancel()
        if self._cancelToken is not None:
            self._cancelToken.cancel()

    def finish(self, timeout: float | None = None) -> RefineResult:
        """Wait for the prediction (if needed) and write it into the segment; returns the result."""
        if self.result is None:
            self.result = self._apply(self.future.result(timeout=timeout))
        return self.result


class LiverKidneySegLogicBase(PlanningLogicMixin, CouinaudLogicMixin, Refine3DLogicMixin):
    """Automatic segmentation, refinement (slice edits ``refine``/``propagate`` and 3D clicks and
    boxes ``click3D``/``box3D``: :class:`~LiverKidneySegLib.refine3d.Refine3DLogicMixin`),
    undo/redo, surfaces, models and tables; planning
    (``plan``, ``saveReport``: :class:`~LiverKidneySegLib.planning.PlanningLogicMixin`) and
    Couinaud landmarks (:class:`~LiverKidneySegLib.couinaud.CouinaudLogicMixin`).

    Args:
        scene: the MRML scene (default ``slicer.mrmlScene``).
        refineEngine: the prompt-model engine (default: LiteMedSAM on ``device="auto"``, created
            on first use).
    """

    def __init__(self, scene=None, refineEngine: RefineEngine | None = None):
        self._scene = scene
        self._engine = refineEngine
        self.history = EditHistory()
        self._refiner: Refiner | None = None
        self._volumeCache: tuple[object, Volume] | None = None
        self.job: SegmentationJob | None = None
        self.batchJob: BatchJob | None = None
        self._lastSlice: tuple | None = None
        self._pending3D: dict = {}  # 3D session key -> its last PendingEdit
        #: where refinements may change voxels (:class:`~LiverKidneySegLib.editrules.EditRules`);
        #: None: everywhere. Only the edited segment is ever written.
        self.editRules = None
        self._tasks = None  # planning/report worker thread (created on first use)
        #: the segmentation node the last :meth:`plan` wrote Couinaud segments into
        self.lastCouinaudSegmentation = None

    # -- plumbing -----------------------------------------------------------------------------
    @property
    def scene(self):
        if self._scene is not None:
            return self._scene
        import slicer

        return slicer.mrmlScene

    @property
    def refiner(self) -> Refiner:
        if self._refiner is None:
            if self._engine is None:
                self._engine = RefineEngine()  # kept here so that cleanup() stops it
            self._refiner = Refiner(self._engine, self.history)
        return self._refiner

    def setRefineModel(self, model: str = "litemedsam", device: str = "auto") -> None:
        """Use another prompt model or device (the worker restarts on next use)."""
        if self._engine is not None and (self._engine.model, self._engine.device) == (model, device):
            return
        if self._engine is not None:
            self._engine.shutdown()
        self._engine = RefineEngine(model, device)
        self._refiner = Refiner(self._engine, self.history)

    def volume(self, volumeNode) -> Volume:
        """The node as a core Volume, cached until the node's voxels or geometry change."""
        if volumeNode is None:
            raise InputError("no input volume selected")
        image = volumeNode.GetImageData()
        key = (
            volumeNode.GetID(),
            image.GetMTime() if image is not None else 0,
            tuple(gridFromNode(volumeNode).ijk_to_ras.ravel()),
        )
        if self._volumeCache is None or self._volumeCache[0] != key:
            self._volumeCache = (key, volumeFromNode(volumeNode))
        return self._volumeCache[1]

    def _volumeKey(self, volumeNode):
        self.volume(volumeNode)
        return self._volumeCache[0]

    def newSegmentationNode(self, volumeNode, name: str | None = None):
        """A new segmentation node on the volume's geometry (same parent transform)."""
        node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or f"{volumeNode.GetName()} segmentation")
        node.CreateDefaultDisplayNodes()
        setReferenceGeometry(node, gridFromNode(volumeNode), volumeNode)
        node.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        return node

    # -- models ---------------------------------------------------------------------------------
    @staticmethod
    def availableModels() -> list:
        """Installed automatic-segmentation model packages (``lkseg.models`` manifests)."""
        from LiverKidneySegLib.autoseg import modelFolders
        from lkseg.models import list_models

        return list_models(extra_dirs=modelFolders()).models

    # -- automatic ------------------------------------------------------------------------------
    def segment(
        self,
        volumeNode,
        segmentationNode=None,
        *,
        modelId: str | None = None,
        device: str = "auto",
        structures: Sequence[str] | None = None,
        replaceExisting: bool = False,
        waitForCompletion: bool = True,
        progressCallback: Callable[[float, str], None] | None = None,
    ):
        """Segment the liver, kidneys and tumours automatically (out of process: ``lkseg segment``).

        Args:
            volumeNode: the CT (scalar volume node, HU).
            segmentationNode: target; a new one is created when None. Segments of other names
                are kept; segments of the same names raise
                :class:`~LiverKidneySegLib.segmentations.SegmentExistsError` unless ``replaceExisting``.
            modelId: model package id/folder (default model when None).
            device: "auto", "cpu" or "cuda".
            structures: structure names to keep (default: all the model segments).
            replaceExisting: replace segments of the same names.
            waitForCompletion: block until done (console/batch use). When False, returns the
                started :class:`SegmentationJob`; call its ``poll()`` from a timer.
            progressCallback: ``progress(fraction, message)``.

        Returns:
            The segmentation node (waitForCompletion) or the running job.
        """
        if self.job is not None and not self.job.finished:
            raise RuntimeError("an automatic segmentation is already running; cancel it first")
        volumeFromNode(volumeNode)  # validates the input before anything is created
        if structures is not None and len(structures) == 0:
            raise InputError("no structure selected: choose at least one structure to segment")
        if segmentationNode is None:
            segmentationNode = self.newSegmentationNode(volumeNode)
        options = SegmentOptions(modelId or None, device, list(structures) if structures else None, replaceExisting)
        job = SegmentationJob(volumeNode, segmentationNode, options, progressCallback)
        job.history = self.history  # the automatic result is one undo step
        self.job = job.start()
        if not waitForCompletion:
            return self.job
        self.job.wait()
        return segmentationNode

    def cancel(self) -> None:
        """Cancel the running automatic segmentation (kills the child process tree)."""
        if self.job is not None:
            self.job.cancel()

    # -- batch ---------------------------------------------------------------------------------
    def runBatch(
        self,
        source,
        output,
        *,
        modelId: str | None = None,
        device: str = "auto",
        outputs: Sequence[str] | None = None,
        meshFormats: Sequence[str] | None = None,
        plan: dict | None = None,
        structures: Sequence[str] | None = None,
        workers: int | None = None,
        ray: str | None = None,
        force: bool = False,
        options=None,
        waitForCompletion: bool = True,
        progressCallback: Callable[[float, str], None] | None = None,
        summaryTableNode=None,
    ):
        """Segment (and plan) a whole cohort: the core's batch run (``lkseg batch``), out of process.

        The same run as :func:`lkseg.batch.run_batch` and the ``lkseg batch`` CLI: resumable
        (a rerun into the same ``output`` skips finished cases and redoes changed ones), failing
        cases are recorded and the run goes on, outputs are written atomically.

        Args:
            source: a folder of NIfTI/NRRD files and DICOM series (searched recursively), a CSV
                case list (``path``, optional ``case_id``, ``height_cm``, ``weight_kg``, ...) or
                one image file.
            output: the output folder (``cases/<id>/...``, ``summary.csv``, ``failures.csv``).
            modelId: model package id or folder (the default model when None).
            device: "auto", "cpu" or "cuda".
            outputs, meshFormats, plan, structures, workers, ray, force: as the fields of
                :class:`lkseg.batch.BatchOptions` (None keeps the default); ``plan`` is e.g.
                ``{"height_cm": 175, "weight_kg": 80}``.
            options: a complete :class:`lkseg.batch.BatchOptions` instead of the fields above.
            waitForCompletion: block until done (console use). When False, returns the started
                :class:`~LiverKidneySegLib.batch.BatchJob`; call its ``poll()`` from a timer.
            progressCallback: ``progress(fraction, message)``.
            summaryTableNode: fill this table node with the per-case summary (when waiting); a
                new one is created when it is None and ``waitForCompletion`` is True.

        Returns:
            The run's summary dict (``counts``, ``model``, ``cases_per_hour``, ``summary_csv``,
            ``rows``, ``table``: the table node) when waiting, else the running job.

        Raises:
            InputError: bad source, output or options; ModelError: the model is not installed;
            LKSegError: the run could not go on; CancelledError: cancelled with :meth:`cancelBatch`.
        """
        from lkseg.batch import BatchOptions

        if self.batchJob is not None and not self.batchJob.finished:
            raise RuntimeError("a batch run is already going on; cancel it first")
        if options is None:
            fields: dict = {"device": device, "force": force, "workers": workers, "ray": ray}
            if outputs is not None:
                fields["outputs"] = tuple(outputs)
            if meshFormats is not None:
                fields["mesh_formats"] = tuple(meshFormats)
            if plan:
                fields["plan"] = {k: str(v) for k, v in plan.items()}
            if structures is not None:
                fields["structures"] = tuple(structures)
            options = BatchOptions(**fields)
        self.batchJob = BatchJob(source, output, modelId, options, progressCallback).start()
        if not waitForCompletion:
            return self.batchJob
        summary = self.batchJob.wait()
        summary["table"] = summaryTable(summary, summaryTableNode, scene=self.scene)
        return summary

    def cancelBatch(self) -> None:
        """Stop the running batch (kills its process tree); finished cases are kept."""
        if self.batchJob is not None:
            self.batchJob.cancel()

    # -- refinement -----------------------------------------------------------------------------
    def _segmentId(self, segmentationNode, segmentName: str, create: bool = True) -> str:
        segmentId = findSegmentId(segmentationNode, segmentName)
        if segmentId is None:
            if not create:
                raise InputError(f"segmentation '{segmentationNode.GetName()}' has no segment {segmentName!r}")
            from lkseg.segmentation import find_structure

            known = find_structure(segmentName)
            structure = get_structure(known or segmentName)
            segmentation = segmentationNode.GetSegmentation()
            wantedId = structure.name if known and segmentation.GetSegment(structure.name) is None else ""
            segmentId = segmentation.AddEmptySegment(wantedId, segmentName, list(structure.color))
            styleSegment(segmentation.GetSegment(segmentId), structure.name, None if known else segmentName)
        return segmentId

    def _prompts(self, volumeNode, positive, negative, box, axis: int, sliceIndex: int | None) -> SlicePrompts:
        """Prompts from markups nodes, or from (N, 3) world-RAS arrays and a box given as world-RAS
        corners ((2, 3) opposite corners or the (8, 3) corners of an oriented box)."""
        if all(p is None or hasattr(p, "GetNumberOfControlPoints") for p in (positive, negative, box)):
            prompts = slicePrompts(volumeNode, axis, positive, negative, box, sliceIndex)
        else:
            prompts = arrayPrompts(volumeNode, positive, negative, box, axis, sliceIndex)
        checkPromptsInsideVolume(volumeNode, prompts)
        return prompts

    def refine(
        self,
        volumeNode,
        segmentationNode,
        segmentName: str,
        *,
        positive=None,
        negative=None,
        box=None,
        axis: int = 2,
        sliceIndex: int | None = None,
        mode: str = "add",
        waitForCompletion: bool = True,
    ):
        """Predict a 2D mask on one slice from points/box and combine it into a segment.

        Args:
            volumeNode: the CT.
            segmentationNode: the segmentation to edit.
            segmentName: segment name or structure name (created empty when missing).
            positive, negative: point lists (markups nodes) or (N, 3) world RAS mm arrays.
            box: a markups ROI node, or two opposite corners (2, 3) in world RAS mm.
            axis: index axis normal to the slice (0 = i, 1 = j, 2 = k; see
                :func:`~LiverKidneySegLib.markups.sliceAxisForNormal`).
            sliceIndex: slice along ``axis`` (default: the last point's slice).
            mode: "add", "subtract" or "replace" (replace acts on this slice only).
            waitForCompletion: when False, returns a :class:`PendingEdit` to ``finish()`` later
                on the main thread.

        Returns:
            :class:`~LiverKidneySegLib.refinement.RefineResult` or :class:`PendingEdit`.
        """
        prompts = self._prompts(volumeNode, positive, negative, box, axis, sliceIndex)
        if prompts.empty:
            raise PromptError(f"no point or box lies on slice {prompts.sliceIndex} of axis {'ijk'[axis]}")
        volume = self.volume(volumeNode)
        segmentId = self._segmentId(segmentationNode, segmentName)
        structure = segmentStructureName(segmentationNode.GetSegmentation().GetSegment(segmentId))
        refiner = self.refiner
        base = refiner.sliceBase(segmentationNode, segmentId, volume, prompts, mode)
        region = sliceRegion(volume.grid.shape, prompts.axis, prompts.sliceIndex)
        # clicks edit the segment's slice in "replace" mode; in add/subtract they shape a new object
        prior = (
            base.reshape(tuple(n for a, n in enumerate(volume.grid.shape) if a != 2 - axis))
            if mode == "replace"
            else None
        )
        request = SliceRequest(prompts, prior, structure)
        description = f"{mode} on {'ijk'[axis]}={prompts.sliceIndex} ({len(prompts.points)} point(s){', box' if prompts.box is not None else ''})"
        self._lastSlice = (segmentationNode.GetID(), segmentId, axis, prompts.sliceIndex)

        def apply(mask2d: np.ndarray) -> RefineResult:
            return refiner.applyMask(
                segmentationNode, segmentId, volume, mask2d, mode, region, description, base=base, rules=self.editRules
            )

        pending = PendingEdit(refiner.engine.predictSlice(volume, self._volumeKey(volumeNode), request), apply)
        return pending.finish() if waitForCompletion else pending

    def propagate(
        self,
        volumeNode,
        segmentationNode,
        segmentName: str,
        *,
        axis: int = 2,
        sliceIndex: int | None = None,
        mode: str = "add",
        waitForCompletion: bool = True,
        progressCallback: Callable[[float, str], None] | None = None,
    ):
        """Grow a segment through the volume from one of its slices ("Propagate in 3D").

        Args:
            volumeNode, segmentationNode, segmentName, axis, mode, waitForCompletion: see
                :meth:`refine` (the whole volume is the region ``mode`` acts on).
            sliceIndex: the start slice along ``axis``; default the slice last refined on this
                segment and axis, else the segment's largest slice.
            progressCallback: ``progress(fraction, message)``, called from the worker thread.

        Returns:
            :class:`~LiverKidneySegLib.refinement.RefineResult` or :class:`PendingEdit` (whose
            ``cancel()`` stops the propagation).
        """
        from lkseg.progress import CancelToken

        volume = self.volume(volumeNode)
        segmentId = self._segmentId(segmentationNode, segmentName, create=False)
        current = segmentMask(segmentationNode, segmentId, volume.grid)
        if not current.any():
            raise PromptError(f"segment {segmentName!r} is empty: refine at least one slice before propagating")
        numpyAxis = 2 - axis
        if sliceIndex is None:
            last = self._lastSlice
            if last is not None and last[:3] == (segmentationNode.GetID(), segmentId, axis):
                sliceIndex = last[3]
            else:
                areas = current.sum(axis=tuple(a for a in range(3) if a != numpyAxis))
                sliceIndex = int(np.argmax(areas))
        seed = np.take(current, sliceIndex, axis=numpyAxis)
        if not seed.any():
            raise PromptError(f"segment {segmentName!r} is empty on slice {sliceIndex} of axis {'ijk'[axis]}")
        refiner = self.refiner
        refiner.endInteraction()
        structure = segmentStructureName(segmentationNode.GetSegmentation().GetSegment(segmentId))
        cancel = CancelToken()
        request = PropagateRequest(axis, sliceIndex, seed, structure, progressCallback, cancel)

        def apply(mask3d: np.ndarray) -> RefineResult:
            return refiner.applyMask(
                segmentationNode,
                segmentId,
                volume,
                mask3d,
                mode,
                None,
                f"propagate in 3D from {'ijk'[axis]}={sliceIndex} ({mode})",
                rules=self.editRules,
            )

        pending = PendingEdit(refiner.engine.propagate(volume, self._volumeKey(volumeNode), request), apply, cancel)
        return pending.finish() if waitForCompletion else pending

    def endRefineInteraction(self) -> None:
        """The current prompts are done (cleared): the next prompt starts from the segment as it is."""
        if self._refiner is not None:
            self._refiner.endInteraction()

    @property
    def canUndo(self) -> bool:
        return self.history.canUndo

    @property
    def canRedo(self) -> bool:
        return self.history.canRedo

    def undo(self):
        """Undo the last refinement edit; returns it (None when there is nothing to undo)."""
        self.endRefineInteraction()
        return self.history.undo(self.scene)

    def redo(self):
        """Redo the last undone edit; returns it (None when there is nothing to redo)."""
        self.endRefineInteraction()
        return self.history.redo(self.scene)

    # -- outputs --------------------------------------------------------------------------------
    @staticmethod
    def createSurfaces(segmentationNode, smoothingFactor: float = 0.5) -> bool:
        """Create the closed-surface (3D) representation of every segment."""
        return createClosedSurface(segmentationNode, smoothingFactor)

    @staticmethod
    def exportModels(
        segmentationNode,
        folder: str | Path | None = None,
        fileFormat: str = "STL",
        segmentNames: Sequence[str] | None = None,
    ):
        """Segments -> model nodes in a subject-hierarchy folder (``folder`` None) or STL/OBJ files.

        Returns:
            The model nodes, or the written file paths.
        """
        ids = None
        if segmentNames is not None:
            ids = []
            for name in segmentNames:
                segmentId = findSegmentId(segmentationNode, name)
                if segmentId is None:
                    raise InputError(f"segmentation '{segmentationNode.GetName()}' has no segment {name!r}")
                ids.append(segmentId)
        if folder is None:
            return exportSegmentsToModels(segmentationNode, ids)
        return exportSegmentsToFiles(segmentationNode, folder, fileFormat, ids)

    def volumesTable(self, segmentationNode, volumeNode, tableNode=None):
        """Table of each segment's volume (mL), voxel count and mean HU; returns the table node."""
        from LiverKidneySegLib.segmentations import segmentStructureName

        volume = self.volume(volumeNode)
        segmentation = segmentationNode.GetSegmentation()
        rows = []
        for index in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(index)
            mask = segmentMask(segmentationNode, segmentId, volume.grid)
            count = int(mask.sum())
            rows.append(
                {
                    "Segment": segmentation.GetSegment(segmentId).GetName(),
                    "Structure": segmentStructureName(segmentation.GetSegment(segmentId)),
                    "Volume": count * volume.grid.voxel_volume_ml,
                    "Voxels": count,
                    "Mean": float(volume.array[mask].mean()) if count else None,
                }
            )
        return tableFromRows(
            rows,
            tableNode,
            scene=self.scene,
            name=f"{segmentationNode.GetName()} volumes",
            units={"Volume": "mL", "Mean": "HU"},
            descriptions={"Volume": "segment volume", "Mean": "mean intensity inside the segment"},
        )

    # -- planning -------------------------------------------------------------------------------
    def _background(self, fn, apply, cancel=None) -> PendingEdit:
        """Run ``fn`` on the logic's task thread; ``apply(result)`` runs in ``finish()`` (main thread)."""
        from concurrent.futures import ThreadPoolExecutor

        if self._tasks is None:
            self._tasks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lkseg-plan")
        return PendingEdit(self._tasks.submit(fn), apply, cancel)

    def cleanup(self) -> None:
        """Cancel running work and stop the refinement and planning worker threads."""
        self.cancel()
        self.cancelBatch()
        if self._engine is not None:
            self._engine.shutdown()
        if self._tasks is not None:
            self._tasks.shutdown(wait=True, cancel_futures=True)
            self._tasks = None

    @staticmethod
    def pointCount(markupsNode) -> int:
        return len(controlPointsWorld(markupsNode))
