"""Surfaces of the Couinaud liver segments, one closed mesh per segment, coloured per segment.

Built on the segment label map of :func:`lkseg.planning.couinaud.couinaud_segments` with the
same pipeline as the structures (:func:`lkseg.surfaces.mesh.mesh_from_mask`, RAS mm), so they
export and render with the other meshes (names ``couinaud_1`` ... ``couinaud_8``).
"""

from __future__ import annotations

import numpy as np

from lkseg.progress import CancelToken, ProgressCallback, report
from lkseg.surfaces.mesh import SurfaceMesh, SurfaceOptions, _vertex_normals, mesh_from_mask

__all__ = ["SEGMENT_COLORS", "segment_color", "segment_surfaces"]

#: Couinaud segment -> RGB in [0, 1]: neighbouring segments get contrasting hues.
SEGMENT_COLORS: dict[int, tuple[float, float, float]] = {
    1: (0.894, 0.102, 0.110),
    2: (0.216, 0.494, 0.722),
    3: (0.302, 0.686, 0.290),
    4: (0.596, 0.306, 0.639),
    5: (1.000, 0.498, 0.000),
    6: (1.000, 0.929, 0.200),
    7: (0.651, 0.337, 0.157),
    8: (0.969, 0.506, 0.749),
}


def segment_color(segment: int) -> tuple[float, float, float]:
    """RGB (0-1) of a Couinaud segment (1-8)."""
    return SEGMENT_COLORS[int(segment)]


def segment_surfaces(
    couinaud,
    options: SurfaceOptions | None = None,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> list[SurfaceMesh]:
    """One closed mesh per non-empty segment of a :class:`~lkseg.planning.CouinaudResult`."""
    from lkseg.planning.couinaud import SEGMENT_NAMES

    options = options or SurfaceOptions()
    arr = couinaud.labels.array
    grid = couinaud.labels.grid
    from scipy import ndimage

    boxes = ndimage.find_objects(arr, max_label=8)
    meshes = []
    for seg in range(1, 9):
        report(progress, (seg - 1) / 8, f"surface of segment {seg}")
        box = boxes[seg - 1]
        if box is None:
            continue
        if cancel is not None:
            cancel.raise_if_cancelled()
        crop = np.pad(arr[box] == seg, 1)
        offset = np.array([b.start for b in box]) - 1
        pts, tris = mesh_from_mask(crop, grid, offset, options)
        mesh = SurfaceMesh(
            name=f"couinaud_{seg}",
            display=f"Couinaud segment {seg} ({SEGMENT_NAMES[seg]})",
            value=seg,
            color=segment_color(seg),
            points=pts,
            triangles=tris,
            normals=_vertex_normals(pts, tris) if len(tris) else None,
            voxel_volume_ml=float(couinaud.volumes_ml.get(seg, 0.0)),
        )
        _ = mesh.volume_ml
        meshes.append(mesh)
    report(progress, 1.0, "segment surfaces done")
    return meshes
