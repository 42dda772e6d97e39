"""``lkseg plan LABELS -o OUT``: volumes, lesions, FLR, R.E.N.A.L., 3D models and reports.

Examples::

    lkseg plan seg.seg.nrrd --image ct.nii.gz -o plan/ \\
        --plane "-20,10,30:1,0,0" --height-cm 175 --weight-kg 70 --liver-quality chemotherapy
    lkseg plan labels.nii.gz -o plan/ --plane-markup cut.mrk.json --formats stl,glb

Planes are given in RAS mm as ``R,A,S:nR,nA,nS[:positive|negative]`` (point : normal : side to
resect; default positive = the side the normal points to), or read from 3D Slicer plane markups
(``.mrk.json``, LPS or RAS as the file says). Several planes combine as ``--combine
intersection`` (a convex wedge, default) or ``union``.

Couinaud segments: ``--landmarks couinaud.json`` (RAS mm; see :mod:`lkseg.planning.landmarks`)
or ``--auto-landmarks`` (from hepatic/portal vein segments) label the liver 1-8; ``--resect
5,6,7,8`` or ``--resect right_hepatectomy`` resects segments (with ``--plane`` too: their union).
The landmarks used are written to ``OUT/couinaud_landmarks.json`` and the segments to
``OUT/couinaud_segments.nii.gz``, so every assignment can be reproduced.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lkseg.cli.metrics import add_resample_labels_argument
from lkseg.io.jsonfile import read_json
from lkseg.progress import progress_lines

__all__ = ["parse_plane", "read_plane_markups", "register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="surgical planning: volumes, lesions, future liver remnant, R.E.N.A.L., 3D models, reports",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("labels", help="label map (.seg.nrrd, NIfTI, NRRD, DICOM SEG)")
    p.add_argument("-o", "--output", required=True, help="output folder (reports, meshes, pictures)")
    p.add_argument("--image", help="the CT (file or DICOM folder): pictures, grid check, height/weight from DICOM")
    add_resample_labels_argument(p)
    p.add_argument(
        "--label-table",
        help="value->structure map for plain label maps: JSON file or '1=liver,2=liver_tumor,...' (default: product labels)",
    )
    g = p.add_argument_group("resection (future liver remnant)")
    g.add_argument(
        "--plane",
        action="append",
        default=[],
        metavar="R,A,S:nR,nA,nS[:SIDE]",
        help="resection plane in RAS mm (repeatable)",
    )
    g.add_argument(
        "--plane-markup",
        action="append",
        default=[],
        metavar="FILE.mrk.json",
        help="3D Slicer plane markups file (repeatable)",
    )
    g.add_argument(
        "--resect-side",
        choices=["positive", "negative"],
        default="positive",
        help="side of markup planes to resect (default positive)",
    )
    g.add_argument(
        "--combine",
        choices=["intersection", "union"],
        default="intersection",
        help="how several planes combine (default intersection)",
    )
    g.add_argument(
        "--resect",
        metavar="SEGMENTS|PRESET",
        help="resect Couinaud segments: '5,6,7,8', 'segmentectomy 7' or a preset (right_hepatectomy, "
        "left_hepatectomy, extended_right_hepatectomy, extended_left_hepatectomy, left_lateral_sectionectomy, "
        "right_posterior_sectionectomy, right_anterior_sectionectomy); combinable with planes (union); "
        "needs --landmarks or --auto-landmarks",
    )
    c = p.add_argument_group("Couinaud segments")
    c.add_argument(
        "--landmarks",
        metavar="FILE.json",
        help="Couinaud landmarks in RAS mm (lkseg JSON, or a 3D Slicer point list .mrk.json with labels "
        "IVC*, PB*, RHV*, MHV*, LHV*)",
    )
    c.add_argument(
        "--auto-landmarks",
        action="store_true",
        help="propose the landmarks from the label map's hepatic_vein, portal_vein and inferior_vena_cava segments "
        "(all three needed)",
    )
    g.add_argument("--resection-mask", help="label/mask file on the same grid; non-zero voxels are resected")
    g.add_argument("--resection-label", help="segment of the label map that marks the resected part")
    g.add_argument("--height-cm", type=float, help="patient height in cm (default: from the DICOM header when known)")
    g.add_argument("--weight-kg", type=float, help="patient weight in kg (default: from the DICOM header when known)")
    g.add_argument("--liver-quality", choices=["normal", "chemotherapy", "steatosis", "cirrhosis"], default="normal")
    s = p.add_argument_group("3D models and reports")
    s.add_argument(
        "--formats",
        default="stl,glb",
        help="mesh formats, comma-separated from stl,obj,vtp,ply,glb,gltf (default stl,glb)",
    )
    s.add_argument("--no-surfaces", action="store_true", help="skip 3D surfaces (and the mesh-volume cross-check)")
    s.add_argument("--no-render", action="store_true", help="skip the offscreen 3D picture")
    s.add_argument("--smoothing", type=float, default=0.5, help="surface smoothing 0..1 (default 0.5)")
    s.add_argument(
        "--decimation", type=float, default=0.5, help="surface decimation (target reduction) 0..0.95 (default 0.5)"
    )
    s.add_argument("--reports", default="json,csv,html", help="report formats, comma-separated (default json,csv,html)")
    p.add_argument("--json", action="store_true", help="print the result summary as JSON")
    p.add_argument("--progress-lines", action="store_true", help="print 'LKSEG_PROGRESS <fraction> <message>' lines")
    p.set_defaults(func=run)


def parse_plane(text: str):
    """``"R,A,S:nR,nA,nS[:side]"`` -> :class:`~lkseg.planning.ResectionPlane` (RAS mm)."""
    from lkseg.planning import ResectionPlane

    return ResectionPlane.parse(text)


def read_plane_markups(path: str | Path, side: str = "positive") -> list:
    """Resection planes from a 3D Slicer markups JSON (``.mrk.json``) holding plane markups.

    Uses each plane's ``center`` and ``normal`` (or, for three-point planes without a normal, the
    plane through the three control points), converted from the file's coordinate system (LPS
    by default, as Slicer writes) to RAS.
    """
    import numpy as np

    from lkseg.errors import InputError
    from lkseg.planning import ResectionPlane

    path = Path(path)
    doc = read_json(path, "markups JSON file")
    planes = []
    for markup in doc.get("markups", []) if isinstance(doc, dict) else []:
        if str(markup.get("type", "")).lower() != "plane":
            continue
        flip = (
            np.array([-1.0, -1.0, 1.0]) if str(markup.get("coordinateSystem", "LPS")).upper() == "LPS" else np.ones(3)
        )
        points = [cp.get("position") for cp in markup.get("controlPoints", []) if cp.get("position") is not None]
        center = markup.get("center") or (points[0] if points else None)
        normal = markup.get("normal")
        if normal is None and len(points) >= 3:
            p = np.asarray(points[:3], dtype=float)
            normal = np.cross(p[1] - p[0], p[2] - p[0]).tolist()
        if center is None or normal is None:
            raise InputError("a plane markup has no center/normal (and fewer than 3 control points)", path)
        planes.append(
            ResectionPlane(tuple(np.asarray(center, float) * flip), tuple(np.asarray(normal, float) * flip), side)
        )  # type: ignore[arg-type]
    if not planes:
        raise InputError("holds no plane markup", path)
    return planes


def _label_table(spec: str | None):
    from lkseg.errors import InputError
    from lkseg.labels import PRODUCT_LABELS, LabelTable

    if not spec:
        return PRODUCT_LABELS
    try:
        if Path(spec).is_file():
            data = json.loads(Path(spec).read_text(encoding="utf-8"))
            data = data.get("labels", data) if isinstance(data, dict) else data
            return LabelTable({int(k): str(v) for k, v in data.items()})
        pairs = [item.split("=", 1) for item in spec.split(",") if item.strip()]
        return LabelTable({int(k): v.strip() for k, v in pairs})
    except (ValueError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise InputError(f"--label-table {spec!r}: expected a JSON file or '1=liver,2=liver_tumor' ({exc})") from None


def _load(args):
    """Image, label map, table and the resection mask/label mode from the arguments."""
    from lkseg.io import read_image, read_segmentation

    image = read_image(args.image) if args.image else None
    seg = read_segmentation(
        args.labels, reference=image, table=_label_table(args.label_table), resample=args.resample_labels
    )
    if seg.meta.get("grid_placement", "same grid") != "same grid":
        print(f"note: the label map was {seg.meta['grid_placement']} onto the image's grid")
    resection_mask = None
    if args.resection_label and args.resection_label in seg:
        res_seg = seg.segment(args.resection_label)
        liver_layers = {s.layer for s in seg.segments if (s.structure or s.name) == "liver"}
        if res_seg.layer not in liver_layers:
            # overlapping segment in its own layer: take it as a mask, plan without it
            resection_mask = seg.labels.with_array(seg.mask(args.resection_label))
            seg = seg.without_segment(args.resection_label)
    labels = seg.to_label_volume()
    table = seg.label_table()
    return image, labels, table, resection_mask


def run(args: argparse.Namespace) -> int:
    from lkseg.errors import InputError
    from lkseg.io import read_label_map
    from lkseg.planning import CouinaudLandmarks, Patient, PlanOptions, Resection, parse_segments, run_plan
    from lkseg.report import collect_provenance, write_report
    from lkseg.surfaces import SurfaceOptions, export_surfaces

    progress = progress_lines(args.progress_lines)
    image, labels, table, resection_mask = _load(args)
    planes = [parse_plane(p) for p in args.plane]
    for f in args.plane_markup:
        planes += read_plane_markups(f, args.resect_side)
    given = sum([bool(planes) or bool(args.resect), bool(args.resection_mask), bool(args.resection_label)])
    if given > 1:
        raise InputError(
            "give the resection as planes and/or --resect segments, --resection-mask or --resection-label, not several"
        )
    segments = parse_segments(args.resect) if args.resect else ()
    if segments and not (args.landmarks or args.auto_landmarks):
        raise InputError("--resect needs the Couinaud segments: give --landmarks FILE or --auto-landmarks")
    landmarks = CouinaudLandmarks.load(args.landmarks) if args.landmarks else None  # checked before planning
    resection = None
    if planes or segments:
        resection = Resection(planes=tuple(planes), combine=args.combine, segments=segments)
    elif args.resection_mask:
        resection = Resection(mask=read_label_map(args.resection_mask, reference=labels))
    elif resection_mask is not None:
        resection = Resection(mask=resection_mask)
    elif args.resection_label:
        resection = Resection(label=args.resection_label)
    meta = image.meta if image is not None else {}
    height = args.height_cm if args.height_cm is not None else meta.get("height_cm")
    weight = args.weight_kg if args.weight_kg is not None else meta.get("weight_kg")
    patient = Patient(height, weight, args.liver_quality)
    options = PlanOptions(
        resection=resection,
        patient=patient,
        surfaces=not args.no_surfaces,
        surface_options=SurfaceOptions(smoothing=args.smoothing, decimation=args.decimation),
        landmarks=landmarks,
        auto_landmarks=bool(args.auto_landmarks) and landmarks is None,
    )
    result = run_plan(labels, table, options, image=image, progress=progress)
    out = Path(args.output)
    written: dict[str, list[str]] = {}
    if result.couinaud is not None:
        from lkseg.io import write_label_map

        out.mkdir(parents=True, exist_ok=True)
        written["couinaud_landmarks"] = [str(result.couinaud.landmarks.save(out / "couinaud_landmarks.json"))]
        written["couinaud_segments"] = [str(write_label_map(result.couinaud.labels, out / "couinaud_segments.nii.gz"))]
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if result.surfaces and formats:
        for fmt, paths in export_surfaces(result.surfaces, out / "models", formats).items():
            written[fmt] = [str(p) for p in paths]
    parameters = {
        "resection": resection.describe() if resection else None,
        "couinaud_landmarks": result.couinaud.landmarks.to_dict() if result.couinaud is not None else None,
        "height_cm": height,
        "weight_kg": weight,
        "liver_quality": args.liver_quality,
        "smoothing": args.smoothing,
        "decimation": args.decimation,
        "label_table": table.to_json(),
    }
    prov = collect_provenance(
        {
            "labels": args.labels,
            "image": args.image,
            "resection_mask": args.resection_mask,
            **{f"plane_markup_{i}": f for i, f in enumerate(args.plane_markup)},
            "landmarks": args.landmarks,
        },
        labels_meta=labels.meta,
        parameters=parameters,
        command=["lkseg", *sys.argv[1:]] if sys.argv and Path(sys.argv[0]).name.startswith("lkseg") else None,
    )
    reports = [r.strip() for r in args.reports.split(",") if r.strip()]
    for kind, path in write_report(
        result, out, labels, table, image=image, provenance=prov, formats=reports, render_3d=not args.no_render
    ).items():
        written[kind] = [str(path)]
    if progress:
        progress(1.0, "done")
    if args.json:
        print(json.dumps({"outputs": written, "summary": _summary(result)}, indent=2, default=str))
    else:
        _print_summary(result, out, written)
    return 0


def _summary(result) -> dict:
    out: dict = {"volumes_ml": {n: round(v.volume_ml, 2) for n, v in result.volumes.items() if v.voxels}}
    if result.flr is not None:
        f = result.flr
        out["flr"] = {
            "flr_ml": round(f.flr_ml, 1),
            "flr_percent": round(f.flr_percent, 1),
            "sflr_percent": None if f.sflr_percent is None else round(f.sflr_percent, 1),
            "verdict": f.verdict,
        }
    if result.couinaud is not None:
        out["couinaud_ml"] = {str(k): round(v, 1) for k, v in result.couinaud.volumes_ml.items()}
        out["lesion_segments"] = {k: sorted(v) for k, v in result.lesion_segments.items()}
    out["lesions"] = len(result.lesions)
    out["renal"] = {r.tumour: r.notation for r in result.renal}
    out["warnings"] = result.warnings
    return out


def _print_summary(result, out: Path, written: dict) -> None:
    print("structure              volume (mL)   surface (mL)")
    for name, v in result.volumes.items():
        if v.voxels:
            mesh = f"{v.mesh_volume_ml:12.1f}" if v.mesh_volume_ml is not None else "           -"
            print(f"{name:22s} {v.volume_ml:11.1f}   {mesh}")
    for les in result.lesions:
        print(
            f"{les.label:22s} {les.volume_ml:11.2f} mL, {les.axial_long_mm:.1f} x {les.axial_short_mm:.1f} mm, organ {les.organ or 'none (outside)'}"
        )
    if result.couinaud is not None:
        print("Couinaud segment    " + "  ".join(f"{k:>6d}" for k in range(1, 9)))
        print("volume (mL)         " + "  ".join(f"{result.couinaud.volumes_ml[k]:6.1f}" for k in range(1, 9)))
        for name, segs in result.lesion_segments.items():
            print(f"{name:22s} in segment(s) " + ", ".join(f"{s} ({100 * f:.0f}%)" for s, f in segs.items()))
    if result.flr is not None:
        f = result.flr
        sflr = (
            f"{f.sflr_percent:.1f}%"
            if f.sflr_percent is not None
            else f"not available ({f.notes.get('sflr_percent', '')})"
        )
        print(
            f"FLR {f.flr_ml:.1f} mL = {f.flr_percent:.1f}% of functional liver; sFLR {sflr}; threshold {f.threshold_percent:.0f}% -> {f.verdict}"
        )
    for r in result.renal:
        print(f"{r.tumour}: R.E.N.A.L. {r.notation or 'not available'} (R{r.R} E{r.E} N{r.N} L{r.L})")
    for w in result.warnings:
        print(f"warning: {w}")
    print(f"outputs in {out}/: " + ", ".join(sorted(written)))
