"""Planning reports: JSON (everything + audit trail), CSV (one row per structure / lesion /
measure) and a self-contained HTML page with axial/coronal overlays, a 3D picture and a chart.

Entry point: :func:`write_report`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from lkseg.labels import LabelTable
from lkseg.planning.plan import PlanResult
from lkseg.report.html import data_uri, render_html, write_html
from lkseg.report.pictures import overlay_png, slice_through, volume_chart_svg
from lkseg.report.provenance import Provenance, collect_provenance, file_sha256
from lkseg.report.tables import CSV_COLUMNS, csv_rows, report_dict, write_csv, write_json
from lkseg.volume import Volume

__all__ = [
    "CSV_COLUMNS",
    "Provenance",
    "collect_provenance",
    "csv_rows",
    "data_uri",
    "file_sha256",
    "make_pictures",
    "overlay_png",
    "render_html",
    "report_dict",
    "slice_through",
    "volume_chart_svg",
    "write_csv",
    "write_html",
    "write_json",
    "write_report",
]

log = logging.getLogger(__name__)


def _focus(result: PlanResult, labels: Volume, table: LabelTable):
    """Point (RAS) for the pictures and the lesion long axis to draw: the largest tumour, else
    the centre of the liver, else of the largest structure."""
    tumours = [les for les in result.lesions if les.structure in ("liver_tumor", "kidney_tumor")] or result.lesions
    if tumours:
        les = max(tumours, key=lambda x: x.voxels)
        a, b = (np.asarray(p) for p in les.axial_long_ends_ras)
        return 0.5 * (a + b), [les.axial_long_ends_ras], les.label
    present = {n: v for n, v in result.volumes.items() if v.voxels}
    name = "liver" if "liver" in present else max(present, key=lambda n: present[n].voxels)
    values = [v for v, n in table.items() if n == name]
    idx = np.argwhere(np.isin(labels.array[::4, ::4, ::4], values)).mean(axis=0) * 4
    return labels.grid.index_to_ras(idx[::-1]), [], name


def make_pictures(
    result: PlanResult,
    labels: Volume,
    table: LabelTable,
    image: Volume | None = None,
    *,
    render_3d: bool = True,
    width: int = 512,
) -> tuple[dict[str, tuple[bytes, str]], dict[str, str]]:
    """Axial and coronal overlays through the largest tumour (or the liver), and the 3D view.

    Returns:
        (pictures name -> (PNG bytes, caption), notes name -> why a picture is missing).
    """
    pictures: dict[str, tuple[bytes, str]] = {}
    notes: dict[str, str] = {}
    point, lines, what = _focus(result, labels, table)
    where = slice_through(labels, point)
    resected = None
    flr = result.flr
    if flr is not None and flr.resected_mask is not None and flr.resected_box is not None:
        full = np.zeros(labels.shape, dtype=bool)
        full[flr.resected_box] = flr.resected_mask
        resected = labels.with_array(full)
    tint = " Resected liver in red." if resected is not None else ""
    for view in ("axial", "coronal"):
        png = overlay_png(
            labels,
            table,
            view,
            where[view],
            image,
            resected=resected,
            lines_ras=lines if view == "axial" else (),
            width=width,
        )
        axis = "S" if view == "axial" else "A"
        caption = f"{view.capitalize()} slice through {what} (RAS {axis} = {point[2 if view == 'axial' else 1]:.1f} mm).{tint}"
        if view == "axial" and lines:
            caption += " White: longest axial diameter."
        pictures[view] = (png, caption)
    if render_3d and result.surfaces:
        from lkseg.surfaces import RenderError, render_png_bytes

        try:
            pictures["3d"] = (
                render_png_bytes(result.surfaces, size=(width + 128, width)),
                "3D surfaces, anterior view (patient's right on the left); organs translucent.",
            )
        except RenderError as exc:
            notes["3d"] = f"not available: {exc}"
            log.warning("3D picture not available: %s", exc)
    elif render_3d:
        notes["3d"] = "not available: no surfaces were built"
    return pictures, notes


def write_report(
    result: PlanResult,
    out_dir: str | Path,
    labels: Volume,
    table: LabelTable,
    *,
    image: Volume | None = None,
    provenance: Provenance | None = None,
    formats: Iterable[str] = ("json", "csv", "html"),
    render_3d: bool = True,
    stem: str = "report",
) -> dict[str, Path]:
    """Write the reports into ``out_dir`` as ``<stem>.json``, ``<stem>.csv``, ``<stem>.html``
    (plus ``<stem>_axial.png``, ``<stem>_coronal.png``, ``<stem>_3d.png`` with the HTML).

    Returns:
        kind -> written path.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    formats = {f.lower() for f in formats}
    written: dict[str, Path] = {}
    if "html" in formats:
        from lkseg.io.atomic import atomic_write_bytes

        pictures, notes = make_pictures(result, labels, table, image, render_3d=render_3d)
        result.notes.update({f"picture_{k}": v for k, v in notes.items()})
        for name, (png, _) in pictures.items():
            written[f"png_{name}"] = atomic_write_bytes(out_dir / f"{stem}_{name}.png", png)
        written["html"] = write_html(result, out_dir / f"{stem}.html", provenance, pictures)
    if "json" in formats:
        written["json"] = write_json(result, out_dir / f"{stem}.json", provenance)
    if "csv" in formats:
        written["csv"] = write_csv(result, out_dir / f"{stem}.csv")
    return written
