"""``lkseg phantom OUT_DIR``: generate a synthetic abdominal CT with exact label maps.

Writes ``ct.nii.gz``, ``labels.nii.gz`` (product labels), ``labels_detailed.nii.gz``,
``phantom.json`` (config, label tables, true volumes, lesions, geometry), ``labels.seg.nrrd``
and, with ``--dicom``, a DICOM series; prints the written paths and the true volumes.
``--progress-lines`` prints ``LKSEG_PROGRESS <fraction> <message>`` lines for a GUI.
"""

from __future__ import annotations

import argparse
import json

__all__ = ["config_from_args", "register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    from lkseg.phantom.config import KIDNEY_TUMOR_KINDS
    from lkseg.phantom.hu import PHASES

    p = sub.add_parser("phantom", help="generate a synthetic abdominal CT phantom with exact labels")
    p.add_argument("out_dir", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--size",
        type=int,
        nargs=3,
        metavar=("I", "J", "K"),
        default=(256, 256, 100),
        help="voxels along i, j, k (default 256 256 100)",
    )
    p.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        metavar=("SI", "SJ", "SK"),
        default=(1.6, 1.6, 2.5),
        help="mm along i, j, k (default 1.6 1.6 2.5)",
    )
    orient = p.add_mutually_exclusive_group()
    orient.add_argument(
        "--direction", type=float, nargs=9, metavar="D", help="3x3 LPS direction, row-major (columns = i, j, k axes)"
    )
    orient.add_argument(
        "--orientation", metavar="CODE", help="orientation code of the grid, e.g. LPS (default), RAS, PIL (sagittal)"
    )
    p.add_argument("--oblique", type=float, default=0.0, metavar="DEG", help="tilt the grid by DEG degrees")
    p.add_argument(
        "--oblique-axis", choices=("x", "y", "z"), default="x", help="patient axis of the tilt (default x: gantry tilt)"
    )
    p.add_argument(
        "--noise", type=float, default=12.0, metavar="SD", help="noise standard deviation in HU (default 12)"
    )
    p.add_argument("--blur", type=float, default=0.5, metavar="MM", help="point-spread sigma in mm (default 0.5)")
    p.add_argument("--phase", choices=PHASES, default="portal_venous", help="contrast phase (default portal_venous)")
    p.add_argument(
        "--kidney-tumor", choices=KIDNEY_TUMOR_KINDS, default="random", help="kidney tumour growth (default random)"
    )
    p.add_argument("--kidney-tumor-side", choices=("random", "right", "left"), default="random")
    p.add_argument("--liver-tumors", type=int, default=3, metavar="N", help="number of liver tumours (default 3)")
    p.add_argument("--no-cyst", action="store_true", help="no kidney cyst")
    p.add_argument(
        "--variation", type=float, default=1.0, help="anatomical variation, 0 (mean anatomy) to 1.5 (default 1)"
    )
    p.add_argument("--dicom", action="store_true", help="also write a DICOM CT series in OUT_DIR/dicom")
    p.add_argument("--no-seg-nrrd", action="store_true", help="do not write labels.seg.nrrd")
    p.add_argument("--json", action="store_true", help="print the paths and volumes as JSON")
    p.add_argument("--progress-lines", action="store_true", help="print LKSEG_PROGRESS <fraction> <message> lines")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    """The :class:`~lkseg.phantom.PhantomConfig` described by parsed arguments."""
    import numpy as np

    from lkseg.phantom import PhantomConfig, direction_from_orientation, oblique_direction

    if args.direction is not None:
        direction = np.asarray(args.direction, dtype=float).reshape(3, 3)
    else:
        direction = direction_from_orientation(args.orientation or "LPS")
    if args.oblique:
        direction = oblique_direction(direction, args.oblique, args.oblique_axis)
    return PhantomConfig(
        seed=args.seed,
        size_ijk=tuple(args.size),
        spacing=tuple(args.spacing),
        direction=tuple(direction.reshape(-1)),
        phase=args.phase,
        noise_sd=args.noise,
        blur_mm=args.blur,
        kidney_tumor=args.kidney_tumor,
        kidney_tumor_side=args.kidney_tumor_side,
        n_liver_tumors=args.liver_tumors,
        kidney_cyst=not args.no_cyst,
        variation=args.variation,
    )


def run(args: argparse.Namespace) -> int:
    from lkseg.phantom import PRODUCT_FROM_DETAILED, generate_phantom, write_phantom
    from lkseg.progress import SubProgress, progress_lines

    config = config_from_args(args)

    show = progress_lines(args.progress_lines)
    phantom = generate_phantom(config, progress=SubProgress(show, 0.0, 0.85) if show else None)
    if show:
        show(0.87, "writing files")
    paths = write_phantom(phantom, args.out_dir, dicom=args.dicom, seg_nrrd=not args.no_seg_nrrd)
    if show:
        show(1.0, "done")
    if args.json:
        print(
            json.dumps(
                {
                    "files": {k: str(v) for k, v in paths.items()},
                    "volumes_ml": phantom.volumes_ml,
                    "lesions": phantom.lesions,
                },
                indent=2,
            )
        )
        return 0
    print(f"phantom seed {config.seed}: {phantom.grid.describe()}, {config.phase.replace('_', ' ')} phase")
    print(
        f"patient {phantom.meta['height_cm']:.0f} cm, {phantom.meta['weight_kg']:.0f} kg; generated in {phantom.meta['timings_s']['total']:.2f} s"
    )
    for key, path in paths.items():
        print(f"  {key:16s} {path}")
    print("true volumes (mL)")
    for name in PRODUCT_FROM_DETAILED:
        print(f"  {name:16s} {phantom.volumes_ml[name]:10.2f}")
    print("lesions")
    for les in phantom.lesions:
        ras = ", ".join(f"{v:.1f}" for v in les["center_ras"])
        growth = f", {les['growth']}" if les.get("growth") else ""
        print(
            f"  {les['name']:16s} {les['kind']} in {les['organ']}{growth}: {les['diameter_mm']:.1f} mm, {les['volume_ml']:.2f} mL at RAS ({ras})"
        )
    return 0
