"""Per-case results, the cohort summary CSV and the failures report.

Every case ends as a :class:`CaseResult` (small and picklable, so Ray tasks return it as is). The
summary CSV has one row per case of the input, in case order: volumes in mL per structure, lesion
counts, timings in seconds and the status; it is rewritten atomically after every case, so an
interrupted run still leaves a consistent summary.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lkseg.io.atomic import atomic_write_text
from lkseg.labels import PRODUCT_LABELS
from lkseg.volume import Volume

__all__ = ["STATUSES", "CaseResult", "label_statistics", "write_failures", "write_summary"]

#: ``done``: processed in this run; ``skipped``: finished by an earlier run and unchanged;
#: ``failed``: an error (see the failures report); ``cancelled``: interrupted; ``pending``: not reached.
STATUSES = ("done", "skipped", "failed", "cancelled", "pending")
#: Structures counted as lesions (connected components) in the summary.
LESION_STRUCTURES = ("liver_tumor", "kidney_tumor", "kidney_cyst")
_TIMING_COLUMNS = ("read_s", "infer_s", "write_s", "total_s")
#: Future liver remnant of cases with a ``resection_plane`` (empty otherwise).
_FLR_COLUMNS = ("flr_ml", "flr_percent", "sflr_percent", "flr_threshold_percent", "flr_verdict")
#: Tumour burden = tumour volume / volume of the organ including its lesions (as the planning
#: report defines it; its per-organ figures are used when planning ran).
ORGAN_PARTS = {
    "liver_tumor": ("liver", "liver_tumor", "liver_cyst"),
    "kidney_tumor": ("kidney_right", "kidney_left", "kidney_tumor", "kidney_cyst"),
}


@dataclass
class CaseResult:
    """The outcome of one case.

    Attributes:
        case_id: the case.
        status: one of :data:`STATUSES`.
        input: the input path (and series UID for DICOM).
        reason: why the case ran (``"new"``, ``"input changed"``...) or was skipped.
        record: summary values: ``volume_ml`` {structure: mL}, ``lesions`` {structure: count},
            ``timings`` {stage: s}, ``size_ijk``, ``spacing_mm``, ``model_id``, ``model_version``,
            ``warnings``.
        outputs: output kind -> path of the written file (absolute).
        error: the error message of a failed case.
        error_type: the exception class name.
        stage: the stage that failed (``read``, ``infer``, ``write``).
        log: the case's log file.
    """

    case_id: str
    status: str
    input: str = ""
    reason: str = ""
    record: dict = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None
    stage: str | None = None
    log: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def label_statistics(labels: Volume, table: Mapping[int, str]) -> dict:
    """Volumes (mL) of every structure of ``table`` and lesion counts in a label map.

    Lesions are connected components (26-connectivity, in voxel space) of the lesion structures
    present in ``table``. Volumes use the grid's voxel volume (product of the spacings / 1000).

    Returns:
        ``{"volume_ml": {name: mL}, "lesions": {name: count}}``.
    """
    from scipy import ndimage

    arr = labels.array
    counts = np.bincount(arr.ravel().astype(np.int64), minlength=max(table, default=0) + 1)
    vox_ml = labels.grid.voxel_volume_ml
    volume_ml = {name: round(float(counts[value]) * vox_ml, 3) for value, name in sorted(table.items())}
    lesions = {}
    structure = np.ones((3, 3, 3), dtype=bool)
    for value, name in table.items():
        if name in LESION_STRUCTURES:
            lesions[name] = int(ndimage.label(arr == value, structure=structure)[1]) if counts[value] else 0
    return {"volume_ml": volume_ml, "lesions": lesions}


def _structure_columns(results: Iterable[CaseResult]) -> tuple[list[str], list[str]]:
    names = list(PRODUCT_LABELS.values())
    lesions = [n for n in LESION_STRUCTURES if n in names]
    for res in results:
        for name in res.record.get("volume_ml", {}):
            if name not in names:
                names.append(name)
        for name in res.record.get("lesions", {}):
            if name not in lesions:
                lesions.append(name)
    return names, lesions


def _sum(vols: dict, names: tuple[str, ...]):
    present = [vols[n] for n in names if n in vols]
    return round(sum(present), 3) if present else ""


def _row(res: CaseResult, names: list[str], lesions: list[str]) -> dict:
    rec = res.record
    vols, counts, timings = rec.get("volume_ml", {}), rec.get("lesions", {}), rec.get("timings", {})
    row = {
        "case_id": res.case_id,
        "status": res.status,
        "reason": res.reason,
        "input": res.input,
        "model_id": rec.get("model_id", ""),
        "model_version": rec.get("model_version", ""),
        "size_ijk": rec.get("size_ijk", ""),
        "spacing_mm": rec.get("spacing_mm", ""),
    }
    for name in names:
        row[f"{name}_ml"] = vols.get(name, "")
    for name in lesions:
        row[f"{name}_count"] = counts.get(name, "")
    row["total_liver_volume_ml"] = rec.get("total_liver_volume_ml", _sum(vols, ORGAN_PARTS["liver_tumor"]))
    burden = rec.get("burden_pct", {})
    for tumour, parts in ORGAN_PARTS.items():
        organ_ml = _sum(vols, parts)
        fallback = round(100.0 * vols[tumour] / organ_ml, 3) if organ_ml and tumour in vols else ""
        row[f"{tumour}_burden_pct"] = burden.get(tumour, fallback) if rec else ""
    flr = rec.get("flr") or {}
    for col in _FLR_COLUMNS:
        value = flr.get(col, "")
        row[col] = "" if value is None else value
    for col in _TIMING_COLUMNS:
        row[col] = timings.get(col, "")
    warnings = list(rec.get("warnings", []))
    row["warnings"] = " | ".join(warnings[:5]) + (f" | ... {len(warnings) - 5} more" if len(warnings) > 5 else "")
    row["error"] = res.error or ""
    row["case_dir"] = rec.get("case_dir", "")
    return row


def summary_rows(results: Iterable[CaseResult]) -> list[dict]:
    """Summary rows (dicts with the CSV's columns) of ``results``, in the given order."""
    results = list(results)
    names, lesions = _structure_columns(results)
    return [_row(r, names, lesions) for r in results]


def _csv_text(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_summary(path: Path, results: Iterable[CaseResult]) -> Path:
    """Write the cohort summary CSV (one row per case, statuses included), atomically."""
    rows = summary_rows(results)
    columns = list(rows[0]) if rows else ["case_id", "status"]
    return atomic_write_text(path, _csv_text(rows, columns))


FAILURE_COLUMNS = ["case_id", "input", "stage", "error_type", "error", "log"]


def write_failures(path: Path, results: Iterable[CaseResult]) -> Path:
    """Write the failures report: one row per failed case with the stage, error and log file."""
    rows = [
        {
            "case_id": r.case_id,
            "input": r.input,
            "stage": r.stage or "",
            "error_type": r.error_type or "",
            "error": r.error or "",
            "log": r.log,
        }
        for r in results
        if r.status == "failed"
    ]
    return atomic_write_text(path, _csv_text(rows, FAILURE_COLUMNS))
