"""The single-page app: trame-slicer views bound to :class:`~lkseg.web.session.WebSession`.

One server process serves one session (one MRML scene, one undo history). trame shares its state
between the browser tabs connected to a server: a second tab shows the same case and a warning
(single-user rule, see the README). All MRML work happens on the event loop's thread; long work
(automatic segmentation, refinement predictions, propagation, planning, exports) runs off it and
is polled (:mod:`lkseg.web.tasks`), so the page stays interactive and every long task can be
cancelled.

Page state keys start with ``lks_``. The ``lks_view_geometry`` trigger returns each slice view's
``XYToRAS`` matrix and size: tests use it to compute where a RAS point is on the page.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import numpy as np

from lkseg.errors import LKSegError
from lkseg.web.interaction import SliceTool
from lkseg.web.session import WINDOW_PRESETS, WebSession
from lkseg.web.startup import DOWNLOADS_ROUTE, AppHolder, prepareServer
from lkseg.web.tasks import LoopTasks, threadTask
from lkseg.web.views import blockTriton, fastVtkImports, sliceViewUi, threeDViewUi

__all__ = ["LKSegWebApp"]

log = logging.getLogger(__name__)

#: Structures offered as correction targets (segment names the logic understands).
TARGETS = ["liver", "liver_tumor", "kidney_right", "kidney_left", "kidney_tumor", "kidney_cyst", "liver_cyst"]
PLANE_NORMALS = {
    "R": (1.0, 0.0, 0.0),
    "L": (-1.0, 0.0, 0.0),
    "A": (0.0, 1.0, 0.0),
    "P": (0.0, -1.0, 0.0),
    "S": (0.0, 0.0, 1.0),
    "I": (0.0, 0.0, -1.0),
}


def _message(exc: BaseException) -> str:
    if isinstance(exc, LKSegError):
        return str(exc)
    if isinstance(exc, (asyncio.CancelledError,)) or type(exc).__name__ == "CancelledError":
        return "cancelled"
    return f"{type(exc).__name__}: {exc}"


class LKSegWebApp:
    """Builds the page on ``server`` and binds it to a new scene.

    Args:
        server: a trame server (not started).
        dataRoot: folder whose files the page may open (``lkseg.web.files.DataRoot``).
        workDir: private folder for uploads, exports and reports.
        prefetch: prompt-model slices prefetched on each side (see :class:`WebSession`).
        deferViews: create the four Slicer views later, with :meth:`startViews` on the running
            event loop (the page is served meanwhile; ``lkseg web`` does this).
        holder: from :func:`lkseg.web.startup.prepareServer` (called here when None: then the
            server must not be started yet).
    """

    def __init__(
        self,
        server,
        dataRoot: str | Path,
        workDir: str | Path,
        prefetch: int = 0,
        deferViews: bool = False,
        holder: AppHolder | None = None,
    ):
        blockTriton()
        fastVtkImports()
        import slicer
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories

        from lkseg.web.files import DataRoot

        self.server = server
        self.state, self.ctrl = server.state, server.controller
        if holder is None:  # not prepared by lkseg.web.startup (the server must not be started yet)
            holder = prepareServer(server, workDir)
        self.slicerApp = SlicerApp()
        if getattr(slicer, "mrmlScene", None) is None:
            slicer.mrmlScene = self.slicerApp.scene  # slicer.util helpers use it; one scene per process
        register_rca_factories(
            self.slicerApp.view_manager, server, slice_view_ui_f=sliceViewUi, three_d_view_ui_f=threeDViewUi
        )
        self.layoutManager = LayoutManager(self.slicerApp.scene, self.slicerApp.view_manager, server)
        self.layoutManager.register_layout_dict(LayoutManager.default_grid_configuration(), lazy_initialization=True)
        self.dataRoot = DataRoot(Path(dataRoot))
        self.session = WebSession(self.slicerApp, workDir, prefetch=prefetch)
        self.tasks = LoopTasks(self._pushTask)
        self.tools: dict[str, SliceTool] = {}
        self.holder = holder  # tabs connected, a page shown (also before this app existed)
        self._clients = holder.clients
        self._planDirty = False
        self._planTimer = None
        self._planBase: np.ndarray | None = None
        self._initState()
        self._bind()
        from lkseg.web.ui_planning import CouinaudPanel

        self.couinaudPanel = CouinaudPanel(self)  # segment-based planning: lkseg/web/ui_planning.py
        from lkseg.web.ui import buildUI

        buildUI(self)
        holder.app = self
        self.state.lks_other_tab = self._clients > 1
        if not deferViews:
            self._showViews()

    LAYOUT = "Quad View"

    def _showViews(self) -> None:
        self.layoutManager.set_layout(self.LAYOUT)
        if self.session.volumeNode is not None:  # a CT opened while the views were being made
            self.slicerApp.display_manager.show_volume_in_slice_background(self.session.volumeNode)
            self.slicerApp.display_manager.reset_views()
        for view in self.slicerApp.view_manager.get_slice_views():
            self.tools[view.get_singleton_tag()] = SliceTool(view, self._onBox, self._onClick)
        self._setTool(self.state.lks_tool)

    async def startViews(self, then=None) -> None:
        """Create the views one per event-loop turn, show them, then call ``then()`` (e.g. open the
        CT given on the command line). Waits up to 3 s for a first page to show its state (trame's
        ``client_connected``, sent once the page has mounted with the server's state), so that the
        page is usable while the views are made: each view blocks the loop for about a second, and
        waiting only for the websocket (as before) let them delay the page's state by 1-2 s."""
        manager = self.slicerApp.view_manager
        for _ in range(300):
            if self.holder.pageShown:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # the app's state and layout go out to the page first
        for definition in self.layoutManager.get_layout(self.LAYOUT).get_views(is_recursive=True):
            if not manager.is_view_created(definition.singleton_tag):
                manager.create_view(definition)
            await asyncio.sleep(0.01)
        with self.state:
            self._showViews()
        if then is not None:
            then()

    # -- state ---------------------------------------------------------------------------------
    def _initState(self) -> None:
        s = self.state
        s.trame__title = "LiverKidneySeg"
        s.update(
            {
                "lks_message": "",
                "lks_message_type": "info",
                "lks_message_seq": 0,
                "lks_case": "",
                "lks_path": "",
                "lks_files": [],
                "lks_series": [],
                "lks_series_uid": None,
                "lks_busy": False,
                "lks_task": "",
                "lks_progress": 0,
                "lks_progress_msg": "",
                "lks_tool": "navigate",
                "lks_target": "liver_tumor",
                "lks_targets": TARGETS,
                "lks_mode": "add",
                "lks_3d": True,
                "lks_segments": [],
                "lks_can_undo": False,
                "lks_can_redo": False,
                "lks_edits": 0,
                "lks_last_edit_s": None,
                "lks_last_edit_at": None,
                "lks_last_edit": "",
                "lks_window": "abdomen",
                "lks_windows": list(WINDOW_PRESETS),
                "lks_plane_axis": "L",
                "lks_plane_offset": 0.0,
                "lks_plane": None,
                "lks_height": None,
                "lks_weight": None,
                "lks_flr": None,
                "lks_plan_seq": 0,
                "lks_burden": [],
                "lks_renal": [],
                "lks_downloads": [],
                "lks_other_tab": False,
                "lks_upload": None,
            }
        )

    def notify(self, text: str, kind: str = "info") -> None:
        log.log(logging.WARNING if kind == "error" else logging.INFO, "page message (%s): %s", kind, text)
        self.state.lks_message, self.state.lks_message_type = text, kind
        self.state.lks_message_seq += 1

    def _pageText(self, text: str) -> str:
        """A message for the page: the server's folders never show (paths relative to the data
        folder; the private work folder by name only)."""
        root = str(self.dataRoot.root)
        for folder, shown in (
            (str(self.session.workDir), "(server work folder)"),
            (root, "(data folder)"),
        ):
            text = text.replace(folder + "/", "" if folder == root else shown + "/").replace(folder, shown)
        return text

    def _pushTask(self) -> None:
        fraction, message = self.tasks.progress.get()
        with self.state:
            self.state.lks_busy = self.tasks.busy
            self.state.lks_task = self.tasks.name or ""
            self.state.lks_progress = round(100 * fraction)
            self.state.lks_progress_msg = message

    def _refreshSegments(self) -> None:
        node = self.session.segmentationNode
        if node is not None and node.GetSegmentation().GetNumberOfSegments():
            node.CreateClosedSurfaceRepresentation()  # 3D view (kept up to date by the segmentation)
        with self.state:
            self.state.lks_segments = self.session.segments()
            self.state.lks_can_undo = self.session.logic.canUndo
            self.state.lks_can_redo = self.session.logic.canRedo

    def _guard(self, fn, *args, **kwargs):
        """Run a page action; errors become a page message (the server keeps running)."""
        try:
            with self.state:
                return fn(*args, **kwargs)
        except Exception as exc:
            if not isinstance(exc, LKSegError):
                log.exception("page action %s failed", getattr(fn, "__name__", fn))
            with self.state:
                self.notify(self._pageText(_message(exc)), "error")
            return None

    # -- bindings ------------------------------------------------------------------------------
    def _bind(self) -> None:
        c = self.ctrl
        for name in (
            "open_path",
            "browse",
            "segment",
            "cancel",
            "undo",
            "redo",
            "propagate",
            "plan",
            "export",
            "set_visible",
            "set_color",
            "set_window",
            "upload",
        ):
            c[f"lks_{name}"] = (lambda n: lambda *a, **k: self._guard(getattr(self, f"_{n}"), *a, **k))(name)
        self.server.trigger("lks_view_geometry")(self.viewGeometry)
        self.server.trigger("lks_jump")(lambda ras: self._guard(self.jumpTo, ras))
        self.state.change("lks_tool")(lambda lks_tool, **_: self._guard(self._setTool, lks_tool))
        self.state.change("lks_plane_offset", "lks_plane_axis")(lambda **_: self._guard(self._planeMoved))
        self.state.change("lks_height", "lks_weight")(lambda **_: self._guard(self._patientChanged))
        self.state.change("lks_upload")(lambda lks_upload, **_: self._guard(self._upload, lks_upload))

    def _clientsChanged(self, count: int) -> None:
        self._clients = count
        with self.state:
            self.state.lks_other_tab = count > 1

    # -- open ----------------------------------------------------------------------------------
    def _browse(self, relative: str = "") -> None:
        self.state.lks_files = [
            {**e, "path": f"{relative.rstrip('/')}/{e['name']}".lstrip("/")} for e in self.dataRoot.listdir(relative)
        ]

    def _open_path(self, relative: str | None = None, seriesUid: str | None = None) -> None:
        from lkseg.web.files import list_series

        relative = relative if relative is not None else (self.state.lks_path or "")
        self.tasks.check_idle("opening a CT")
        path = self.dataRoot.resolve(relative)
        self.state.lks_series = []
        if path.is_dir() and seriesUid is None:
            series = list_series(path)
            if len(series) > 1:
                self.state.lks_path = relative
                self.state.lks_series = [
                    {"uid": s.uid, "title": f"{s.description or s.uid} ({s.modality}, {s.n_files} files)"}
                    for s in series
                ]
                self.notify(f"{path.name} holds {len(series)} series: pick one", "info")
                return
        self._openFile(path, seriesUid)

    def _openFile(self, path: Path, seriesUid: str | None = None) -> None:
        t0 = time.perf_counter()
        node = self.session.openVolume(path, seriesUid)
        self.state.lks_case = node.GetName()
        self.state.lks_window = "abdomen"
        self.state.lks_flr, self.state.lks_burden, self.state.lks_renal = None, [], []
        self.state.lks_height, self.state.lks_weight = self.session.heightCm, self.session.weightKg
        self._planBase = None
        self._refreshSegments()
        self.couinaudPanel.refresh()
        self.notify(
            f"opened {path.name} ({'x'.join(map(str, node.GetImageData().GetDimensions()))} voxels, "
            f"{time.perf_counter() - t0:.1f} s)",
            "success",
        )

    def _upload(self, upload) -> None:
        from lkseg.web.files import MAX_UPLOAD_BYTES, save_upload

        if not upload:
            return
        files = upload if isinstance(upload, list) else [upload]
        self.state.lks_upload = None
        for item in files:
            self.tasks.check_idle("an upload")
            name, content = item.get("name", "upload"), item.get("content", b"")
            if isinstance(content, list):  # chunked upload
                content = b"".join(content)
            saved = save_upload(name, content, self.session.workDir / "uploads", MAX_UPLOAD_BYTES)
            self._openFile(saved)

    def _set_window(self, name: str) -> None:
        self.session.setWindowPreset(name)
        self.state.lks_window = name

    # -- automatic segmentation -------------------------------------------------------------------
    def _segment(self) -> None:
        self.tasks.check_idle("automatic segmentation")
        self.session.requireVolume()
        job = self.session.startSegmentation(self.tasks.progress)

        def result():
            if job.error is not None:
                raise job.error
            return job.segmentIds

        def done(ids):
            self.session.endInteraction()
            self._refreshSegments()
            self._afterEdit(f"automatic segmentation: {len(ids)} segment(s)")
            self.notify(f"automatic segmentation done ({time.perf_counter() - self.tasks.started_at:.1f} s)", "success")

        self.tasks.start("Automatic segmentation", job, done, self._taskFailed, poll=job.poll, result=result)

    def _cancel(self) -> None:
        if not self.tasks.cancel():
            self.notify("nothing to cancel")

    def _taskFailed(self, exc: BaseException) -> None:
        with self.state:
            text = self._pageText(_message(exc))
            self.notify(text, "info" if "cancel" in text.lower() else "error")
            self._refreshSegments()
        if self._planDirty:
            self._schedulePlan(0.05)

    # -- corrections ----------------------------------------------------------------------------
    def _setTool(self, tool: str) -> None:
        for sliceTool in self.tools.values():
            sliceTool.setTool(tool)

    def _onBox(self, view, ras0, ras1) -> None:
        self._guard(self._correct, view, box=np.vstack([ras0, ras1]))

    def _onClick(self, view, ras, positive: bool) -> None:
        key = "positive" if positive else "negative"
        self._guard(self._correct, view, **{key: np.asarray(ras, float).reshape(1, 3)})

    def _correct(self, view, **prompt) -> None:
        t0, arrived = time.perf_counter(), time.time()
        self.tasks.check_idle("a correction")
        self.session.requireVolume()
        axis = self.session.sliceAxis(view.get_view_node())
        target, threeD = self.state.lks_target, bool(self.state.lks_3d)
        pending = self.session.correct(
            target, axis, mode=self.state.lks_mode, threeD=threeD, progress=self.tasks.progress, **prompt
        )
        what = "box" if "box" in prompt else ("positive click" if "positive" in prompt else "negative click")
        how = "3D" if threeD else f"slice, {self.state.lks_mode}"

        def done(result):
            changed = getattr(result, "changedVoxels", None)
            self.state.lks_last_edit_at = arrived  # epoch s when the click reached the server (tests)
            self._afterEdit(
                f"{what} on {target} ({how})" + (f": {changed} voxel(s) changed" if changed is not None else ""),
                self.tasks.last_duration,
            )
            warnings = getattr(result, "warnings", None)
            if warnings:
                self.notify("; ".join(warnings), "warning")

        log.debug("%s prepared in %.3f s", what, time.perf_counter() - t0)
        self.tasks.start(f"Correction ({what}, {how})", pending, done, self._editFailed, startedAt=t0)

    def _editFailed(self, exc: BaseException) -> None:
        self.session.endInteraction()  # the next prompt starts from the segment as it is
        self._taskFailed(exc)

    def _propagate(self) -> None:
        self.tasks.check_idle("propagation")
        view = self.slicerApp.view_manager.get_view("Red")
        axis = self.session.sliceAxis(view.get_view_node())
        target = self.state.lks_target
        pending = self.session.propagate(target, axis, self.tasks.progress)
        self.tasks.start(
            "Propagation in 3D", pending, lambda r: self._afterEdit(f"propagated {target} in 3D"), self._editFailed
        )

    def _afterEdit(self, text: str, seconds: float | None = None) -> None:
        """The edit's line and undo/redo go to the page first; the segment table (volumes of every
        segment) and the 3D surfaces follow on a later loop turn, after that message was sent."""
        with self.state:
            self.state.lks_can_undo = self.session.logic.canUndo
            self.state.lks_can_redo = self.session.logic.canRedo
            self.state.lks_edits += 1
            self.state.lks_last_edit = text
            self.state.lks_last_edit_s = None if seconds is None else round(seconds, 3)
        asyncio.get_event_loop().call_later(0.02, lambda: self._guard(self._refreshSegments))
        self._schedulePlan()

    def _undo(self) -> None:
        self.tasks.check_idle("undo")
        self.session.endInteraction()
        edit = self.session.logic.undo()
        self._afterEdit("undo" if edit is not None else "nothing to undo")

    def _redo(self) -> None:
        self.tasks.check_idle("redo")
        self.session.endInteraction()
        edit = self.session.logic.redo()
        self._afterEdit("redo" if edit is not None else "nothing to redo")

    def _set_visible(self, segmentId: str, visible: bool) -> None:
        self.session.setSegmentVisible(segmentId, visible)
        self._refreshSegments()

    def _set_color(self, segmentId: str, color: str) -> None:
        self.session.setSegmentColor(segmentId, color)
        self._refreshSegments()

    # -- planning ---------------------------------------------------------------------------------
    def _planeMoved(self) -> None:
        if self.session.planeNode is None or self._planBase is None:
            return  # placed by the "Place resection plane" button
        normal = np.asarray(PLANE_NORMALS[self.state.lks_plane_axis])
        origin = self._planBase + float(self.state.lks_plane_offset or 0.0) * normal
        self.state.lks_plane = self.session.movePlane(origin, normal)
        self._schedulePlan()

    def _patientChanged(self) -> None:
        for key, attr in (("lks_height", "heightCm"), ("lks_weight", "weightKg")):
            value = self.state[key]
            try:
                setattr(self.session, attr, float(value) if value not in (None, "") else None)
            except (TypeError, ValueError):
                self.notify(f"{'height' if key == 'lks_height' else 'weight'} must be a number", "error")
                return
        self._schedulePlan()

    def _schedulePlan(self, delay: float = 0.3) -> None:
        """Re-plan when the masks, the plane or the patient change (once the plane exists); changes
        closer than ``delay`` seconds (slider drags, typing) give one planning run."""
        if self.session.planeNode is None:
            return
        if self._planTimer is not None:
            self._planTimer.cancel()
        self._planTimer = asyncio.get_event_loop().call_later(delay, self._planWhenIdle)

    def _planWhenIdle(self) -> None:
        self._planTimer = None
        if self.tasks.busy:
            self._planDirty = True
            return
        self._guard(self._plan)

    def _plan(self) -> None:
        self.tasks.check_idle("planning")
        if self.session.planeNode is None:
            plane = self.session.ensurePlane()
            # a plane moved with its handles in the views re-plans too
            plane.AddObserver(plane.PointModifiedEvent, lambda *_: self._schedulePlan())
            self._planBase = np.asarray(self.session.planeState()["origin"], float)
            normal = PLANE_NORMALS[self.state.lks_plane_axis]
            self.session.movePlane(
                self._planBase + float(self.state.lks_plane_offset or 0.0) * np.asarray(normal), normal
            )
        self._planDirty = False
        plane = self.state.lks_plane = self.session.planeState()
        pending = self.session.startPlan(self.tasks.progress)  # reads the plane node now
        self.tasks.start("Planning", pending, lambda value: self._planDone(value, plane), self._taskFailed)

    def _planDone(self, value, plane: dict) -> None:
        """``plane``: the plane the plan was computed with (it may have moved since; then a new plan
        follows and the page must not show this FLR against the new plane)."""
        result, _table = value
        self.session.lastPlan = result
        self.couinaudPanel.planDone(result)
        flr = result.flr
        with self.state:
            self.state.lks_flr = (
                None
                if flr is None
                else {
                    "tlv_ml": round(flr.tlv_ml, 2),
                    "flr_ml": round(flr.flr_ml, 2),
                    "flr_percent": round(flr.flr_percent, 2),
                    "resected_ml": round(flr.resected_ml, 2),
                    "sflr_percent": None if flr.sflr_percent is None else round(flr.sflr_percent, 2),
                    "verdict": flr.verdict,
                    "threshold_percent": flr.threshold_percent,
                    "plane": plane,
                }
            )
            self.state.lks_burden = [
                {
                    "organ": b.organ,
                    "tumour": b.tumour_structure,
                    "count": b.count,
                    "tumour_ml": round(b.tumour_volume_ml, 2),
                    "percent": None if b.percent_of_organ is None else round(b.percent_of_organ, 2),
                }
                for b in result.burden
            ]
            self.state.lks_renal = [self._renalRow(r) for r in result.renal]
            self.state.lks_plan_seq += 1
        if self._planDirty:
            self._schedulePlan(0.05)

    @staticmethod
    def _renalRow(score) -> dict:
        row = {
            "tumour": score.tumour,
            "kidney": score.kidney,
            "volume_ml": round(score.volume_ml, 2),
            "max_diameter_mm": round(score.max_diameter_mm, 1),
        }
        for key in ("R", "E", "N", "L", "total", "complexity", "notation"):
            row[key] = getattr(score, key, None)
        row["A"] = getattr(score, "anterior_posterior", None)
        return row

    # -- exports ----------------------------------------------------------------------------------
    def _export(self, kind: str) -> None:
        self.tasks.check_idle(f"the {kind} export")
        pending = threadTask(self.session.exportJob(kind))

        def done(path):
            path = Path(path)
            url = f"/{DOWNLOADS_ROUTE}/{path.name}"
            rows = [d for d in self.state.lks_downloads if d["name"] != path.name]
            self.state.lks_downloads = [*rows, {"name": path.name, "url": url, "kind": kind}]
            self.notify(f"{path.name} is ready to download", "success")
            if self._planDirty:
                self._schedulePlan(0.05)

        self.tasks.start(f"Export ({kind})", pending, done, self._taskFailed)

    # -- navigation / test hooks --------------------------------------------------------------------
    def jumpTo(self, ras) -> dict:
        """Move every slice view through the world RAS point ``ras`` (Slicer's "jump slices")."""
        r, a, s = (float(v) for v in ras)
        for view in self.slicerApp.view_manager.get_slice_views():
            view.get_view_node().JumpSliceByOffsetting(r, a, s)
        return self.viewGeometry()

    def viewGeometry(self) -> dict:
        """Per slice view: ``xy_to_ras`` (row-major 4x4) and ``size`` (render window pixels)."""
        out = {}
        for view in self.slicerApp.view_manager.get_slice_views():
            node = view.get_view_node()
            matrix = node.GetXYToRAS()
            out[view.get_singleton_tag()] = {
                "xy_to_ras": [matrix.GetElement(r, c) for r in range(4) for c in range(4)],
                "size": list(view.render_window().GetSize()),
                "trame_id": self.server.translator.translate_key(view.get_singleton_tag()),
            }
        return out
