"""Model packages: manifest validation, SHA-256 refusal, safe loading, registry, devices, CLI."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lkseg.errors import ChecksumError, InputError, ModelError  # noqa: E402
from lkseg.models import (  # noqa: E402
    DEFAULT_MODEL_ID,
    IntensitySpec,
    build_network,
    builtin_models_dir,
    check_weights,
    find_model,
    list_models,
    load_manifest,
    load_stage_network,
    make_manifest,
    make_stage,
    resolve_device,
    unet_spec,
    user_models_dirs,
    write_package,
)

LABELS = {1: "liver", 2: "liver_tumor", 3: "kidney_right", 4: "kidney_left"}


def _package(folder, model_id="tiny", version="0.1.0", dtype="float32", cascade=True):
    torch.manual_seed(0)
    fine = make_stage("fine", (4, 4, 4), (32, 32, 32), unet_spec(5, (8, 16, 32), 1), LABELS, dtype)
    stages = [fine]
    nets = {"fine": build_network(fine.network)}
    if cascade:
        coarse = make_stage("coarse", (8, 8, 8), (32, 32, 32), unet_spec(5, (8, 16, 32), 1), LABELS, dtype)
        stages.insert(0, coarse)
        nets["coarse"] = build_network(coarse.network)
    manifest = make_manifest(
        model_id, version, "test", LABELS, stages, IntensitySpec((-200, 300), 50, 100), "Apache-2.0"
    )
    return write_package(folder, manifest, nets), nets


@pytest.fixture
def package(tmp_path):
    return _package(tmp_path / "tiny")


def test_manifest_round_trip_with_colours_and_snomed(package):
    manifest, _ = package
    loaded = load_manifest(manifest.folder)
    assert loaded.id == "tiny" and loaded.version == "0.1.0"
    assert loaded.label_table == manifest.label_table
    assert set(loaded.weights) == {"fine.pt", "coarse.pt"}
    liver = loaded.labels[1]
    assert liver.snomed["type"]["CodeValue"] == "10200004"
    assert liver.color == pytest.approx((221 / 255, 130 / 255, 101 / 255), abs=1e-3)
    tumour = loaded.labels[2]
    assert tumour.snomed["category"]["CodeValue"] == "49755003"
    assert loaded.fine.spacing == (4.0, 4.0, 4.0) and loaded.fine.patch_size == (32, 32, 32)
    assert loaded.intensity.clip == (-200.0, 300.0) and loaded.intensity.std == 100.0
    raw = json.loads((manifest.folder / "manifest.json").read_text())
    for key in ("id", "version", "task", "labels", "intensity", "stages", "weights", "license", "training", "accuracy"):
        assert key in raw


def test_a_second_locator_round_trips_and_loads(tmp_path):
    torch.manual_seed(0)
    specs = [
        make_stage(name, spacing, (32, 32, 32), unet_spec(5, (8, 16, 32), 1), LABELS)
        for name, spacing in (("coarse", (8, 8, 8)), ("coarse2", (8, 8, 8)), ("fine", (4, 4, 4)))
    ]
    nets = {s.name: build_network(s.network) for s in specs}
    manifest = make_manifest("tiny2", "0.1.0", "test", LABELS, specs, IntensitySpec((-200, 300), 50, 100))
    written = write_package(tmp_path / "tiny2", manifest, nets)
    loaded = load_manifest(written.folder)
    assert loaded.coarse2 is not None and loaded.coarse2.weights == "coarse2.pt" and loaded.coarse2.role == "locate"
    assert set(loaded.weights) == {"coarse.pt", "coarse2.pt", "fine.pt"}
    assert all(state == "ok" for state in check_weights(written.folder, loaded.weights).values())
    assert load_manifest(_package(tmp_path / "one")[0].folder).coarse2 is None


def _edit(folder, fn):
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(colour_scheme="x"), "unknown field(s) 'colour_scheme'"),
        (lambda d: d.update(labels={}), "names no labels"),
        (lambda d: d.pop("labels"), "missing required field(s) 'labels'"),
        (lambda d: d["stages"]["fine"].update(batch=4), "unknown field(s) 'batch'"),
        (lambda d: d["weights"].pop("fine.pt"), "has no sha256"),
        (lambda d: d["labels"].update({"9": {"name": "spleen"}}), "not produced by the fine stage"),
        (lambda d: d["labels"]["1"].update(color=[2, 0, 0]), "colour must be 3 numbers"),
        (lambda d: d["stages"]["fine"]["network"]["params"].update(out_channels=3), "output channels"),
        (lambda d: d["weights"].update({"../evil.pt": {"sha256": "0" * 64}}), "relative path inside the package"),
        (lambda d: d["stages"].update(extra=d["stages"]["fine"]), "unknown stage(s) "),
        (  # a second locator needs a first
            lambda d: d["stages"].update(coarse2=d["stages"].pop("coarse")),
            "a 'coarse2' stage (second locator) needs a 'coarse' stage",
        ),
    ],
)
def test_bad_manifests_are_refused_clearly(package, edit, message):
    manifest, _ = package
    _edit(manifest.folder, edit)
    with pytest.raises(ModelError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_manifest(manifest.folder)


def test_extension_fields_are_allowed(package):
    manifest, _ = package
    _edit(manifest.folder, lambda d: d.update(x_site_note="validated at site A"))
    assert load_manifest(manifest.folder).extra == {"x_site_note": "validated at site A"}


def test_tampered_weights_are_refused(package):
    manifest, _ = package
    path = manifest.folder / "fine.pt"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    assert check_weights(manifest.folder, manifest.weights)["fine.pt"] == "mismatch"
    with pytest.raises(ChecksumError, match="SHA-256 mismatch"):
        load_stage_network(load_manifest(manifest.folder), "fine")


def test_missing_weights_are_refused(package):
    manifest, _ = package
    (manifest.folder / "coarse.pt").unlink()
    assert check_weights(manifest.folder, manifest.weights)["coarse.pt"] == "missing"
    with pytest.raises(ModelError, match="weight file is missing"):
        load_stage_network(load_manifest(manifest.folder), "coarse")


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_pickled_code_is_refused_even_with_matching_sha(package):
    manifest, _ = package
    path = manifest.folder / "fine.pt"
    torch.save({"weight": _Evil()}, path)
    from lkseg.models import sha256_file

    _edit(manifest.folder, lambda d: d["weights"].update({"fine.pt": {"sha256": sha256_file(path)}}))
    with pytest.raises(ModelError, match="cannot load the weights safely"):
        load_stage_network(load_manifest(manifest.folder), "fine")
    assert pickle  # the payload above would run code if unpickled without weights_only


def test_weights_that_do_not_fit_the_network_are_refused(package):
    manifest, _ = package
    _edit(manifest.folder, lambda d: d["stages"]["fine"]["network"]["params"].update(channels=[8, 16, 64]))
    with pytest.raises(ModelError, match="do not fit the network"):
        load_stage_network(load_manifest(manifest.folder), "fine")


def test_float16_storage_loads_as_float32_close_to_the_original(tmp_path):
    manifest, nets = _package(tmp_path / "half", dtype="float16")
    net = load_stage_network(load_manifest(manifest.folder), "fine")
    assert all(p.dtype == torch.float32 for p in net.parameters())
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.inference_mode():
        a, b = nets["fine"].eval()(x), net(x)
    assert torch.allclose(a, b, atol=5e-2 * float(a.abs().max()))
    size32 = (tmp_path / "half" / "fine.pt").stat().st_size
    manifest32, _ = _package(tmp_path / "full", dtype="float32")
    assert size32 < 0.6 * (manifest32.folder / "fine.pt").stat().st_size


def test_build_network_only_builds_monai_networks():
    with pytest.raises(ModelError, match=r"not a network of monai\.networks\.nets"):
        build_network({"class": "os.system", "params": {}})
    with pytest.raises(ModelError, match="expressions and references are not allowed"):
        build_network({"class": "UNet", "params": {"spatial_dims": "$__import__('os')"}})
    with pytest.raises(ModelError, match="cannot build UNet"):
        build_network({"class": "UNet", "params": {"spatial_dims": 3}})


def test_registry_reads_user_folder_at_call_time(tmp_path, monkeypatch):
    user = tmp_path / "user-models"
    _package(user / "a1", model_id="alpha", version="1.2.0", cascade=False)
    _package(user / "a2", model_id="alpha", version="1.10.0", cascade=False)
    (user / "broken").mkdir()
    (user / "broken" / "manifest.json").write_text("{not json")
    monkeypatch.setenv("LKSEG_MODELS_DIR", str(user))
    assert user_models_dirs() == [user]
    scan = list_models()
    ids = sorted(f"{m.id}@{m.version}" for m in scan.models)
    assert "alpha@1.2.0" in ids and "alpha@1.10.0" in ids
    assert any(p.name == "broken" for p, _ in scan.errors)
    assert find_model("alpha").version == "1.10.0"  # highest version wins
    assert find_model("alpha@1.2.0").version == "1.2.0"
    assert find_model(str(user / "a1")).id == "alpha"
    with pytest.raises(ModelError, match="no model 'gamma' found"):
        find_model("gamma")
    monkeypatch.delenv("LKSEG_MODELS_DIR")
    assert user_models_dirs()[0].parts[-2:] == (".lkseg", "models")


def test_builtin_folder_is_the_project_models_folder():
    assert builtin_models_dir().name == "models"
    assert (builtin_models_dir().parent / "pyproject.toml").is_file()


def test_devices():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU is available"):
            resolve_device("cuda")


def test_models_cli_lists_labels_licence_and_checksums(package, tmp_path, monkeypatch, capsys):
    from lkseg.cli.main import main

    manifest, _ = package
    monkeypatch.setenv("LKSEG_MODELS_DIR", str(manifest.folder.parent))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "tiny@0.1.0" in out and "1=liver" in out and "Apache-2.0" in out and "checksums: ok" in out
    (manifest.folder / "fine.pt").write_bytes(b"tampered")
    assert main(["models", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    row = next(m for m in data["models"] if m["id"] == "tiny")
    assert row["checksum_state"] == "FAILED" and row["checksums"]["fine.pt"] == "mismatch"


def test_demo_model_package_is_valid_and_small():
    folder = builtin_models_dir() / DEFAULT_MODEL_ID
    if not folder.is_dir():
        pytest.skip("demo model not present")
    manifest = load_manifest(folder)
    assert all(state == "ok" for state in check_weights(folder, manifest.weights).values())
    total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    assert total < 20e6
    assert "phantom" in manifest.intended_use.lower() and "not for clinical use" in manifest.intended_use.lower()
    assert set(manifest.structures) >= {"liver", "liver_tumor", "kidney_right", "kidney_left", "kidney_tumor"}
    assert np.isfinite(manifest.intensity.mean)
    assert shutil


def test_wheel_install_finds_the_bundled_models(tmp_path, monkeypatch):
    """Without the source tree (a non-editable ``pip install``), the registry finds the packages
    that the wheel put under ``<prefix>/share/lkseg/models``."""
    import sys

    from lkseg.models import registry

    prefix = tmp_path / "prefix"
    installed = prefix / registry.INSTALLED_MODELS_SUBDIR
    shutil.copytree(registry.SOURCE_MODELS_DIR / "lkseg-demo-abdomen", installed / "lkseg-demo-abdomen")
    monkeypatch.setattr(registry, "SOURCE_MODELS_DIR", tmp_path / "no-source-tree" / "models")
    monkeypatch.setattr(sys, "prefix", str(prefix))
    monkeypatch.setenv("LKSEG_MODELS_DIR", str(tmp_path / "empty-user-folder"))
    assert registry.builtin_models_dir() == installed
    manifest = registry.find_model(None)  # the default model, checksums verified on load
    assert manifest.folder == installed / "lkseg-demo-abdomen"


def test_wheel_carries_the_bundled_models(tmp_path):
    """The wheel built from pyproject.toml holds every file of the bundled model packages, byte
    for byte (so ``pip install .`` gets the demo model and the LiteMedSAM manifest)."""
    import subprocess
    import sys
    import zipfile

    from conftest import ROOT
    from lkseg.models import registry

    pytest.importorskip("setuptools")
    pytest.importorskip("wheel")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    source = registry.SOURCE_MODELS_DIR
    expected = {p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file()}
    with zipfile.ZipFile(wheel) as zf:
        shipped = {}
        for name in zf.namelist():
            marker = "/data/share/lkseg/models/"
            if ".data/" in name and marker in name:
                shipped[name.split(marker, 1)[1]] = zf.read(name)
    assert set(shipped) == expected
    for rel, data in shipped.items():
        assert data == (source / rel).read_bytes(), rel
