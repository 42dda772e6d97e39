"""The web page's downloads: bytes built from an analytic label map with the core's writers, read
back independently (pynrrd/slicerio for the .seg.nrrd, pydicom for the DICOM SEG, a hand-written
binary-STL and GLB parser for the surfaces)."""

from __future__ import annotations

import io
import json
import struct
import zipfile

import numpy as np
import pytest

from lkseg.errors import InputError
from lkseg.io.dicom import read_dicom_series, write_dicom_series
from lkseg.labels import LabelTable
from lkseg.progress import CancelToken
from lkseg.volume import Volume
from lkseg.web.downloads import (
    bundle_download,
    dicom_seg_download,
    report_download,
    seg_nrrd_download,
    surfaces_download,
)

TABLE = LabelTable({1: "liver", 2: "liver_tumor", 3: "right_kidney"})
SPACING = (1.5, 1.25, 2.0)  # i, j, k (anisotropic)


def _labels_array(shape=(20, 40, 48)) -> tuple[np.ndarray, dict[int, float]]:
    """Liver ellipsoid with a tumour ball inside and a kidney ellipsoid apart (ZYX); also their
    analytic volumes in mL."""
    nk, nj, ni = shape
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    x, y, z = i * SPACING[0], j * SPACING[1], k * SPACING[2]

    def ell(c, r):
        return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1

    lab = np.zeros(shape, np.uint8)
    lab[ell((24, 22, 20), (16, 15, 14))] = 1
    lab[ell((26, 22, 20), (5, 5, 5))] = 2
    lab[ell((56, 25, 18), (8, 10, 12))] = 3
    ml = {
        1: 4 / 3 * np.pi * (16 * 15 * 14 - 5**3) / 1000,
        2: 4 / 3 * np.pi * 5**3 / 1000,
        3: 4 / 3 * np.pi * 8 * 10 * 12 / 1000,
    }
    return lab, ml


@pytest.fixture(scope="module")
def dicom_case(tmp_path_factory):
    """A CT written as DICOM (flipped, anisotropic) and the label map on its grid."""
    lab, ml = _labels_array()
    ct = Volume.from_array(
        np.where(lab > 0, 60, -100).astype(np.int16),
        spacing=SPACING,
        origin=(100.0, -50.0, 20.0),
        direction=np.diag([-1.0, 1.0, 1.0]) @ np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1.0]]),
    )
    folder = tmp_path_factory.mktemp("dicom") / "ct"
    write_dicom_series(ct, folder, series_description="web download test")
    image = read_dicom_series(folder)
    # the reader sorts along cross(i, j): map the labels into the grid it read
    from lkseg.resample import resample_labels_to_grid

    labels = image.with_array(resample_labels_to_grid(lab, ct.grid, image.grid).astype(np.uint8), meta={})
    return folder, image, labels, ml


def test_seg_nrrd_read_back_by_pynrrd_and_slicerio(dicom_case, tmp_path):
    import nrrd
    import slicerio

    _, image, labels, _ = dicom_case
    dl = seg_nrrd_download(labels, TABLE, stem="case 7/../x")
    assert dl.filename == "case_7_.._x.seg.nrrd" and dl.mime == "application/octet-stream"
    path = tmp_path / dl.filename
    path.write_bytes(dl.data)
    data, header = nrrd.read(str(path))
    seg = slicerio.read_segmentation(str(path))
    names = {s["name"]: s["labelValue"] for s in seg["segments"]}
    assert names == {"Liver": 1, "Liver tumor": 2, "Right kidney": 3}
    # voxel counts per value equal the label map's (pynrrd gives IJK order: transpose ZYX)
    arr = np.asarray(data)
    assert arr.shape == labels.array.T.shape
    for value in (1, 2, 3):
        assert int((arr == value).sum()) == int((labels.array == value).sum())
    assert np.allclose(np.asarray(header["space origin"], float), image.grid.origin)


def test_dicom_seg_references_the_series_and_holds_the_voxels(dicom_case, tmp_path):
    import pydicom

    folder, image, labels, _ = dicom_case
    dl = dicom_seg_download(labels, TABLE, folder, stem="case")
    assert dl.filename == "case_seg.dcm" and dl.mime == "application/dicom"
    ds = pydicom.dcmread(io.BytesIO(dl.data))
    assert ds.Modality == "SEG"
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == image.meta["series_uid"]
    assert len(ds.SegmentSequence) == 3
    frames = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)
    seg_of_frame = [
        int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber) for f in ds.PerFrameFunctionalGroupsSequence
    ]
    value_of = {"Liver": 1, "Liver tumor": 2, "Right kidney": 3}
    assert sorted(str(s.SegmentLabel) for s in ds.SegmentSequence) == sorted(value_of)
    for segment in ds.SegmentSequence:
        number = int(segment.SegmentNumber)
        voxels = sum(int(frames[n].sum()) for n, s in enumerate(seg_of_frame) if s == number)
        assert voxels == int((labels.array == value_of[str(segment.SegmentLabel)]).sum())


