"""The web page's working state over the Slicer module's MRML-level logic (one scene per server).

:class:`WebSession` owns the scene of a trame-slicer ``SlicerApp`` and one
``LiverKidneySegLogicBase`` on it: everything the page does (open a CT, automatic segmentation,
box/click corrections, propagation, undo/redo, resection plane, planning, exports) is a call of
that logic or of the core ``lkseg`` package -- the same code the Slicer module runs. This module
has no trame dependency (the page binds it in :mod:`lkseg.web.app`); it is also usable from a
script with a bare ``SlicerApp``.

Coordinates: world RAS mm for points, boxes and the plane (what slice views give); numpy arrays
are ZYX; volumes in mL.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lkseg.errors import InputError

__all__ = ["SliceInteraction", "WebSession", "correctionEdit"]

log = logging.getLogger(__name__)

#: Window presets (window, level) in HU.
WINDOW_PRESETS = {"abdomen": (400.0, 40.0), "liver": (150.0, 60.0), "bone": (1800.0, 400.0)}


def correctionEdit(
    logic,
    volumeNode,
    segmentationNode,
    segment: str,
    *,
    positive=None,
    negative=None,
    box=None,
    axis: int = 2,
    sliceIndex: int | None = None,
    mode: str = "add",
    threeD: bool = False,
    progress=None,
):
    """THE adapter between the page's slice-view corrections and the logic -- the same calls the
    Slicer module makes (``LiverKidneySegGui.widgetparts``):

    * ``threeD`` (the page's "3D" switch, the module's ``refine3D``): one click -> ``logic.click3D``
      (positive adds, negative removes: ``mode`` is ignored), a box -> ``logic.box3D``; the edit
      follows the structure through the slices (``progress(fraction, message)`` from the worker).
    * otherwise one slice: every prompt of the slice's interaction (box and points) ->
      ``logic.refine`` with ``mode`` (add / subtract / replace).

    Args:
        positive / negative: (N, 3) world RAS mm (3D: exactly one point in one of them); box: (2, 3)
            opposite corners, world RAS mm.
        axis: index axis normal to the slice (0 = i, 1 = j, 2 = k).

    Returns:
        The logic's ``PendingEdit`` (``finish()`` on the scene's thread writes the segment).
    """
    if threeD:
        common = dict(axis=axis, waitForCompletion=False, progressCallback=progress)
        if box is not None:
            return logic.box3D(volumeNode, segmentationNode, segment, np.asarray(box, float), **common)
        points = [(p, True) for p in np.asarray(positive if positive is not None else [], float).reshape(-1, 3)]
        points += [(p, False) for p in np.asarray(negative if negative is not None else [], float).reshape(-1, 3)]
        if len(points) != 1:
            raise InputError(f"a 3D correction is one click or one box, got {len(points)} point(s)")
        return logic.click3D(volumeNode, segmentationNode, segment, points[0][0], positive=points[0][1], **common)
    return logic.refine(
        volumeNode,
        segmentationNode,
        segment,
        positive=positive,
        negative=negative,
        box=box,
        axis=axis,
        sliceIndex=sliceIndex,
        mode=mode,
        waitForCompletion=False,
    )


@dataclass
class SliceInteraction:
    """The one-slice prompts placed so far on one (segment, axis, slice, mode): like the Slicer
    module's point lists and box, every new prompt re-predicts the slice from ALL of them (the
    logic combines that with the segment as it was before the first one). Sending only the newest
    point would drop the box: a click after a box then took back what the box had added."""

    key: tuple
    box: np.ndarray | None = None
    positive: list = field(default_factory=list)
    negative: list = field(default_factory=list)

    def add(self, box=None, positive=None, negative=None) -> None:
        if box is not None:
            self.box = np.asarray(box, float).reshape(2, 3)  # a new box replaces the previous one
        for points, store in ((positive, self.positive), (negative, self.negative)):
            if points is not None:
                store.extend(np.asarray(points, float).reshape(-1, 3))

    def prompts(self) -> dict:
        return {
            "box": self.box,
            "positive": np.array(self.positive).reshape(-1, 3) if self.positive else None,
            "negative": np.array(self.negative).reshape(-1, 3) if self.negative else None,
        }


class WebSession:
    """State of the single page: the CT, its segmentation, the resection plane, the last plan.

    Args:
        slicerApp: a ``trame_slicer.core.SlicerApp`` (its scene is the session's scene).
        workDir: private folder for uploads' conversions, exports and reports.
        prefetch: neighbouring slices whose image embeddings the prompt model precomputes after
            each prediction (the core's default is 2 per side). The web default is 0: on a 2-core
            server, prefetching right after a box made the next click on the same slice take
            5-10 s instead of 0.3 s (measured under load; see the README's web section).
    """

    def __init__(self, slicerApp, workDir: str | Path, prefetch: int = 0):
        self.app = slicerApp
        self.scene = slicerApp.scene
        self._prefetch = prefetch
        self._logic = None
        self.workDir = Path(workDir)
        self.workDir.mkdir(parents=True, exist_ok=True)
        self.volumeNode = None
        self.segmentationNode = None
        self.planeNode = None
        self.source: Path | None = None
        self.sourceSeriesUid: str | None = None
        self.lastPlan = None
        self.heightCm: float | None = None
        self.weightKg: float | None = None
        #: the one-slice prompts placed so far (3D switch off), see :class:`SliceInteraction`
        self.interaction: SliceInteraction | None = None
        from lkseg.web.couinaud import CouinaudPlanning

        self.couinaud = CouinaudPlanning(self)  # segment-based (Couinaud) planning, lkseg/web/couinaud.py

    @property
    def logic(self):
        """The Slicer module's ``LiverKidneySegLogicBase`` on this scene (imported on first use)."""
        if self._logic is None:
            from LiverKidneySegLib.logic import LiverKidneySegLogicBase
            from LiverKidneySegLib.refinement import RefineEngine

            prefetch = self._prefetch

            def predictor(model: str, device: str):
                from lkseg.refine.predictor import PredictorConfig, PromptPredictor

                return PromptPredictor(model=model, device=device, config=PredictorConfig(prefetch=prefetch))

            self._logic = LiverKidneySegLogicBase(
                scene=self.scene, refineEngine=RefineEngine(predictorFactory=predictor)
            )
        return self._logic

    # -- input ------------------------------------------------------------------------------
    def openVolume(self, path: str | Path, seriesUid: str | None = None):
        """Read a CT (NIfTI/NRRD/MHA file or DICOM folder) and show it; replaces the current case.

        The file is read completely before anything in the scene changes, so a bad file leaves
        the current case untouched. Raises :class:`InputError` with the reader's message.
        """
        from LiverKidneySegLib.volumes import volumeToNode
        from lkseg.io import read_image

        path = Path(path)
        volume = read_image(path, series_uid=seriesUid)
        if volume.array.ndim != 3 or min(volume.array.shape) < 1:
            raise InputError(f"{path.name}: not a 3D image")
        self.closeCase()
        name = volume.meta.get("name") or path.name.split(".")[0] or "CT"
        node = volumeToNode(volume, scene=self.scene, name=name)
        self.volumeNode, self.source, self.sourceSeriesUid = node, path, seriesUid
        self.heightCm = volume.meta.get("height_cm") or None
        self.weightKg = volume.meta.get("weight_kg") or None
        self.segmentationNode = self.logic.newSegmentationNode(node, f"{name} segmentation")
        self.segmentationNode.GetDisplayNode().SetOpacity3D(1.0)
        self.setWindowPreset("abdomen")
        self.app.display_manager.show_volume_in_slice_background(node)
        self.app.display_manager.reset_views()
        return node

    def closeCase(self) -> None:
        self.couinaud.reset()
        for node in (self.planeNode, self.segmentationNode, self.volumeNode):
            if node is not None and node.GetScene() is not None:
                self.scene.RemoveNode(node)
        self.volumeNode = self.segmentationNode = self.planeNode = self.lastPlan = None
        self.logic.history.clear()
        self.endInteraction()

    def requireVolume(self):
        if self.volumeNode is None:
            raise InputError("open a CT first")
        return self.volumeNode

    def setWindowPreset(self, name: str) -> None:
        if name not in WINDOW_PRESETS:
            raise InputError(f"unknown window preset {name!r}; choose {', '.join(WINDOW_PRESETS)}")
        display = self.requireVolume().GetDisplayNode()
        window, level = WINDOW_PRESETS[name]
        display.AutoWindowLevelOff()
        display.SetWindowLevel(window, level)

    # -- automatic segmentation -------------------------------------------------------------
    def startSegmentation(self, progress):
        """Start ``lkseg segment`` on the CT (replacing same-named segments: one undo step)."""
        volumeNode = self.requireVolume()
        return self.logic.segment(
            volumeNode,
            self.segmentationNode,
            replaceExisting=True,
            waitForCompletion=False,
            progressCallback=progress,
        )

    # -- corrections ------------------------------------------------------------------------
    def sliceAxis(self, sliceNode) -> int:
        from LiverKidneySegLib.markups import sliceAxisForNormal

        matrix = sliceNode.GetSliceToRAS()
        normal = [matrix.GetElement(r, 2) for r in range(3)]
        return sliceAxisForNormal(self.requireVolume(), normal)

    def sliceIndexAt(self, ras, axis: int) -> int:
        from LiverKidneySegLib.volumes import worldToIjk

        return int(np.rint(worldToIjk(self.requireVolume(), np.asarray(ras, float).reshape(1, 3))[0, axis]))

    def correct(
        self,
        segment: str,
        axis: int,
        *,
        box=None,
        positive=None,
        negative=None,
        mode: str = "add",
        threeD: bool = False,
        progress=None,
    ):
        """A box or click on a slice view (world RAS mm) -> the logic's ``PendingEdit``
        (see :func:`correctionEdit`; one slice: the prompts of the slice's interaction so far)."""
        volumeNode = self.requireVolume()
        anchor = np.asarray(box if box is not None else (positive if positive is not None else negative), float)
        sliceIndex = self.sliceIndexAt(anchor.reshape(-1, 3)[0], axis)
        prompt = {"box": box, "positive": positive, "negative": negative}
        if threeD:
            self.endInteraction()  # a 3D edit changes the slices a 2D interaction started from
        else:
            key = (self.segmentationNode.GetID(), segment, axis, sliceIndex, mode)
            if self.interaction is None or self.interaction.key != key:
                self.endInteraction()
                self.interaction = SliceInteraction(key)
            self.interaction.add(**prompt)
            prompt = self.interaction.prompts()
        return correctionEdit(
            self.logic,
            volumeNode,
            self.segmentationNode,
            segment,
            axis=axis,
            sliceIndex=sliceIndex,
            mode=mode,
            threeD=threeD,
            progress=progress,
            **prompt,
        )

    def endInteraction(self) -> None:
        """Forget the one-slice prompts (the next prompt starts from the segment as it is): after
        undo/redo, 3D edits, propagation, automatic segmentation, a failed or cancelled edit."""
        self.interaction = None
        if self._logic is not None:
            self._logic.endRefineInteraction()

    def propagate(self, segment: str, axis: int, progress):
        self.interaction = None  # the logic ends its slice interaction too
        return self.logic.propagate(
            self.requireVolume(),
            self.segmentationNode,
            segment,
            axis=axis,
            waitForCompletion=False,
            progressCallback=progress,
        )

    # -- segments ---------------------------------------------------------------------------
    def segments(self) -> list[dict]:
        """One row per segment: id, name, colour (#rrggbb), visible, volume_ml (voxel count x voxel volume)."""
        from LiverKidneySegLib.segmentations import segmentMask
        from LiverKidneySegLib.volumes import gridFromNode

        if self.segmentationNode is None:
            return []
        grid = gridFromNode(self.volumeNode)
        voxelMl = float(np.prod(grid.spacing)) / 1000.0
        segmentation = self.segmentationNode.GetSegmentation()
        display = self.segmentationNode.GetDisplayNode()
        rows = []
        for i in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(i)
            segment = segmentation.GetSegment(segmentId)
            rgb = segment.GetColor()
            rows.append(
                {
                    "id": segmentId,
                    "name": segment.GetName(),
                    "color": "#" + "".join(f"{round(255 * c):02x}" for c in rgb),
                    "visible": bool(display.GetSegmentVisibility(segmentId)) if display else True,
                    "volume_ml": round(float(segmentMask(self.segmentationNode, segmentId, grid).sum()) * voxelMl, 2),
                }
            )
        return rows

    def setSegmentVisible(self, segmentId: str, visible: bool) -> None:
        self.segmentationNode.GetDisplayNode().SetSegmentVisibility(segmentId, bool(visible))

    def setSegmentColor(self, segmentId: str, color: str) -> None:
        text = color.lstrip("#")[:6]
        if len(text) != 6:
            raise InputError(f"not a colour: {color!r} (use #rrggbb)")
        rgb = [int(text[i : i + 2], 16) / 255.0 for i in (0, 2, 4)]
        self.segmentationNode.GetSegmentation().GetSegment(segmentId).SetColor(*rgb)

    def segmentMaskZyx(self, name: str) -> np.ndarray:
        """The named segment as a boolean ZYX array on the CT grid (for checks and tests)."""
        from LiverKidneySegLib.segmentations import findSegmentId, segmentMask
        from LiverKidneySegLib.volumes import gridFromNode

        grid = gridFromNode(self.requireVolume())
        segmentId = findSegmentId(self.segmentationNode, name)
        if segmentId is None:
            return np.zeros(grid.shape, bool)
        return segmentMask(self.segmentationNode, segmentId, grid)

    # -- resection plane & planning ---------------------------------------------------------
    def ensurePlane(self):
        """The resection plane (created through the liver's centre, normal +R: the patient's
        left side of the plane is kept... the side the normal points to is resected)."""
        if self.planeNode is not None and self.planeNode.GetScene() is not None:
            return self.planeNode
        volumeNode = self.requireVolume()
        center = self._liverCenter()
        node = self.scene.AddNewNodeByClass("vtkMRMLMarkupsPlaneNode", "Resection plane")
        node.CreateDefaultDisplayNodes()
        node.SetCenterWorld(*center)
        node.SetNormalWorld(-1.0, 0.0, 0.0)
        bounds = [0.0] * 6
        volumeNode.GetRASBounds(bounds)
        half = 0.5 * max(bounds[1] - bounds[0], bounds[3] - bounds[2], bounds[5] - bounds[4])
        node.SetSize(1.2 * half, 1.2 * half)
        node.SetPlaneType(node.PlaneTypePointNormal) if hasattr(node, "PlaneTypePointNormal") else None
        display = node.GetDisplayNode()
        if display is not None:
            display.SetSelectedColor(1.0, 0.85, 0.1)
            display.SetOpacity(0.6)
            display.SetHandlesInteractive(True)
        self.planeNode = node
        return node

    def _liverCenter(self) -> list[float]:
        from LiverKidneySegLib.volumes import gridFromNode, ijkToWorld

        liver = self.segmentMaskZyx("liver")
        grid = gridFromNode(self.volumeNode)
        if liver.any():
            zyx = np.argwhere(liver).mean(axis=0)
        else:
            zyx = (np.asarray(grid.shape, float) - 1) / 2
        return [float(v) for v in ijkToWorld(self.volumeNode, zyx[::-1].reshape(1, 3))[0]]

    def planeState(self) -> dict:
        node = self.ensurePlane()
        origin, normal = [0.0] * 3, [0.0] * 3
        node.GetOriginWorld(origin)
        node.GetNormalWorld(normal)
        return {"origin": [round(v, 3) for v in origin], "normal": [round(v, 6) for v in normal]}

    def movePlane(self, origin=None, normal=None) -> dict:
        node = self.ensurePlane()
        if normal is not None:
            n = np.asarray(normal, float)
            if not np.all(np.isfinite(n)) or np.linalg.norm(n) < 1e-6:
                raise InputError("the plane normal must be a non-zero vector")
            node.SetNormalWorld(*(n / np.linalg.norm(n)))
        if origin is not None:
            node.SetCenterWorld(*[float(v) for v in origin])
        return self.planeState()

    def startPlan(self, progress):
        """Volumes, FLR (with the plane), tumour burden, R.E.N.A.L. -> ``PendingEdit`` of ``(result, table)``."""
        volumeNode = self.requireVolume()
        options = {"resectionPlaneNode": self.ensurePlane(), **self.couinaud.planOptions()}
        return self.logic.plan(
            volumeNode,
            self.segmentationNode,
            heightCm=self.heightCm,
            weightKg=self.weightKg,
            waitForCompletion=False,
            progressCallback=progress,
            **options,
        )

    # -- exports ----------------------------------------------------------------------------
    def exportDir(self) -> Path:
        out = self.workDir / "downloads"
        out.mkdir(parents=True, exist_ok=True)
        return out

    def _labels(self):
        from LiverKidneySegLib.segmentations import segmentationToLabelMap
        from LiverKidneySegLib.volumes import gridFromNode

        if self.segmentationNode is None or self.segmentationNode.GetSegmentation().GetNumberOfSegments() == 0:
            raise InputError("nothing to export: the segmentation is empty")
        return segmentationToLabelMap(self.segmentationNode, gridFromNode(self.volumeNode))

    def exportJob(self, kind: str):
        """Read the nodes now (scene thread); returns ``fn()`` that builds the download with
        :mod:`lkseg.web.downloads` (the core's writers; any thread) and saves it in
        :meth:`exportDir`, returning its path.

        Kinds: ``segnrrd``, ``dicomseg`` (CT opened from DICOM only), ``surfaces`` (STL + GLB in a
        zip), ``report`` (HTML of the last plan; its 3D picture is left out: offscreen rendering
        on a worker thread next to the page's views is not safe).
        """
        from lkseg.io import atomic_write_bytes
        from lkseg.web import downloads

        self.requireVolume()
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.volumeNode.GetName()) or "case"
        labels, table = self._labels()
        source = self.source if self.source is not None and self.source.is_dir() else None
        seriesUid, plan, out = self.sourceSeriesUid, self.lastPlan, self.exportDir()
        if kind == "dicomseg" and source is None:
            raise InputError("DICOM SEG needs a CT opened from a DICOM folder (this CT was opened from a file)")
        if kind == "report" and plan is None:
            raise InputError("place the resection plane first: the report shows the plan")
        image = self.logic.volume(self.volumeNode) if kind == "report" else None

        def write() -> Path:
            if kind == "segnrrd":
                download = downloads.seg_nrrd_download(labels, table, stem=stem)
            elif kind == "dicomseg":
                download = downloads.dicom_seg_download(labels, table, source, series_uid=seriesUid, stem=stem)
            elif kind == "surfaces":
                download = downloads.surfaces_download(labels, table, stem=f"{stem}_surfaces")
            elif kind == "report":
                download = downloads.report_download(
                    plan, labels, table, image=image, stem=f"{stem}_report", render_3d=False
                )
            else:
                raise InputError(f"unknown export {kind!r}")
            return atomic_write_bytes(out / download.filename, download.data)

        return write

    def cleanup(self) -> None:
        if self._logic is not None:
            self._logic.cleanup()
