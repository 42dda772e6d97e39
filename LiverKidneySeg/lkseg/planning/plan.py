"""The whole planning run on one label map: volumes, lesions, burden, FLR, R.E.N.A.L., surfaces.

:func:`run_plan` is what the CLI (``lkseg plan``), the Slicer module's logic and the batch
runner call. It never returns a wrong number for bad input: it raises a specific
:class:`~lkseg.errors.LKSegError` (empty label map, grid mismatch with the CT, a resection that
misses the liver or removes it all, implausible height/weight) or marks a field "not
available" with the reason (body size unknown, no collecting-system segment, a tumour outside
its organ).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lkseg.errors import InputError
from lkseg.labels import PRODUCT_LABELS, LabelTable
from lkseg.planning._index import LabelIndex
from lkseg.planning.couinaud import CouinaudResult, couinaud_segments
from lkseg.planning.flr import FLRResult, Patient, Resection, compute_flr
from lkseg.planning.landmarks import CouinaudLandmarks, propose_landmarks
from lkseg.planning.lesions import Lesion, TumourBurden, find_lesions, tumour_burden
from lkseg.planning.renal import RenalScore, nephrometry
from lkseg.planning.volumetry import StructureVolume, attach_mesh_volumes, structure_volumes
from lkseg.progress import CancelToken, ProgressCallback, SubProgress, report
from lkseg.volume import Volume

if TYPE_CHECKING:  # pragma: no cover - VTK-free import of the type only
    from lkseg.surfaces import SurfaceOptions

__all__ = ["LESION_STRUCTURES", "PlanOptions", "PlanResult", "run_plan"]

log = logging.getLogger(__name__)

#: Lesion structures analysed component by component, when present in the table.
LESION_STRUCTURES = ("liver_tumor", "liver_cyst", "kidney_tumor", "kidney_cyst")
#: Tumour structures whose burden is reported.
TUMOUR_STRUCTURES = ("liver_tumor", "kidney_tumor")


@dataclass
class PlanOptions:
    """What to compute.

    Attributes:
        resection: the planned liver resection (planes / mask / label); None = no FLR.
        patient: height, weight, liver quality (None = unknown body size, normal liver).
        surfaces: build 3D surfaces (needed for the mesh-volume cross-check and exports).
        surface_options: :class:`lkseg.surfaces.SurfaceOptions` (None = defaults).
        min_lesion_volume_ml: lesion components smaller than this are skipped (0 = keep all).
        landmarks: Couinaud landmarks (RAS mm): the liver is labelled with segments 1-8.
        auto_landmarks: propose the landmarks from the label map's ``hepatic_vein`` and
            ``portal_vein`` and ``inferior_vena_cava`` segments when none are given (refused without an IVC).
    """

    resection: Resection | None = None
    patient: Patient | None = None
    surfaces: bool = True
    surface_options: SurfaceOptions | None = None
    min_lesion_volume_ml: float = 0.0
    landmarks: CouinaudLandmarks | None = None
    auto_landmarks: bool = False


@dataclass
class PlanResult:
    """Everything :func:`run_plan` measured. ``None`` fields are "not available" (see notes)."""

    grid: dict
    label_table: dict[str, str]
    volumes: dict[str, StructureVolume]
    lesions: list[Lesion]
    burden: list[TumourBurden]
    flr: FLRResult | None
    renal: list[RenalScore]
    surfaces: list = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    patient: Patient | None = None
    couinaud: CouinaudResult | None = None
    #: lesion label -> {segment: share of its voxels} (liver lesions, when segments exist)
    lesion_segments: dict[str, dict[int, float]] = field(default_factory=dict)

    def couinaud_dict(self) -> dict | None:
        if self.couinaud is None:
            return None
        out = self.couinaud.to_dict()
        resected = set(self.flr.resection.get("segments", [])) if self.flr else set()
        for row in out["segments"]:
            row["resected"] = row["segment"] in resected
            row["lesions"] = [k for k, v in self.lesion_segments.items() if row["segment"] in v]
        out["lesion_segments"] = {
            k: {str(s): round(f, 4) for s, f in v.items()} for k, v in self.lesion_segments.items()
        }
        return out

    def total_liver_volume_ml(self) -> float | None:
        names = ("liver", "liver_tumor", "liver_cyst")
        vols = [self.volumes[n].volume_ml for n in names if n in self.volumes]
        return float(sum(vols)) if "liver" in self.volumes and self.volumes["liver"].voxels else None

    def to_dict(self) -> dict:
        return {
            "grid": self.grid,
            "label_table": self.label_table,
            "volumes": {k: v.to_dict() for k, v in self.volumes.items()},
            "total_liver_volume_ml": self.total_liver_volume_ml(),
            "lesions": [les.to_dict() for les in self.lesions],
            "tumour_burden": [b.to_dict() for b in self.burden],
            "flr": self.flr.to_dict() if self.flr else None,
            "couinaud": self.couinaud_dict(),
            "renal": [r.to_dict() for r in self.renal],
            "surfaces": [m.summary() for m in self.surfaces],
            "warnings": list(self.warnings),
            "not_available": dict(self.notes),
            "timings_s": dict(self.timings_s),
        }


def run_plan(
    labels: Volume,
    table: LabelTable = PRODUCT_LABELS,
    options: PlanOptions | None = None,
    *,
    image: Volume | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> PlanResult:
    """Run the planning measurements on a label map.

    Args:
        labels: integer label map, ZYX with geometry (the CT's grid).
        table: label value -> structure name (default :data:`~lkseg.labels.PRODUCT_LABELS`).
        options: see :class:`PlanOptions`.
        image: the CT; when given, the label map must be on exactly its grid.
        progress / cancel: progress callback (0..1, message) and cancel token.

    Raises:
        GeometryMismatchError: label map and CT grids differ.
        InputError: empty label map, a resection that misses the liver or removes all of it,
            implausible height/weight, ...
    """
    options = options or PlanOptions()
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    if image is not None:
        image.grid.require_same(labels.grid, "label map")
    index = LabelIndex.build(labels, table)
    volumes = structure_volumes(index)
    warnings = [f"{n}: {v.notes['touches_border']}" for n, v in volumes.items() if v.touches_border]
    warnings += [
        f"label value {v} ({c} voxels) is not in the label table and was ignored" for v, c in index.unknown.items()
    ]
    times["volumetry"] = time.perf_counter() - t0
    report(progress, 0.05, "volumes")

    t = time.perf_counter()
    lesions: list[Lesion] = []
    for name in LESION_STRUCTURES:
        if cancel is not None:
            cancel.raise_if_cancelled()
        if index.present([name]):
            found = find_lesions(index, name, min_volume_ml=options.min_lesion_volume_ml, cancel=cancel)
            lesions += found
            warnings += [f"{les.label}: {les.notes['organ']}" for les in found if les.organ is None]
            warnings += [f"{les.label}: {les.notes['shape']}" for les in found if "shape" in les.notes]
    burden = [b for name in TUMOUR_STRUCTURES if name in table.values() for b in tumour_burden(index, lesions, name)]
    times["lesions"] = time.perf_counter() - t
    report(progress, 0.3, "lesions")

    t = time.perf_counter()
    notes: dict[str, str] = {}
    couinaud = _couinaud(index, options, notes)
    lesion_segments = {}
    if couinaud is not None:
        warnings += couinaud.warnings
        for les in lesions:
            if les.organ == "liver" and les.mask is not None and les.offset is not None:
                lesion_segments[les.label] = couinaud.segments_of(les.mask, les.offset)
    times["couinaud"] = time.perf_counter() - t
    t = time.perf_counter()
    flr = None
    if options.resection is not None:
        flr = compute_flr(index, options.resection, options.patient, couinaud)
        warnings += flr.warnings
    else:
        notes["flr"] = "not available: no resection plane, mask or label given"
    times["flr"] = time.perf_counter() - t

    t = time.perf_counter()
    tumours = [les for les in lesions if les.structure == "kidney_tumor"]
    renal = nephrometry(index, tumours, image) if tumours else []
    times["renal"] = time.perf_counter() - t
    report(progress, 0.4, "kidney tumours")

    result = PlanResult(
        grid=labels.grid.to_dict(),
        label_table=table.to_json(),
        volumes=volumes,
        lesions=lesions,
        burden=burden,
        flr=flr,
        renal=renal,
        warnings=warnings,
        notes=notes,
        timings_s=times,
        patient=options.patient,
        couinaud=couinaud,
        lesion_segments=lesion_segments,
    )
    if options.surfaces:
        t = time.perf_counter()
        from lkseg.surfaces import build_surfaces

        result.surfaces = build_surfaces(
            index,
            options=options.surface_options,
            progress=SubProgress(progress, 0.4, 1.0, "surfaces: "),
            cancel=cancel,
        )  # type: ignore[arg-type]
        result.warnings += attach_mesh_volumes(volumes, {m.name: m.volume_ml for m in result.surfaces})
        if couinaud is not None:
            from lkseg.surfaces import segment_surfaces

            result.surfaces += segment_surfaces(couinaud, options.surface_options, cancel=cancel)
        times["surfaces"] = time.perf_counter() - t
    else:
        notes["mesh_volume_ml"] = "not available: surfaces were not built"
    times["total"] = time.perf_counter() - t0
    report(progress, 1.0, "planning done")
    for w in result.warnings:
        log.warning("%s", w)
    return result


def _couinaud(index: LabelIndex, options: PlanOptions, notes: dict[str, str]) -> CouinaudResult | None:
    """Couinaud segments from the given landmarks, or proposed from vessel segments."""
    landmarks = options.landmarks
    if landmarks is None and options.auto_landmarks:
        hv, pv = index.present(["hepatic_vein"]), index.present(["portal_vein"])
        if not hv or not pv:
            raise InputError(
                "automatic Couinaud landmarks need hepatic_vein and portal_vein segments in the label map "
                f"(present: {sorted({index.name_of(v) for v in index.counts if v in index.table})}); "
                "give the landmarks instead"
            )
        arr = index.labels.array
        ivc_values = index.present(["inferior_vena_cava", "ivc"])
        landmarks = propose_landmarks(
            index.labels.grid,
            index.lut(hv)[arr],
            index.lut(pv)[arr],
            index.lut(ivc_values)[arr] if ivc_values else None,
        )
    if landmarks is None:
        notes["couinaud"] = "not available: no Couinaud landmarks given"
        return None
    return couinaud_segments(index, landmarks)
