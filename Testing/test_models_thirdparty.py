"""Third-party models mapped onto our labels: a MONAI bundle folder and an nnU-Net v2 trained-model
folder, each made here with random weights. The tests check loading, SHA-256 pinning, label
mapping, axis order / orientation and output geometry - not accuracy."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import DIRECTIONS  # noqa: E402
from lkseg.auto import AutoOptions, AutoSegmenter, PostprocessConfig  # noqa: E402
from lkseg.errors import ChecksumError, ModelError  # noqa: E402
from lkseg.labels import PRODUCT_LABELS  # noqa: E402
from lkseg.models import build_network, find_model, list_models, load_package  # noqa: E402
from lkseg.models.thirdparty import make_mapping  # noqa: E402
from lkseg.volume import Grid, Volume  # noqa: E402

NO_POST = AutoOptions(
    postprocess=PostprocessConfig(
        largest_component=False, fill_holes=False, laterality=False, min_organ_ml=0.0, min_lesion_mm=0.0
    )
)


pytestmark = pytest.mark.usefixtures("private_onnx_cache")


def ct_volume(direction, shape=(24, 28, 32), spacing=(5.0, 4.5, 6.0)) -> Volume:
    """Air with a body cylinder; upper (superior) half brighter, so models see something."""
    direction = np.asarray(direction)
    grid = Grid(shape, spacing, (0, 0, 0), direction)
    grid = Grid(shape, spacing, tuple(-grid.index_to_lps((np.array(grid.size_ijk) - 1) / 2)), direction)
    kk, jj, ii = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    lps = grid.index_to_lps(np.stack([ii, jj, kk], -1).reshape(-1, 3)).reshape(*shape, 3)
    arr = np.full(shape, -1000, np.int16)
    arr[lps[..., 0] ** 2 + lps[..., 1] ** 2 < 60**2] = 40
    return Volume(arr, grid, {"modality": "CT"})


# -- MONAI bundle -------------------------------------------------------------------------------
def _bundle(folder, out_channels=4, labels=None):
    net_def = {
        "_target_": "UNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": "@num_classes",
        "channels": [4, 8, 16],
        "strides": [2, 2],
        "num_res_units": 1,
    }
    config = {
        "num_classes": out_channels,
        "network_def": net_def,
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {"_target_": "Spacingd", "keys": "image", "pixdim": [6.0, 6.0, 6.0]},
                {
                    "_target_": "ScaleIntensityRanged",
                    "keys": "image",
                    "a_min": -100,
                    "a_max": 200,
                    "b_min": 0.0,
                    "b_max": 1.0,
                    "clip": True,
                },
            ],
        },
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32], "sw_batch_size": 1, "overlap": 0.25},
    }
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    (folder / "configs" / "metadata.json").write_text(
        json.dumps({"version": "0.1.0", "network_data_format": {"outputs": {"pred": {"num_channels": out_channels}}}})
    )
    torch.manual_seed(0)
    net = build_network(
        {
            "class": "UNet",
            "params": {**{k: v for k, v in net_def.items() if k != "_target_"}, "out_channels": out_channels},
        }
    )
    torch.save(net.state_dict(), folder / "models" / "model.pt")
    make_mapping(
        folder,
        "monai_bundle",
        "toy-bundle",
        labels or {1: "liver", 3: "spleen"},
        ["models/model.pt"],
        license="Apache-2.0",
        task="toy",
    )
    return net


class ForcedChannel(torch.nn.Module):
    def __init__(self, channel: int, n: int):
        super().__init__()
        self.channel, self.n = channel, n
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.zeros(x.shape[0], self.n, *x.shape[2:])
        out[:, self.channel] = 10.0
        return out


class SuperiorNet(torch.nn.Module):
    """Channel 1 wins in the upper half of array axis ``axis`` (in IJK order: k = superior)."""

    def __init__(self, axis_dim: int, n: int):
        super().__init__()
        self.axis_dim, self.n = axis_dim, n
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.zeros(x.shape[0], self.n, *x.shape[2:])
        size = x.shape[self.axis_dim]
        index: list = [slice(None)] * x.dim()
        index[1] = 1
        index[self.axis_dim] = slice(size // 2, None)
        out[:, 0] = 1.0
        out[tuple(index)] = 5.0
        return out


def test_monai_bundle_loads_with_mapping_and_geometry(tmp_path, monkeypatch):
    folder = tmp_path / "bundles" / "toy-bundle"
    _bundle(folder)
    manifest = load_package(folder)
    assert manifest.framework == "monai_bundle" and manifest.array_order == "ijk" and manifest.orientation == "RAS"
    assert manifest.fine.spacing == (6.0, 6.0, 6.0) and manifest.fine.patch_size == (32, 32, 32)
    assert manifest.intensity.clip == (-100.0, 200.0) and manifest.intensity.std == pytest.approx(300.0)
    assert manifest.label_table == {1: "liver", 3: "spleen"}
    monkeypatch.setenv("LKSEG_MODELS_DIR", str(tmp_path / "bundles"))
    assert any(m.id == "toy-bundle" for m in list_models().models)
    seg = AutoSegmenter("toy-bundle", device="cpu")
    for name in ("axial_lps", "oblique"):
        volume = ct_volume(DIRECTIONS[name])
        result = seg.predict(volume)
        assert result.labels.grid.same_as(volume.grid)
        assert set(np.unique(result.labels.array)) <= {0, 1, 7}
    # label mapping: channel 3 -> spleen (7), channel 1 -> liver (1), unmapped channel 2 -> background
    for channel, expected in ((3, 7), (1, 1), (2, 0)):
        seg.nets = {"fine": ForcedChannel(channel, 4)}
        labels = seg.predict(ct_volume(DIRECTIONS["sagittal"]), options=NO_POST).labels.array
        assert (labels == expected).all()


def test_monai_bundle_sees_ras_ijk_arrays(tmp_path):
    """A net that marks the upper half of its LAST axis must mark the superior half of the body:
    MONAI arrays are (I, J, K) in RAS, so the last axis is k = superior."""
    folder = tmp_path / "toy-bundle"
    _bundle(folder)
    seg = AutoSegmenter(folder, device="cpu")
    seg.nets = {"fine": SuperiorNet(4, 4)}
    for name in ("axial_lps", "flipped_ras", "sagittal", "coronal_flipped"):
        volume = ct_volume(DIRECTIONS[name])
        labels = seg.predict(volume, options=NO_POST).labels.array
        kk, jj, ii = np.meshgrid(*(np.arange(n) for n in volume.shape), indexing="ij")
        z = volume.grid.index_to_lps(np.stack([ii, jj, kk], -1).reshape(-1, 3))[:, 2].reshape(volume.shape)
        liver = labels == PRODUCT_LABELS.value_of("liver")
        assert liver.any() and z[liver].min() > -10 and (labels[z > 10] == 1).mean() > 0.95


def test_monai_bundle_tampered_and_bad_mapping(tmp_path):
    folder = tmp_path / "toy-bundle"
    _bundle(folder)
    (folder / "models" / "model.pt").write_bytes(b"not the weights")
    with pytest.raises(ChecksumError):
        AutoSegmenter(folder, device="cpu")
    mapping = json.loads((folder / "lkseg-mapping.json").read_text())
    mapping["colour"] = "red"
    (folder / "lkseg-mapping.json").write_text(json.dumps(mapping))
    with pytest.raises(ModelError, match="unknown field"):
        load_package(folder)
    config = json.loads((folder / "configs" / "inference.json").read_text())
    config["network_def"]["channels"] = "$[4, 8, 16]"
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    mapping.pop("colour")
    (folder / "lkseg-mapping.json").write_text(json.dumps(mapping))
    with pytest.raises(ModelError, match="not evaluated"):
        load_package(folder)


# -- nnU-Net v2 ---------------------------------------------------------------------------------
def _nnunet_folder(folder, labels=("background", "liver", "spleen", "stomach"), folds=(0,)):
    pytest.importorskip("nnunetv2")
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    arch = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": 3,
            "features_per_stage": [4, 8, 16],
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * 3,
            "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
            "n_conv_per_stage": [1, 1, 1],
            "n_conv_per_stage_decoder": [1, 1],
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    plans = {
        "dataset_name": "Dataset999_Toy",
        "plans_name": "nnUNetPlans",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "patch_size": [24, 32, 32],
                "spacing": [7.0, 5.0, 5.0],
                "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False],
                "architecture": arch,
            }
        },
        "foreground_intensity_properties_per_channel": {
            "0": {"mean": 90.0, "std": 40.0, "percentile_00_5": -50.0, "percentile_99_5": 250.0}
        },
    }
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": {n: i for i, n in enumerate(labels)},
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    files = []
    for fold in folds:
        net = get_network_from_plans(
            arch["network_class_name"],
            arch["arch_kwargs"],
            arch["_kw_requires_import"],
            1,
            len(labels),
            deep_supervision=False,
        )
        ckpt = {
            "network_weights": net.state_dict(),
            "init_args": {
                "plans": plans,
                "configuration": "3d_fullres",
                "fold": fold,
                "dataset_json": dataset,
                "device": torch.device("cpu"),
            },
            "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": (0, 1, 2),
            "current_epoch": 1000,
        }
        (folder / f"fold_{fold}").mkdir()
        torch.save(ckpt, folder / f"fold_{fold}" / "checkpoint_final.pth")
        files.append(f"fold_{fold}/checkpoint_final.pth")
    make_mapping(
        folder,
        "nnunetv2",
        "toy-nnunet",
        {"liver": "liver", "spleen": "spleen"},
        files,
        folds=list(folds),
        license="CC-BY-4.0",
        mirror_axes=[0, 1, 2],
    )
    return folder


def test_nnunet_folder_loads_with_mapping_and_geometry(tmp_path):
    folder = _nnunet_folder(tmp_path / "Dataset999_Toy" / "nnUNetTrainer__nnUNetPlans__3d_fullres")
    manifest = find_model(folder)
    assert manifest.framework == "nnunetv2" and manifest.array_order == "zyx"
    assert manifest.fine.spacing == (5.0, 5.0, 7.0) and manifest.fine.patch_size == (32, 32, 24)  # nnU-Net ZYX -> IJK
    assert manifest.intensity.clip == (-50.0, 250.0) and manifest.intensity.mean == 90.0
    assert manifest.label_table == {1: "liver", 2: "spleen"}
    seg = AutoSegmenter(folder, device="cpu")
    volume = ct_volume(DIRECTIONS["oblique"])
    result = seg.predict(volume, options=AutoOptions(tta=True))
    assert result.labels.grid.same_as(volume.grid)
    assert set(np.unique(result.labels.array)) <= {0, 1, 7}
    for channel, expected in ((2, 7), (1, 1), (3, 0)):  # stomach (3) is not mapped: background
        seg.nets = {"fine": ForcedChannel(channel, 4)}
        assert (seg.predict(volume, options=NO_POST).labels.array == expected).all()


def test_nnunet_ensemble_of_folds_and_refusals(tmp_path):
    folder = _nnunet_folder(tmp_path / "ens", folds=(0, 1))
    seg = AutoSegmenter(folder, device="cpu", backend="torch")
    assert len(seg.nets["fine"].members) == 2
    assert seg.predict(ct_volume(np.eye(3))).labels.shape == (24, 28, 32)
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = "os.system"
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ModelError, match="not from dynamic_network_architectures"):
        AutoSegmenter(folder, device="cpu")
    dataset = json.loads((folder / "dataset.json").read_text())
    dataset["labels"]["liver"] = [1, 2]
    (folder / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(ModelError, match="region-based"):
        load_package(folder)
