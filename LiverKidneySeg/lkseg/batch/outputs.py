"""Writing one case's outputs into its (temporary) case folder.

Outputs (each optional, see :data:`~lkseg.batch.options.OUTPUT_KINDS`):

* ``<case>.seg.nrrd``: Slicer segmentation with segment names, colours and terminology;
* ``<case>_labels.nii.gz``: the label map (values of the model's label table);
* ``<case>_seg.dcm``: DICOM SEG referencing the source series (DICOM inputs only), with the
  model as the segmentation algorithm (name and version);
* ``meshes/<case>.<fmt>``: smoothed surfaces (``glb``: all structures coloured in one file;
  other formats: one file per structure);
* ``<case>_plan.json``: planning (volumetry, lesions, kidney tumour metrics).
"""

from __future__ import annotations

import json
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


def _plan_settings(options: BatchOptions, case: CaseInput) -> dict[str, Any]:
    settings: dict[str, Any] = dict(options.fingerprint(case.meta)["plan"])
    for key in ("height_cm", "weight_kg"):
        if key in settings:
            settings[key] = float(settings[key])
    return settings


def write_plan(volume: Volume, labels: Volume, table: LabelTable, settings: dict, path: Path, provenance: dict) -> dict:
    """Run planning on a case and write its JSON report; return a few numbers for the summary."""
    from lkseg import planning

    kwargs = {k: v for k, v in settings.items() if k in ("height_cm", "weight_kg", "liver_quality")}
    height = kwargs.get("height_cm", volume.meta.get("height_cm"))
    weight = kwargs.get("weight_kg", volume.meta.get("weight_kg"))
    result = planning.plan_case(
        labels,
        table,
        image=volume,
        height_cm=height,
        weight_kg=weight,
        liver_quality=kwargs.get("liver_quality", "normal"),
    )
    payload = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    payload.setdefault("provenance", {}).update(provenance)
    from lkseg.io.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=2, default=str))
    return payload


def write_meshes(labels: Volume, table: LabelTable, folder: Path, stem: str, formats: tuple[str, ...]) -> list[Path]:
    """Surfaces of every non-empty structure, exported in ``formats`` under ``folder``."""
    from lkseg import surfaces

    meshes = surfaces.label_map_to_meshes(labels, table)
    written: list[Path] = []
    folder.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        written += [Path(p) for p in surfaces.export_meshes(meshes, folder / f"{stem}.{fmt}", fmt)]
    return written


def write_case_outputs(
    case: CaseInput,
    volume: Volume,
    result: Any,
    options: BatchOptions,
    identity: dict,
    folder: Path,
) -> tuple[dict[str, str], dict]:
    """Write the requested outputs of one case into ``folder``.

    Args:
        case: the case (its id names the files; DICOM cases get a DICOM SEG).
        volume: the input CT (geometry, and metadata such as height/weight for planning).
        result: the engine's result (``labels`` on ``volume``'s grid, ``label_table``).
        options: which outputs and formats.
        identity: the engine identity (model id and version go into DICOM SEG and the plan JSON).
        folder: the case's temporary folder (renamed into place by the caller).

    Returns:
        (outputs: kind -> path relative to ``folder``, extra summary values).
    """
    from lkseg.io import write_label_map

    labels: Volume = result.labels
    table = result.label_table if isinstance(result.label_table, LabelTable) else LabelTable(result.label_table)
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
    if "meshes" in wanted and options.mesh_formats:
        files = write_meshes(labels, table, folder / "meshes", cid, options.mesh_formats)
        for i, path in enumerate(files):
            outputs[f"mesh_{i}" if len(files) > 1 else "meshes"] = path.relative_to(folder).as_posix()
    if "plan" in wanted:
        provenance = {"case_id": cid, "input": str(case.path), "series_uid": case.series_uid, **identity}
        payload = write_plan(
            volume, labels, table, _plan_settings(options, case), folder / f"{cid}_plan.json", provenance
        )
        outputs["plan"] = f"{cid}_plan.json"
        extra["plan"] = _plan_summary(payload)
    return outputs, extra


def _plan_summary(payload: dict) -> dict:
    """A few planning numbers worth a summary column (when the planning report has them)."""
    out = {}
    for key in ("tumour_burden_pct", "liver_tumor_burden_pct", "sflr_pct", "bsa_m2"):
        if isinstance(payload.get(key), int | float):
            out[key] = payload[key]
    return out
