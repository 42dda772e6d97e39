"""The web page's downloads, built in memory from the current label map with the core's writers.

Each function writes through the same writer the CLI and the Slicer module use (``.seg.nrrd``:
:func:`lkseg.io.segnrrd.write_seg_nrrd`; DICOM SEG: :func:`lkseg.io.dicomseg.write_dicom_seg`;
surfaces: :mod:`lkseg.surfaces`; report: :func:`lkseg.report.write_report`) into a temporary
folder and returns the bytes as a :class:`Download` (file name, bytes, MIME type), which the page
hands to the browser. Nothing is left on disk. Long ones (surfaces, report) take ``progress`` and
``cancel`` and belong in a :class:`lkseg.web.jobs.JobRunner` job.

Label maps are :class:`~lkseg.volume.Volume` (ZYX array, LPS geometry) on the CT's grid, with a
:class:`~lkseg.labels.LabelTable` naming the values.
"""

from __future__ import annotations

import io
import re
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lkseg.errors import InputError
from lkseg.labels import LabelTable
from lkseg.progress import CancelToken, ProgressCallback, SubProgress, report
from lkseg.volume import Volume

__all__ = [
    "Download",
    "bundle_download",
    "dicom_seg_download",
    "report_download",
    "seg_nrrd_download",
    "surfaces_download",
]

MIME_OCTET = "application/octet-stream"
MIME_DICOM = "application/dicom"
MIME_ZIP = "application/zip"
MIME_HTML = "text/html"


@dataclass(frozen=True)
class Download:
    """A file for the browser: ``filename`` (no folder), ``data`` (its bytes), ``mime``."""

    filename: str
    data: bytes
    mime: str

    @property
    def size(self) -> int:
        return len(self.data)


