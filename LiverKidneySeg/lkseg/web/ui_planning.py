"""The page's "Liver segments (Couinaud)" card and its handlers.

:class:`CouinaudPanel` binds page state (keys ``lks_cou_*``) and controller actions to the
session's :class:`~lkseg.web.couinaud.CouinaudPlanning`; :func:`couinaudCard` lays the card out
(Vuetify 3). Planning itself is the page's one planning action (``ctrl.lks_plan`` ->
``WebSession.startPlan``, which merges :meth:`CouinaudPlanning.planOptions`), so a plane, segments
or both give one FLR, shown in the plan card and here.

Element ids the browser tests use start with ``lks-cou-``; numbers carry ``data-*`` attributes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from lkseg.errors import InputError

__all__ = ["CouinaudPanel", "couinaudCard"]

log = logging.getLogger(__name__)


class CouinaudPanel:
    """Page state and actions of segment-based planning on ``app`` (an ``LKSegWebApp``)."""

    def __init__(self, app):
        from lkseg.web.couinaud import presetItems

        self.app = app
        self.state = app.state
        self.planning = app.session.couinaud
        self.planning.onLandmarksChanged = self._landmarksChanged
        self.state.update(
            {
                "lks_cou_mode": "plane",
                "lks_cou_segments": [],
                "lks_cou_presets": presetItems(),
                "lks_cou_preset": None,
                "lks_cou_points": [],
                "lks_cou_points_text": "no landmarks yet",
                "lks_cou_labels": [],
                "lks_cou_label": "PB",
                "lks_cou_placing": None,
                "lks_cou_landmarks_path": "",
                "lks_cou_seg_path": "",
                "lks_cou_upload": None,
                "lks_cou_plan": None,
                "lks_cou_3d": True,
            }
        )
        ctrl = app.ctrl
        for name in ("open_seg", "propose", "load", "place", "stop", "clear", "preset", "export"):
            ctrl[f"lks_cou_{name}"] = (lambda n: lambda *a, **k: app._guard(getattr(self, f"_{n}"), *a, **k))(name)
        self.state.change("lks_cou_mode", "lks_cou_segments")(lambda **_: app._guard(self._resectionChanged))
        self.state.change("lks_cou_3d")(lambda lks_cou_3d, **_: app._guard(self.planning.show3D, lks_cou_3d))
        self.state.change("lks_tool")(lambda lks_tool, **_: app._guard(self._toolChanged, lks_tool))
        self.state.change("lks_cou_upload")(lambda lks_cou_upload, **_: app._guard(self._upload, lks_cou_upload))
        self.refresh()

    # -- page state ----------------------------------------------------------------------------
    def refresh(self) -> None:
        """Landmark list, summary and label picker from the point list (and after a new case)."""
        planning = self.planning
        with self.state:
            self.state.lks_cou_points = planning.points()
            self.state.lks_cou_points_text = planning.summary()
            labels = planning.labelChoices()
            self.state.lks_cou_labels = labels
            if self.state.lks_cou_label not in labels:
                self.state.lks_cou_label = next((lb for lb in labels if lb == "PB"), labels[0] if labels else None)
            self.state.lks_cou_placing = planning.placing
            if self.app.session.volumeNode is None:
                self.state.lks_cou_plan = None

    def planDone(self, result) -> None:
        """Called by the page after each plan: per-segment volumes, lesion -> segments, resection."""
        with self.state:
            self.state.lks_cou_plan = self.planning.planDone(result)

    def _replan(self) -> None:
        self.app._schedulePlan()

    # -- actions -------------------------------------------------------------------------------
    def _open_seg(self, relative: str | None = None) -> None:
        app = self.app
        app.tasks.check_idle("opening a segmentation")
        relative = relative if relative is not None else (self.state.lks_cou_seg_path or "")
        if not str(relative).strip():
            raise InputError("type the path of a .seg.nrrd or label map in the data folder")
        path = app.dataRoot.resolve(relative)
        t0 = time.perf_counter()
        names = self.planning.openSegmentation(path)
        app._afterEdit(f"opened masks {path.name}")
        app.notify(
            f"opened {path.name}: {len(names)} segment(s) ({', '.join(names)}; {time.perf_counter() - t0:.1f} s)",
            "success",
        )

    def _propose(self) -> None:
        app = self.app
        app.tasks.check_idle("proposing landmarks")
        t0 = time.perf_counter()
        count = self.planning.proposeLandmarks()
        self.refresh()
        app.notify(
            f"proposed {count} landmark point(s) from the vessel segments ({time.perf_counter() - t0:.1f} s): "
            "check them and move any that is off",
            "success",
        )
        self._replan()

    def _load(self, relative: str | None = None) -> None:
        app = self.app
        relative = relative if relative is not None else (self.state.lks_cou_landmarks_path or "")
        if not str(relative).strip():
            raise InputError("type the path of a landmarks file (.json or .mrk.json) in the data folder")
        self._loadFile(app.dataRoot.resolve(relative))

    def _upload(self, upload) -> None:
        from lkseg.web.couinaud import save_landmarks_upload

        if not upload:
            return
        self.state.lks_cou_upload = None
        item = upload[0] if isinstance(upload, list) else upload
        content = item.get("content", b"")
        if isinstance(content, list):  # chunked upload
            content = b"".join(content)
        self.app.tasks.check_idle("loading landmarks")
        name = Path(str(item.get("name") or "landmarks.json")).name
        saved = save_landmarks_upload(name, content, self.app.session.workDir / "uploads")
        try:
            self._loadFile(saved)
        except Exception as exc:
            saved.unlink(missing_ok=True)  # not kept: the page's message says why
            if isinstance(exc, InputError):  # the upload's name, not the server's private path
                raise InputError(str(exc).replace(str(saved), name)) from None
            raise

    def _loadFile(self, path: Path) -> None:
        """Read the file, check the landmarks against the liver on a worker thread, then show them
        (a contradictory file changes nothing)."""
        from lkseg.web.tasks import threadTask

        app = self.app
        app.tasks.check_idle("loading landmarks")
        landmarks, check = self.planning.readLandmarks(path)

        def done(couinaud) -> None:
            self.planning.setLandmarks(landmarks)
            self.refresh()
            extra = "" if couinaud is None else f"; {sum(1 for v in couinaud.volumes_ml.values() if v)} segments"
            app.notify(f"landmarks loaded from {path.name}{extra}", "success")
            self._replan()

        if check is None:  # no liver yet: checked when planning
            done(None)
            return
        app.tasks.start(f"Checking landmarks ({path.name})", threadTask(check), done, app._taskFailed)

    def _place(self, label: str | None = None) -> None:
        app = self.app
        app.tasks.check_idle("placing a landmark")
        label = label or self.state.lks_cou_label
        if self.state.lks_tool != "navigate":  # Slicer's own place mode needs its interactor style
            self.state.lks_tool = "navigate"
            app._setTool("navigate")
        self.planning.startPlacing(label)
        self.state.lks_cou_placing = self.planning.placing
        app.notify(f"click the {label} landmark in a slice view", "info")

    def _export(self) -> None:
        """Landmarks JSON + Couinaud segments .seg.nrrd of the last plan, into the page's downloads."""
        from lkseg.web.app import DOWNLOADS_ROUTE
        from lkseg.web.tasks import threadTask

        app = self.app
        app.tasks.check_idle("the Couinaud export")
        pending = threadTask(self.planning.exportJob())

        def done(paths) -> None:
            names = [Path(p).name for p in paths]
            rows = [d for d in self.state.lks_downloads if d["name"] not in names]
            self.state.lks_downloads = rows + [
                {"name": n, "url": f"/{DOWNLOADS_ROUTE}/{n}", "kind": "couinaud"} for n in names
            ]
            app.notify(f"{' and '.join(names)} ready to download", "success")

        app.tasks.start("Export (Couinaud)", pending, done, app._taskFailed)

    def _toolChanged(self, tool: str) -> None:
        """A correction tool takes the slice views' clicks: a waiting landmark placement ends."""
        if tool != "navigate" and self.planning.placing is not None:
            self._stop()

    def _stop(self) -> None:
        self.planning.stopPlacing()
        self.refresh()

    def _clear(self) -> None:
        self.app.tasks.check_idle("clearing the landmarks")
        self.planning.clearLandmarks()
        self.refresh()
        self._replan()

    def _preset(self, value) -> None:
        if not value:
            return
        segments = [int(v) for v in str(value).split(",") if v.strip()]
        with self.state:
            self.state.lks_cou_segments = segments
            if self.state.lks_cou_mode == "plane":
                self.state.lks_cou_mode = "segments"

    def _resectionChanged(self) -> None:
        self.planning.setResection(self.state.lks_cou_mode, self.state.lks_cou_segments)
        self._replan()

    def _landmarksChanged(self, text: str) -> None:
        """A point placed or moved in a view (the scene's thread); after a placement the picker
        offers the first missing landmark."""
        if text.endswith(" placed") and self.planning.lastPlaced:
            self.state.lks_cou_label = self.planning.nextLabel(self.planning.lastPlaced)
        self.refresh()
        self.app.notify(text, "success")
        self._replan()


