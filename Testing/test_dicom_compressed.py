"""Compressed DICOM series give the same HU as the uncompressed original, rescaled exactly once.

Truth: pydicom's own ``apply_rescale`` on the uncompressed files (stored values x slope +
intercept), never the reader under test. The series is stored as scanners do: unsigned values
with RescaleIntercept -1024, so a second rescale would shift every voxel by -1024 HU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lkseg.io.dicom import read_dicom_series, write_dicom_series
from lkseg.volume import Volume

pydicom = pytest.importorskip("pydicom")
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, RLELossless  # noqa: E402


def _scanner_like_series(folder: Path) -> list[Path]:
    """A 4-slice CT series stored like a scanner's: uint16 values, slope 1, intercept -1024."""
    rng = np.random.default_rng(11)
    hu = rng.integers(-1024, 1500, size=(4, 64, 72)).astype(np.int16)  # >= 64 pixels: JPEG 2000 resolution levels
    hu[:, :3, :] = -1024  # air, the value a double rescale would push to -2048
    vol = Volume.from_array(hu, (0.7, 0.7, 2.5), (-120.0, -80.5, 310.0))
    files = write_dicom_series(vol, folder)
    for path in files:
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array.astype(np.int32) + 1024
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.PixelData = stored.astype(np.uint16).tobytes()
        ds.save_as(path, enforce_file_format=True)
    return files


def _truth_hu(files: list[Path]) -> np.ndarray:
    """HU of the uncompressed files, in InstanceNumber order (= k order for this identity grid)."""
    from pydicom.pixels import apply_rescale

    datasets = sorted((pydicom.dcmread(f) for f in files), key=lambda d: int(d.InstanceNumber))
    return np.stack([apply_rescale(d.pixel_array, d) for d in datasets])


def _gdcm_transcode(src: Path, dst: Path, syntax_name: str) -> None:
    """Recompress one file with GDCM (pydicom has no JPEG Lossless encoder); headers kept."""
    gdcm = pytest.importorskip("gdcm", reason="python-gdcm writes the JPEG Lossless test files")
    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, syntax_name)))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    writer.SetFileName(str(dst))
    assert writer.Write()


def _compressed_copy(files: list[Path], folder: Path, syntax) -> list[Path]:
    folder.mkdir(parents=True)
    out = []
    for path in files:
        dst = folder / path.name
        if syntax == JPEGLosslessSV1:
            _gdcm_transcode(path, dst, "JPEGLosslessProcess14_1")
        else:
            ds = pydicom.dcmread(path)
            try:
                ds.compress(syntax)
            except (RuntimeError, NotImplementedError) as exc:
                pytest.skip(f"no pydicom encoder for {syntax.name} here: {exc}")
            ds.save_as(dst, enforce_file_format=True)
        assert pydicom.dcmread(dst, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
        out.append(dst)
    return out


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> list[Path]:
    return _scanner_like_series(tmp_path_factory.mktemp("dicom") / "plain")


SYNTAXES = [JPEGLosslessSV1, JPEG2000Lossless, JPEGLSLossless, RLELossless]


@pytest.mark.parametrize("syntax", SYNTAXES, ids=lambda s: s.keyword)
def test_compressed_series_decode_through_pydicom_to_the_original_hu(original, tmp_path, monkeypatch, syntax):
    truth = _truth_hu(original)
    assert truth.min() == -1024  # air present: the value a double rescale would move
    files = _compressed_copy(original, tmp_path / syntax.keyword, syntax)

    def no_fallback(path):
        raise AssertionError(f"pydicom could not decode {syntax.name}: the SimpleITK fallback was used")

    monkeypatch.setattr("lkseg.io.dicom._sitk_slice_hu", no_fallback)
    vol = read_dicom_series(files[0].parent)
    np.testing.assert_array_equal(vol.array, truth)
    assert vol.dtype == np.int16


def test_simpleitk_fallback_rescales_once(original, tmp_path, monkeypatch, caplog):
    """Force the fallback (pydicom 'cannot decode'): SimpleITK's values are already HU."""
    truth = _truth_hu(original)
    files = _compressed_copy(original, tmp_path / "jpegll", JPEGLosslessSV1)

    def cannot_decode(self):
        raise RuntimeError("no pixel data handler available for this transfer syntax")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(cannot_decode))
    with caplog.at_level("WARNING", logger="lkseg.io.dicom"):
        vol = read_dicom_series(files[0].parent)
    np.testing.assert_array_equal(vol.array, truth)  # before the fix: truth - 1024 everywhere
    assert "SimpleITK" in caplog.text


def test_fallback_on_float_slope_series(tmp_path, monkeypatch):
    """A non-integer slope (stored x 0.5 - 1000) through the fallback: HU equal to pydicom's."""
    rng = np.random.default_rng(3)
    stored = rng.integers(0, 4000, size=(3, 10, 12)).astype(np.int16)
    files = write_dicom_series(Volume.from_array(stored, (1.0, 1.0, 2.0)), tmp_path / "plain")
    for path in files:
        ds = pydicom.dcmread(path)
        ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-1000"
        ds.save_as(path, enforce_file_format=True)
    truth = _truth_hu(files)

    def cannot_decode(self):
        raise RuntimeError("no decoder")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(cannot_decode))
    vol = read_dicom_series(tmp_path / "plain")
    np.testing.assert_allclose(vol.array, truth, atol=1e-4)


def test_one_dicom_marker_check(tmp_path):
    """``is_dicom_file`` is the single DICM-marker test used by the folder scan and read_image."""
    from lkseg.io import image
    from lkseg.io.dicom import is_dicom_file

    assert not hasattr(image, "_is_dicom")
    good = tmp_path / "a"
    good.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 10)
    short = tmp_path / "b"
    short.write_bytes(b"DICM")
    assert is_dicom_file(good) and not is_dicom_file(short) and not is_dicom_file(tmp_path)
    assert not is_dicom_file(tmp_path / "missing")


@pytest.mark.parametrize("syntax", [JPEGLosslessSV1, JPEG2000Lossless], ids=lambda s: s.keyword)
def test_real_ge_series_compressed_and_through_the_fallback(real_ct_dir, tmp_path, monkeypatch, syntax):
    """The real GE slices of dcmqi-liver (stored int16, intercept -1024, padding -2000 stored)."""
    original = sorted((real_ct_dir / "dcmqi-liver" / "ct-3slice").glob("*.dcm"))
    from pydicom.pixels import apply_rescale

    datasets = sorted((pydicom.dcmread(f) for f in original), key=lambda d: float(d.ImagePositionPatient[2]))
    truth = np.stack([apply_rescale(d.pixel_array, d) for d in datasets])  # axial, k = +z
    files = _compressed_copy(original, tmp_path / syntax.keyword, syntax)
    np.testing.assert_array_equal(read_dicom_series(files[0].parent).array, truth)

    def cannot_decode(self):
        raise RuntimeError("no decoder")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(cannot_decode))
    np.testing.assert_array_equal(read_dicom_series(files[0].parent).array, truth)
