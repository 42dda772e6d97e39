"""The page layout (Vuetify 3): a side panel of workflow cards next to the trame-slicer view grid.

Elements the browser tests use carry an ``id`` (``lks-...``); the numbers they read carry
``data-value`` attributes with the unrounded value.
"""

from __future__ import annotations

from lkseg.web.ui_planning import couinaudCard

__all__ = ["buildUI"]


def buildUI(app) -> None:
    from trame.ui.vuetify3 import SinglePageWithDrawerLayout
    from trame.widgets import html
    from trame.widgets import vuetify3 as v

    server = app.server
    with SinglePageWithDrawerLayout(server, theme=("'dark'",)) as layout:
        layout.title.set_text("LiverKidneySeg")
        layout.drawer.width = 390
        with layout.toolbar:
            v.VSpacer()
            html.Span("{{ lks_case || 'no CT open' }}", id="lks-case", classes="text-caption mr-4")
            v.VProgressLinear(
                v_show="lks_busy",
                model_value=("lks_progress",),
                id="lks-progress",
                height=6,
                color="amber",
                style="max-width: 240px;",
                classes="mr-2",
            )
            html.Span(
                "{{ lks_busy ? lks_task + ': ' + lks_progress_msg : '' }}", id="lks-task", classes="text-caption mr-2"
            )
            v.VBtn(
                "Cancel",
                v_show="lks_busy",
                click=app.ctrl.lks_cancel,
                id="lks-cancel",
                size="small",
                color="red",
                variant="tonal",
            )

        with layout.drawer:
            _messages(v, html)
            _openCard(app, v, html)
            _segmentCard(app, v, html)
            _correctionCard(app, v, html)
            _planCard(app, v, html)
            couinaudCard(app, v, html)  # lkseg/web/ui_planning.py
            _downloadCard(app, v, html)

        with layout.content, v.VContainer(fluid=True, classes="fill-height pa-0"):
            app.layoutManager.initialize_layout_grid(layout)


def _messages(v, html) -> None:
    v.VAlert(
        "This server serves ONE session: another browser tab is connected and shares this case. Close the other tab.",
        v_show="lks_other_tab",
        type="warning",
        density="compact",
        classes="ma-2",
        id="lks-other-tab",
    )
    v.VAlert(
        "{{ lks_message }}",
        v_show="lks_message",
        type=("lks_message_type",),
        density="compact",
        classes="ma-2",
        id="lks-message",
        closable=True,
        click_close="lks_message = ''",
        __properties=[("data_seq", "data-seq")],
        data_seq=("lks_message_seq",),
    )


def _card(v, title: str, id_: str):
    card = v.VCard(classes="ma-2", variant="outlined", id=id_)
    with card:
        v.VCardTitle(title, classes="text-subtitle-1")
    return card


def _openCard(app, v, html) -> None:
    with _card(v, "1. Open a CT", "lks-open-card"), v.VCardText():
        with html.Div(classes="d-flex"):
            v.VTextField(
                v_model=("lks_path",),
                label="path in the data folder",
                density="compact",
                hide_details=True,
                id="lks-path",
            )
            v.VBtn(
                "Open",
                click=(app.ctrl.lks_open_path, "[lks_path]"),
                id="lks-open",
                classes="ml-2",
                disabled=("lks_busy",),
            )
            v.VBtn("Browse", click=(app.ctrl.lks_browse, "['']"), variant="text", classes="ml-1")
        with v.VList(v_show="lks_files.length", density="compact", max_height=160, classes="overflow-y-auto"):
            v.VListItem(
                v_for="f in lks_files",
                key="f.path",
                title=("f.name",),
                subtitle=("f.kind",),
                click=(app.ctrl.lks_browse_or_open, "[f]"),
            )
        app.ctrl.lks_browse_or_open = lambda f: (
            app.ctrl.lks_browse(f["path"]) if f.get("kind") == "dir" else app.ctrl.lks_open_path(f["path"])
        )
        v.VSelect(
            v_show="lks_series.length",
            items=("lks_series",),
            item_title="title",
            item_value="uid",
            v_model=("lks_series_uid",),
            label="DICOM series",
            density="compact",
            id="lks-series",
            update_modelValue=(app.ctrl.lks_open_path, "[lks_path, $event]"),
        )
        v.VFileInput(
            v_model=("lks_upload",),
            label="or upload a CT (NIfTI, NRRD, MHA, DICOM .zip)",
            density="compact",
            hide_details=True,
            classes="mt-2",
            id="lks-upload",
            disabled=("lks_busy",),
        )
        with v.VBtnToggle(v_model=("lks_window",), density="compact", mandatory=True, classes="mt-2", id="lks-window"):
            v.VBtn(
                "{{ w }}", v_for="w in lks_windows", value=("w",), size="small", click=(app.ctrl.lks_set_window, "[w]")
            )


