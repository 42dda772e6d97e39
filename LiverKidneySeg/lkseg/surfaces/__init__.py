"""3D reconstructions: label map -> closed surface meshes (RAS mm), export, offscreen pictures.

* :func:`build_surfaces` — one smoothed, decimated, closed mesh per structure
  (:class:`SurfaceMesh`: numpy points/triangles/normals in RAS mm, colour from
  :mod:`lkseg.labels`, enclosed volume for the volumetry cross-check);
* :func:`export_surfaces` / :func:`write_mesh` / :func:`write_gltf` — STL, OBJ, VTP, PLY per
  structure and one coloured glTF/GLB scene, all in RAS mm with the coordinate system written
  into the files;
* :func:`render_png` — an offscreen-rendered PNG of the scene;
* :func:`segment_surfaces` — one mesh per Couinaud liver segment, coloured per segment.

VTK is imported only inside the functions that need it.
"""

from __future__ import annotations

from lkseg.surfaces.export import MESH_FORMATS, export_surfaces, write_gltf, write_mesh
from lkseg.surfaces.mesh import SurfaceMesh, SurfaceOptions, build_surfaces, decimate, is_closed, mesh_from_mask
from lkseg.surfaces.render import RenderError, render_png, render_png_bytes
from lkseg.surfaces.segments import SEGMENT_COLORS, segment_color, segment_surfaces

__all__ = [
    "MESH_FORMATS",
    "SEGMENT_COLORS",
    "RenderError",
    "SurfaceMesh",
    "SurfaceOptions",
    "build_surfaces",
    "decimate",
    "export_surfaces",
    "is_closed",
    "mesh_from_mask",
    "render_png",
    "render_png_bytes",
    "segment_color",
    "segment_surfaces",
    "write_gltf",
    "write_mesh",
]
