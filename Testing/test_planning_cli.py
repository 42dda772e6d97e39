"""``lkseg plan``: end to end on files, plane parsing, Slicer plane markups, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import PLANNING_TABLE
from lkseg.cli.main import main
from lkseg.cli.plan import parse_plane, read_plane_markups
from lkseg.errors import InputError
from lkseg.io import write_image, write_label_map

TABLE_ARG = ",".join(f"{k}={v}" for k, v in PLANNING_TABLE.items())


@pytest.fixture(scope="module")
def files(planning_abdomen, tmp_path_factory):
    labels, _ = planning_abdomen
    folder = tmp_path_factory.mktemp("plan_cli")
    ct = labels.with_array((labels.array.astype(np.int16) * 30 - 50), meta={})
    return {
        "labels": write_label_map(labels, folder / "labels.nii.gz"),
        "ct": write_image(ct, folder / "ct.nii.gz"),
        "folder": folder,
    }


def test_parse_plane():
    p = parse_plane("-10,2.5,30:0,0,2:negative")
    assert p.point_ras == (-10.0, 2.5, 30.0) and p.normal_ras == (0.0, 0.0, 1.0) and p.side == "negative"
    assert parse_plane("0,0,0:1,0,0").side == "positive"
    for bad in ("1,2:0,0,1", "a,b,c:0,0,1", "0,0,0", "0,0,0:1,0,0:up"):
        with pytest.raises(InputError):
            parse_plane(bad)


def test_read_slicer_plane_markups(tmp_path):
    doc = {
        "@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#",
        "markups": [
            {
                "type": "Plane",
                "coordinateSystem": "LPS",
                "center": [10.0, 20.0, 30.0],
                "normal": [1.0, 0.0, 0.0],
                "controlPoints": [],
            },
            {"type": "Fiducial", "coordinateSystem": "LPS", "controlPoints": [{"position": [1, 2, 3]}]},
            {
                "type": "Plane",
                "coordinateSystem": "RAS",
                "controlPoints": [{"position": [0, 0, 0]}, {"position": [1, 0, 0]}, {"position": [0, 1, 0]}],
            },
        ],
    }
    path = tmp_path / "cut.mrk.json"
    path.write_text(json.dumps(doc))
    first, second = read_plane_markups(path, "negative")
    assert first.point_ras == (-10.0, -20.0, 30.0) and first.normal_ras == (-1.0, 0.0, 0.0)  # LPS -> RAS
    assert second.normal_ras == (0.0, 0.0, 1.0) and second.side == "negative"  # from 3 control points
    (tmp_path / "none.mrk.json").write_text(json.dumps({"markups": [doc["markups"][1]]}))
    with pytest.raises(InputError, match="no plane"):
        read_plane_markups(tmp_path / "none.mrk.json")


def test_plan_command_end_to_end(files, capsys):
    out = files["folder"] / "out"
    args = ["plan", str(files["labels"]), "-o", str(out), "--image", str(files["ct"]), "--label-table", TABLE_ARG]
    args += [
        "--plane=0,0,0:1,0,0",
        "--height-cm",
        "175",
        "--weight-kg",
        "70",
        "--formats",
        "stl,ply,glb",
        "--json",
        "--progress-lines",
    ]
    code = main(args)
    text = capsys.readouterr().out
    assert code == 0
    assert "LKSEG_PROGRESS 1.000" in text
    summary = json.loads(text[text.index("{") :])
    assert summary["summary"]["flr"]["verdict"] in ("sufficient", "insufficient")
    assert summary["summary"]["renal"]["kidney_tumor 1"]
    for name in (
        "report.json",
        "report.csv",
        "report.html",
        "report_axial.png",
        "models/scene.glb",
        "models/liver.stl",
        "models/kidney_right.ply",
    ):
        assert (out / name).exists(), name
    report = json.loads((out / "report.json").read_text())
    assert report["provenance"]["inputs"]["image"]["sha256"]
    assert report["provenance"]["parameters"]["resection"]["planes"][0]["normal_ras"] == [1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--plane=0,0,0:1,0,0", "--height-cm", "30", "--weight-kg", "70"], "height 30.0 cm is implausible"),
        (["--plane=0,0,0:1,0,0", "--height-cm", "175", "--weight-kg", "900"], "weight 900.0 kg is implausible"),
        (["--plane=500,0,0:1,0,0"], "does not cut the liver"),
        (["--plane=500,0,0:-1,0,0"], "removes the whole liver"),
        (["--plane=0,0,0:1,0,0", "--resection-label", "resection"], "not several"),
    ],
)
def test_plan_command_bad_input(files, tmp_path, capsys, extra, message):
    code = main(
        ["plan", str(files["labels"]), "-o", str(tmp_path / "out"), "--label-table", TABLE_ARG, "--no-surfaces", *extra]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err
    assert not (tmp_path / "out" / "report.json").exists()  # nothing half-written


def test_plan_command_rejects_label_map_on_another_grid(files, tmp_path, capsys, planning_abdomen):
    labels, _ = planning_abdomen
    other = write_image(_shifted(labels), tmp_path / "ct.nii.gz")  # same size, origin 5 mm away
    code = main(["plan", str(files["labels"]), "-o", str(tmp_path / "out"), "--image", str(other), "--no-surfaces"])
    assert code == 2 and "does not match" in capsys.readouterr().err


def _shifted(labels):
    from lkseg.volume import Volume

    return Volume.from_array(
        labels.array.astype(np.int16), spacing=labels.spacing, origin=np.asarray(labels.origin) + 5.0
    )


def test_plan_command_layered_seg_nrrd_resection_segment(planning_abdomen, tmp_path, capsys):
    """A resection segment painted over the liver on its own layer is used as a mask; the liver
    keeps all its voxels (TLV unchanged) and the resected share is that of the painted region."""
    from lkseg.io import write_seg_nrrd
    from lkseg.segmentation import Segmentation

    labels, table = planning_abdomen
    seg = Segmentation.from_label_volume(labels, table)
    ras = labels.grid.index_to_ras(np.argwhere(np.ones(labels.shape, bool))[:, ::-1]).reshape(*labels.shape, 3)
    painted = ras[..., 0] > 40.0  # everything at RAS x > 40 mm (patient right part of the liver)
    seg = seg.with_segment("resection", painted, overlap="layer")
    assert seg.num_layers == 2
    path = write_seg_nrrd(seg, tmp_path / "plan.seg.nrrd")
    out = tmp_path / "out"
    code = main(
        ["plan", str(path), "-o", str(out), "--resection-label", "resection", "--no-surfaces", "--reports", "json"]
    )
    assert code == 0, capsys.readouterr().err
    flr = json.loads((out / "report.json").read_text())["result"]["flr"]
    liver = labels.array == 1
    lesions = labels.array == 2
    vml = labels.grid.voxel_volume_ml
    assert flr["tlv_ml"] == pytest.approx((liver.sum() + lesions.sum()) * vml)
    assert flr["flr_ml"] == pytest.approx((liver & ~painted).sum() * vml)
    assert flr["resection"]["kind"] == "mask"
