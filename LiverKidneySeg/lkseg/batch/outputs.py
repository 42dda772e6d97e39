"""Writing one case's outputs into its (temporary) case folder.

Outputs (each optional, see :data:`~lkseg.batch.options.OUTPUT_KINDS`):

* ``<case>.seg.nrrd``: Slicer segmentation with segment names, colours and terminology;
* ``<case>_labels.nii.gz``: the label map (values of the model's label table);
* ``<case>_seg.dcm``: DICOM SEG referencing the source series (DICOM inputs only), with the
  model as the segmentation algorithm (name and version);
* ``meshes/<case>_scene.glb`` (all structures coloured in one file) and, for STL/OBJ/VTP/PLY,
  ``meshes/<case>_<structure>.<fmt>``: smoothed surfaces in RAS mm;
* ``<case>_plan.json``: the planning report (volumetry with the mesh cross-check, lesions, tumour
  burden, R.E.N.A.L.) with its audit trail (input hash, model id and version, settings).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lkseg.batch.discovery import CaseInput
from lkseg.batch.options import BatchOptions
from lkseg.labels import LabelTable
from lkseg.volume import Volume

__all__ = ["ALGORITHM_NAME", "write_case_outputs"]

log = logging.getLogger(__name__)

ALGORITHM_NAME = "LiverKidneySeg"


def _segmentation(labels: Volume, table: LabelTable, case: CaseInput, drop_empty: bool = False):
    from lkseg.segmentation import Segmentation

    meta = {**labels.meta, "source": str(case.path)}
    if case.series_uid:
        meta["series_uid"] = case.series_uid  # DICOM SEG picks its source series by this UID
    return Segmentation.from_label_volume(labels.with_array(labels.array, meta=meta), table, drop_empty=drop_empty)


def _patient(options: BatchOptions, case: CaseInput, volume: Volume):
    """Body size and liver quality: per-case CSV values, else ``--plan`` values, else the DICOM header."""
    from lkseg.planning import Patient

    settings = options.fingerprint(case.meta)["plan"]
    height = settings.get("height_cm", volume.meta.get("height_cm"))
    weight = settings.get("weight_kg", volume.meta.get("weight_kg"))
    return Patient(
        height_cm=float(height) if height not in (None, "") else None,
        weight_kg=float(weight) if weight not in (None, "") else None,
        liver_quality=settings.get("liver_quality", "normal"),
    )


def _provenance(case: CaseInput, identity: dict, input_sha256: str, parameters: dict):
    """The planning report's audit trail, reusing the input hash the manifest already computed."""
    from lkseg.report import collect_provenance

    meta = {"model_id": identity.get("model_id"), "model_version": identity.get("model_version")}
    prov = collect_provenance(labels_meta=meta, parameters=parameters)
    prov.inputs["image"] = {
        "path": str(case.path),
        "sha256": input_sha256,
        "kind": case.kind,
        "series_uid": case.series_uid,
    }
    prov.model.update({k: v for k, v in identity.items() if k not in prov.model})
    return prov


def _plan_and_meshes(
    case: CaseInput,
    volume: Volume,
    result: Any,
    options: BatchOptions,
    identity: dict,
    folder: Path,
    input_sha256: str,
) -> tuple[dict[str, str], dict]:
    """Planning (volumes, lesions, burden, R.E.N.A.L.) and surfaces, built once for both outputs."""
    from lkseg.planning import PlanOptions, run_plan

    labels, table = result.labels, _table(result)
    wanted = set(options.outputs)
    meshes = "meshes" in wanted and bool(options.mesh_formats)
    outputs: dict[str, str] = {}
    extra: dict = {"warnings": []}
    if not labels.array.any():
        extra["warnings"].append("empty segmentation: no planning report or meshes")
        return outputs, extra
    patient = _patient(options, case, volume)
    resection = _resection(options, case)
    plan = run_plan(labels, table, PlanOptions(resection=resection, patient=patient, surfaces=meshes), image=volume)
    extra["warnings"] += [f"planning: {w}" for w in plan.warnings]
    if "plan" in wanted:
        from lkseg.report import write_json

        params = {
            "patient": dict(patient.__dict__),
            "case_id": case.case_id,
            "batch_options": options.fingerprint(case.meta),
        }
        write_json(plan, folder / f"{case.case_id}_plan.json", _provenance(case, identity, input_sha256, params))
        outputs["plan"] = f"{case.case_id}_plan.json"
    extra["plan"] = _plan_summary(plan)
    if meshes:
        surfaces = [m for m in plan.surfaces if m.n_triangles > 0]
        if surfaces:
            from lkseg.surfaces import export_surfaces

            written = export_surfaces(surfaces, folder / "meshes", options.mesh_formats, prefix=f"{case.case_id}_")
            for paths in written.values():
                for path in paths:
                    outputs[f"mesh:{path.name}"] = path.relative_to(folder).as_posix()
        else:
            extra["warnings"].append("no surface to export")
    return outputs, extra


