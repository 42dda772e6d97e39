"""DICOM series: exact geometry round trips, rescaling, series selection, real CT."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import DIRECTIONS
from lkseg.errors import InputError
from lkseg.io import read_image, read_label_map
from lkseg.io.dicom import list_dicom_series, read_dicom_series, write_dicom_series
from lkseg.volume import Volume


def _ct(direction, shape=(5, 6, 7), seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    arr = rng.integers(-1024, 2000, size=shape).astype(np.int16)
    return Volume.from_array(arr, (0.7, 1.3, 2.5), (10.123456789, -20.5, 30.25), direction)


def test_series_round_trip_is_voxel_exact(tmp_path, direction):
    vol = _ct(direction)
    files = write_dicom_series(vol, tmp_path / "ct")
    assert len(files) == vol.shape[0] and all(f.exists() for f in files)
    back = read_dicom_series(tmp_path / "ct")
    assert back.dtype == np.int16
    if np.linalg.det(direction) > 0:
        assert back.grid.same_as(vol.grid, tol=1e-6)
        np.testing.assert_array_equal(back.array, vol.array)
    else:
        # a left-handed grid comes back sorted along cross(i, j): k reversed, same voxels in space
        nk = vol.shape[0]
        np.testing.assert_allclose(back.origin, vol.grid.index_to_lps([0, 0, nk - 1]), atol=1e-6)
        np.testing.assert_allclose(back.direction[:, :2], vol.direction[:, :2], atol=1e-9)
        np.testing.assert_allclose(back.direction[:, 2], -vol.direction[:, 2], atol=1e-9)
        np.testing.assert_allclose(back.spacing, vol.spacing, atol=1e-9)
        np.testing.assert_array_equal(back.array, vol.array[::-1])
    assert back.meta["sop_instance_uids"] and len(set(back.meta["sop_instance_uids"])) == vol.shape[0]


def test_float_values_are_rescaled_and_patient_data_kept(tmp_path):
    rng = np.random.default_rng(1)
    arr = rng.normal(0, 300, size=(4, 5, 6)).astype(np.float32)
    vol = Volume.from_array(arr, (0.8, 0.8, 3.0), (0, 0, 0), DIRECTIONS["oblique"])
    write_dicom_series(
        vol,
        tmp_path / "f",
        patient={"name": "Doe^Jane", "height_cm": 168.5, "weight_kg": 61.2},
        series_description="float",
    )
    back = read_image(tmp_path / "f")
    assert back.dtype == np.float32
    slope = (arr.max() - arr.min()) / 65534
    np.testing.assert_allclose(back.array, arr, atol=slope)
    assert back.meta["height_cm"] == pytest.approx(168.5)
    assert back.meta["weight_kg"] == pytest.approx(61.2)
    assert back.meta["modality"] == "CT" and back.meta["series_description"] == "float"
    import pydicom

    ds = pydicom.dcmread(next((tmp_path / "f").iterdir()))
    assert ds.PatientSize == pytest.approx(1.685) and str(ds.PatientName) == "Doe^Jane"
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage and ds.PixelRepresentation == 1


def test_several_series_listed_and_selected(tmp_path):
    a = _ct(np.eye(3), seed=1)
    b = _ct(DIRECTIONS["flipped_ras"], shape=(4, 6, 7), seed=2)
    write_dicom_series(a, tmp_path / "study" / "a", series_description="arterial")
    write_dicom_series(b, tmp_path / "study" / "deep" / "b", series_description="venous")
    infos = list_dicom_series(tmp_path / "study")
    assert sorted(i.description for i in infos) == ["arterial", "venous"]
    by_desc = {i.description: i for i in infos}
    assert by_desc["venous"].size == (7, 6, 4) and by_desc["venous"].num_files == 4
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "study")
    message = str(err.value)
    assert "2 image series" in message and "series_uid" in message
    for info in infos:
        assert info.uid in message and info.description in message and "CT" in message
    picked = read_image(tmp_path / "study", series_uid=by_desc["venous"].uid)
    np.testing.assert_array_equal(picked.array, b.array)
    with pytest.raises(InputError, match=r"no series with SeriesInstanceUID 1\.2\.3"):
        read_dicom_series(tmp_path / "study", series_uid="1.2.3")
    # one file of a series reads that series, even in a mixed folder
    one_file = next((tmp_path / "study" / "a").iterdir())
    np.testing.assert_array_equal(read_image(one_file).array, a.array)


def test_missing_slice_is_reported(tmp_path):
    vol = _ct(np.eye(3), shape=(6, 4, 5))
    files = write_dicom_series(vol, tmp_path / "ct")
    files[2].unlink()
    with pytest.raises(InputError) as err:
        read_dicom_series(tmp_path / "ct")
    message = str(err.value)
    assert "uneven slice spacing" in message and "5.000 mm" in message and "expected 2.500 mm" in message
    assert files[1].name in message and files[3].name in message and "1 slice(s) missing" in message


def test_duplicate_slice_is_reported(tmp_path):
    files = write_dicom_series(_ct(np.eye(3)), tmp_path / "ct")
    shutil.copy(files[1], tmp_path / "ct" / "copy.dcm")
    with pytest.raises(InputError, match="same position"):
        read_dicom_series(tmp_path / "ct")


def test_empty_non_dicom_and_non_image_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no DICOM files found.*empty"):
        read_image(tmp_path / "empty")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("hello")
    with pytest.raises(InputError, match=r"no DICOM files found.*1 other file"):
        read_dicom_series(tmp_path / "notes")
    with pytest.raises(InputError, match=r"a\.txt: not a readable DICOM file"):
        read_dicom_series(tmp_path / "notes" / "a.txt")


def test_seg_only_folder_and_ct_plus_seg_folder(tmp_path, real_ct_dir):
    seg_file = real_ct_dir / "dcmqi-liver" / "liver.dcm"
    (tmp_path / "segonly").mkdir()
    shutil.copy(seg_file, tmp_path / "segonly" / "liver.dcm")
    with pytest.raises(InputError, match=r"(?s)no image series.*SEG"):
        read_image(tmp_path / "segonly")
    with pytest.raises(InputError, match="SEG"):
        read_image(tmp_path / "segonly" / "liver.dcm")
    # a CT series with its SEG in the same folder: the only image series is read
    shutil.copytree(real_ct_dir / "dcmqi-liver" / "ct-3slice", tmp_path / "both")
    shutil.copy(seg_file, tmp_path / "both" / "liver.dcm")
    assert read_image(tmp_path / "both").shape == (3, 512, 512)
    kinds = sorted((i.modality, i.is_image) for i in list_dicom_series(tmp_path / "both"))
    assert kinds == [("CT", True), ("SEG", False)]


def test_real_ct_series_matches_its_label_map_grid(real_ct_dir):
    import SimpleITK as sitk

    folder = real_ct_dir / "dcmqi-liver" / "ct-3slice"
    ct = read_image(folder)
    labels = read_label_map(real_ct_dir / "dcmqi-liver" / "liver_seg.nrrd")
    assert ct.grid.shape == labels.grid.shape == (3, 512, 512)
    np.testing.assert_allclose(ct.spacing, labels.spacing, atol=1e-3)
    np.testing.assert_allclose(ct.origin, labels.origin, atol=1e-3)
    np.testing.assert_allclose(ct.direction, labels.direction, atol=1e-6)
    np.testing.assert_allclose(ct.origin, (-235.2, -226.8, -128.69), atol=1e-3)  # the lowest slice (03.dcm)
    assert ct.meta["files"][0].endswith("03.dcm") and ct.meta["modality"] == "CT"
    # pixel values and geometry agree with ITK/GDCM's own series reader
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    ref = reader.Execute()
    np.testing.assert_array_equal(ct.array, sitk.GetArrayFromImage(ref))
    np.testing.assert_allclose(ct.origin, ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(ct.spacing, ref.GetSpacing(), atol=1e-4)
    assert -1100 < np.median(ct.array) < 200  # HU, rescale intercept applied


def test_failed_series_write_leaves_nothing(tmp_path, monkeypatch):
    from pydicom.dataset import Dataset

    original = Dataset.save_as
    calls = {"n": 0}

    def flaky(self, filename, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return original(self, filename, *args, **kwargs)

    monkeypatch.setattr(Dataset, "save_as", flaky)
    with pytest.raises(OSError, match="disk full"):
        write_dicom_series(_ct(np.eye(3)), tmp_path / "ct")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="NaN"):
        write_dicom_series(Volume.from_array(np.full((2, 2, 2), np.nan)), tmp_path / "nan")
    assert list(tmp_path.iterdir()) == []


def test_tilted_and_mixed_series_are_refused(tmp_path):
    import pydicom

    files = write_dicom_series(_ct(np.eye(3), shape=(5, 4, 5)), tmp_path / "tilt")
    for k, path in enumerate(files):  # shear the stack sideways, as a gantry tilt does
        ds = pydicom.dcmread(path)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.5 * k, z]
        ds.save_as(path)
    with pytest.raises(InputError, match="gantry tilt"):
        read_dicom_series(tmp_path / "tilt")
    files = write_dicom_series(_ct(np.eye(3), shape=(5, 4, 5)), tmp_path / "mixed")
    ds = pydicom.dcmread(files[2])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # a coronal localizer inside the axial series
    ds.save_as(files[2])
    with pytest.raises(InputError, match=r"mixes slice orientations.*localizer"):
        read_dicom_series(tmp_path / "mixed")
