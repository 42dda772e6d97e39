"""Mesh export: STL, OBJ, VTP, PLY per structure, and one glTF/GLB scene with every structure.

Coordinates are **RAS millimetres** (3D Slicer's world coordinates) in every file, and each
format that can say so says so, with the markers 3D Slicer itself writes and reads:

* STL: the header (binary, 80 bytes) starts with ``SPACE=RAS``;
* OBJ: a first comment line ``# ... SPACE=RAS``; colour in a sidecar ``.mtl``;
* PLY: ``comment SPACE=RAS``; uniform vertex colour;
* VTP: field data ``SPACE`` = ``RAS`` (plus ``Name``, ``Structure``, ``Color``);
* glTF/GLB: vertex positions stay RAS mm; the root node's matrix maps them to glTF's frame
  (+Y up = superior, +Z front = anterior, metres), and ``asset.extras`` records this. Without
  the marker, Slicer >= 4.11 assumes LPS for mesh files; with it, it loads RAS correctly.

All writes are atomic (temporary file, then rename).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from lkseg.errors import InputError
from lkseg.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from lkseg.surfaces.mesh import SurfaceMesh

__all__ = ["MESH_FORMATS", "export_surfaces", "write_gltf", "write_mesh"]

log = logging.getLogger(__name__)

#: Per-structure formats and the scene formats.
MESH_FORMATS = ("stl", "obj", "vtp", "ply", "glb", "gltf")
_SCENE = ("glb", "gltf")

#: RAS mm -> glTF (x = patient left, y = superior, z = anterior; metres). Proper rotation x 0.001.
RAS_TO_GLTF = np.array([[-0.001, 0.0, 0.0, 0.0], [0.0, 0.0, 0.001, 0.0], [0.0, 0.001, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "structure"


def export_surfaces(
    meshes: Sequence[SurfaceMesh],
    out_dir: str | Path,
    formats: Iterable[str] = ("stl", "glb"),
    prefix: str = "",
) -> dict[str, list[Path]]:
    """Write meshes to ``out_dir``: one file per structure for STL/OBJ/VTP/PLY
    (``<prefix><structure>.<ext>``), one scene file for GLB/glTF (``<prefix>scene.glb``).

    Returns:
        format -> written paths.
    """
    formats = [f.lower().lstrip(".") for f in formats]
    bad = [f for f in formats if f not in MESH_FORMATS]
    if bad:
        raise InputError(f"unknown mesh format(s) {bad}; choose from {list(MESH_FORMATS)}")
    meshes = [m for m in meshes if m.n_triangles > 0]
    if not meshes:
        raise InputError("no surface to export (every structure is empty)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = {}
    for fmt in formats:
        if fmt in _SCENE:
            path = out_dir / f"{prefix}scene.{fmt}"
            write_gltf(meshes, path)
            written[fmt] = [path]
        else:
            written[fmt] = [write_mesh(m, out_dir / f"{prefix}{_safe(m.name)}.{fmt}") for m in meshes]
    return written


def write_mesh(mesh: SurfaceMesh, path: str | Path) -> Path:
    """Write one mesh; the format follows the suffix (.stl, .obj, .vtp, .ply, .glb, .gltf)."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt in _SCENE:
        return write_gltf([mesh], path)
    if fmt == "obj":
        return _write_obj(mesh, path)
    writers = {"stl": _write_stl, "vtp": _write_vtp, "ply": _write_ply}
    if fmt not in writers:
        raise InputError(f"cannot write mesh format {path.suffix!r}; use one of {list(MESH_FORMATS)}", path)
    with atomic_path(path) as tmp:
        writers[fmt](mesh, tmp)
    return path


def _write_stl(mesh: SurfaceMesh, path: Path) -> None:
    from vtkmodules.vtkIOGeometry import vtkSTLWriter

    w = vtkSTLWriter()
    w.SetInputData(mesh.to_polydata())
    w.SetFileTypeToBinary()
    w.SetHeader(f"SPACE=RAS units=mm LiverKidneySeg {mesh.name}"[:79])
    w.SetFileName(str(path))
    if not w.Write():
        raise OSError(f"{path}: the STL writer failed")


def _write_vtp(mesh: SurfaceMesh, path: Path) -> None:
    from vtkmodules.vtkIOXML import vtkXMLPolyDataWriter

    w = vtkXMLPolyDataWriter()
    w.SetInputData(mesh.to_polydata())
    w.SetDataModeToAppended()
    w.SetCompressorTypeToZLib()
    w.SetFileName(str(path))
    if not w.Write():
        raise OSError(f"{path}: the VTP writer failed")


def _write_ply(mesh: SurfaceMesh, path: Path) -> None:
    from vtkmodules.vtkIOPLY import vtkPLYWriter

    w = vtkPLYWriter()
    w.SetInputData(mesh.to_polydata())
    w.SetFileTypeToBinary()
    w.AddComment("SPACE=RAS")
    w.AddComment(f"units=mm structure={mesh.name}")
    w.SetColorModeToUniformPointColor()
    w.SetColor(*(round(255 * c) for c in mesh.color))
    w.SetFileName(str(path))
    if not w.Write():
        raise OSError(f"{path}: the PLY writer failed")


