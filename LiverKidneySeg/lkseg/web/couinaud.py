"""Segment-based (Couinaud) planning for the web page, over the Slicer module's MRML-level logic.

:class:`CouinaudPlanning` keeps the page's Couinaud state next to a
:class:`~lkseg.web.session.WebSession`: the landmark point list (a markups node shown in the
views, labels ``IVC-n``, ``PB``, ``RHV-n``, ``MHV-n``, ``LHV-n``), the segmentation node the
Couinaud segments are written into (coloured per segment, as in the Slicer module), how the
resection is given ("plane", "segments" or "both") and which segments are resected. Everything
is a call of the module's logic or helpers (``logic.plan``, ``logic.proposeLandmarks``,
:mod:`LiverKidneySegLib.couinaud`, ``LiverKidneySegLib.autoseg.importResult``) or of the core
(:class:`lkseg.planning.CouinaudLandmarks`, :func:`lkseg.planning.couinaud_segments`). No trame
here: the page binds it in :mod:`lkseg.web.ui_planning`.

Coordinates: landmark files hold RAS mm in the CT's own frame (as ``lkseg plan --landmarks``);
the point list holds world RAS (the same for a CT without a parent transform).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np

from lkseg.errors import InputError

__all__ = [
    "LANDMARK_KINDS",
    "MAX_LANDMARK_BYTES",
    "RESECT_BY",
    "CouinaudPlanning",
    "presetItems",
    "save_landmarks_upload",
]

log = logging.getLogger(__name__)

#: label prefixes of the landmark points (IVC axis, portal bifurcation, hepatic veins)
LANDMARK_KINDS = ("IVC", "PB", "RHV", "MHV", "LHV")
RESECT_BY = ("plane", "segments", "both")
#: a landmarks file is a few kB; anything larger is not one
MAX_LANDMARK_BYTES = 1024 * 1024
_LABEL = re.compile(r"^(IVC|PB|RHV|MHV|LHV)(?:-(\d+))?$")


def presetItems() -> list[dict]:
    """``{"title", "value"}`` for the page's preset picker: the named resections of
    :data:`lkseg.planning.PRESETS` and "Segmentectomy N" (value: the segments, "5,6,7,8")."""
    from LiverKidneySegLib.planning import presetChoices

    items = [{"title": title, "value": value} for title, value in presetChoices()]
    items += [{"title": f"Segmentectomy {n}", "value": str(n)} for n in range(1, 9)]
    return items


def save_landmarks_upload(name: str, content: bytes, folder: Path) -> Path:
    """An uploaded landmarks file (lkseg JSON or a Slicer ``.mrk.json``) saved under ``folder``
    after checks (size, JSON object); written through a temporary file (never a partial file)."""
    from lkseg.io import atomic_write_bytes

    if len(content) > MAX_LANDMARK_BYTES:
        raise InputError(f"{name}: {len(content)} bytes is too large for a landmarks file (limit 1 MiB)")
    try:
        data = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{name}: not a JSON landmarks file ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{name}: a landmarks file holds a JSON object")
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(name).name.split(".")[0]).strip("_") or "landmarks"
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".mrk.json" if "markups" in data else ".json"
    return atomic_write_bytes(folder / f"{stem}{suffix}", content)


class CouinaudPlanning:
    """The page's Couinaud state over ``session`` (a :class:`~lkseg.web.session.WebSession`).

    Attributes:
        landmarksNode: the landmark point list (``vtkMRMLMarkupsFiducialNode``) or None.
        couinaudNode: the segmentation holding the Couinaud segments (after a plan) or None.
        resectBy: "plane", "segments" or "both" (plane and segments: their union is resected).
        segments: Couinaud segments to resect (ints 1-8).
        onLandmarksChanged: called (on the scene's thread) after a point is placed or moved in a view.
    """

    def __init__(self, session):
        self.session = session
        self.landmarksNode = None
        self.couinaudNode = None
        self.resectBy = "plane"
        self.segments: tuple[int, ...] = ()
        self.placing: str | None = None
        self.lastPlaced: str | None = None
        #: show the Couinaud segments as surfaces in the 3D view after each plan
        self.segments3D = True
        #: the last plan result given to :meth:`planDone` (its landmarks and segments are downloadable)
        self.lastResult = None
        self.onLandmarksChanged = None
        self._observers: list[int] = []

    # -- case ----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Remove the landmark list and the Couinaud segments (a new CT is opened)."""
        scene = self.session.scene
        for node in (self.landmarksNode, self.couinaudNode):
            if node is not None and node.GetScene() is not None:
                scene.RemoveNode(node)
        self.landmarksNode = self.couinaudNode = self.lastResult = None
        self.placing = None
        self._observers = []

    def openSegmentation(self, path: str | Path) -> list[str]:
        """Read a segmentation of the open CT (``.seg.nrrd``, DICOM SEG, or a label map in the
        product's label values) and write its segments into the session's segmentation: segments
        of the same names are replaced, the others kept; one undo step. The file is read and
        checked against the CT's grid before anything changes. Returns the segment names."""
        from LiverKidneySegLib.autoseg import importResult
        from lkseg.io import read_segmentation
        from lkseg.labels import PRODUCT_LABELS

        session = self.session
        volumeNode = session.requireVolume()
        path = Path(path)
        if path.is_dir():
            raise InputError(f"{path.name} is a folder: choose a .seg.nrrd, DICOM SEG or label map file")
        reference = session.logic.volume(volumeNode)
        segmentation = read_segmentation(path, reference=reference, table=PRODUCT_LABELS)
        labels, table = segmentation.to_label_volume(), segmentation.label_table()
        if not np.any(labels.array):
            raise InputError(f"{path.name} holds no segmented voxel")
        present = set(np.unique(labels.array).tolist())
        table = {value: name for value, name in table.items() if value in present}
        importResult(labels, table, session.segmentationNode, volumeNode, True, session.logic.history)
        return list(table.values())

    # -- landmarks -----------------------------------------------------------------------------
    def ensureLandmarksNode(self):
        if self.landmarksNode is None or self.landmarksNode.GetScene() is None:
            node = self.session.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Couinaud landmarks")
            node.CreateDefaultDisplayNodes()
            display = node.GetDisplayNode()
            display.SetSelectedColor(0.2, 0.9, 1.0)
            display.SetColor(0.2, 0.9, 1.0)
            display.SetGlyphScale(2.5)
            display.SetTextScale(2.5)
            self.landmarksNode = node
            self._observers = [
                node.AddObserver(node.PointPositionDefinedEvent, self._pointPlaced),
                node.AddObserver(node.PointEndInteractionEvent, self._pointMoved),
            ]
        return self.landmarksNode

    def definedPoints(self) -> int:
        node = self.landmarksNode
        return 0 if node is None or node.GetScene() is None else node.GetNumberOfDefinedControlPoints()

    def points(self) -> list[dict]:
        """``{"label", "ras"}`` of every placed landmark point (world RAS mm, rounded to 0.01)."""
        node = self.landmarksNode
        if node is None or node.GetScene() is None:
            return []
        out = []
        for i in range(node.GetNumberOfControlPoints()):
            if node.GetNthControlPointPositionStatus(i) != node.PositionDefined:
                continue
            ras = [0.0, 0.0, 0.0]
            node.GetNthControlPointPositionWorld(i, ras)
            out.append({"label": node.GetNthControlPointLabel(i), "ras": [round(v, 2) for v in ras]})
        return out

    def summary(self) -> str:
        points = self.points()
        if not points:
            return "no landmarks yet"
        counts = {k: sum(1 for p in points if p["label"].upper().startswith(k)) for k in LANDMARK_KINDS}
        missing = [k for k, n in counts.items() if n == 0]
        text = ", ".join(f"{k} {n}" for k, n in counts.items() if n)
        return f"{len(points)} points ({text})" + (f"; missing: {', '.join(missing)}" if missing else "")

    def labelChoices(self) -> list[str]:
        """The labels a click can place: every existing point (placing it again moves it) and the
        next new point of each kind (``PB`` only while there is none)."""
        labels = [p["label"] for p in self.points()]
        out = list(labels)
        for kind in LANDMARK_KINDS:
            numbers = [int(m.group(2) or 0) for m in map(_LABEL.match, labels) if m and m.group(1) == kind]
            if kind == "PB":
                if not numbers:
                    out.append("PB")
            else:
                out.append(f"{kind}-{max(numbers, default=0) + 1}")
        order = {k: i for i, k in enumerate(LANDMARK_KINDS)}

        def key(label: str):
            m = _LABEL.match(label)
            return (order[m.group(1)], int(m.group(2) or 0)) if m else (99, 0)

        return sorted(dict.fromkeys(out), key=key)

    def nextLabel(self, placed: str) -> str:
        """The landmark to place after ``placed``: the first kind without any point (IVC, PB, RHV,
        MHV, LHV order), else ``placed`` again (to move it)."""
        points = [p["label"].upper() for p in self.points()]
        for kind in LANDMARK_KINDS:
            if not any(_LABEL.match(lb) and _LABEL.match(lb).group(1) == kind for lb in points):
                return "PB" if kind == "PB" else f"{kind}-1"
        return placed

    def _checkLandmarks(self, landmarks):
        """Label the liver with ``landmarks`` (volume RAS): ``fn()`` for a worker thread that raises
        :class:`InputError` when the landmarks contradict the liver (no liver segment: None)."""
        from LiverKidneySegLib.planning import PlanInputs, preparePlan
        from lkseg.planning import LabelIndex, couinaud_segments

        session = self.session
        labels, table, _, _ = preparePlan(session.requireVolume(), session.segmentationNode, PlanInputs())
        if "liver" not in table.values() or not np.any(labels.array):
            return None

        def check():
            return couinaud_segments(LabelIndex.build(labels, table), landmarks)

        return check

    def readLandmarks(self, path: str | Path):
        """A landmarks file (lkseg JSON or Slicer ``.mrk.json``; RAS mm of the CT, as ``lkseg plan
        --landmarks``) -> ``(landmarks, check)``: ``check`` is None or a function for a worker
        thread that labels the liver with them (raises on contradictory landmarks). Nothing in
        the scene changes until :meth:`setLandmarks`."""
        from lkseg.planning import CouinaudLandmarks

        self.session.requireVolume()
        landmarks = CouinaudLandmarks.load(path)
        return landmarks, self._checkLandmarks(landmarks)

    def setLandmarks(self, landmarks) -> None:
        """Replace the point list's points by ``landmarks`` (the CT's own RAS)."""
        from LiverKidneySegLib.couinaud import landmarksToMarkups, transformLandmarks
        from LiverKidneySegLib.volumes import parentTransformMatrix

        world = transformLandmarks(landmarks, parentTransformMatrix(self.session.requireVolume()))
        self._disarm()
        node = self.ensureLandmarksNode()
        landmarksToMarkups(world, node)
        node.SetDescription(landmarks.source)

    def proposeLandmarks(self) -> int:
        """Landmarks proposed by the logic from the hepatic_vein and portal_vein (and
        inferior_vena_cava) segments, into the point list; returns the number of points."""
        from LiverKidneySegLib.couinaud import hasVesselSegments

        session = self.session
        volumeNode = session.requireVolume()
        if not hasVesselSegments(session.segmentationNode):
            raise InputError(
                "the segmentation has no hepatic_vein and portal_vein segments to propose landmarks from: "
                "open a segmentation with vessels, load a landmarks file, or place the landmarks with 'Place'"
            )
        self._disarm()
        node = session.logic.proposeLandmarks(volumeNode, session.segmentationNode, self.ensureLandmarksNode())
        return node.GetNumberOfDefinedControlPoints()

    def clearLandmarks(self) -> None:
        self._disarm()
        if self.landmarksNode is not None and self.landmarksNode.GetScene() is not None:
            self.landmarksNode.RemoveAllControlPoints()

    def startPlacing(self, label: str) -> None:
        """Arm Slicer's place mode: the next click in a slice view places ``label`` (an existing
        point of that label is replaced by the new one once placed; nothing changes before)."""
        label = str(label or "").strip().upper()
        if not _LABEL.match(label):
            raise InputError(f"choose a landmark to place ({', '.join(LANDMARK_KINDS)}), not {label!r}")
        self.session.requireVolume()
        node = self.ensureLandmarksNode()
        self.placing = label
        node.SetControlPointPlacementStartIndex(node.GetNumberOfControlPoints())
        self.session.app.markups_logic.place_node(node, persistent=False)

    def stopPlacing(self) -> None:
        self.placing = None
        self.session.app.markups_logic.disable_place_mode()

    def _disarm(self) -> None:
        """Points written by a file or a proposal are not the click being waited for."""
        if self.placing is not None:
            self.stopPlacing()

    def _pointPlaced(self, node, _event=None) -> None:
        if self.placing is None:
            return
        label, self.placing = self.placing, None
        index = node.GetNumberOfControlPoints() - 1
        wasModifying = node.StartModify()
        try:
            for i in reversed(range(index)):
                if node.GetNthControlPointLabel(i).strip().upper() == label:
                    node.RemoveNthControlPoint(i)
                    index -= 1
            node.SetNthControlPointLabel(index, label)
        finally:
            node.EndModify(wasModifying)
        log.info("landmark %s placed", label)
        self.lastPlaced = label
        if self.onLandmarksChanged is not None:
            self.onLandmarksChanged(f"landmark {label} placed")

    def _pointMoved(self, node, _event=None) -> None:
        if self.onLandmarksChanged is not None:
            self.onLandmarksChanged("landmark moved")

    # -- downloads -----------------------------------------------------------------------------
    def exportJob(self):
        """The files that reproduce the last plan's segments: the landmarks it used (lkseg JSON,
        the CT's RAS mm: ``lkseg plan --landmarks`` takes it) and its Couinaud segments
        (``.seg.nrrd``). Reads the plan now (scene thread); returns ``fn()`` for a worker thread
        that writes both into the session's download folder (atomically) and returns their paths."""
        from lkseg.io import atomic_write_bytes
        from lkseg.web.downloads import seg_nrrd_download

        plan = self.lastResult
        if plan is None or plan.couinaud is None:
            raise InputError("plan with Couinaud landmarks first: the download holds the segments of the last plan")
        couinaud, out = plan.couinaud, self.session.exportDir()
        name = self.session.requireVolume().GetName()
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "case"

        def write() -> list[Path]:
            landmarks = couinaud.landmarks.save(out / f"{stem}_couinaud_landmarks.json")
            table = {s: f"couinaud_{s}" for s in range(1, 9)}
            download = seg_nrrd_download(couinaud.labels, table, stem=f"{stem}_couinaud_segments")
            return [landmarks, atomic_write_bytes(out / download.filename, download.data)]

        return write

    # -- 3D ------------------------------------------------------------------------------------
    def show3D(self, on: bool) -> None:
        """Couinaud segments as coloured surfaces in the 3D view (``on``; the liver segment of the
        case's segmentation is hidden in 3D meanwhile, so they can be seen), or the liver again.
        The surfaces are built on the scene's thread: the page waits for them (timed by
        ``Testing/test_web_couinaud.py``)."""
        from LiverKidneySegLib.segmentations import findSegmentId

        self.segments3D = bool(on)
        node = self.couinaudNode if self.couinaudNode is not None and self.couinaudNode.GetScene() else None
        shown = self.segments3D and node is not None and node.GetDisplayNode() is not None
        if node is not None and node.GetDisplayNode() is not None:
            if shown:
                node.CreateClosedSurfaceRepresentation()
                node.GetDisplayNode().SetOpacity3D(
                    1.0
                )  # translucent segment surfaces were not drawn here (software OpenGL)
            node.GetDisplayNode().SetVisibility3D(shown)
        main = self.session.segmentationNode
        liver = findSegmentId(main, "liver") if main is not None else None
        if liver is not None and main.GetDisplayNode() is not None:
            main.GetDisplayNode().SetSegmentVisibility3D(liver, not shown)

    # -- planning ------------------------------------------------------------------------------
    def setResection(self, resectBy: str, segments) -> None:
        if resectBy not in RESECT_BY:
            raise InputError(f"resect by {resectBy!r}: choose one of {', '.join(RESECT_BY)}")
        try:
            segs = tuple(sorted({int(s) for s in (segments or ())}))
        except (TypeError, ValueError):
            raise InputError(f"Couinaud segments must be numbers 1-8, got {segments!r}") from None
        if any(s < 1 or s > 8 for s in segs):
            raise InputError("Couinaud segments are numbered 1 to 8")
        self.resectBy, self.segments = resectBy, segs
        self._showPlane()

    def _showPlane(self) -> None:
        """The resection plane is hidden while the resection is given by segments only."""
        plane = self.session.planeNode
        if plane is not None and plane.GetScene() is not None and plane.GetDisplayNode() is not None:
            plane.GetDisplayNode().SetVisibility(self.resectBy != "segments")

    def planOptions(self) -> dict:
        """Keyword arguments of ``logic.plan`` for the Couinaud choices (merged over the session's
        plane by ``WebSession.startPlan``). Raises :class:`InputError` for segments without
        landmarks (and no vessel segments to propose them from) or without segments."""
        from LiverKidneySegLib.couinaud import hasVesselSegments

        if self.couinaudNode is not None and self.couinaudNode.GetScene() is None:
            self.couinaudNode = None
        self._showPlane()
        landmarks = self.landmarksNode if self.definedPoints() else None
        options: dict = {"landmarksNode": landmarks, "couinaudSegmentationNode": self.couinaudNode}
        if self.resectBy == "plane":
            return options
        if not self.segments:
            raise InputError("choose the Couinaud segments to resect (a preset or the segment boxes)")
        vessels = hasVesselSegments(self.session.segmentationNode)
        if landmarks is None and not vessels:
            raise InputError(
                "resecting by segments needs the Couinaud landmarks: load a landmarks file, propose them from "
                "vessel segments, or place them in the views"
            )
        options["resectSegments"] = ",".join(map(str, self.segments))
        options["autoLandmarks"] = landmarks is None and vessels
        if self.resectBy == "segments":
            options["resectionPlaneNode"] = None
        return options

    def planDone(self, result) -> dict:
        """Keep the Couinaud segmentation the logic wrote and return the page's view of a plan:
        ``segments`` (per-segment mL, resected, lesions), ``lesions`` (lesion -> segments),
        ``resection``, ``resected_ml``/``remnant_ml`` and ``warnings``."""
        logic = self.session.logic
        self.lastResult = result
        if result.couinaud is None:
            if self.couinaudNode is not None and self.couinaudNode.GetDisplayNode() is not None:
                self.couinaudNode.GetDisplayNode().SetVisibility(False)
            return {"segments": [], "lesions": [], "resection": None, "warnings": list(result.warnings)}
        node = getattr(logic, "lastCouinaudSegmentation", None)
        if node is not None:
            self.couinaudNode = node
            display = node.GetDisplayNode()
            if display is not None:
                display.SetVisibility(True)
                display.SetOpacity2DFill(0.35)
            self.show3D(self.segments3D)
        info = result.couinaud_dict()
        flr = result.flr
        return {
            "segments": [
                {
                    "segment": row["segment"],
                    "name": row["name"],
                    "volume_ml": row["volume_ml"],
                    "resected": row["resected"],
                    "lesions": ", ".join(row["lesions"]),
                }
                for row in info["segments"]
            ],
            "lesions": [
                {
                    "lesion": name,
                    "segments": ", ".join(f"{s} ({100 * f:.0f} %)" for s, f in sorted(shares.items())),
                }
                for name, shares in result.lesion_segments.items()
            ],
            "resection": None if flr is None else flr.resection,
            "resected_ml": None if flr is None else round(flr.resected_ml, 2),
            "remnant_ml": None if flr is None else round(flr.flr_ml, 2),
            "landmarks": result.couinaud.landmarks.source,
            "warnings": list(info.get("warnings", [])),
        }