def _stem(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._") or "lkseg"


def _table(table: LabelTable | Mapping[int, str]) -> LabelTable:
    return table if isinstance(table, LabelTable) else LabelTable(table)


def _segmentation(labels: Volume, table, *, drop_empty: bool, series_uid: str | None = None):
    from lkseg.segmentation import Segmentation

    seg = Segmentation.from_label_volume(labels, _table(table), drop_empty=drop_empty)
    if series_uid:
        seg.meta["series_uid"] = series_uid
    return seg


def seg_nrrd_download(labels: Volume, table: LabelTable | Mapping[int, str], *, stem: str = "segmentation") -> Download:
    """The label map as a 3D Slicer ``.seg.nrrd`` (one segment per table entry, names and colours)."""
    from lkseg.io.segnrrd import write_seg_nrrd

    name = f"{_stem(stem)}.seg.nrrd"
    with tempfile.TemporaryDirectory(prefix="lkseg-dl-") as tmp:
        path = write_seg_nrrd(_segmentation(labels, table, drop_empty=False), Path(tmp) / name)
        return Download(name, path.read_bytes(), MIME_OCTET)


def dicom_seg_download(
    labels: Volume,
    table: LabelTable | Mapping[int, str],
    source_dicom: str | Path | None,
    *,
    series_uid: str | None = None,
    stem: str = "segmentation",
    series_description: str = "LiverKidneySeg segmentation",
) -> Download:
    """The label map as a DICOM SEG referencing the CT series it was drawn on.

    Args:
        source_dicom: the folder of the CT's DICOM series (None when the CT came from a NIfTI,
            NRRD or MetaImage file: then there is nothing to reference and InputError is raised).
        series_uid: the CT's SeriesInstanceUID when the folder holds several series (default:
            ``labels.meta["series_uid"]``).

    Raises:
        InputError: no DICOM source, no segment with voxels, or the source cannot be read.
        GeometryMismatchError: the label map is not on the series' grid.
    """
    from lkseg.io.dicomseg import write_dicom_seg

    if source_dicom is None:
        raise InputError(
            "a DICOM SEG refers to the DICOM series of the CT; this CT was not opened from DICOM "
            "(download the .seg.nrrd instead)"
        )
    seg = _segmentation(labels, table, drop_empty=True, series_uid=series_uid or labels.meta.get("series_uid"))
    if not seg.segments:
        raise InputError("the segmentation is empty: no DICOM SEG to write")
    name = f"{_stem(stem)}_seg.dcm"
    with tempfile.TemporaryDirectory(prefix="lkseg-dl-") as tmp:
        path = write_dicom_seg(seg, source_dicom, Path(tmp) / name, series_description=series_description)
        return Download(name, path.read_bytes(), MIME_DICOM)


def _zip_folder(folder: Path, names: Iterable[Path]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(set(names)):
            zf.write(path, path.relative_to(folder).as_posix())
    return buf.getvalue()


def _meshes(labels: Volume, table, meshes, progress, cancel):
    if meshes is not None:
        return list(meshes)
    from lkseg.surfaces import build_surfaces

    return build_surfaces(labels, _table(table), progress=progress, cancel=cancel)


def surfaces_download(
    labels: Volume,
    table: LabelTable | Mapping[int, str],
    *,
    meshes: Sequence | None = None,
    formats: Iterable[str] = ("stl", "glb"),
    stem: str = "surfaces",
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> Download:
    """A zip of the 3D surfaces: one ``<structure>.stl`` per structure and ``scene.glb`` (coloured,
    all structures), in patient RAS millimetres as the core exports them.

    Args:
        meshes: surfaces already built (e.g. ``PlanResult.surfaces``); built from ``labels`` when None.

    Raises:
        InputError: every structure is empty, or an unknown format.
    """
    from lkseg.surfaces import export_surfaces

    built = _meshes(labels, table, meshes, SubProgress(progress, 0.0, 0.9, "surfaces: "), cancel)
    if cancel is not None:
        cancel.raise_if_cancelled()
    with tempfile.TemporaryDirectory(prefix="lkseg-dl-") as tmp:
        folder = Path(tmp)
        written = export_surfaces(built, folder, list(formats))
        data = _zip_folder(folder, [p for paths in written.values() for p in paths])
    report(progress, 1.0, "surfaces ready")
    return Download(f"{_stem(stem)}.zip", data, MIME_ZIP)


def report_download(
    plan,
    labels: Volume,
    table: LabelTable | Mapping[int, str],
    *,
    image: Volume | None = None,
    stem: str = "report",
    render_3d: bool = True,
) -> Download:
    """The planning report as one self-contained HTML file (pictures embedded).

    Args:
        plan: the :class:`~lkseg.planning.PlanResult` shown on the page.
        image: the CT (the report's slice pictures show it under the masks).
        render_3d: include the 3D picture (offscreen VTK rendering; a note replaces it when
            rendering is not available).
    """
    from lkseg.report import write_report

    if plan is None:
        raise InputError("no planning result yet: run the planning (resection plane, FLR) before the report")
    with tempfile.TemporaryDirectory(prefix="lkseg-dl-") as tmp:
        written = write_report(
            plan, tmp, labels, _table(table), image=image, formats=("html",), render_3d=render_3d, stem=_stem(stem)
        )
        return Download(f"{_stem(stem)}.html", written["html"].read_bytes(), MIME_HTML)


def bundle_download(
    labels: Volume,
    table: LabelTable | Mapping[int, str],
    *,
    image: Volume | None = None,
    plan=None,
    source_dicom: str | Path | None = None,
    series_uid: str | None = None,
    stem: str = "lkseg",
    render_3d: bool = True,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> Download:
    """One zip with everything available: ``.seg.nrrd``, DICOM SEG (when the CT came from
    DICOM), ``surfaces/`` (STL + GLB), the HTML, JSON and CSV reports (when there is a plan), and
    ``README.txt`` listing what was left out and why."""
    stem = _stem(stem)
    notes: list[str] = []
    parts: list[Download] = []

    def step(fraction: float, message: str) -> None:
        if cancel is not None:
            cancel.raise_if_cancelled()
        report(progress, fraction, message)

    step(0.0, "segmentation")
    parts.append(seg_nrrd_download(labels, table, stem=stem))
    step(0.1, "DICOM SEG")
    try:
        parts.append(dicom_seg_download(labels, table, source_dicom, series_uid=series_uid, stem=stem))
    except InputError as exc:
        notes.append(f"DICOM SEG left out: {exc}")
    step(0.2, "surfaces")
    meshes = list(plan.surfaces) if plan is not None and getattr(plan, "surfaces", None) else None
    try:
        surf = surfaces_download(
            labels, table, meshes=meshes, stem="surfaces", progress=SubProgress(progress, 0.2, 0.7), cancel=cancel
        )
        with zipfile.ZipFile(io.BytesIO(surf.data)) as zf:
            parts.extend(Download(f"surfaces/{n}", zf.read(n), MIME_OCTET) for n in zf.namelist())
    except InputError as exc:
        notes.append(f"surfaces left out: {exc}")
    step(0.7, "report")
    if plan is None:
        notes.append("reports left out: no planning result yet")
    else:
        from lkseg.report import write_report

        with tempfile.TemporaryDirectory(prefix="lkseg-dl-") as tmp:
            written = write_report(plan, tmp, labels, _table(table), image=image, render_3d=render_3d, stem="report")
            for kind in ("html", "json", "csv"):
                path = written[kind]
                parts.append(Download(f"report/{path.name}", path.read_bytes(), MIME_OCTET))
    step(0.95, "packing")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for part in parts:
            zf.writestr(f"{stem}/{part.filename}", part.data)
        readme = "LiverKidneySeg download\n\n" + ("\n".join(notes) if notes else "Everything is included.") + "\n"
        zf.writestr(f"{stem}/README.txt", readme)
    report(progress, 1.0, "download ready")
    return Download(f"{stem}.zip", buf.getvalue(), MIME_ZIP)
