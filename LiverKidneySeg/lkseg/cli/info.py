"""``lkseg info IMAGE``: size, spacing, orientation, HU range and modality of an image."""

from __future__ import annotations

import argparse
import json

import numpy as np

__all__ = ["image_info", "register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe an image: size, spacing, orientation, HU range, modality")
    p.add_argument("image", help="NIfTI/NRRD file or DICOM folder")
    p.add_argument("--series-uid", help="SeriesInstanceUID when the folder holds several series")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def image_info(volume) -> dict:
    """A JSON-ready description of a :class:`~lkseg.volume.Volume`."""
    from lkseg.orientation import describe_orientation

    arr = volume.array
    grid = volume.grid
    info = {
        "size_ijk": list(grid.size_ijk),
        "spacing_mm": [round(s, 6) for s in grid.spacing],
        "origin_lps_mm": [round(o, 4) for o in grid.origin],
        "direction": np.round(grid.direction, 6).tolist(),
        "orientation": describe_orientation(grid),
        "dtype": str(arr.dtype),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "p01": float(np.percentile(arr, 1)),
        "p99": float(np.percentile(arr, 99)),
        "extent_mm": [round(n * s, 2) for n, s in zip(grid.size_ijk, grid.spacing)],
    }
    for key in ("modality", "series_uid", "series_description", "height_cm", "weight_kg", "format"):
        if volume.meta.get(key) is not None:
            info[key] = volume.meta[key]
    return info


def run(args: argparse.Namespace) -> int:
    from lkseg.io import read_image

    volume = read_image(args.image, series_uid=args.series_uid)
    info = image_info(volume)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"image        {args.image}")
    if "modality" in info:
        print(f"modality     {info['modality']}")
    print(f"size (IJK)   {' x '.join(map(str, info['size_ijk']))} voxels")
    print(f"spacing      {' x '.join(f'{s:.4g}' for s in info['spacing_mm'])} mm")
    print(f"extent       {' x '.join(f'{e:.1f}' for e in info['extent_mm'])} mm")
    print(f"orientation  {info['orientation']}")
    print(f"origin (LPS) {', '.join(f'{o:.2f}' for o in info['origin_lps_mm'])} mm")
    print(
        f"values       {info['min']:.1f} .. {info['max']:.1f} ({info['dtype']}; 1st-99th percentile {info['p01']:.1f} .. {info['p99']:.1f})"
    )
    return 0