def _resection(options: BatchOptions, case: CaseInput):
    """The case's planned liver resection from its ``resection_plane`` column, else None (no FLR)."""
    from lkseg.batch.discovery import resection_planes
    from lkseg.planning import Resection

    text = options.fingerprint(case.meta)["plan"].get("resection_plane")
    return Resection(planes=resection_planes(text)) if text else None


def _plan_summary(plan: Any) -> dict:
    """Planning numbers for the summary row: lesion counts, tumour burden (% of the organ, which
    includes its lesions, as the planning report defines it) and the total liver volume."""
    counts: dict[str, int] = {}
    for les in plan.lesions:
        counts[les.structure] = counts.get(les.structure, 0) + 1
    tumour: dict[str, float] = {}
    organ: dict[str, float] = {}
    for b in plan.burden:
        tumour[b.tumour_structure] = tumour.get(b.tumour_structure, 0.0) + b.tumour_volume_ml
        organ[b.tumour_structure] = organ.get(b.tumour_structure, 0.0) + b.organ_volume_ml
    burden = {k: round(100.0 * tumour[k] / organ[k], 3) for k in tumour if organ[k] > 0}
    tlv = plan.total_liver_volume_ml()
    out = {
        "lesions": counts,
        "burden_pct": burden,
        "total_liver_volume_ml": round(tlv, 3) if tlv is not None else None,
    }
    if plan.flr is not None:
        f = plan.flr
        out["flr"] = {
            "flr_ml": round(f.flr_ml, 3),
            "flr_percent": round(f.flr_percent, 3),
            "sflr_percent": round(f.sflr_percent, 3) if f.sflr_percent is not None else None,
            "flr_threshold_percent": f.threshold_percent,
            "flr_verdict": f.verdict,
        }
    return out


def _table(result: Any) -> LabelTable:
    table = result.label_table
    return table if isinstance(table, LabelTable) else LabelTable(table)


def write_case_outputs(
    case: CaseInput,
    volume: Volume,
    result: Any,
    options: BatchOptions,
    identity: dict,
    folder: Path,
    input_sha256: str = "",
) -> tuple[dict[str, str], dict]:
    """Write the requested outputs of one case into ``folder``.

    Args:
        case: the case (its id names the files; DICOM cases get a DICOM SEG).
        volume: the input CT (geometry, and metadata such as height/weight for planning).
        result: the engine's result (``labels`` on ``volume``'s grid, ``label_table``).
        options: which outputs and formats.
        identity: the engine identity (model id and version go into DICOM SEG and the plan JSON).
        folder: the case's temporary folder (renamed into place by the caller).
        input_sha256: the input's hash, recorded in the planning report's audit trail.

    Returns:
        (outputs: kind -> path relative to ``folder``, extra summary values).
    """
    from lkseg.io import write_label_map

    labels: Volume = result.labels
    table = _table(result)
    cid = case.case_id
    outputs: dict[str, str] = {}
    extra: dict = {}
    wanted = set(options.outputs)
    if "seg_nrrd" in wanted:
        from lkseg.io.segnrrd import write_seg_nrrd

        write_seg_nrrd(_segmentation(labels, table, case), folder / f"{cid}.seg.nrrd")
        outputs["seg_nrrd"] = f"{cid}.seg.nrrd"
    if "nifti" in wanted:
        write_label_map(labels, folder / f"{cid}_labels.nii.gz")
        outputs["nifti"] = f"{cid}_labels.nii.gz"
    if "dicom_seg" in wanted and case.kind == "dicom":
        seg = _segmentation(labels, table, case, drop_empty=True)  # a DICOM SEG segment needs voxels
        if seg.segments:
            from lkseg.io.dicomseg import write_dicom_seg

            write_dicom_seg(
                seg,
                case.path,
                folder / f"{cid}_seg.dcm",
                algorithm_name=f"{ALGORITHM_NAME} {identity['model_id']}",
                algorithm_version=str(identity.get("model_version", "")),
                series_description=f"{ALGORITHM_NAME} {identity['model_id']} segmentation",
            )
            outputs["dicom_seg"] = f"{cid}_seg.dcm"
        else:
            extra.setdefault("warnings", []).append("empty segmentation: no DICOM SEG written")
    if wanted & {"plan", "meshes"}:
        more, plan_extra = _plan_and_meshes(case, volume, result, options, identity, folder, input_sha256)
        outputs.update(more)
        extra["warnings"] = extra.get("warnings", []) + plan_extra.pop("warnings", [])
        extra.update(plan_extra)
    return outputs, extra