def couinaudCard(app, v, html) -> None:
    """The card: resect by, preset and segments, masks, landmarks, and the plan's segment tables."""
    ctrl = app.ctrl
    card = v.VCard(classes="ma-2", variant="outlined", id="lks-cou-card")
    with card:
        v.VCardTitle("4b. Liver segments (Couinaud)", classes="text-subtitle-1")
        with v.VCardText():
            html.Span("resect by ", classes="text-caption mr-2")
            with v.VBtnToggle(
                v_model=("lks_cou_mode",), mandatory=True, density="compact", divided=True, id="lks-cou-mode"
            ):
                for mode in ("plane", "segments", "both"):
                    v.VBtn(mode, value=mode, size="small", id=f"lks-cou-mode-{mode}")
            v.VSelect(
                items=("lks_cou_presets",),
                item_title="title",
                item_value="value",
                v_model=("lks_cou_preset",),
                label="preset",
                density="compact",
                hide_details=True,
                classes="mt-2",
                id="lks-cou-preset",
                update_modelValue=(ctrl.lks_cou_preset, "[$event]"),
            )
            with html.Div(classes="d-flex flex-wrap", id="lks-cou-segments"):
                for n in range(1, 9):
                    v.VCheckbox(
                        v_model=("lks_cou_segments",),
                        value=(str(n),),
                        label=str(n),
                        density="compact",
                        hide_details=True,
                        classes="mr-1",
                        style="flex: 0 0 auto;",
                        id=f"lks-cou-seg-{n}",
                    )
            html.Div("landmarks", classes="text-caption mt-1")
            html.Div(
                "{{ lks_cou_points_text }}",
                id="lks-cou-points-text",
                classes="text-caption",
                __properties=[("data_count", "data-count")],
                data_count=("lks_cou_points.length",),
            )
            with html.Div(classes="d-flex mt-1"):
                v.VBtn(
                    "Propose from vessels",
                    click=ctrl.lks_cou_propose,
                    disabled=("lks_busy || !lks_case",),
                    size="small",
                    id="lks-cou-propose",
                )
                v.VBtn("Clear", click=ctrl.lks_cou_clear, size="small", variant="text", classes="ml-1")
            with html.Div(classes="d-flex mt-1"):
                v.VTextField(
                    v_model=("lks_cou_landmarks_path",),
                    label="landmarks file (.json, .mrk.json)",
                    density="compact",
                    hide_details=True,
                    id="lks-cou-landmarks-path",
                )
                v.VBtn(
                    "Load",
                    click=(ctrl.lks_cou_load, "[lks_cou_landmarks_path]"),
                    disabled=("lks_busy || !lks_case",),
                    size="small",
                    classes="ml-2 mt-1",
                    id="lks-cou-load",
                )
            v.VFileInput(
                v_model=("lks_cou_upload",),
                label="or upload a landmarks file",
                accept=".json",
                density="compact",
                hide_details=True,
                classes="mt-1",
                id="lks-cou-upload",
                disabled=("lks_busy || !lks_case",),
            )
            with html.Div(classes="d-flex mt-1 align-center"):
                v.VSelect(
                    items=("lks_cou_labels",),
                    v_model=("lks_cou_label",),
                    label="landmark",
                    density="compact",
                    hide_details=True,
                    id="lks-cou-label",
                )
                v.VBtn(
                    "Place",
                    v_show="!lks_cou_placing",
                    click=(ctrl.lks_cou_place, "[lks_cou_label]"),
                    disabled=("lks_busy || !lks_case",),
                    size="small",
                    classes="ml-2",
                    id="lks-cou-place",
                )
                v.VBtn(
                    "Stop",
                    v_show="lks_cou_placing",
                    click=ctrl.lks_cou_stop,
                    size="small",
                    color="amber",
                    classes="ml-2",
                    id="lks-cou-stop",
                )
            with html.Div(classes="d-flex mt-1"):
                v.VTextField(
                    v_model=("lks_cou_seg_path",),
                    label="open masks (.seg.nrrd / label map)",
                    density="compact",
                    hide_details=True,
                    id="lks-cou-seg-path",
                )
                v.VBtn(
                    "Open",
                    click=(ctrl.lks_cou_open_seg, "[lks_cou_seg_path]"),
                    disabled=("lks_busy || !lks_case",),
                    size="small",
                    classes="ml-2 mt-1",
                    id="lks-cou-open-seg",
                )
            v.VCheckbox(
                v_model=("lks_cou_3d",),
                label="segments in 3D (liver surface hidden)",
                density="compact",
                hide_details=True,
                id="lks-cou-3d",
            )
            v.VBtn(
                "Plan",
                click=ctrl.lks_plan,
                disabled=("lks_busy || !lks_case",),
                size="small",
                block=True,
                color="primary",
                classes="mt-2",
                id="lks-cou-plan",
            )
            _results(v, html, ctrl)


