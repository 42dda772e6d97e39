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


def test_window_decode_equals_the_whole_decode_inside_the_window(refine_engine, real_slice_prompts):
    """A decoder window gives the whole-slice logits on its cells, for the ONNX window graph, the
    eager fast decoder and the reference decoder (which cuts its whole decode), and the
    OUTSIDE_WINDOW value elsewhere; the IoU estimate is unchanged."""
    from lkseg.refine.runtime import OUTSIDE_WINDOW, make_engine

    eager = make_engine(refine_engine.model, "eager", "cpu", decoder="fast")
    reference = make_engine(refine_engine.model, "eager", "cpu", decoder="reference")
    image, boxes = real_slice_prompts
    emb = refine_engine.encode(image)
    windows = [(5, 40, 9, 33), (0, 64, 0, 64), (50, 64, 0, 7)]
    for (value, coords), window in zip(sorted(boxes.items()), windows * len(boxes)):
        for engine in (refine_engine, eager, reference):
            whole, whole_iou = engine.decode(emb, coords, [[2.0, 3.0]])
            part, part_iou = engine.decode(emb, coords, [[2.0, 3.0]], window=window)
            assert part.shape == whole.shape
            r0, r1, c0, c1 = (4 * v for v in window)
            inside = np.zeros(whole.shape, dtype=bool)
            inside[..., r0:r1, c0:c1] = True
            scale = max(1.0, float(np.abs(whole).max()))
            assert np.abs(part[inside] - whole[inside]).max() < 1e-4 * scale, (engine.describe(), value)
            assert np.all(part[~inside] == OUTSIDE_WINDOW)
            np.testing.assert_allclose(part_iou, whole_iou, atol=1e-5)
    with pytest.raises(ValueError, match="empty decoder window"):
        refine_engine.decode(emb, coords, [[2.0, 3.0]], window=(10, 10, 0, 64))


def test_decoder_window_covers_the_box_and_its_margin():
    """The window's cells hold every model pixel within ``within_mm`` of the box on an
    anisotropic, non-square slice, and no whole cell row or column beyond one cell more."""
    from lkseg.refine.predictor import _decoder_window
    from lkseg.refine.slices import InputTransform

    tr = InputTransform(300, 420, 0.7, 0.9, 256)  # 210 x 378 mm: 1.477 mm model pixels
    model_mm = 378.0 / 256
    box = tr.box_to_model((100, 150, 180, 260)).reshape(2, 2)
    r0, r1, c0, c1 = _decoder_window(box, tr, 15.0, 64)
    pad = 15.0 / model_mm
    (x0, y0), (x1, y1) = box.min(0) - pad, box.max(0) + pad
    assert 4 * r0 <= y0 and 4 * r1 >= y1 + 1 and 4 * c0 <= x0 and 4 * c1 >= x1 + 1
    assert 4 * r0 > y0 - 8 and 4 * r1 < y1 + 1 + 8 + 4 and 4 * c0 > x0 - 8 and 4 * c1 < x1 + 1 + 8 + 4
    # a box at the border is clipped to the grid
    assert _decoder_window(tr.box_to_model((0, 0, 10, 10)).reshape(2, 2), tr, 15.0, 64)[0::2] == (0, 0)
