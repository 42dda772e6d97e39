"""The reassociated mask decoder (lkseg.refine.fastdecoder) gives segment-anything's numbers."""

from __future__ import annotations

import numpy as np
import pytest

from lkseg.metrics import dice


@pytest.fixture(scope="module")
def network(refine_engine):
    return refine_engine.model.network


def _native(net, emb, sparse, dense):
    """segment-anything's own MaskDecoder (all four masks) on the given prompt embeddings."""
    return net.mask_decoder.predict_masks(
        image_embeddings=emb,
        image_pe=net.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
    )


def test_fast_decoder_equals_segment_anything(network):
    """Box, box + mask prompt, and 20 clicks (8 heads x 25 tokens > 128 features): same logits."""
    import torch

    from lkseg.refine.fastdecoder import FastDecoderGraph
    from lkseg.refine.runtime import DecoderGraph

    fast, ref_graph = FastDecoderGraph(network), DecoderGraph(network)
    rng = np.random.default_rng(3)
    emb = torch.from_numpy(rng.normal(size=(1, 256, 64, 64)).astype(np.float32))
    mask = torch.from_numpy(8.0 * rng.normal(size=(1, 1, 256, 256)).astype(np.float32))
    clicks = torch.from_numpy(rng.uniform(0, 255, size=(1, 20, 2)).astype(np.float32))
    click_labels = torch.from_numpy(rng.integers(0, 2, size=(1, 20)).astype(np.float32))
    cases = [
        (torch.tensor([[[30.0, 40.0], [150.0, 170.0]]]), torch.tensor([[2.0, 3.0]]), None),
        (torch.tensor([[[60.0, 20.0], [200.0, 90.0]]]), torch.tensor([[2.0, 3.0]]), mask),
        (torch.cat([clicks, torch.zeros(1, 1, 2)], 1), torch.cat([click_labels, -torch.ones(1, 1)], 1), None),
    ]
    with torch.no_grad():
        for coords, labels, m in cases:
            has = torch.ones(1) if m is not None else torch.zeros(1)
            m = m if m is not None else torch.zeros(1, 1, 256, 256)
            sparse, dense = ref_graph.prompt_embeddings(coords, labels, m, has)
            want, want_iou = _native(network, emb, sparse, dense)
            got, got_iou = fast(emb, coords, labels, m, has)
            scale = float(want.abs().max())
            assert float((got - want).abs().max()) <= 1e-4 * max(scale, 1.0), coords.shape
            np.testing.assert_allclose(got_iou.numpy(), want_iou.numpy(), atol=1e-5)
            assert float(((got > 0) != (want > 0)).float().mean()) < 1e-4


def test_fast_decoder_is_the_default_and_can_be_switched_off(refine_engine, monkeypatch, refine_cache_dir):
    from lkseg.errors import ModelError
    from lkseg.refine.runtime import DECODER_ENV, make_engine, resolve_decoder

    monkeypatch.delenv(DECODER_ENV, raising=False)
    assert resolve_decoder("auto") == "fast"
    monkeypatch.setenv(DECODER_ENV, "reference")
    assert resolve_decoder("auto") == "reference"
    engine = make_engine(refine_engine.model, "onnx", "cpu", cache_dir=refine_cache_dir)
    assert engine.decoder_kind == "reference" and "reference decoder" in engine.describe()
    monkeypatch.setenv(DECODER_ENV, "bogus")
    with pytest.raises(ModelError, match="bogus"):
        resolve_decoder("auto")


def test_cpu_back_end_follows_the_environment(monkeypatch):
    from lkseg.errors import ModelError
    from lkseg.refine.runtime import BACKEND_ENV, cpu_backend

    monkeypatch.delenv(BACKEND_ENV, raising=False)
    assert cpu_backend() == "onnx-int8"
    monkeypatch.setenv(BACKEND_ENV, "onnx")
    assert cpu_backend() == "onnx"
    monkeypatch.setenv(BACKEND_ENV, "int4")
    with pytest.raises(ModelError, match="int4"):
        cpu_backend()


def test_fast_onnx_decoder_masks_equal_the_reference_on_a_real_slice(refine_engine, real_slice_prompts):
    """ONNX fast decoder vs eager reference decoder, same embedding, one box per organ."""
    from lkseg.refine.runtime import make_engine

    assert refine_engine.decoder_kind == "fast"
    reference = make_engine(refine_engine.model, "eager", "cpu", decoder="reference")
    image, boxes = real_slice_prompts
    emb = refine_engine.encode(image)
    for value, coords in boxes.items():
        a, a_iou = refine_engine.decode(emb, coords, [[2.0, 3.0]])
        b, b_iou = reference.decode(emb, coords, [[2.0, 3.0]])
        assert np.abs(a - b).max() < 1e-3 * max(1.0, np.abs(b).max()), f"label {value}"
        assert dice(a[0, 0] > 0, b[0, 0] > 0) > 0.999, f"label {value}"
        assert abs(float(a_iou[0, 0]) - float(b_iou[0, 0])) < 1e-4