def _write_obj(mesh: SurfaceMesh, path: Path) -> Path:
    mtl_name = path.with_suffix(".mtl").name
    material = _safe(mesh.name)
    buf = io.StringIO()
    buf.write(f"# LiverKidneySeg surface of {mesh.display}. SPACE=RAS units=mm\n")
    buf.write(f"mtllib {mtl_name}\no {material}\n")
    np.savetxt(buf, mesh.points, fmt="v %.5f %.5f %.5f")
    if mesh.normals is not None:
        np.savetxt(buf, mesh.normals, fmt="vn %.5f %.5f %.5f")
    buf.write(f"usemtl {material}\n")
    faces = mesh.triangles + 1
    if mesh.normals is not None:
        np.savetxt(buf, np.repeat(faces, 2, axis=1), fmt="f %d//%d %d//%d %d//%d")
    else:
        np.savetxt(buf, faces, fmt="f %d %d %d")
    r, g, b = mesh.color
    mtl = f"# LiverKidneySeg material\nnewmtl {material}\nKd {r:.4f} {g:.4f} {b:.4f}\nKa 0 0 0\nd {mesh.opacity:.3f}\n"
    atomic_write_text(path.with_suffix(".mtl"), mtl)
    atomic_write_text(path, buf.getvalue())
    return path


# -- glTF 2.0 -------------------------------------------------------------------------------
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_FLOAT, _UINT = 5126, 5125


def write_gltf(meshes: Sequence[SurfaceMesh], path: str | Path, generator: str | None = None) -> Path:
    """One glTF 2.0 scene with every mesh coloured by its structure: binary ``.glb`` or
    ``.gltf`` (JSON with the buffer embedded as a data URI), chosen by the suffix."""
    from lkseg import __version__

    path = Path(path)
    binary = path.suffix.lower() == ".glb"
    if path.suffix.lower() not in (".glb", ".gltf"):
        raise InputError("a glTF scene must end in .glb or .gltf", path)
    blob = bytearray()
    views, accessors, gl_meshes, materials, nodes = [], [], [], [], []

    def add_view(data: bytes, target: int) -> int:
        while len(blob) % 4:
            blob.append(0)
        views.append({"buffer": 0, "byteOffset": len(blob), "byteLength": len(data), "target": target})
        blob.extend(data)
        return len(views) - 1

    for mesh in meshes:
        pos = np.ascontiguousarray(mesh.points, dtype=np.float32)
        attrs = {"POSITION": len(accessors)}
        accessors.append(
            {
                "bufferView": add_view(pos.tobytes(), _ARRAY_BUFFER),
                "componentType": _FLOAT,
                "count": len(pos),
                "type": "VEC3",
                "min": pos.min(axis=0).tolist(),
                "max": pos.max(axis=0).tolist(),
            }
        )
        if mesh.normals is not None:
            nrm = np.ascontiguousarray(mesh.normals, dtype=np.float32)
            attrs["NORMAL"] = len(accessors)
            accessors.append(
                {
                    "bufferView": add_view(nrm.tobytes(), _ARRAY_BUFFER),
                    "componentType": _FLOAT,
                    "count": len(nrm),
                    "type": "VEC3",
                }
            )
        idx = np.ascontiguousarray(mesh.triangles, dtype=np.uint32).ravel()
        indices = len(accessors)
        accessors.append(
            {
                "bufferView": add_view(idx.tobytes(), _ELEMENT_ARRAY_BUFFER),
                "componentType": _UINT,
                "count": len(idx),
                "type": "SCALAR",
            }
        )
        materials.append(
            {
                "name": mesh.display,
                "pbrMetallicRoughness": {
                    "baseColorFactor": [*map(float, mesh.color), float(mesh.opacity)],
                    "metallicFactor": 0.0,
                    "roughnessFactor": 0.6,
                },
                "alphaMode": "BLEND" if mesh.opacity < 1.0 else "OPAQUE",
            }
        )
        gl_meshes.append(
            {
                "name": mesh.display,
                "primitives": [{"attributes": attrs, "indices": indices, "material": len(materials) - 1, "mode": 4}],
                "extras": {"structure": mesh.name, "label_value": mesh.value},
            }
        )
        nodes.append({"name": mesh.display, "mesh": len(gl_meshes) - 1})
    root = {
        "name": "LiverKidneySeg (RAS mm)",
        "matrix": RAS_TO_GLTF.T.ravel().tolist(),
        "children": list(range(1, len(nodes) + 1)),
    }
    doc = {
        "asset": {
            "version": "2.0",
            "generator": generator or f"LiverKidneySeg lkseg {__version__}",
            "extras": {
                "coordinate_system": "RAS",
                "units": "mm",
                "note": "vertex positions are RAS millimetres (3D Slicer world); the root node matrix maps them to glTF (+Y superior, +Z anterior, metres)",
            },
        },
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [root, *nodes],
        "meshes": gl_meshes,
        "materials": materials,
        "accessors": accessors,
        "bufferViews": views,
        "buffers": [{"byteLength": len(blob)}],
    }
    if binary:
        while len(blob) % 4:
            blob.append(0)
        doc["buffers"][0]["byteLength"] = len(blob)
        text = json.dumps(doc, separators=(",", ":")).encode("utf-8")
        text += b" " * ((4 - len(text) % 4) % 4)
        total = 12 + 8 + len(text) + 8 + len(blob)
        data = (
            struct.pack("<4sII", b"glTF", 2, total)
            + struct.pack("<I4s", len(text), b"JSON")
            + text
            + struct.pack("<I4s", len(blob), b"BIN\x00")
            + bytes(blob)
        )
        atomic_write_bytes(path, data)
    else:
        doc["buffers"][0]["uri"] = "data:application/octet-stream;base64," + base64.b64encode(bytes(blob)).decode(
            "ascii"
        )
        atomic_write_text(path, json.dumps(doc))
    return path