def test_dicom_seg_needs_a_dicom_source(dicom_case):
    _, _, labels, _ = dicom_case
    with pytest.raises(InputError, match="not opened from DICOM"):
        dicom_seg_download(labels, TABLE, None)
    with pytest.raises(InputError, match="empty"):
        dicom_seg_download(labels.with_array(np.zeros_like(labels.array)), TABLE, dicom_case[0])


def _stl_volume_ml(data: bytes) -> tuple[int, float]:
    """Triangle count and enclosed volume (divergence theorem) of a binary STL."""
    (n,) = struct.unpack("<I", data[80:84])
    assert len(data) == 84 + 50 * n
    rec = np.frombuffer(data[84:], dtype=np.dtype([("n", "<f4", 3), ("v", "<f4", (3, 3)), ("a", "<u2")]), count=n)
    v = rec["v"].astype(float)
    signed = np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() / 6.0
    return n, abs(signed) / 1000.0


def _glb_json(data: bytes) -> dict:
    magic, version, length = struct.unpack("<4sII", data[:12])
    assert magic == b"glTF" and version == 2 and length == len(data)
    chunk_len, chunk_type = struct.unpack("<I4s", data[12:20])
    assert chunk_type == b"JSON"
    return json.loads(data[20 : 20 + chunk_len])


def test_surfaces_zip_stl_volumes_match_the_masks(dicom_case):
    _, _, labels, ml = dicom_case
    seen = []
    dl = surfaces_download(labels, TABLE, progress=lambda f, m: seen.append(f))
    assert dl.filename == "surfaces.zip" and dl.mime == "application/zip"
    with zipfile.ZipFile(io.BytesIO(dl.data)) as zf:
        names = sorted(zf.namelist())
        assert names == ["liver.stl", "liver_tumor.stl", "right_kidney.stl", "scene.glb"]
        for name, value in (("liver.stl", 1), ("right_kidney.stl", 3)):
            n, volume = _stl_volume_ml(zf.read(name))
            voxel_ml = int((labels.array == value).sum()) * np.prod(SPACING) / 1000
            assert n > 100
            # a smoothed, decimated surface encloses about the voxel volume, and that is close to the
            # analytic ellipsoid (liver: the tumour inside is a hole in label 1, not in the surface)
            assert volume == pytest.approx(voxel_ml + (ml[2] if value == 1 else 0), rel=0.12)
        gltf = _glb_json(zf.read("scene.glb"))
        assert len(gltf["meshes"]) == 3
    assert seen and seen[-1] == 1.0


def test_surfaces_cancel_and_empty(dicom_case):
    from lkseg.errors import CancelledError

    _, _, labels, _ = dicom_case
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        surfaces_download(labels, TABLE, cancel=token)
    with pytest.raises(InputError, match="no surface"):
        surfaces_download(labels.with_array(np.zeros_like(labels.array)), TABLE)


def _find(tree, key):
    """The first value of ``key`` anywhere in a JSON tree."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        tree = list(tree.values())
    if isinstance(tree, list):
        for item in tree:
            found = _find(item, key)
            if found is not None:
                return found
    return None


def test_report_and_bundle(dicom_case):
    from lkseg.planning import PlanOptions, Resection, ResectionPlane, run_plan

    folder, image, labels, _ = dicom_case
    with pytest.raises(InputError, match="no planning result"):
        report_download(None, labels, TABLE)
    liver = np.argwhere(labels.array == 1).mean(axis=0)  # ZYX index
    centre_ras = tuple(float(v) for v in image.grid.index_to_ras(liver[::-1]))
    options = PlanOptions(resection=Resection(planes=(ResectionPlane(centre_ras, (1.0, 0.0, 0.0)),)), surfaces=True)
    plan = run_plan(labels, TABLE, options, image=image)
    html = report_download(plan, labels, TABLE, image=image, render_3d=False)
    text = html.data.decode("utf-8")
    assert html.filename == "report.html" and html.mime == "text/html"
    assert text.lstrip().lower().startswith("<!doctype html") and "data:image/png;base64," in text
    assert f"{plan.flr.flr_percent:.1f}" in text

    bundle = bundle_download(labels, TABLE, image=image, plan=plan, source_dicom=folder, stem="case", render_3d=False)
    with zipfile.ZipFile(io.BytesIO(bundle.data)) as zf:
        names = set(zf.namelist())
        assert {"case/case.seg.nrrd", "case/case_seg.dcm", "case/surfaces/scene.glb", "case/report/report.html",
                "case/report/report.json", "case/report/report.csv", "case/README.txt"} <= names  # fmt: skip
        assert "Everything is included" in zf.read("case/README.txt").decode()
        report_json = json.loads(zf.read("case/report/report.json"))
        assert _find(report_json, "flr_ml") == pytest.approx(plan.flr.flr_ml, rel=1e-3)
    # without DICOM source and plan: the rest, and a README saying what is missing and why
    nifti_ct = image.with_array(image.array, meta={})
    partial = bundle_download(labels, TABLE, image=nifti_ct, stem="case")
    with zipfile.ZipFile(io.BytesIO(partial.data)) as zf:
        names = set(zf.namelist())
        assert "case/case.seg.nrrd" in names and "case/case_seg.dcm" not in names
        readme = zf.read("case/README.txt").decode()
        assert "DICOM SEG left out" in readme and "no planning result" in readme
