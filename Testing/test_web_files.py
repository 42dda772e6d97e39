"""Files of the web front end: the data-folder jail, checked uploads (by content, size-limited,
zip-slip and zip-bomb safe, nothing partial left), and the DICOM series picker.

Images are written with SimpleITK directly and saved uploads are read back with SimpleITK /
pydicom, independently of the code under test."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from lkseg.errors import InputError
from lkseg.io.dicom import write_dicom_series
from lkseg.volume import Volume
from lkseg.web.files import ACCEPTED, DataRoot, list_series, save_upload, sniff

# -- helpers ---------------------------------------------------------------------------------------


def _ct_array(shape=(4, 5, 6)) -> np.ndarray:
    return (np.arange(np.prod(shape), dtype=np.int16).reshape(shape) - 1000).astype(np.int16)


def _sitk_file(tmp_path: Path, name: str, compress: bool = False) -> Path:
    image = sitk.GetImageFromArray(_ct_array())
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-10.0, 20.0, 30.0))
    path = tmp_path / "src" / name
    path.parent.mkdir(exist_ok=True)
    sitk.WriteImage(image, str(path), compress)
    return path


def _dicom_series(folder: Path, description: str, shape=(3, 8, 10)) -> list[Path]:
    vol = Volume.from_array(_ct_array(shape), spacing=(0.5, 0.5, 2.0), origin=(1.0, 2.0, 3.0))
    return write_dicom_series(vol, folder, series_description=description)


def _zip(entries: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _left_over(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# -- DataRoot -------------------------------------------------------------------------------------------


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "data"
    (root / "cases" / "dicom").mkdir(parents=True)
    (root / "cases" / "ct.nii.gz").write_bytes(b"x" * 10)
    (root / "notes.txt").write_text("hello")
    (root / ".hidden").write_text("secret")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "private.nii").write_bytes(b"p")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "escape_file.nii").symlink_to(outside / "private.nii")
    (root / "inner_link").symlink_to(root / "cases")
    _dicom_series(root / "cases" / "dicom", "one")
    return root, outside


def test_resolve_stays_inside_the_root(data_root):
    root, outside = data_root
    jail = DataRoot(root)
    assert jail.resolve("") == root.resolve()
    assert jail.resolve("cases/ct.nii.gz") == (root / "cases" / "ct.nii.gz").resolve()
    assert jail.resolve("cases/../notes.txt") == (root / "notes.txt").resolve()
    assert jail.resolve(str(root / "notes.txt")) == (root / "notes.txt").resolve()  # absolute, inside
    assert jail.resolve("inner_link/ct.nii.gz") == (root / "cases" / "ct.nii.gz").resolve()
    assert jail.resolve("%2e%2e/%2e%2e/etc/passwd") == root.resolve() / "%2e%2e" / "%2e%2e" / "etc" / "passwd"
    assert jail.resolve("..\\..\\etc\\passwd").parent == root.resolve()  # a literal name on POSIX
    for bad in (
        "..",
        "../outside/private.nii",
        "cases/../../outside",
        "/etc/passwd",
        str(outside / "private.nii"),
        "escape",
        "escape/private.nii",
        "escape_file.nii",
        "cases/../../" + root.name + "/../outside",
    ):
        with pytest.raises(InputError, match="outside the data folder"):
            jail.resolve(bad)
    with pytest.raises(InputError, match="control character"):
        jail.resolve("cases\x00/ct.nii.gz")


def test_root_must_be_a_folder(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        DataRoot(tmp_path / "missing")


def test_listdir_kinds_and_no_escapes(data_root):
    root, _ = data_root
    jail = DataRoot(root)
    top = jail.listdir()
    names = [e["name"] for e in top]
    assert names == ["cases", "inner_link", "notes.txt"]  # folders first; hidden and escaping links left out
    by_name = {e["name"]: e for e in top}
    assert by_name["cases"] == {"name": "cases", "path": "cases", "kind": "dir", "size": None}
    assert by_name["notes.txt"]["kind"] == "other" and by_name["notes.txt"]["size"] == 5
    inside = {e["name"]: e for e in jail.listdir("cases")}
    assert inside["dicom"]["kind"] == "dicom-folder" and inside["dicom"]["path"] == "cases/dicom"
    assert inside["ct.nii.gz"]["kind"] == "image" and inside["ct.nii.gz"]["size"] == 10
    files = jail.listdir("cases/dicom")
    assert len(files) == 3 and {e["kind"] for e in files} == {"image"}
    with pytest.raises(InputError, match="outside the data folder"):
        jail.listdir("escape")
    with pytest.raises(InputError, match="not a folder"):
        jail.listdir("notes.txt")


# -- uploads: accepted --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "compress", "upload_name", "saved_name"),
    [
        ("ct.nii", False, "ct.nii", "ct.nii"),
        ("ct.nii.gz", True, "My CT (1).nii.gz", "My CT _1.nii.gz"),
        ("ct.nrrd", True, "scan.nrrd", "scan.nrrd"),
        ("ct.mha", False, "scan.mha", "scan.mha"),
        ("ct.nii.gz", True, "renamed.bin", "renamed.nii.gz"),  # the content decides the suffix
        ("ct.nrrd", False, "../../etc/evil.nrrd", "evil.nrrd"),  # only the base name is used
    ],
)
def test_images_are_saved_and_read_back(tmp_path, source, compress, upload_name, saved_name):
    src = _sitk_file(tmp_path, source, compress)
    dest = tmp_path / "uploads"
    saved = save_upload(upload_name, src.read_bytes(), dest, max_bytes=10**6)
    assert saved.parent == dest and saved.name == saved_name
    image = sitk.ReadImage(str(saved))
    assert np.array_equal(sitk.GetArrayFromImage(image), _ct_array())
    assert np.allclose(image.GetSpacing(), (0.7, 0.8, 2.5))
    assert _left_over(dest) == [saved_name]  # no temporary file left


def test_stream_upload_and_no_overwrite(tmp_path):
    src = _sitk_file(tmp_path, "ct.nii.gz", True)
    dest = tmp_path / "uploads"
    first = save_upload("ct.nii.gz", io.BytesIO(src.read_bytes()), dest, max_bytes=10**6)
    with open(src, "rb") as stream:
        second = save_upload("ct.nii.gz", stream, dest, max_bytes=10**6)
    data = src.read_bytes()
    chunks = [data[i : i + 1000] for i in range(0, len(data), 1000)]  # trame's file input: a list of chunks
    third = save_upload("ct.nii.gz", chunks, dest, max_bytes=10**6)
    assert (first.name, second.name, third.name) == ("ct.nii.gz", "ct-1.nii.gz", "ct-2.nii.gz")
    assert first.read_bytes() == second.read_bytes() == third.read_bytes() == data
    with pytest.raises(InputError, match="upload limit"):
        save_upload("ct.nii.gz", chunks, dest, max_bytes=len(data) - 1)


def test_single_dicom_file(tmp_path):
    import pydicom

    files = _dicom_series(tmp_path / "series", "single")
    saved = save_upload("IM0001", files[0].read_bytes(), tmp_path / "up", max_bytes=10**6)
    assert saved.name == "IM0001.dcm"
    assert pydicom.dcmread(saved).SeriesDescription == "single"


def test_zip_of_dicom_is_extracted_and_junk_skipped(tmp_path):
    import pydicom

    files = _dicom_series(tmp_path / "series", "zipped")
    entries = {f"study/series/{p.name}": p.read_bytes() for p in files}
    entries["DICOMDIR"] = b"\0" * 200
    entries["__MACOSX/._x"] = b"junk"
    entries["viewer/viewer.exe"] = b"MZ" + b"\0" * 300
    entries["README.txt"] = b"read me"
    dest = tmp_path / "up"
    folder = save_upload("export.zip", _zip(entries), dest, max_bytes=10**6)
    assert folder.is_dir() and folder.name == "export" and _left_over(dest) == ["export"]
    extracted = sorted(folder.iterdir())
    assert len(extracted) == 3
    assert {pydicom.dcmread(p).SOPInstanceUID for p in extracted} == {pydicom.dcmread(p).SOPInstanceUID for p in files}
    choices = list_series(folder)
    assert len(choices) == 1 and choices[0].n_files == 3 and choices[0].description == "zipped"


# -- uploads: refused ---------------------------------------------------------------------------------


def _refused(tmp_path, name, data, match, **kwargs) -> InputError:
    dest = tmp_path / "refused"
    with pytest.raises(InputError, match=match) as info:
        save_upload(name, data, dest, **{"max_bytes": 10**6, **kwargs})
    assert _left_over(dest) == [], "a refused upload left files behind"
    return info.value


def test_detached_headers_are_refused(tmp_path):
    mhd = _sitk_file(tmp_path, "ct.mhd")
    err = _refused(tmp_path, "ct.mhd", mhd.read_bytes(), r"MetaImage header \(\.mhd\).*ct\.(z)?raw")
    assert ACCEPTED in str(err)
    nhdr = _sitk_file(tmp_path, "ct.nhdr")
    _refused(tmp_path, "ct.nhdr", nhdr.read_bytes(), r"detached NRRD header \(\.nhdr\)")
    hdr = _sitk_file(tmp_path, "ct.hdr")
    _refused(tmp_path, "ct.hdr", hdr.read_bytes(), r"NIfTI \.hdr/\.img pair")


@pytest.mark.parametrize(
    ("name", "data", "match"),
    [
        ("notes.nii", b"patient notes: liver looks fine\n" * 20, "text file"),
        ("ct.nii.gz", b"", "empty"),
        ("ct.nii", b"\x7fELF\x02\x01\x01" + b"\0" * 600, r"program \(ELF"),
        ("setup.dcm", b"MZ\x90\0" + b"\0" * 600, "Windows program"),
        ("run.nrrd", b"#!/bin/sh\nrm -rf /\n", "script"),
        ("slice.nii", b"\x89PNG\r\n\x1a\n" + b"\0" * 100, "PNG picture"),
        ("random.nii", bytes(range(256)) * 4, "not a recognised image format"),
        ("ct.nii.gz", b"\x1f\x8b" + b"\0" * 50, "not a gzipped NIfTI"),
    ],
)
def test_non_images_are_refused_with_what_is_accepted(tmp_path, name, data, match):
    err = _refused(tmp_path, name, data, match)
    assert ACCEPTED in str(err)


def test_gzip_of_something_else_is_refused(tmp_path):
    import gzip

    _refused(tmp_path, "ct.nii.gz", gzip.compress(b"just some text\n" * 100), "not a gzipped NIfTI")


def test_over_size_is_refused_for_bytes_and_streams(tmp_path):
    src = _sitk_file(tmp_path, "ct.nii")
    data = src.read_bytes()
    err = _refused(tmp_path, "ct.nii", data, "upload limit", max_bytes=len(data) - 1)
    assert "MiB" in str(err)
    _refused(tmp_path, "ct.nii", io.BytesIO(data), "over the upload limit", max_bytes=len(data) - 1)
    assert save_upload("ct.nii", data, tmp_path / "ok", max_bytes=len(data)).exists()


def test_module_limit_is_settable(tmp_path, monkeypatch):
    from lkseg.web import files

    data = _sitk_file(tmp_path, "ct.nii").read_bytes()
    monkeypatch.setattr(files, "MAX_UPLOAD_BYTES", len(data) - 1)
    with pytest.raises(InputError, match="upload limit"):
        save_upload("ct.nii", data, tmp_path / "up")


def test_header_announcing_huge_voxel_data_is_refused(tmp_path):
    import struct

    src = _sitk_file(tmp_path, "ct.nii")
    data = bytearray(src.read_bytes())
    data[40:56] = struct.pack("<8h", 3, 30000, 30000, 30000, 1, 1, 1, 1)  # 54 TB of int16 voxels
    _refused(tmp_path, "ct.nii", bytes(data), "header announces")


def test_zip_slip_is_refused(tmp_path):
    dicom = _dicom_series(tmp_path / "s", "x")[0].read_bytes()
    for evil in ("../../evil.dcm", "/etc/evil.dcm", "a/../../evil.dcm", "..\\..\\evil.dcm", "C:/evil.dcm"):
        _refused(tmp_path, "x.zip", _zip({"ok.dcm": dicom, evil: dicom}), "zip-slip")
    assert not (tmp_path / "evil.dcm").exists() and not (tmp_path.parent / "evil.dcm").exists()


def test_zip_bomb_is_refused(tmp_path):
    dicom = _dicom_series(tmp_path / "s", "x")[0].read_bytes()
    bomb = dicom + b"\0" * (50 * 1024**2)  # a DICOM file padded with 50 MiB of zeros: ratio ~1000
    _refused(tmp_path, "bomb.zip", _zip({"a.dcm": bomb}), "decompression bomb")
    # many modest members adding up over the limit
    stored = _zip({f"{i}.dcm": dicom + b"\0" * 200_000 for i in range(6)})
    _refused(tmp_path, "big.zip", stored, "would expand to", max_unzipped_bytes=1_000_000)


def test_zip_without_dicom_or_damaged_is_refused(tmp_path):
    _refused(tmp_path, "x.zip", _zip({"a.txt": b"text", "b.exe": b"MZ" + b"\0" * 200}), "holds no DICOM files")
    good = _zip({"a.dcm": _dicom_series(tmp_path / "s", "x")[0].read_bytes()})
    _refused(tmp_path, "x.zip", good[: len(good) // 2], "damaged zip")
    _refused(tmp_path, "x.zip", b"PK\x05\x06" + b"\0" * 18, "empty or split zip")


def test_sniff_accepts_only_known_kinds():
    assert sniff(b"NRRD0004\ntype: short\nsizes: 2 2 2\nencoding: raw\n\n" + b"\0" * 16) == "nrrd"
    assert sniff(b"\0" * 128 + b"DICM" + b"\0" * 10) == "dicom"
    assert sniff(b"PK\x03\x04" + b"\0" * 30) == "zip"
    assert (
        sniff(b"ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementType = MET_SHORT\nElementDataFile = LOCAL\n")
        == "mha"
    )
    with pytest.raises(InputError, match="text file"):
        sniff(b"ObjectType: not a metaimage, just text\n" * 3)


# -- DICOM series picker --------------------------------------------------------------------------------


def test_two_series_give_two_choices(tmp_path):
    import pydicom

    folder = tmp_path / "mixed"
    a = _dicom_series(folder / "a", "arterial", shape=(3, 8, 10))
    b = _dicom_series(folder / "b", "venous", shape=(5, 12, 6))
    choices = list_series(folder)
    assert len(choices) == 2
    by_desc = {c.description: c for c in choices}
    assert by_desc["arterial"].uid == pydicom.dcmread(a[0]).SeriesInstanceUID
    assert by_desc["venous"].uid == pydicom.dcmread(b[0]).SeriesInstanceUID
    assert (by_desc["arterial"].n_files, by_desc["arterial"].size_ijk) == (3, (10, 8, 3))
    assert (by_desc["venous"].n_files, by_desc["venous"].size_ijk) == (5, (6, 12, 5))
    assert by_desc["venous"].modality == "CT" and "venous" in by_desc["venous"].label


def test_real_dicom_and_seg_object(real_ct_dir, tmp_path):
    """The real GE series: one CT choice; its DICOM SEG beside it is not offered."""
    import shutil

    src = real_ct_dir / "dcmqi-liver"
    folder = tmp_path / "real"
    shutil.copytree(src / "ct-3slice", folder / "ct")
    shutil.copy(src / "liver.dcm", folder / "liver.dcm")
    choices = list_series(folder)
    assert len(choices) == 1
    assert choices[0].size_ijk == (512, 512, 3) and choices[0].modality == "CT"
    with pytest.raises(InputError, match=r"no DICOM image series \(only SEG objects\)"):
        list_series(_only(tmp_path, src / "liver.dcm"))


def _only(tmp_path: Path, file: Path) -> Path:
    import shutil

    folder = tmp_path / "seg-only"
    folder.mkdir()
    shutil.copy(file, folder / file.name)
    return folder


def test_folder_without_dicom(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(InputError, match="no DICOM image series"):
        list_series(tmp_path)
