"""``lkseg segment``: files written (.seg.nrrd, NIfTI, probability maps), geometry, timings,
progress lines, refusal to overwrite, clear errors for bad input and tampered models."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import DIRECTIONS  # noqa: E402
from lkseg.cli.main import main  # noqa: E402
from lkseg.io import read_image, read_label_map, write_image  # noqa: E402
from lkseg.models import IntensitySpec, build_network, make_manifest, make_stage, unet_spec, write_package  # noqa: E402
from lkseg.volume import Grid, Volume  # noqa: E402

LABELS = {1: "liver", 2: "liver_tumor", 3: "kidney_right", 4: "kidney_left", 5: "spleen"}


pytestmark = pytest.mark.usefixtures("private_onnx_cache")


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    torch.manual_seed(1)
    fine = make_stage("fine", (6, 6, 6), (32, 32, 32), unet_spec(6, (4, 8, 16), 1), LABELS)
    coarse = make_stage("coarse", (12, 12, 12), (16, 16, 16), unet_spec(6, (4, 8, 16), 1), LABELS)
    manifest = make_manifest("cli-tiny", "0.2.0", "test", LABELS, [coarse, fine], IntensitySpec((-200, 300), 50, 100))
    return write_package(
        tmp_path_factory.mktemp("pkg") / "cli-tiny",
        manifest,
        {"fine": build_network(fine.network), "coarse": build_network(coarse.network)},
    )


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory):
    direction = DIRECTIONS["oblique"]
    shape, spacing = (30, 36, 40), (4.0, 4.5, 5.0)
    grid = Grid(shape, spacing, (0, 0, 0), direction)
    grid = Grid(shape, spacing, tuple(-grid.index_to_lps((np.array(grid.size_ijk) - 1) / 2)), direction)
    kk, jj, ii = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    lps = grid.index_to_lps(np.stack([ii, jj, kk], -1).reshape(-1, 3)).reshape(*shape, 3)
    arr = np.full(shape, -1000, np.int16)
    arr[lps[..., 0] ** 2 + lps[..., 1] ** 2 < 70**2] = 40
    arr[(lps[..., 0] + 30) ** 2 + lps[..., 1] ** 2 + lps[..., 2] ** 2 < 35**2] = 130
    path = tmp_path_factory.mktemp("ct") / "ct.nii.gz"
    write_image(Volume(arr, grid), path)
    return path


def test_segment_writes_seg_nrrd_nifti_and_maps_on_the_input_grid(package, ct_file, tmp_path, capsys):
    from lkseg.io.segnrrd import read_seg_nrrd

    out = tmp_path / "result.seg.nrrd"
    rc = main(
        [
            "segment",
            str(ct_file),
            "-o",
            str(out),
            "--model",
            str(package.folder),
            "--device",
            "cpu",
            "--nifti",
            "--probabilities",
            "--progress-lines",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    lines = [ln for ln in text.splitlines() if ln.startswith("LKSEG_PROGRESS ")]
    fractions = [float(ln.split()[1]) for ln in lines]
    assert len(lines) >= 5 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert "timings" in text and "load_model" in text and "fine_infer" in text and "write" in text
    image = read_image(ct_file)
    seg = read_seg_nrrd(out)
    assert seg.grid.same_as(image.grid, tol=1e-4)
    assert {"Liver", "Right kidney", "Left kidney", "Spleen", "Liver tumor"} <= set(seg.names)
    labels = read_label_map(tmp_path / "result.nii.gz", reference=image)
    assert np.array_equal(labels.array, seg.to_label_volume().array)
    prob = read_image(tmp_path / "result_probability.nii.gz")
    assert prob.grid.same_as(image.grid, tol=1e-4) and 0 < prob.array.min() <= prob.array.max() <= 1.0 + 1e-6
    assert (tmp_path / "result_uncertainty.nii.gz").is_file()


def test_segment_json_structures_and_no_overwrite(package, ct_file, tmp_path, capsys):
    out = tmp_path / "liver.nii.gz"
    args = [
        "segment",
        str(ct_file),
        "-o",
        str(out),
        "--model",
        str(package.folder),
        "--device",
        "cpu",
        "--structures",
        "liver",
        "--json",
        "--no-cascade",
    ]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert list(summary["volumes_ml"]) == ["liver"] and summary["cascade"] is False
    # the 150 mm scan is extended to 160 mm head-foot for the networks (said in the notes)
    assert any(n.startswith("context: the scan spans 150 mm") for n in summary["notes"]), summary["notes"]
    assert set(np.unique(read_label_map(out).array)) <= {0, 1}
    assert set(summary["timings_s"]) >= {
        "load_model",
        "read",
        "fine_infer",
        "resample_back",
        "postprocess",
        "write",
        "total",
    }
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--context-mm", "0"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert not any(n.startswith("context:") for n in summary["notes"])


def test_segment_into_a_folder_names_the_file_after_the_image(package, ct_file, tmp_path, capsys):
    assert (
        main(
            ["segment", str(ct_file), "-o", str(tmp_path / "outdir"), "--model", str(package.folder), "--device", "cpu"]
        )
        == 0
    )
    assert (tmp_path / "outdir" / "ct.seg.nrrd").is_file()


def test_segment_bad_inputs_give_one_line_errors(package, ct_file, tmp_path, capsys):
    image = read_image(ct_file)
    mr = tmp_path / "mr.nii.gz"
    write_image(image.with_array((image.array + 1024).astype(np.int16)), mr)
    assert (
        main(
            ["segment", str(mr), "-o", str(tmp_path / "a.seg.nrrd"), "--model", str(package.folder), "--device", "cpu"]
        )
        == 2
    )
    assert "not a CT in Hounsfield units" in capsys.readouterr().err
    flat = tmp_path / "flat.nii.gz"
    write_image(Volume.from_array(np.full((1, 64, 64), -1000, np.int16), (1, 1, 1)), flat)
    assert main(["segment", str(flat), "-o", str(tmp_path / "b.seg.nrrd"), "--model", str(package.folder)]) == 2
    err = capsys.readouterr().err
    assert "2D" in err or "too small" in err
    assert main(["segment", str(ct_file), "-o", str(tmp_path / "c.seg.nrrd"), "--model", "no-such-model"]) == 2
    assert "no model 'no-such-model' found" in capsys.readouterr().err
    assert main(["segment", str(ct_file), "-o", str(tmp_path / "d.seg.nrrd"), "--context-mm", "-5"]) == 2
    assert "--context-mm must lie between 0" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.seg.nrrd"))


def test_segment_refuses_tampered_weights(package, ct_file, tmp_path, capsys):
    import shutil

    copy = tmp_path / "tampered"
    shutil.copytree(package.folder, copy)
    data = bytearray((copy / "coarse.pt").read_bytes())
    data[100] ^= 1
    (copy / "coarse.pt").write_bytes(bytes(data))
    assert (
        main(["segment", str(ct_file), "-o", str(tmp_path / "x.seg.nrrd"), "--model", str(copy), "--device", "cpu"])
        == 2
    )
    err = capsys.readouterr().err
    assert "SHA-256 mismatch" in err and "coarse.pt" in err
    assert not (tmp_path / "x.seg.nrrd").exists()


def test_segment_reports_an_empty_result(package, ct_file, tmp_path, capsys, monkeypatch):
    from lkseg.auto import AutoSegmenter

    class Background(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros(x.shape[0], 6, *x.shape[2:])
            out[:, 0] = 10
            return out

    original = AutoSegmenter.__init__

    def patched(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.nets = {"fine": Background(), "coarse": Background()}

    monkeypatch.setattr(AutoSegmenter, "__init__", patched)
    out = tmp_path / "empty.seg.nrrd"
    assert main(["segment", str(ct_file), "-o", str(out), "--model", str(package.folder), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "EMPTY" in captured.out and "abdomen" in captured.err
    assert out.is_file()
