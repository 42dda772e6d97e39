"""Surface meshes: analytic volumes, physical placement on any grid, exports that reload."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest

from conftest import DIRECTIONS
from lkseg.errors import InputError
from lkseg.labels import LabelTable
from lkseg.surfaces import SurfaceOptions, build_surfaces, export_surfaces, is_closed, render_png_bytes, write_gltf
from lkseg.volume import Grid, Volume

CENTRE = np.array([12.0, -30.0, 45.0])  # RAS mm
SATELLITE = np.array([20.0, 0.0, 0.0])  # offset of the small sphere (RAS): detects any flip
TABLE = LabelTable({1: "liver", 2: "liver_tumor"})


def two_spheres(direction, spacing=(0.9, 1.1, 1.6), r_big=18.0, r_small=5.0) -> Volume:
    """Label 1: sphere of radius ``r_big`` at CENTRE; label 2: small sphere at CENTRE + SATELLITE."""
    size = np.array([math.ceil(2 * 46 / s) for s in spacing])
    direction = np.asarray(direction, dtype=float)
    centre_idx = (size - 1) / 2
    origin = CENTRE * np.array([-1.0, -1.0, 1.0]) - direction @ np.diag(spacing) @ centre_idx
    grid = Grid(tuple(size[::-1]), spacing, tuple(origin), direction)
    k, j, i = np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij")
    ras = grid.index_to_ras(np.stack([i, j, k], -1).reshape(-1, 3)).reshape(*grid.shape, 3)
    lab = np.zeros(grid.shape, np.uint8)
    lab[np.linalg.norm(ras - CENTRE, axis=-1) <= r_big] = 1
    lab[np.linalg.norm(ras - CENTRE - SATELLITE, axis=-1) <= r_small] = 2
    return Volume(lab, grid)


@pytest.fixture(scope="module")
def meshes():
    return build_surfaces(two_spheres(DIRECTIONS["oblique"]), TABLE)


def test_sphere_mesh_volume_within_one_percent(meshes):
    liver = meshes[0]
    true_ml = 4 / 3 * math.pi * 18.0**3 / 1000
    voxel_ml = liver.voxel_volume_ml
    assert voxel_ml == pytest.approx(true_ml, rel=0.01)
    assert liver.volume_ml == pytest.approx(true_ml, rel=0.01)
    assert abs(liver.volume_ml - voxel_ml) / voxel_ml < 0.02
    # outward normals; points about r from the centre (away from the dent the small sphere,
    # which overlaps the big one, leaves in it)
    radial = liver.points - CENTRE
    away = np.linalg.norm(liver.points - CENTRE - SATELLITE, axis=1) > 8.0
    assert np.abs(np.linalg.norm(radial[away], axis=1) - 18.0).max() < 1.0
    assert np.mean(np.einsum("ij,ij->i", liver.normals[away], radial[away]) > 0) > 0.99


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_mesh_at_the_same_physical_place_on_any_grid(name):
    big, small = build_surfaces(two_spheres(DIRECTIONS[name]), TABLE, options=SurfaceOptions(decimation=0.0))
    assert big.volume_ml > 0 and small.volume_ml > 0  # outward winding after reflections too
    assert np.allclose(big.points.mean(axis=0), CENTRE, atol=0.3)
    assert np.allclose(small.points.mean(axis=0), CENTRE + SATELLITE, atol=0.3)
    assert big.volume_ml == pytest.approx(4 / 3 * math.pi * 18.0**3 / 1000, rel=0.01)


def test_marching_cubes_and_no_smoothing_options():
    vol = two_spheres(np.eye(3), spacing=(1.0, 1.0, 1.0))
    plain = build_surfaces(vol, TABLE, names=["liver"], options=SurfaceOptions(smoothing=0, decimation=0))[0]
    mc = build_surfaces(vol, TABLE, names=["liver"], options=SurfaceOptions(method="marching_cubes", decimation=0.7))[0]
    assert plain.voxel_volume_ml == mc.voxel_volume_ml
    assert mc.n_triangles < 0.5 * plain.n_triangles  # decimated
    for m in (plain, mc):
        assert m.volume_ml == pytest.approx(m.voxel_volume_ml, rel=0.02)
    with pytest.raises(InputError):
        SurfaceOptions(decimation=1.0)
    with pytest.raises(InputError):
        SurfaceOptions(method="dual_contouring")  # type: ignore[arg-type]


def test_decimated_meshes_stay_closed(meshes, monkeypatch):
    import builtins

    assert all(is_closed(m.triangles) for m in meshes)
    vol = two_spheres(np.eye(3), spacing=(1.0, 1.0, 1.0))
    fast = build_surfaces(vol, TABLE, names=["liver"], options=SurfaceOptions(decimation=0.6))[0]
    real_import = builtins.__import__

    def no_fast(name, *args, **kwargs):
        if name == "fast_simplification":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_fast)  # the VTK fallback
    slow = build_surfaces(vol, TABLE, names=["liver"], options=SurfaceOptions(decimation=0.6))[0]
    for m in (fast, slow):
        assert is_closed(m.triangles)
        assert m.volume_ml == pytest.approx(m.voxel_volume_ml, rel=0.01)
    assert abs(fast.n_triangles - slow.n_triangles) < 0.05 * slow.n_triangles


def test_structure_at_image_edge_is_closed():
    arr = np.zeros((20, 20, 20), np.uint8)
    arr[:10, 5:15, 5:15] = 1  # touches the first slice: padding keeps the surface closed
    (mesh,) = build_surfaces(Volume.from_array(arr), TABLE, options=SurfaceOptions(smoothing=0, decimation=0))
    assert mesh.volume_ml == pytest.approx(1.0, rel=0.03)


def _reload(path):
    from vtkmodules.vtkIOGeometry import vtkOBJReader, vtkSTLReader
    from vtkmodules.vtkIOPLY import vtkPLYReader
    from vtkmodules.vtkIOXML import vtkXMLPolyDataReader

    reader = {".stl": vtkSTLReader, ".obj": vtkOBJReader, ".ply": vtkPLYReader, ".vtp": vtkXMLPolyDataReader}[
        path.suffix
    ]()
    reader.SetFileName(str(path))
    reader.Update()
    return reader.GetOutput()


def test_exports_reload_with_same_points_and_say_ras(meshes, tmp_path):
    from vtkmodules.util.numpy_support import vtk_to_numpy

    written = export_surfaces(meshes, tmp_path, formats=["stl", "obj", "vtp", "ply", "glb", "gltf"], prefix="case_")
    for fmt in ("stl", "obj", "vtp", "ply"):
        assert [p.name for p in written[fmt]] == [f"case_liver.{fmt}", f"case_liver_tumor.{fmt}"]
        for mesh, path in zip(meshes, written[fmt]):
            poly = _reload(path)
            assert poly.GetNumberOfPoints() == mesh.n_points, path.name
            assert poly.GetNumberOfCells() == mesh.n_triangles, path.name
            pts = vtk_to_numpy(poly.GetPoints().GetData())
            assert np.allclose(pts.mean(axis=0), mesh.points.mean(axis=0), atol=1e-3)  # RAS, unchanged
    assert b"SPACE=RAS" in written["stl"][0].read_bytes()[:80]
    assert written["obj"][0].read_text().splitlines()[0].endswith("SPACE=RAS units=mm")
    assert (tmp_path / "case_liver.mtl").read_text().count("Kd") == 1
    assert b"comment SPACE=RAS" in written["ply"][0].read_bytes()[:400]
    vtp = _reload(written["vtp"][0])
    assert vtp.GetFieldData().GetAbstractArray("SPACE").GetValue(0) == "RAS"
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporaries


def _read_glb(path):
    data = path.read_bytes()
    magic, version, total = struct.unpack("<4sII", data[:12])
    assert (magic, version, total) == (b"glTF", 2, len(data))
    json_len, json_type = struct.unpack("<I4s", data[12:20])
    assert json_type == b"JSON"
    doc = json.loads(data[20 : 20 + json_len])
    bin_len, bin_type = struct.unpack("<I4s", data[20 + json_len : 28 + json_len])
    assert bin_type == b"BIN\x00"
    return doc, data[28 + json_len : 28 + json_len + bin_len]


def test_glb_scene_structure_colours_and_frame(meshes, tmp_path):
    path = write_gltf(meshes, tmp_path / "scene.glb")
    doc, blob = _read_glb(path)
    assert doc["asset"]["version"] == "2.0" and doc["asset"]["extras"]["coordinate_system"] == "RAS"
    assert [m["name"] for m in doc["meshes"]] == ["Liver", "Liver tumor"]
    colours = [m["pbrMetallicRoughness"]["baseColorFactor"][:3] for m in doc["materials"]]
    assert np.allclose(colours, [meshes[0].color, meshes[1].color])
    for mesh, gl in zip(meshes, doc["meshes"]):
        acc = doc["accessors"][gl["primitives"][0]["attributes"]["POSITION"]]
        view = doc["bufferViews"][acc["bufferView"]]
        pos = np.frombuffer(blob, np.float32, acc["count"] * 3, view["byteOffset"]).reshape(-1, 3)
        assert acc["count"] == mesh.n_points and np.allclose(pos, mesh.points, atol=1e-3)
        assert np.allclose(acc["min"], pos.min(axis=0)) and np.allclose(acc["max"], pos.max(axis=0))
    # the root matrix maps RAS mm to glTF's +Y up (superior), +Z front (anterior), metres
    m = np.array(doc["nodes"][0]["matrix"]).reshape(4, 4).T
    assert np.allclose(m @ [0, 0, 1000, 1], [0, 1, 0, 1]) and np.allclose(m @ [0, 1000, 0, 1], [0, 0, 1, 1])
    assert np.linalg.det(m[:3, :3]) > 0


def test_glb_reloads_in_vtk(meshes, tmp_path):
    from vtkmodules.vtkIOGeometry import vtkGLTFReader

    path = write_gltf(meshes, tmp_path / "scene.glb")
    reader = vtkGLTFReader()
    reader.SetFileName(str(path))
    reader.Update()
    it = reader.GetOutput().NewIterator()
    it.InitTraversal()
    counts = []
    while not it.IsDoneWithTraversal():
        counts.append(it.GetCurrentDataObject().GetNumberOfPoints())
        it.GoToNextItem()
    assert counts == [m.n_points for m in meshes]


def test_offscreen_render_png(meshes):
    from io import BytesIO

    from PIL import Image

    from lkseg.surfaces import RenderError

    try:
        png = render_png_bytes(meshes, size=(320, 240))
    except RenderError as exc:  # pragma: no cover - machines without any OpenGL
        pytest.skip(f"no offscreen OpenGL here: {exc}")
    img = np.asarray(Image.open(BytesIO(png)).convert("RGB"))
    assert img.shape == (240, 320, 3)
    assert (img != 255).any(axis=2).mean() > 0.05  # something was drawn on the white background


def test_concurrent_builds_do_not_mix_meshes():
    """Batch runners may mesh cases in threads: the decimator's global state is locked."""
    from concurrent.futures import ThreadPoolExecutor

    small = two_spheres(np.eye(3), spacing=(1.2, 1.2, 1.2))
    big = two_spheres(np.eye(3), spacing=(1.2, 1.2, 1.2), r_big=25.0, r_small=7.0)
    expected = [[m.volume_ml for m in build_surfaces(v, TABLE)] for v in (small, big)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda v: build_surfaces(v, TABLE), [small, big, small, big]))
    for n, meshes in enumerate(results):
        assert [m.volume_ml for m in meshes] == pytest.approx(expected[n % 2], rel=1e-9)


RENDER_THEN_TORCHVISION = """
import numpy as np, sys
from lkseg.surfaces import RenderError, build_surfaces, render_png_bytes
from lkseg.volume import Volume
a = np.zeros((20, 20, 20), np.uint8)
a[5:15, 5:15, 5:15] = 1
try:
    png = render_png_bytes(build_surfaces(Volume.from_array(a, (1, 1, 1), (0, 0, 0), np.eye(3)), {1: "liver"}))
except RenderError:
    sys.exit(3)
import torchvision  # loads torch._dynamo and triton, whose LLVM crashed after Mesa's
print("rendered", len(png), "then imported torchvision")
"""


def test_render_then_refine_libraries_in_one_process():
    """Rendering a report (Mesa's LLVM) and then importing LiteMedSAM's libraries (triton's LLVM)
    used to kill the process with a segmentation fault; run in a child so a crash fails the test."""
    import subprocess
    import sys

    pytest.importorskip("torchvision")
    proc = subprocess.run([sys.executable, "-c", RENDER_THEN_TORCHVISION], capture_output=True, text=True, timeout=300)
    if proc.returncode == 3:
        pytest.skip("no offscreen OpenGL here")
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert "then imported torchvision" in proc.stdout
