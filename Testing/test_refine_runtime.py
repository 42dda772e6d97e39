"""Back ends of the prompt model agree: segment-anything's own prompt path, eager PyTorch, ONNX Runtime."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from lkseg.metrics import dice


@pytest.fixture(scope="module")
def eager_engine(refine_engine):
    from lkseg.refine.runtime import make_engine

    return make_engine(refine_engine.model, "eager", "cpu", decoder="reference")  # the reference path


def test_decoder_graph_matches_segment_anything(refine_engine):
    """Our traceable prompt embedding = segment-anything's PromptEncoder.forward (box, points, mask)."""
    import torch

    from lkseg.refine.runtime import DecoderGraph

    net = refine_engine.model.network
    graph = DecoderGraph(net)
    rng = np.random.default_rng(0)
    emb = torch.from_numpy(rng.normal(size=(1, 256, 64, 64)).astype(np.float32))
    mask = torch.from_numpy(rng.normal(size=(1, 1, 256, 256)).astype(np.float32))
    pts = torch.tensor([[[50.0, 60.0], [120.0, 80.5]]])
    lab = torch.tensor([[1.0, 0.0]])
    box = torch.tensor([[30.0, 40.0, 150.0, 170.0]])
    cases = [
        # (native prompt-encoder arguments, our coords, our labels, mask)
        (dict(points=None, boxes=box, masks=None), box.reshape(1, 2, 2), torch.tensor([[2.0, 3.0]]), None),
        (
            dict(points=(pts, lab), boxes=None, masks=mask),
            torch.cat([pts, torch.zeros(1, 1, 2)], dim=1),
            torch.tensor([[1.0, 0.0, -1.0]]),
            mask,
        ),
        (
            dict(points=(pts, lab), boxes=box, masks=None),
            torch.cat([pts, box.reshape(1, 2, 2)], 1),
            torch.tensor([[1.0, 0, 2, 3]]),
            None,
        ),
    ]
    with torch.no_grad():
        for native_args, coords, labels, m in cases:
            sparse, dense = net.prompt_encoder(**native_args)
            ref, ref_iou = net.mask_decoder(
                image_embeddings=emb,
                image_pe=net.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            has = torch.ones(1) if m is not None else torch.zeros(1)
            ours, ours_iou = graph(emb, coords, labels, m if m is not None else torch.zeros(1, 1, 256, 256), has)
            np.testing.assert_allclose(ours[:, :1].numpy(), ref.numpy(), atol=1e-4)
            np.testing.assert_allclose(ours_iou[:, :1].numpy(), ref_iou.numpy(), atol=1e-5)


def test_onnx_agrees_with_eager_on_a_real_slice(refine_engine, eager_engine, real_slice_prompts):
    image, boxes = real_slice_prompts
    onnx_emb = refine_engine.encode(image)
    eager_emb = eager_engine.encode(image)
    assert onnx_emb.shape == (1, 256, 64, 64)
    assert np.abs(onnx_emb - eager_emb).max() < 1e-3
    a, _ = refine_engine.decode(onnx_emb, boxes[5], [[2.0, 3.0]])
    b, _ = eager_engine.decode(eager_emb, boxes[5], [[2.0, 3.0]])
    assert np.abs(a - b).max() < 1e-2
    assert dice(a[0, 0] > 0, b[0, 0] > 0) > 0.995


def test_int8_encoder_masks_agree_with_eager(refine_engine, eager_engine, real_slice_prompts, refine_cache_dir):
    """The CPU default (int8 encoder) is not bit-equal to fp32, but its masks must agree."""
    from lkseg.refine.runtime import make_engine

    int8 = make_engine(refine_engine.model, "onnx-int8", "cpu", cache_dir=refine_cache_dir)
    assert int8.backend == "onnx-int8"
    image, boxes = real_slice_prompts
    q, ref_emb = int8.encode(image), eager_engine.encode(image)
    for value, coords in boxes.items():
        a, _ = int8.decode(q, coords, [[2.0, 3.0]])
        b, _ = eager_engine.decode(ref_emb, coords, [[2.0, 3.0]])
        assert dice(a[0, 0] > 0, b[0, 0] > 0) > 0.97, f"label {value}"


def test_onnx_export_is_cached_and_verified(refine_engine, refine_cache_dir, tmp_path):
    from lkseg.refine.runtime import make_engine

    # the session cache also holds the automatic models' exports (files); the prompt model's is a folder
    (folder,) = [p for p in (refine_cache_dir / "onnx").iterdir() if (p / "exports.json").is_file()]
    record = json.loads((folder / "exports.json").read_text())
    assert record["weights_sha256"] == refine_engine.spec.sha256
    assert {"encoder_b1.onnx", "decoder_fast.onnx"} <= set(record["files"])  # the default (fast) decoder
    # a second engine reuses the files (no export) ...
    again = make_engine(refine_engine.model, "onnx", "cpu", cache_dir=refine_cache_dir)
    assert not any(key.startswith("export") for key in again.timings)
    # ... and a damaged cached file is detected and exported again
    copy = tmp_path / "cache"
    shutil.copytree(refine_cache_dir, copy)
    damaged = copy / "onnx" / folder.name / "decoder_fast.onnx"
    damaged.write_bytes(damaged.read_bytes()[:-100] + b"x" * 100)
    rebuilt = make_engine(refine_engine.model, "onnx", "cpu", cache_dir=copy)
    assert "export_decoder_s" in rebuilt.timings and "export_encoder_s" not in rebuilt.timings


@pytest.mark.gpu
def test_cuda_eager_matches_cpu(refine_engine):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from lkseg.refine.runtime import make_engine

    try:
        gpu = make_engine(refine_engine.model, "eager", "cuda")
        image = np.random.default_rng(0).random((1, 3, 256, 256), dtype=np.float32)
        np.testing.assert_allclose(gpu.encode(image), refine_engine.encode(image), atol=5e-3)
    finally:
        refine_engine.model.network.to("cpu")
