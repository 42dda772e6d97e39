"""Machine-readable reports: JSON (everything + audit trail) and CSV (one row per structure,
lesion and summary measure).

Units are in the key names (``_ml``, ``_mm``, ``_percent``, ``_m2``, ``_cm``, ``_kg``);
coordinates are RAS mm. ``null`` means "not available" and the matching ``not_available``
entry says why.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from lkseg.io.atomic import atomic_write_text
from lkseg.planning.plan import PlanResult
from lkseg.planning.sinus import FILLED_SCALE
from lkseg.report.provenance import Provenance

__all__ = ["CSV_COLUMNS", "METHODS", "SCHEMA", "csv_rows", "report_dict", "write_csv", "write_json"]

SCHEMA = "lkseg.plan.report/1"

#: Methods and sources, copied into every report.
METHODS = {
    "volume": "voxel count x voxel volume (mL); closed-surface volume as cross-check (must agree within 2% for organs)",
    "tlv": "total liver volume = liver + liver tumours + liver cysts (mL)",
    "flr_percent": "measured FLR% = FLR / (TLV - tumour volume - cyst volume) x 100; FLR = liver parenchyma left after resection (tumours and cysts excluded)",
    "bsa": "Mosteller: BSA (m2) = sqrt(height_cm x weight_kg / 3600) (Mosteller, N Engl J Med 1987)",
    "stlv": "Vauthey: sTLV (mL) = -794.41 + 1267.28 x BSA (Vauthey et al., Liver Transpl 2002)",
    "sflr": "sFLR = FLR / sTLV x 100; minimum 20% normal, 30% chemotherapy/steatosis, 40% cirrhosis (Abdalla et al., Ann Surg Oncol 2006)",
    "resection_planes": "voxel centres on the resected side of the plane(s); several planes: intersection = convex wedge, union = any plane",
    "lesions": "26-connected components; longest axial diameter and perpendicular extent on the slice where it is longest",
    "distance_to_surface": "smallest distance between lesion boundary voxels and the organ's outer boundary voxels (organ + lesions, holes filled)",
    "couinaud": "Couinaud segments by the plane method: curved hepatic-vein planes (right, middle = Cantlie, left) around the IVC, transverse portal plane through the bifurcation (7, 8, 2, 4a above; 6, 5, 3, 4b below), caudate (1) between the IVC and the bifurcation; from landmarks in RAS mm saved with the report",
    "renal": f"R.E.N.A.L. nephrometry (Kutikov & Uzzo, J Urol 2009); E from the convex hull of the kidney; N and L from a renal pelvis/sinus segment, else from the sinus derived from the kidney's shape (convex hull minus kidney, medial side; with an enhanced CT plus the segment's voxels < 80 HU); when that is below 8% of the kidney (the segment includes its sinus) the sinus is estimated from the kidney's shape: its convex hull shrunk to {FILLED_SCALE:.0%} about its hilum, a model chosen on phantoms; each score names its sinus source; PADUA (Ficarra et al., Eur Urol 2009) from the same geometry: polar = middle when > 50% between the polar lines, rim = medial when > 50% medial to the kidney's sagittal centroid plane, sinus involved when the tumour touches the sinus, collecting system only from a collecting_system/renal_pelvis segment",
}

CSV_COLUMNS = [
    "kind",
    "name",
    "index",
    "organ",
    "voxels",
    "volume_ml",
    "mesh_volume_ml",
    "mesh_difference_percent",
    "axial_long_mm",
    "axial_short_mm",
    "max_3d_diameter_mm",
    "centroid_r_mm",
    "centroid_a_mm",
    "centroid_s_mm",
    "distance_to_surface_mm",
    "exophytic_percent",
    "nearness_mm",
    "renal_R",
    "renal_E",
    "renal_N",
    "renal_A",
    "renal_L",
    "renal_total",
    "renal_complexity",
    "value",
    "unit",
    "note",
]


def _clean(obj):
    """JSON-safe copy: numpy scalars/arrays to Python, NaN/inf to None, tuples to lists."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def report_dict(
    result: PlanResult, provenance: Provenance | None = None, title: str = "LiverKidneySeg planning report"
) -> dict:
    """The whole report as a JSON-ready dict."""
    out = {
        "schema": SCHEMA,
        "title": title,
        "disclaimer": "Not a medical device. For research and demonstration; verify every number before clinical use.",
        "coordinate_system": "RAS (mm), as 3D Slicer",
        "provenance": provenance.to_dict() if provenance else None,
        "patient": result.patient.__dict__ if result.patient else None,
        "result": result.to_dict(),
        "methods": METHODS,
    }
    return _clean(out)