def _results(v, html, ctrl) -> None:
    with html.Div(
        v_if="lks_cou_plan && lks_cou_plan.segments.length",
        id="lks-cou-result",
        classes="mt-2",
        __properties=[("data_plan", "data-plan")],
        data_plan=("JSON.stringify(lks_cou_plan)",),
    ):
        html.Div(
            "{{ lks_cou_plan.resection && lks_cou_plan.resection.segments ? 'segments ' + "
            "lks_cou_plan.resection.segments.join(', ') + (lks_cou_plan.resection.planes ? ' + plane' : '') : "
            "'plane' }}: resected {{ lks_cou_plan.resected_ml == null ? '-' : lks_cou_plan.resected_ml.toFixed(1) }} mL, "
            "remnant {{ lks_cou_plan.remnant_ml == null ? '-' : lks_cou_plan.remnant_ml.toFixed(1) }} mL"
            "{{ lks_flr ? ' = FLR ' + lks_flr.flr_percent.toFixed(1) + ' %' + (lks_flr.sflr_percent == null ? '' : "
            "', sFLR ' + lks_flr.sflr_percent.toFixed(1) + ' %') + ', ' + lks_flr.verdict : '' }}",
            id="lks-cou-summary",
            classes="text-body-2",
        )
        with v.VTable(density="compact", id="lks-cou-table"):
            with html.Thead(), html.Tr():
                for title in ("segment", "mL", ""):
                    html.Th(title)
            with (
                html.Tbody(),
                html.Tr(
                    v_for="s in lks_cou_plan.segments",
                    key="s.segment",
                    __properties=[("data_segment", "data-segment"), ("data_value", "data-value")],
                    data_segment=("s.segment",),
                    data_value=("s.volume_ml",),
                ),
            ):
                html.Td("{{ s.segment }} {{ s.name }}")
                html.Td("{{ s.volume_ml.toFixed(1) }}")
                html.Td("{{ s.resected ? 'resected' : '' }}")
        with v.VTable(v_show="lks_cou_plan.lesions.length", density="compact", id="lks-cou-lesions"):
            with html.Thead(), html.Tr():
                html.Th("lesion")
                html.Th("segment (share)")
            with html.Tbody(), html.Tr(v_for="l in lks_cou_plan.lesions"):
                html.Td("{{ l.lesion }}")
                html.Td("{{ l.segments }}")
        html.Div(
            "landmarks: {{ lks_cou_plan.landmarks }}",
            classes="text-caption",
        )
        v.VBtn(
            "Download landmarks + segments",
            click=ctrl.lks_cou_export,
            disabled=("lks_busy",),
            size="small",
            variant="tonal",
            classes="mt-1",
            id="lks-cou-export",
        )
        html.Div("{{ w }}", v_for="w in lks_cou_plan.warnings", classes="text-caption text-warning")