def _segmentCard(app, v, html) -> None:
    with _card(v, "2. Segment", "lks-segment-card"), v.VCardText():
        v.VBtn(
            "Automatic segmentation",
            click=app.ctrl.lks_segment,
            id="lks-segment",
            color="primary",
            disabled=("lks_busy || !lks_case",),
            block=True,
        )
        with v.VTable(density="compact", classes="mt-2", id="lks-segments"):
            with html.Thead(), html.Tr():
                for title in ("", "", "segment", "mL"):
                    html.Th(title)
            with (
                html.Tbody(),
                html.Tr(
                    v_for="s in lks_segments",
                    key="s.id",
                    __properties=[("data_name", "data-name")],
                    data_name=("s.name",),
                ),
            ):
                with html.Td():
                    v.VCheckboxBtn(
                        model_value=("s.visible",),
                        density="compact",
                        update_modelValue=(app.ctrl.lks_set_visible, "[s.id, $event]"),
                    )
                with html.Td():
                    html.Input(
                        type="color",
                        value=("s.color",),
                        style="width: 24px; height: 20px;",
                        change=(app.ctrl.lks_set_color, "[s.id, $event.target.value]"),
                    )
                html.Td("{{ s.name }}")
                html.Td(
                    "{{ s.volume_ml.toFixed(1) }}",
                    __properties=[("data_value", "data-value")],
                    data_value=("s.volume_ml",),
                )


def _correctionCard(app, v, html) -> None:
    with _card(v, "3. Correct", "lks-correct-card"), v.VCardText():
        with v.VBtnToggle(v_model=("lks_tool",), mandatory=True, density="compact", id="lks-tool", divided=True):
            v.VBtn("Navigate", value="navigate", size="small", id="lks-tool-navigate")
            v.VBtn("Box", value="box", size="small", id="lks-tool-box")
            v.VBtn("+ click", value="positive", size="small", id="lks-tool-positive")
            v.VBtn("- click", value="negative", size="small", id="lks-tool-negative")
        with html.Div(classes="d-flex mt-2"):
            v.VSelect(
                items=("lks_targets",),
                v_model=("lks_target",),
                label="segment",
                density="compact",
                hide_details=True,
                id="lks-target",
            )
            v.VSelect(
                items=("['add', 'subtract', 'replace']",),
                v_model=("lks_mode",),
                label="mode",
                density="compact",
                hide_details=True,
                classes="ml-2",
                style="max-width: 120px;",
                disabled=("lks_3d",),  # 3D (as in the Slicer module): + adds, - removes
                id="lks-mode",
            )
            v.VSwitch(
                v_model=("lks_3d",),
                label="3D",
                density="compact",
                hide_details=True,
                color="primary",
                classes="ml-2 flex-grow-0",
                id="lks-3d",
                title="on: a click or box edits the structure through its slices; off: this slice only",
            )
        with html.Div(classes="d-flex mt-2"):
            v.VBtn(
                "Undo", click=app.ctrl.lks_undo, disabled=("lks_busy || !lks_can_undo",), id="lks-undo", size="small"
            )
            v.VBtn(
                "Redo",
                click=app.ctrl.lks_redo,
                disabled=("lks_busy || !lks_can_redo",),
                id="lks-redo",
                size="small",
                classes="ml-1",
            )
            v.VBtn(
                "Propagate in 3D",
                click=app.ctrl.lks_propagate,
                disabled=("lks_busy",),
                size="small",
                classes="ml-1",
                id="lks-propagate",
            )
        html.Div(
            "{{ lks_last_edit }}{{ lks_last_edit_s != null ? ' (' + lks_last_edit_s.toFixed(2) + ' s)' : '' }}",
            id="lks-last-edit",
            classes="text-caption mt-1",
            __properties=[("data_edits", "data-edits")],
            data_edits=("lks_edits",),
        )