def write_json(result: PlanResult, path: str | Path, provenance: Provenance | None = None) -> Path:
    """Write the JSON report (atomic)."""
    return atomic_write_text(path, json.dumps(report_dict(result, provenance), indent=2, allow_nan=False) + "\n")


def _r(v, nd: int = 3):
    if v is None:
        return ""
    if isinstance(v, float):
        return round(v, nd)
    return v


def csv_rows(result: PlanResult) -> list[dict]:
    """One row per structure, per lesion (with its R.E.N.A.L. score for kidney tumours), and per
    summary measure (TLV, FLR, sFLR, ...: ``kind="measure"`` with ``value`` and ``unit``)."""
    rows = []
    for name, v in result.volumes.items():
        rows.append(
            {
                "kind": "structure",
                "name": name,
                "voxels": v.voxels,
                "volume_ml": _r(v.volume_ml),
                "mesh_volume_ml": _r(v.mesh_volume_ml),
                "mesh_difference_percent": _r(v.mesh_difference_percent),
                "note": "; ".join(v.notes.values()),
            }
        )
    renal = {r.tumour: r for r in result.renal}
    for les in result.lesions:
        row = {
            "kind": "lesion",
            "name": les.structure,
            "index": les.index,
            "organ": les.organ or "",
            "voxels": les.voxels,
            "volume_ml": _r(les.volume_ml),
            "axial_long_mm": _r(les.axial_long_mm, 1),
            "axial_short_mm": _r(les.axial_short_mm, 1),
            "max_3d_diameter_mm": _r(les.max_diameter_mm, 1),
            "centroid_r_mm": _r(les.centroid_ras[0], 1),
            "centroid_a_mm": _r(les.centroid_ras[1], 1),
            "centroid_s_mm": _r(les.centroid_ras[2], 1),
            "distance_to_surface_mm": _r(les.distance_to_surface_mm, 1),
            "note": "; ".join(les.notes.values()),
        }
        score = renal.get(les.label)
        if score is not None:
            row.update(
                {
                    "exophytic_percent": _r(
                        None if score.exophytic_fraction is None else 100 * score.exophytic_fraction, 1
                    ),
                    "nearness_mm": _r(score.nearness_mm, 1),
                    "renal_R": _r(score.R),
                    "renal_E": _r(score.E),
                    "renal_N": _r(score.N),
                    "renal_A": score.anterior_posterior or "",
                    "renal_L": _r(score.L),
                    "renal_total": _r(score.total),
                    "renal_complexity": score.complexity or "",
                }
            )
            notes = [row["note"], *score.notes.values()]
            row["note"] = "; ".join(n for n in notes if n)
        rows.append(row)
    for b in result.burden:
        rows.append(
            {
                "kind": "measure",
                "name": f"{b.organ}_tumour_burden",
                "organ": b.organ,
                "value": _r(b.tumour_volume_ml),
                "unit": "mL",
            }
        )
        rows.append(
            {
                "kind": "measure",
                "name": f"{b.organ}_tumour_burden_percent",
                "organ": b.organ,
                "value": _r(b.percent_of_organ),
                "unit": "%",
            }
        )
    info = result.couinaud_dict()
    for row in info["segments"] if info else []:
        rows.append(
            {
                "kind": "couinaud_segment",
                "name": f"segment_{row['segment']}",
                "organ": "liver",
                "volume_ml": _r(row["volume_ml"]),
                "note": "; ".join([row["name"], *(["resected"] if row["resected"] else []), *row["lesions"]]),
            }
        )
    flr = result.flr
    if flr is not None:
        for key, unit in (
            ("tlv_ml", "mL"),
            ("lesion_ml", "mL"),
            ("tumour_ml", "mL"),
            ("cyst_ml", "mL"),
            ("functional_liver_ml", "mL"),
            ("resected_ml", "mL"),
            ("flr_ml", "mL"),
            ("flr_percent", "%"),
            ("bsa_m2", "m2"),
            ("stlv_ml", "mL"),
            ("sflr_percent", "%"),
            ("threshold_percent", "%"),
            ("verdict", ""),
        ):
            value = getattr(flr, key)
            rows.append(
                {
                    "kind": "measure",
                    "name": key,
                    "organ": "liver",
                    "value": _r(value),
                    "unit": unit,
                    "note": flr.notes.get(key, ""),
                }
            )
    return rows


def write_csv(result: PlanResult, path: str | Path) -> Path:
    """Write the CSV report (atomic), columns :data:`CSV_COLUMNS`."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in csv_rows(result):
        writer.writerow({c: row.get(c, "") for c in CSV_COLUMNS})
    return atomic_write_text(path, buf.getvalue())
