"""The whole product on one CT: automatic masks, one refinement, planning, 3D models, reports.

This is what ``lkseg demo`` runs (the README's main command): with no input it generates a
phantom CT (:mod:`lkseg.phantom`) whose exact labels let it also report accuracy; with a path it
runs on that CT. Steps:

1. read (or generate) the CT;
2. automatic segmentation with the default (or chosen) model package (:mod:`lkseg.auto`);
3. one simulated refinement of the liver with the prompt predictor (:mod:`lkseg.refine`): with a
   reference (a phantom), one click at the centre of the largest error on the worst axial slice
   (what a radiologist would correct first), kept only when it improves the liver's Dice; on a
   user's CT (no reference) the demo never changes the automatic result: it records the box
   correction it *would* propose (the box, and how many voxels it would change) in the report;
4. surgical planning with a demonstration resection plane (:mod:`lkseg.planning`): a sagittal
   plane placed so that about 35 % of the liver lies on the patient's left (a right
   hepatectomy); the FLR is standardised when height and weight are known. A liver whose volume
   is implausible gets no resection plan, and every doubt of the automatic step (implausible
   volumes, organs not found, phantom-trained tumours) is listed in the report's warnings;
5. 3D surfaces exported as STL and GLB, and the JSON/CSV/HTML report with its audit trail.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lkseg.errors import InputError
from lkseg.labels import PRODUCT_LABELS
from lkseg.progress import CancelToken, ProgressCallback, SubProgress, report
from lkseg.volume import Volume

__all__ = ["DemoOptions", "DemoResult", "demo_resection_plane", "run_demo", "simulated_liver_correction"]

log = logging.getLogger(__name__)


@dataclass
class DemoOptions:
    """Options of :func:`run_demo`.

    Attributes:
        image: CT file or DICOM folder; ``None`` generates a phantom.
        output: output folder (created).
        model: automatic model id or package folder (default: the registry's default).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        seed: phantom seed (default 5000: outside the demo model's training/validation seeds 0-139
            and its held-out test seeds 1000-1011 and 2000-2011).
        phantom_size: phantom size (i, j, k voxels); spacing is chosen to cover an adult abdomen.
        refine: run the simulated refinement step.
        height_cm / weight_kg: patient size for the standardised FLR (phantom and DICOM provide it).
        liver_quality: normal, chemotherapy, steatosis or cirrhosis (sets the sFLR threshold).
        formats: mesh formats to export.
    """

    image: Path | None = None
    output: Path = Path("lkseg-output")
    model: str | None = None
    device: str = "auto"
    seed: int = 5000
    phantom_size: tuple[int, int, int] = (256, 256, 100)
    refine: bool = True
    height_cm: float | None = None
    weight_kg: float | None = None
    liver_quality: str = "normal"
    formats: tuple[str, ...] = ("stl", "glb")


@dataclass
class DemoResult:
    """What :func:`run_demo` produced: paths, numbers and timings."""

    outputs: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    accuracy: dict[str, dict] = field(default_factory=dict)
    refinement: dict = field(default_factory=dict)
    plan: object | None = None
    warnings: list[str] = field(default_factory=list)


def demo_resection_plane(labels: Volume, liver_value: int, remnant_fraction: float = 0.35):
    """A sagittal resection plane leaving about ``remnant_fraction`` of the liver on the patient's
    left (RAS x smaller), resecting the right side (a right hepatectomy for demonstration).

    Returns a :class:`~lkseg.planning.ResectionPlane` (point and normal in RAS mm), or ``None``
    when there is no liver.
    """
    from lkseg.planning import ResectionPlane

    kji = np.argwhere(labels.array == liver_value)
    if len(kji) == 0:
        return None
    step = max(1, len(kji) // 200000)
    ras = labels.grid.index_to_ras(kji[::step, ::-1].astype(np.float64))
    x = float(np.quantile(ras[:, 0], remnant_fraction))
    centre = ras.mean(axis=0)
    return ResectionPlane((x, float(centre[1]), float(centre[2])), (1.0, 0.0, 0.0), "positive")


def _largest_error(auto: np.ndarray, ref: np.ndarray) -> tuple[int, np.ndarray, bool] | None:
    """Axial slice with the largest error, the centre voxel (k, j, i) of its largest error
    component, and whether the click is positive (missed tissue) or negative."""
    from scipy import ndimage

    err = auto ^ ref
    if not err.any():
        return None
    k = int(np.argmax(err.sum(axis=(1, 2))))
    comp, n = ndimage.label(err[k])
    sizes = ndimage.sum_labels(np.ones_like(comp), comp, index=np.arange(1, n + 1))
    region = comp == (int(np.argmax(sizes)) + 1)
    # the centre: the region's pixel farthest from its border (always inside the region)
    dist = ndimage.distance_transform_edt(region)
    j, i = np.unravel_index(int(np.argmax(dist)), dist.shape)
    positive = bool(ref[k, j, i])
    return k, np.array([i, j, k], dtype=float), positive


#: On a user's CT, a proposed correction that would change more than this share of the automatic
#: liver's volume is reported as a doubt about the liver (a user's correction changes a few per cent).
PROPOSAL_DOUBT_SHARE = 0.25


def simulated_liver_correction(
    predictor, volume: Volume, labels: Volume, liver_value: int, reference: np.ndarray | None
) -> tuple[Volume, dict]:
    """Correct the automatic liver once, as a user would, and merge it into the label map.

    Returns the new label map and a record of the prompt (for the audit trail), with Dice before
    and after when a reference is given. Other labels never change (:func:`lkseg.refine.combine`).
    """
    from lkseg.metrics import dice
    from lkseg.refine import InteractiveSegment, combine

    auto_liver = labels.array == liver_value
    record: dict = {"structure": "liver", "view": "axial"}
    if not auto_liver.any():
        record["skipped"] = "the automatic result has no liver"
        return labels, record
    predictor.set_volume(volume)
    session = InteractiveSegment(predictor, "liver", "axial", initial=auto_liver)
    target = _largest_error(auto_liver, reference) if reference is not None else None
    if reference is not None and target is None:
        record["skipped"] = "the automatic liver already equals the reference"
        return labels, record
    if target is not None:
        k, point_ijk, positive = target
        record.update(
            prompt="click",
            positive=positive,
            point_ijk=point_ijk.tolist(),
            point_ras=volume.grid.index_to_ras(point_ijk).tolist(),
        )
        new_liver = session.click(point_ijk, positive=positive)
    else:
        ks = np.flatnonzero(auto_liver.any(axis=(1, 2)))
        k = int(ks[len(ks) // 2])
        jj, ii = np.nonzero(auto_liver[k])
        box = np.array([[ii.min(), jj.min(), k], [ii.max(), jj.max(), k]], dtype=float)
        record.update(prompt="box", box_ijk=box.tolist(), box_ras=volume.grid.index_to_ras(box).tolist())
        new_liver = session.box(k, box)
    record["warnings"] = list(getattr(session, "last_warnings", []))
    changed = new_liver ^ auto_liver
    record["changed_voxels"] = int(changed.sum())
    if reference is None:
        # no truth to judge it by: propose, never apply (a blind box + propagation can erase
        # correct liver on whole slices)
        record["applied"] = False
        share = float(changed.sum()) / float(auto_liver.sum())
        record["proposal"] = (
            f"a box on axial slice {k} re-drawn and propagated would change {int(changed.sum())} voxels "
            f"({changed.sum() * labels.grid.voxel_volume_ml:.1f} mL, {100 * share:.0f} % of the automatic liver's "
            "volume); review it in the refinement tool"
        )
        if share > PROPOSAL_DOUBT_SHARE:
            record["doubt"] = (
                f"the liver redrawn from one box on its middle slice and propagated differs from the automatic "
                f"liver by {100 * share:.0f} % of its volume: one of the two is wrong on much of the organ; check the "
                "liver slice by slice before planning on it"
            )
        return labels, record
    out = combine(labels, new_liver, liver_value, "replace", region=changed | auto_liver | new_liver)
    record["dice_before"] = dice(auto_liver, reference)
    record["dice_after"] = dice(out.array == liver_value, reference)
    record["applied"] = record["dice_after"] >= record["dice_before"]
    if not record["applied"]:
        record["reverted"] = "the correction lowered the liver's Dice; the automatic liver was kept"
        return labels, record
    return out, record


def _input(options: DemoOptions, progress: ProgressCallback | None):
    """The CT, its reference labels (phantom only) and where it came from."""
    from lkseg.io import read_image

    if options.image is not None:
        return read_image(options.image), None, {"image": str(options.image)}
    from lkseg.phantom import PhantomConfig, generate_phantom, write_phantom

    size = tuple(int(s) for s in options.phantom_size)
    # cover ~390 x 390 x 250 mm whatever the size, like an abdominal CT
    spacing = (390.0 / size[0], 390.0 / size[1], 250.0 / size[2])
    config = PhantomConfig(seed=options.seed, size_ijk=size, spacing=spacing)
    phantom = generate_phantom(config, progress=progress)
    paths = write_phantom(phantom, options.output / "phantom", seg_nrrd=False)
    return phantom.image, phantom.product_labels(), {"image": str(paths.get("ct", "")), "phantom_seed": options.seed}


def run_demo(
    options: DemoOptions, progress: ProgressCallback | None = None, cancel: CancelToken | None = None
) -> DemoResult:
    """Run the whole pipeline (see the module docstring); returns paths, numbers and timings."""
    from lkseg.auto import AutoSegmenter
    from lkseg.io.segnrrd import write_seg_nrrd
    from lkseg.metrics import compute_metrics
    from lkseg.planning import Patient, PlanOptions, Resection, run_plan
    from lkseg.report import collect_provenance, write_report
    from lkseg.surfaces import export_surfaces

    out = Path(options.output)
    out.mkdir(parents=True, exist_ok=True)
    res = DemoResult()

    def step(name: str, start: float, stop: float):
        report(progress, start, name)
        if cancel is not None:
            cancel.raise_if_cancelled()
        return SubProgress(progress, start, stop, f"{name}: ")

    t = time.perf_counter()
    volume, reference, source = _input(options, step("input", 0.0, 0.1))
    res.timings["input_s"] = time.perf_counter() - t

    t = time.perf_counter()
    segmenter = AutoSegmenter(options.model, device=options.device)
    # on a generated phantom the phantom-trained U-Net alone is better than the hybrid (seed 5000:
    # liver 0.980 vs 0.930, kidneys 0.980/0.966 vs 0.908/0.898, spleen 0.972 vs 0.937); on a
    # user's CT the default (hybrid when the refine extra is installed) applies
    from lkseg.auto import AutoOptions

    mode = "unet" if reference is not None else "auto"
    auto = segmenter.predict(
        volume, progress=step("automatic segmentation", 0.1, 0.45), cancel=cancel, options=AutoOptions(mode=mode)
    )
    res.timings["automatic_s"] = time.perf_counter() - t
    res.warnings += auto.warnings
    labels, table = auto.labels, auto.label_table
    seg = auto.to_segmentation()
    res.outputs["segmentation_auto"] = write_seg_nrrd(seg, out / "segmentation_auto.seg.nrrd")
    if reference is not None:
        res.accuracy["automatic"] = {
            k: m.to_dict()
            for k, m in compute_metrics(labels, reference, dict(table), ref_labels=dict(PRODUCT_LABELS)).items()
        }

    edits = []
    if options.refine and "liver" in table.values():
        step("refinement", 0.45, 0.6)
        t = time.perf_counter()
        from lkseg.refine import PromptPredictor

        predictor = PromptPredictor(device=options.device)
        try:
            ref_liver = None if reference is None else reference.array == PRODUCT_LABELS.value_of("liver")
            labels, record = simulated_liver_correction(predictor, volume, labels, table.value_of("liver"), ref_liver)
        finally:
            predictor.close()
        res.timings["refinement_s"] = time.perf_counter() - t
        res.refinement = record
        if "doubt" in record:
            res.warnings.append(record["doubt"])
        edits.append({"step": "simulated refinement", **record})
    final_seg = type(seg).from_label_volume(labels, table)
    res.outputs["segmentation"] = write_seg_nrrd(final_seg, out / "segmentation.seg.nrrd")

    step("planning", 0.6, 0.85)
    t = time.perf_counter()
    height = options.height_cm if options.height_cm is not None else volume.meta.get("height_cm")
    weight = options.weight_kg if options.weight_kg is not None else volume.meta.get("weight_kg")
    liver_ml = auto.volumes_ml.get("liver", 0.0)
    liver_doubt = [w for w in auto.warnings if w.startswith("liver volume")]
    plane = None
    if "liver" in table.values() and not liver_doubt:
        plane = demo_resection_plane(labels, table.value_of("liver"))
    elif liver_doubt:
        res.warnings.append(f"no resection planned: the automatic liver ({liver_ml:.0f} mL) is implausible")
    resection = Resection(planes=(plane,)) if plane is not None else None
    plan = run_plan(
        labels,
        table,
        PlanOptions(resection=resection, patient=Patient(height, weight, options.liver_quality), surfaces=True),
        image=volume,
        cancel=cancel,
    )
    for warning in res.warnings:
        if warning not in plan.warnings:
            plan.warnings.append(f"automatic segmentation: {warning}")
    res.plan = plan
    res.timings["planning_s"] = time.perf_counter() - t

    step("3D models and report", 0.85, 1.0)
    t = time.perf_counter()
    if plan.surfaces:
        for fmt, paths in export_surfaces(plan.surfaces, out / "models", list(options.formats)).items():
            res.outputs[f"models_{fmt}"] = Path(paths[0]).parent if len(paths) > 1 else Path(paths[0])
    labels_meta = {**labels.meta, "model_id": auto.model_id, "model_version": auto.model_version}
    prov = collect_provenance(
        {k: v for k, v in source.items() if k == "image"},
        labels_meta=labels_meta,
        parameters={
            "resection": resection.describe() if resection else None,
            "height_cm": height,
            "weight_kg": weight,
            "liver_quality": options.liver_quality,
            "phantom_seed": source.get("phantom_seed"),
            "device": auto.device,
            "automatic_mode": auto.mode,
            "prompt_model": auto.prompt_backend,
            "tumours_reliable": auto.lesions_reliable,
        },
        command=["lkseg", "demo"],
        prompts=[edits[0]] if edits else None,
        edits=edits,
    )
    for kind, path in write_report(plan, out, labels, table, image=volume, provenance=prov).items():
        res.outputs[f"report_{kind}"] = path
    res.timings["export_report_s"] = time.perf_counter() - t
    report(progress, 1.0, "done")
    return res


def check_output_dir(path: Path) -> Path:
    """Refuse an output path that is an existing file."""
    if path.exists() and not path.is_dir():
        raise InputError("output must be a folder, but a file of that name exists", path)
    return path
