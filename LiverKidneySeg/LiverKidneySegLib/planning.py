"""Surgical planning from MRML nodes: segmentation + CT + resection (plane, segment and/or
Couinaud segments) + Couinaud landmarks -> the core's :func:`lkseg.planning.run_plan`, its rows as
a table node, and the core's reports.

Coordinates: the core plans in the **volume's own RAS** (its ``IJKToRAS``); a resection plane
and Couinaud landmark points placed in world coordinates are brought into that frame through the
inverse of the volume's parent transform (points with its inverse, the normal with its transpose,
so that scaling and shear parent transforms keep the plane). Volumes are mL, lengths mm.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from LiverKidneySegLib.segmentations import findSegmentId, segmentationToLabelMap, segmentMask
from LiverKidneySegLib.volumes import parentTransformMatrix, volumeFromNode
from lkseg.errors import InputError

__all__ = [
    "PlanInputs",
    "PlanningLogicMixin",
    "landmarksFromInputs",
    "planArguments",
    "planCase",
    "planRows",
    "preparePlan",
    "presetChoices",
    "resectionFromNodes",
    "writeReport",
]

log = logging.getLogger(__name__)


@dataclass
class PlanInputs:
    """What a planning run needs besides the nodes.

    Attributes:
        heightCm / weightKg: patient size (None = unknown: BSA-standardised values not available).
        resectionPlaneNode: a ``vtkMRMLMarkupsPlaneNode``; the side its normal points to is resected.
        resectionSegmentName: a segment whose voxels are resected (instead of a plane).
        surfaces: build 3D surfaces in the core (mesh-volume cross-check, report picture).
        resectSegments: Couinaud segments to resect: ``"5,6,7,8"``, a preset name
            (``"right_hepatectomy"``, see :data:`lkseg.planning.PRESETS`), ``"segmentectomy 7"``
            or a sequence of ints; with a resection plane, the union of both is resected.
        landmarksNode: a point list of Couinaud landmarks (labels IVC, PB, RHV, MHV, LHV; world
            RAS); unplaced points are ignored. With landmarks the liver is labelled 1-8.
        autoLandmarks: when no landmarks node is given, propose them from the segmentation's
            hepatic_vein / portal_vein (/ inferior_vena_cava) segments.
    """

    heightCm: float | None = None
    weightKg: float | None = None
    resectionPlaneNode: object | None = None
    resectionSegmentName: str | None = None
    surfaces: bool = False
    resectSegments: object | None = None
    landmarksNode: object | None = None
    autoLandmarks: bool = False


#: Names of the segments :func:`LiverKidneySegLib.couinaud.couinaudToSegmentation` writes: they are
#: planning results, never organs of the label map planned on.
COUINAUD_SEGMENT_NAME = re.compile(r"^Couinaud [1-8] \(")


def _couinaudSegments(value) -> tuple[int, ...]:
    from lkseg.planning import parse_segments

    if value is None or (isinstance(value, str) and not value.strip()):
        return ()
    if isinstance(value, str):
        return parse_segments(value)
    return tuple(int(v) for v in value)


def planArguments(
    mode: str,
    *,
    heightCm: float | None = None,
    weightKg: float | None = None,
    resectionPlaneNode=None,
    resectionSegmentName: str | None = None,
    couinaudResection: str = "",
    landmarksNode=None,
    vesselsPresent: bool = False,
) -> dict:
    """The keyword arguments of the Logic's ``plan`` / ``saveReport`` for the module's planning
    choices (``mode``: "plane", "segment" or "couinaud"; the other choices are ignored).

    * Landmarks are used in every mode (they add the Couinaud segments and per-segment volumes);
      a list with no placed point is ignored except in "couinaud" mode (where it is an error).
    * In "couinaud" mode without landmarks they are proposed from vessel segments when present.

    Raises:
        InputError: unknown mode; "couinaud" mode with no segments given.
    """
    if mode not in ("plane", "segment", "couinaud"):
        raise InputError(f"unknown resection mode {mode!r}")
    if mode == "couinaud" and not (couinaudResection or "").strip():
        raise InputError("enter the Couinaud segments to resect (e.g. 5,6,7,8) or choose a preset")
    if landmarksNode is not None and landmarksNode.GetNumberOfDefinedControlPoints() == 0 and mode != "couinaud":
        landmarksNode = None  # an unplaced landmark list does not block plane/segment planning
    return {
        "heightCm": heightCm or None,
        "weightKg": weightKg or None,
        "resectionPlaneNode": resectionPlaneNode if mode == "plane" else None,
        "resectionSegmentName": (resectionSegmentName or None) if mode == "segment" else None,
        "resectSegments": couinaudResection if mode == "couinaud" else None,
        "landmarksNode": landmarksNode,
        "autoLandmarks": mode == "couinaud" and landmarksNode is None and vesselsPresent,
    }


def presetChoices() -> list[tuple[str, str]]:
    """``(label, segments)`` of the named Couinaud resections, e.g.
    ``("Right hepatectomy (5,6,7,8)", "5,6,7,8")``."""
    from lkseg.planning import PRESETS

    out = []
    for key, segments in PRESETS.items():
        text = ",".join(map(str, segments))
        out.append((f"{key.replace('_', ' ').capitalize()} ({text})", text))
    return out


def landmarksFromInputs(volumeNode, inputs: PlanInputs):
    """The inputs' Couinaud landmarks in the volume's own RAS (None when no point list is given).

    Raises:
        InputError: the point list has no placed landmark, or a missing/unlabelled landmark.
    """
    from LiverKidneySegLib.couinaud import landmarksFromMarkups, transformLandmarks

    node = inputs.landmarksNode
    if node is None:
        return None
    if node.GetNumberOfDefinedControlPoints() == 0:
        raise InputError(f"the Couinaud landmark list '{node.GetName()}' has no placed point yet")
    world = landmarksFromMarkups(node)
    return transformLandmarks(world, np.linalg.inv(parentTransformMatrix(volumeNode)))


def resectionFromNodes(volumeNode, segmentationNode, inputs: PlanInputs, grid):
    """The core :class:`~lkseg.planning.Resection` of ``inputs`` (None when none is given)."""
    from lkseg.planning import Resection, ResectionPlane
    from lkseg.volume import Volume

    if inputs.resectionPlaneNode is not None and inputs.resectionSegmentName:
        raise InputError("give either a resection plane or a resection segment, not both")
    segments = _couinaudSegments(inputs.resectSegments)
    if segments and inputs.resectionSegmentName:
        raise InputError("give either Couinaud segments or a resection segment, not both")
    if inputs.resectionPlaneNode is not None:
        plane = inputs.resectionPlaneNode
        if plane.GetNumberOfDefinedControlPoints() < 3 and not plane.GetIsPlaneValid():
            raise InputError(f"the resection plane '{plane.GetName()}' is not placed yet")
        origin, normal = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
        plane.GetOriginWorld(origin)
        plane.GetNormalWorld(normal)
        localToWorld = parentTransformMatrix(volumeNode)
        point = (np.linalg.inv(localToWorld) @ np.r_[origin, 1.0])[:3]
        # a normal maps with the inverse transpose of the point map (world-to-local): under a
        # scaling or shear parent transform the world-to-local matrix itself would tilt the plane
        direction = localToWorld[:3, :3].T @ np.asarray(normal)
        direction = direction / np.linalg.norm(direction)
        return Resection(planes=(ResectionPlane(tuple(point), tuple(direction)),), segments=segments)
    if segments:
        return Resection(segments=segments)
    if inputs.resectionSegmentName:
        segmentId = findSegmentId(segmentationNode, inputs.resectionSegmentName)
        if segmentId is None:
            raise InputError(
                f"segmentation '{segmentationNode.GetName()}' has no segment {inputs.resectionSegmentName!r}"
            )
        mask = segmentMask(segmentationNode, segmentId, grid)
        if not mask.any():
            raise InputError(f"the resection segment {inputs.resectionSegmentName!r} is empty")
        return Resection(mask=Volume(mask.astype(np.uint8), grid, {"source": inputs.resectionSegmentName}))
    return None


def planCase(volumeNode, segmentationNode, inputs: PlanInputs | None = None):
    """Run the core planning on a CT and its segmentation.

    Returns:
        ``(result, labels, table, image)``: the :class:`~lkseg.planning.PlanResult`, the label map
        and table it was computed on (the resection segment left out), and the CT Volume.
    """
    from lkseg.planning import run_plan

    labels, table, options, image = preparePlan(volumeNode, segmentationNode, inputs)
    result = run_plan(labels, table, options, image=image)
    return result, labels, table, image


def preparePlan(volumeNode, segmentationNode, inputs: PlanInputs | None = None):
    """Read the nodes (main thread): ``(labels, table, options, image)`` for
    :func:`lkseg.planning.run_plan`, which may then run on a worker thread (no MRML access)."""
    from lkseg.planning import Patient, PlanOptions

    inputs = inputs or PlanInputs()
    image = volumeFromNode(volumeNode)
    segmentation = segmentationNode.GetSegmentation()
    resectionId = findSegmentId(segmentationNode, inputs.resectionSegmentName) if inputs.resectionSegmentName else None
    ids = [
        segmentation.GetNthSegmentID(i)
        for i in range(segmentation.GetNumberOfSegments())
        if not COUINAUD_SEGMENT_NAME.match(segmentation.GetNthSegment(i).GetName())
    ]
    labels, table = segmentationToLabelMap(segmentationNode, image.grid, [s for s in ids if s != resectionId])
    landmarks = landmarksFromInputs(volumeNode, inputs)
    options = PlanOptions(
        resection=resectionFromNodes(volumeNode, segmentationNode, inputs, image.grid),
        patient=Patient(inputs.heightCm or None, inputs.weightKg or None),
        surfaces=inputs.surfaces,
        landmarks=landmarks,
        auto_landmarks=bool(inputs.autoLandmarks) and landmarks is None,
    )
    return labels, table, options, image


def planRows(result) -> list[dict]:
    """Rows of the core's CSV report (one per structure, lesion and summary measure), with every
    column of :data:`lkseg.report.CSV_COLUMNS`."""
    from lkseg.report import CSV_COLUMNS, csv_rows

    return [{column: row.get(column) for column in CSV_COLUMNS} for row in csv_rows(result)]


def writeReport(result, labels, table, image, folder: str | Path, stem: str = "report") -> dict[str, Path]:
    """JSON, CSV and HTML reports of a planning result into ``folder`` (the core's writers)."""
    from lkseg.report import write_report

    return write_report(result, folder, labels, table, image=image, stem=stem)


class PlanningLogicMixin:
    """The planning part of the module's Logic (``LiverKidneySegLogicBase``: needs its ``scene``,
    ``_background`` and ``_writeCouinaud``)."""

    def plan(
        self,
        volumeNode,
        segmentationNode,
        *,
        heightCm: float | None = None,
        weightKg: float | None = None,
        resectionPlaneNode=None,
        resectionSegmentName: str | None = None,
        resectSegments=None,
        landmarksNode=None,
        autoLandmarks: bool = False,
        couinaudSegmentationNode=None,
        tableNode=None,
        waitForCompletion: bool = True,
        progressCallback: Callable[[float, str], None] | None = None,
    ):
        """Volumes, lesions, tumour burden, Couinaud segments, FLR (with a resection plane, a
        resection segment and/or Couinaud segments), R.E.N.A.L.

        The nodes are read on the calling (main) thread; the measurements run on a worker thread,
        so the GUI stays responsive; the table is written by ``finish()`` on the main thread.

        Args:
            volumeNode: the CT; segmentationNode: its segmentation (liver, kidneys, tumours...).
            heightCm, weightKg: patient size for the BSA-standardised FLR (None = unknown).
            resectionPlaneNode: markups plane; the side its normal points to is resected.
            resectionSegmentName: or a segment whose voxels are resected.
            resectSegments: Couinaud segments to resect ("5,6,7,8", a preset such as
                "right_hepatectomy", "segmentectomy 7", or ints); with a plane, their union.
            landmarksNode: point list of Couinaud landmarks (labels IVC, PB, RHV-n, MHV-n,
                LHV-n); with it the liver is labelled with segments 1-8.
            autoLandmarks: without ``landmarksNode``, propose the landmarks from the
                hepatic_vein/portal_vein(/inferior_vena_cava) segments.
            couinaudSegmentationNode: where the Couinaud segments go (created as
                "<segmentation> Couinaud" when None and segments were computed; also kept in
                :attr:`lastCouinaudSegmentation`).
            tableNode: table to fill (created when None).
            waitForCompletion: when False, returns a :class:`PendingEdit` (``done()``, ``cancel()``,
                ``finish()`` -> ``(result, table)``) to poll from a timer.
            progressCallback: ``progress(fraction, message)``, called from the worker thread.

        Returns:
            ``(result, tableNode)``: the core ``PlanResult`` and the results table (one row per
            structure, lesion and summary measure; volumes in mL, lengths in mm).
        """
        from LiverKidneySegLib.tables import tableFromRows
        from lkseg.planning import run_plan
        from lkseg.progress import CancelToken

        inputs = PlanInputs(
            heightCm,
            weightKg,
            resectionPlaneNode,
            resectionSegmentName,
            resectSegments=resectSegments,
            landmarksNode=landmarksNode,
            autoLandmarks=autoLandmarks,
        )
        labels, table, options, image = preparePlan(volumeNode, segmentationNode, inputs)
        cancel = CancelToken()
        units = {
            "volume_ml": "mL",
            "mesh_volume_ml": "mL",
            "axial_long_mm": "mm",
            "axial_short_mm": "mm",
            "max_3d_diameter_mm": "mm",
        }
        name = f"{segmentationNode.GetName()} planning"

        def compute():
            return run_plan(labels, table, options, image=image, progress=progressCallback, cancel=cancel)

        def apply(result):
            if result.couinaud is not None:
                self.lastCouinaudSegmentation = self._writeCouinaud(
                    result, segmentationNode, volumeNode, couinaudSegmentationNode
                )
            return result, tableFromRows(planRows(result), tableNode, scene=self.scene, name=name, units=units)

        pending = self._background(compute, apply, cancel)
        return pending.finish() if waitForCompletion else pending

    def saveReport(
        self,
        volumeNode,
        segmentationNode,
        folder: str | Path,
        *,
        heightCm: float | None = None,
        weightKg: float | None = None,
        resectionPlaneNode=None,
        resectionSegmentName: str | None = None,
        resectSegments=None,
        landmarksNode=None,
        autoLandmarks: bool = False,
        waitForCompletion: bool = True,
        progressCallback: Callable[[float, str], None] | None = None,
    ):
        """Plan and write the JSON, CSV and HTML reports into ``folder``; returns the HTML path.
        The arguments are :meth:`plan`'s (the landmarks used are saved in the JSON report).

        Planning, 3D surfaces and rendering run on a worker thread (the nodes are read first, on
        the calling thread). ``waitForCompletion=False`` returns a :class:`PendingEdit` whose
        ``finish()`` returns the path.
        """
        from lkseg.planning import run_plan
        from lkseg.progress import CancelToken

        inputs = PlanInputs(
            heightCm,
            weightKg,
            resectionPlaneNode,
            resectionSegmentName,
            surfaces=True,
            resectSegments=resectSegments,
            landmarksNode=landmarksNode,
            autoLandmarks=autoLandmarks,
        )
        labels, table, options, image = preparePlan(volumeNode, segmentationNode, inputs)
        stem = f"{segmentationNode.GetName()}_report".replace(" ", "_")
        cancel = CancelToken()

        def compute():
            result = run_plan(labels, table, options, image=image, progress=progressCallback, cancel=cancel)
            written = writeReport(result, labels, table, image, folder, stem=stem)
            return written.get("html") or next(iter(written.values()))

        pending = self._background(compute, lambda path: path, cancel)
        return pending.finish() if waitForCompletion else pending
