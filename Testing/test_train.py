"""Training: dataset layouts, label mapping (LiTS, KiTS23 sides), a real learning run, resume, CLI."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import DIRECTIONS  # noqa: E402
from lkseg.errors import InputError  # noqa: E402
from lkseg.io import write_image, write_label_map  # noqa: E402
from lkseg.labels import PRODUCT_LABELS  # noqa: E402
from lkseg.train import PRESETS, LabelMapping, StageConfig, TrainConfig, read_dataset, split_kidney_sides, train_model  # noqa: E402
from lkseg.volume import Grid, Volume  # noqa: E402

pytestmark = pytest.mark.usefixtures("private_onnx_cache")


def _toy_case(rng, shape=(24, 40, 40), spacing=(5.0, 5.0, 6.0)):
    """Air, a body, a bright 'liver' sphere with a dark 'tumour' inside (labels 1 and 2)."""
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    img = np.full(shape, -1000.0)
    img[(x - 20) ** 2 + (y - 20) ** 2 < 17**2] = 30
    cx = 15 + int(rng.integers(-2, 3))
    liver = (x - cx) ** 2 + (y - 20) ** 2 + ((z - 12) * 1.3) ** 2 < 9**2
    tumour = (x - cx) ** 2 + (y - 20) ** 2 + ((z - 12) * 1.3) ** 2 < 4**2
    img[liver] = 120
    img[tumour] = 40
    img += rng.normal(0, 8, shape)
    lab = np.zeros(shape, np.uint8)
    lab[liver] = 1
    lab[tumour] = 2
    volume = Volume.from_array(img.astype(np.int16), spacing)
    return volume, volume.with_array(lab)


def _write_msd(root, name: str, cases) -> None:
    """An MSD task folder at ``root``: ``cases`` are (image, label) volumes, labels liver 1, cancer 2."""
    training = []
    for n, (image, label) in enumerate(cases):
        write_image(image, root / "imagesTr" / f"toy_{n}.nii.gz")
        write_label_map(label, root / "labelsTr" / f"toy_{n}.nii.gz")
        training.append({"image": f"./imagesTr/toy_{n}.nii.gz", "label": f"./labelsTr/toy_{n}.nii.gz"})
    (root / "dataset.json").write_text(
        json.dumps({"name": name, "labels": {"0": "background", "1": "liver", "2": "cancer"}, "training": training})
    )


@pytest.fixture(scope="module")
def msd_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("msd") / "Task03_Toy"
    rng = np.random.default_rng(0)
    _write_msd(root, "toy", [_toy_case(rng) for _ in range(6)])
    return root


def _fast_stages(epochs=4, iters=10):
    return [
        StageConfig(
            "coarse", (10.0, 10.0, 10.0), (16, 16, 16), (8, 16), 1, epochs=2, iters_per_epoch=4, batch_size=2, lr=3e-3
        ),
        StageConfig(
            "fine",
            (5.0, 5.0, 5.0),
            (32, 32, 32),
            (8, 16, 32),
            1,
            epochs=epochs,
            iters_per_epoch=iters,
            batch_size=2,
            lr=5e-3,
        ),
    ]


@pytest.mark.slow
def test_training_learns_and_writes_a_working_package(msd_dataset, tmp_path):
    from lkseg.auto import AutoOptions, AutoSegmenter
    from lkseg.io import read_image, read_label_map
    from lkseg.metrics import dice
    from lkseg.models import check_weights, load_manifest

    out = tmp_path / "toy-model"
    manifest = train_model(
        msd_dataset, out, TrainConfig(stages=_fast_stages(), device="cpu", val_fraction=0.2, seed=1, model_id="toy")
    )
    assert set(manifest.structures) == {"liver", "liver_tumor"}  # "cancer" matched to liver_tumor
    loaded = load_manifest(out)
    assert all(s == "ok" for s in check_weights(out, loaded.weights).values())
    fine = loaded.accuracy["validation"]["fine"]
    assert len(fine["history"]) == 4 and "liver" in fine["dice"]
    assert fine["dice"]["liver"] > 0.7, fine
    assert (out / ".train" / "fine.ckpt").is_file()
    # the package segments a training image with the predictor
    case = loaded.training["cases_validation"][0]
    image = read_image(msd_dataset / "imagesTr" / f"{case}.nii.gz")
    ref = read_label_map(msd_dataset / "labelsTr" / f"{case}.nii.gz")
    # MONAI's plain patch tiling, as the tiny network was trained on 32^3 patches
    result = AutoSegmenter(out, device="cpu").predict(image, options=AutoOptions(roi="patch"))
    assert result.labels.grid.same_as(image.grid)
    assert dice(result.labels.array == 1, ref.array == 1) > 0.6


def test_resume_continues_from_the_checkpoint(msd_dataset, tmp_path, capsys):
    out = tmp_path / "resumed"
    stages = [
        StageConfig("fine", (10.0, 10.0, 10.0), (16, 16, 16), (4, 8), 1, epochs=1, iters_per_epoch=2, batch_size=2)
    ]
    train_model(msd_dataset, out, TrainConfig(stages=stages, device="cpu", max_cases=3))
    with pytest.raises(InputError, match="already holds a model package"):
        train_model(msd_dataset, out, TrainConfig(stages=stages, device="cpu", max_cases=3))
    stages[0].epochs = 2
    manifest = train_model(msd_dataset, out, TrainConfig(stages=stages, device="cpu", max_cases=3, resume=True))
    history = manifest.accuracy["validation"]["fine"]["history"]
    assert [h["epoch"] for h in history] == [1, 2]  # epoch 1 came from the checkpoint
    assert "epoch 2/2" in capsys.readouterr().out


@pytest.mark.parametrize("max_minutes", [0.001, 1e-9])
def test_time_budget_ends_training(msd_dataset, tmp_path, caplog, max_minutes):
    """The budget ends training early, but never before one step: 1e-9 min is spent before the
    first batch is built on any machine (a loaded one spent 0.06 s there too) and must still give
    one trained epoch with its validation."""
    stages = [
        StageConfig(
            "fine",
            (10.0, 10.0, 10.0),
            (16, 16, 16),
            (4, 8),
            1,
            epochs=500,
            iters_per_epoch=2,
            batch_size=2,
            max_minutes=max_minutes,
        )
    ]
    with caplog.at_level(logging.INFO, logger="lkseg.train"):
        manifest = train_model(msd_dataset, tmp_path / "budget", TrainConfig(stages=stages, device="cpu", max_cases=3))
    # 0.06 s runs out within a few epochs on any machine (how many depends on its speed), far
    # before the 500 epochs (1000 steps) that were asked for
    history = manifest.accuracy["validation"]["fine"]["history"]
    assert 1 <= len(history) < 100
    assert "time budget of 0.0 min spent" in caplog.text


def test_label_mapping_specs():
    assert LabelMapping.parse("lits").mapping == {1: "liver", 2: "liver_tumor"}
    assert LabelMapping.parse("kits23").targets() == ["kidney_right", "kidney_left", "kidney_tumor", "kidney_cyst"]
    assert LabelMapping.parse("1=liver, 3=spleen").mapping == {1: "liver", 3: "spleen"}
    assert LabelMapping.parse(None, {0: "background", 1: "Liver", 2: "Tumour"}).mapping == {
        1: "liver",
        2: "liver_tumor",
    }
    assert LabelMapping.parse(None, {0: "background", 1: "kidney", 2: "tumor", 3: "cyst"}).mapping == {
        1: "kidney",
        2: "kidney_tumor",
        3: "kidney_cyst",
    }
    with pytest.raises(InputError, match="unknown structure"):
        LabelMapping.parse("1=pancreas_head")
    with pytest.raises(InputError, match="VALUE=structure"):
        LabelMapping.parse("liver")
    with pytest.raises(InputError, match="no dataset label matches"):
        LabelMapping.parse(None, {0: "background", 1: "brain"})


@pytest.mark.parametrize("name", ["axial_lps", "flipped_ras", "sagittal"])
def test_kits_kidney_is_split_by_side(name):
    """Two kidneys with one KiTS label: the one at larger RAS x (patient right) becomes kidney_right."""
    direction = DIRECTIONS[name]
    shape = (30, 30, 30)
    grid = Grid(shape, (4.0, 4.0, 4.0), (0, 0, 0), direction)
    grid = Grid(shape, (4.0, 4.0, 4.0), tuple(-grid.index_to_lps([14.5, 14.5, 14.5])), direction)
    kk, jj, ii = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    ras = grid.index_to_ras(np.stack([ii, jj, kk], -1).reshape(-1, 3)).reshape(*shape, 3)
    image = np.where(ras[..., 0] ** 2 + ras[..., 1] ** 2 < 50**2, 40, -1000).astype(np.int16)
    labels = np.zeros(shape, np.uint8)
    right = (ras[..., 0] - 30) ** 2 + ras[..., 1] ** 2 + ras[..., 2] ** 2 < 10**2
    left = (ras[..., 0] + 30) ** 2 + ras[..., 1] ** 2 + ras[..., 2] ** 2 < 10**2
    labels[right | left] = 1
    labels[(ras[..., 0] - 30) ** 2 + ras[..., 1] ** 2 + ras[..., 2] ** 2 < 4**2] = 2
    table = {n: v for v, n in PRODUCT_LABELS.items()}
    mapped = LabelMapping.parse("kits23").apply(labels, grid, image, table)
    assert (mapped[right & (labels == 1)] == 3).all() and (mapped[left] == 4).all()
    assert (mapped[labels == 2] == 5).all()
    raw = np.where(labels > 0, 255, 0).astype(np.uint8)
    split_kidney_sides(raw, grid, None, 255, 3, 4)
    assert (raw[right] == 3).all() and (raw[left] == 4).all()


def test_dataset_layouts(tmp_path):
    rng = np.random.default_rng(0)
    image, label = _toy_case(rng)
    # nnU-Net v2
    nn = tmp_path / "Dataset001_Toy"
    write_image(image, nn / "imagesTr" / "toy_001_0000.nii.gz")
    write_label_map(label, nn / "labelsTr" / "toy_001.nii.gz")
    (nn / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "CT"},
                "labels": {"background": 0, "liver": 1, "tumor": 2},
                "numTraining": 1,
                "file_ending": ".nii.gz",
            }
        )
    )
    spec = read_dataset(nn)
    assert (
        spec.layout == "nnunet"
        and spec.labels == {0: "background", 1: "liver", 2: "tumor"}
        and spec.cases[0].case_id == "toy_001"
    )
    # KiTS23
    kits = tmp_path / "kits23" / "dataset"
    write_image(image, kits / "case_00000" / "imaging.nii.gz")
    write_label_map(label, kits / "case_00000" / "segmentation.nii.gz")
    spec = read_dataset(kits)
    assert spec.layout == "kits23" and spec.cases[0].case_id == "case_00000"
    assert LabelMapping.parse(None, spec.labels, spec.layout).mapping == {
        1: "kidney",
        2: "kidney_tumor",
        3: "kidney_cyst",
    }
    # LiTS
    lits = tmp_path / "lits"
    write_image(image, lits / "volume-3.nii")
    write_label_map(label, lits / "segmentation-3.nii")
    spec = read_dataset(lits)
    assert spec.layout == "lits" and spec.cases[0].case_id == "lits_3"
    with pytest.raises(InputError, match="not a training dataset"):
        read_dataset(tmp_path / "lits" / "..")
    (nn / "labelsTr" / "toy_001.nii.gz").unlink()
    with pytest.raises(InputError, match="lack their files"):
        read_dataset(nn)


def test_train_cli_runs_and_reports(msd_dataset, tmp_path, capsys):
    from lkseg.cli.main import main

    out = tmp_path / "cli-model"
    rc = main(
        [
            "train",
            str(msd_dataset),
            str(out),
            "--preset",
            "tiny",
            "--device",
            "cpu",
            "--epochs",
            "1",
            "--coarse-epochs",
            "1",
            "--iters-per-epoch",
            "2",
            "--max-cases",
            "3",
            "--labels",
            "lits",
            "--progress-lines",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "wrote model package" in text and "LKSEG_PROGRESS" in text and "validation Dice" in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["id"] == "cli-model" and set(manifest["stages"]) == {"coarse", "fine"}
    assert PRESETS["tiny"]()[1].name == "fine"


def test_class_sampling_ratios_when_a_case_lacks_the_highest_label():
    """A case without the highest label (a slab without the spleen, a kidney without a cyst) used to
    break the class-balanced sampler's setup (a shape error); classes count as present when any case
    holds them, and absent classes are never sampled."""
    from lkseg.train.preprocess import PreparedCase
    from lkseg.train.trainer import _class_ratios

    grid = Grid((3, 3, 3), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    with_three = np.zeros((3, 3, 3), np.uint8)
    with_three[0, 0, :3] = (1, 2, 3)
    only_one = np.zeros((3, 3, 3), np.uint8)
    only_one[1, 1, 1] = 1
    cases = [PreparedCase("a", np.zeros((3, 3, 3), np.float32), only_one, grid)]
    assert _class_ratios(cases, 5) == [0.5, 1.0, 0.0, 0.0, 0.0]
    cases.append(PreparedCase("b", np.zeros((3, 3, 3), np.float32), with_three, grid))
    assert _class_ratios(cases, 5) == [0.5, 1.0, 1.0, 1.0, 0.0]


def test_training_runs_when_some_cases_lack_the_highest_label(tmp_path):
    """End to end: a dataset whose 'cancer' (the highest label) is in only half the cases trains and
    writes a package (it used to stop with a shape error before the first step)."""
    root = tmp_path / "Task04_Partial"
    rng = np.random.default_rng(1)
    cases = []
    for n in range(4):
        image, label = _toy_case(rng)
        if n % 2:
            label = label.with_array(np.where(label.array == 2, 1, label.array).astype(np.uint8))
        cases.append((image, label))
    _write_msd(root, "partial", cases)
    config = TrainConfig(stages=_fast_stages(epochs=1, iters=2), device="cpu", val_fraction=0.25, progress_bar=False)
    manifest = train_model(root, tmp_path / "model", config)
    assert set(manifest.stages) == {"coarse", "fine"}
    assert (tmp_path / "model" / "manifest.json").is_file()