def _planCard(app, v, html) -> None:
    with _card(v, "4. Resection plan", "lks-plan-card"), v.VCardText():
        v.VBtn(
            "Place resection plane",
            click=app.ctrl.lks_plan,
            disabled=("lks_busy || !lks_case",),
            id="lks-plan",
            size="small",
            block=True,
        )
        with html.Div(classes="d-flex mt-2 align-center"):
            v.VSelect(
                items=("['L', 'R', 'A', 'P', 'S', 'I']",),
                v_model=("lks_plane_axis",),
                label="resect towards",
                density="compact",
                hide_details=True,
                style="max-width: 130px;",
            )
            with html.Div(id="lks-plane-offset", style="flex: 1;"):
                v.VSlider(
                    v_model=("lks_plane_offset",),
                    min=-120,
                    max=120,
                    step=1,
                    hide_details=True,
                    thumb_label=True,
                    classes="ml-2",
                    disabled=("!lks_plane",),
                )
        with html.Div(classes="d-flex"):
            v.VTextField(
                v_model_number=("lks_height",),
                type="number",
                label="height cm",
                density="compact",
                hide_details=True,
                id="lks-height",
            )
            v.VTextField(
                v_model_number=("lks_weight",),
                type="number",
                label="weight kg",
                density="compact",
                hide_details=True,
                classes="ml-2",
                id="lks-weight",
            )
        with html.Div(
            v_if="lks_flr",
            id="lks-flr",
            classes="mt-2",
            __properties=[("data_flr", "data-flr")],
            data_flr=("JSON.stringify(lks_flr)",),
        ):
            html.Div(
                "FLR {{ lks_flr.flr_ml.toFixed(1) }} mL = {{ lks_flr.flr_percent.toFixed(1) }} % of "
                "{{ lks_flr.tlv_ml.toFixed(1) }} mL",
                id="lks-flr-text",
            )
            html.Div(
                "sFLR {{ lks_flr.sflr_percent == null ? 'n/a (height/weight)' : "
                "lks_flr.sflr_percent.toFixed(1) + ' %' }}",
                id="lks-sflr",
            )
            v.VChip(
                "{{ lks_flr.verdict }}",
                size="small",
                id="lks-verdict",
                color=(
                    "lks_flr.verdict === 'sufficient' ? 'green' : (lks_flr.verdict === 'insufficient' ? 'red' : 'grey')",
                ),
            )
        with v.VTable(v_show="lks_burden.length", density="compact", classes="mt-2", id="lks-burden"):
            with html.Thead(), html.Tr():
                for title in ("organ", "tumours", "n", "mL", "%"):
                    html.Th(title)
            with html.Tbody(), html.Tr(v_for="b in lks_burden"):
                for key in ("organ", "tumour", "count", "tumour_ml", "percent"):
                    html.Td(f"{{{{ b.{key} }}}}")
        with v.VTable(v_show="lks_renal.length", density="compact", classes="mt-2", id="lks-renal"):
            with html.Thead(), html.Tr():
                for title in ("R.E.N.A.L.", "R", "E", "N", "A", "L", "score", "notation"):
                    html.Th(title)
            with html.Tbody(), html.Tr(v_for="r in lks_renal"):
                for key in ("tumour", "R", "E", "N", "A", "L", "total", "notation"):
                    html.Td(f"{{{{ r.{key} ?? '-' }}}}")


def _downloadCard(app, v, html) -> None:
    with _card(v, "5. Downloads", "lks-download-card"), v.VCardText():
        with html.Div(classes="d-flex flex-wrap"):
            for kind, title in (
                ("segnrrd", ".seg.nrrd"),
                ("dicomseg", "DICOM SEG"),
                ("surfaces", "STL + GLB"),
                ("report", "HTML report"),
            ):
                v.VBtn(
                    title,
                    click=(app.ctrl.lks_export, f"['{kind}']"),
                    size="small",
                    classes="ma-1",
                    disabled=("lks_busy || !lks_segments.length",),
                    id=f"lks-export-{kind}",
                )
        with v.VList(density="compact", id="lks-downloads"), v.VListItem(v_for="d in lks_downloads", key="d.url"):
            html.A("{{ d.name }}", href=("d.url",), download=("d.name",), target="_blank")
