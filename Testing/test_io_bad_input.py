"""Bad input: every case raises InputError naming the file and the problem, and ``lkseg info``
exits non-zero with a one-line message (no traceback unless --debug)."""

from __future__ import annotations

import numpy as np
import pytest

from lkseg.cli.main import main
from lkseg.errors import InputError
from lkseg.io import read_image, write_image
from lkseg.io.dicom import list_dicom_series, write_dicom_series
from lkseg.volume import Volume


def _ct(shape=(6, 5, 4), seed=0) -> Volume:
    arr = np.random.default_rng(seed).integers(-1000, 1000, size=shape).astype(np.int16)
    return Volume.from_array(arr, (0.8, 0.8, 2.0), (1.0, 2.0, 3.0))


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """name -> (path, regex the message must match)."""
    import SimpleITK as sitk

    root = tmp_path_factory.mktemp("bad")
    good = write_image(_ct(), root / "good.nii.gz")
    data = good.read_bytes()
    (root / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    (root / "corrupt.nii.gz").write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)
    (root / "notes.txt").write_text("not an image")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 6), np.int16)), str(root / "flat2d.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((1, 5, 6), np.int16)), str(root / "oneslice.nrrd"))
    four = sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16))] * 2)
    sitk.WriteImage(four, str(root / "timeseries.nii.gz"))
    nan = np.zeros((3, 4, 5), np.float32)
    nan[1, 2, 3] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(root / "nan.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(root / "nan.nrrd"))
    (root / "emptydir").mkdir()
    write_dicom_series(_ct(seed=1), root / "two" / "a", series_description="first")
    write_dicom_series(_ct(seed=2), root / "two" / "b", series_description="second")
    files = write_dicom_series(_ct(shape=(6, 5, 4)), root / "gap")
    files[3].unlink()
    return root, {
        "missing": (root / "nope.nii.gz", "no such file"),
        "extension": (root / "notes.txt", "unsupported file type '.txt'"),
        "corrupt": (root / "corrupt.nii.gz", "corrupt"),
        "truncated": (root / "truncated.nii.gz", "truncated"),
        "2d": (root / "flat2d.nii.gz", "2D image"),
        "single_slice": (root / "oneslice.nrrd", "single-slice"),
        "4d": (root / "timeseries.nii.gz", "4D image"),
        "nan_nifti": (root / "nan.nii.gz", "1 NaN"),
        "nan_nrrd": (root / "nan.nrrd", "1 NaN"),
        "empty_folder": (root / "emptydir", "no DICOM files found"),
        "two_series": (root / "two", "2 image series"),
        "missing_slice": (root / "gap", "uneven slice spacing"),
    }


CASES = [
    "missing",
    "extension",
    "corrupt",
    "truncated",
    "2d",
    "single_slice",
    "4d",
    "nan_nifti",
    "nan_nrrd",
    "empty_folder",
    "two_series",
    "missing_slice",
]


@pytest.mark.parametrize("case", CASES)
def test_reader_raises_input_error_naming_file(bad, case):
    _, cases = bad
    path, pattern = cases[case]
    with pytest.raises(InputError, match=pattern) as err:
        read_image(path)
    assert str(path) in str(err.value)
    assert err.value.path is not None


@pytest.mark.parametrize("case", CASES)
def test_cli_info_fails_cleanly(bad, case, capsys):
    _, cases = bad
    path, pattern = cases[case]
    code = main(["info", str(path)])
    captured = capsys.readouterr()
    assert code != 0
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    assert captured.err.startswith("lkseg info: error:") and str(path) in captured.err
    import re

    assert re.search(pattern, captured.err)


def test_cli_debug_shows_the_exception(bad):
    _, cases = bad
    with pytest.raises(InputError):
        main(["--debug", "info", str(cases["missing"][0])])


def test_two_series_listed_and_picked_by_uid(bad, capsys):
    root, _ = bad
    code = main(["info", str(root / "two")])
    err = capsys.readouterr().err
    assert code != 0
    infos = list_dicom_series(root / "two")
    for info in infos:
        assert info.uid in err and info.description in err
    second = next(i for i in infos if i.description == "second")
    assert main(["info", str(root / "two"), "--series-uid", second.uid, "--json"]) == 0
    out = capsys.readouterr().out
    assert '"series_uid": "' + second.uid in out and '"modality": "CT"' in out
    np.testing.assert_array_equal(read_image(root / "two", series_uid=second.uid).array, _ct(seed=2).array)


def test_nan_allowed_on_request(bad):
    _, cases = bad
    vol = read_image(cases["nan_nrrd"][0], allow_nonfinite=True)
    assert np.isnan(vol.array).sum() == 1


def test_failed_image_write_keeps_previous_file(tmp_path, monkeypatch):
    import SimpleITK as sitk

    target = write_image(_ct(), tmp_path / "ct.nii.gz")
    before = target.read_bytes()

    def broken(image, filename, *args, **kwargs):
        with open(filename, "wb") as fh:
            fh.write(b"half a file")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_image(_ct(seed=3), target)
    with pytest.raises(RuntimeError, match="disk full"):
        write_image(_ct(seed=3), tmp_path / "other.nrrd")
    with pytest.raises(RuntimeError, match="disk full"):
        write_image(_ct(seed=3), tmp_path / "det.nhdr")
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]


def test_real_process_prints_one_line(bad):
    import subprocess
    import sys

    _, cases = bad
    result = subprocess.run(
        [sys.executable, "-m", "lkseg", "info", str(cases["missing_slice"][0])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == InputError.exit_code
    assert "Traceback" not in result.stderr and "uneven slice spacing" in result.stderr
