"""The prompt model's mask decoder with its image-side attention products reassociated.

segment-anything's two-way transformer attends between a few prompt tokens (``T``: the IoU
token, 4 mask tokens and the prompt points, 7 for a box) and the ``N = 64 x 64`` image tokens.
Its reference code projects all ``N`` image tokens to queries, keys and values (``N x C`` by
``C x D`` products, ``C = 256``, ``D = 128``) before attending to the ``T`` tokens. The same
numbers come out of cheaper products when the small side is multiplied first:

* token -> image: ``softmax(q_h (X W_kh + b_kh)^T)`` equals ``softmax((q_h W_kh) X^T)`` (the
  term ``q_h . b_kh`` is the same for every image token, and softmax ignores a constant per
  row), and ``A_h (X W_vh + b_vh) = (A_h X) W_vh + b_vh`` (each row of ``A_h`` sums to 1);
* image -> token: ``(X W_qh + b_qh) k_h^T = X (W_qh k_h^T) + b_qh k_h^T`` and the output
  projection ``sum_h (A_h v_h) W_oh = sum_h A_h (v_h W_oh)``.

Each image-side attention then costs ``2 N C (H T)`` multiply-adds (``H = 8`` heads) instead of
``2 N C D`` plus the attention itself; a whole box decode goes from 3.66 to 2.08 GFLOP
(``Testing/benchmarks/bench_prompt_model.py --flops``). The result equals the
reference up to floating-point rounding (reassociated sums); ``test_refine_fastdecoder`` checks it
against segment-anything's own ``MaskDecoder`` and :class:`~lkseg.refine.runtime.DecoderGraph`.
Where ``H T`` exceeds ``D`` (many clicks) the reassociated form is still exact, only no cheaper.
"""

from __future__ import annotations

__all__ = ["FastDecoderGraph", "WindowGraph"]


def _fast_decoder_class():
    import torch

    from lkseg.refine.runtime import _decoder_graph_class

    base = _decoder_graph_class()

    def heads_of(linear, h):
        """(H, D/H, C) weight and (H, D/H) bias of a projection to D = H x (D/H) features."""
        w = linear.weight  # (D, C)
        d = w.shape[0] // h
        return w.reshape(h, d, w.shape[1]), linear.bias.reshape(h, d)

    def token_to_image(attn, q_in, k_in, v_in):
        """Tokens (B, T, C) attend to image tokens (B, N, C); keys ``k_in``, values ``v_in``."""
        h = attn.num_heads
        b, t, _ = q_in.shape
        q = attn.q_proj(q_in)  # (B, T, D)
        d = q.shape[-1] // h
        q = q.reshape(b, t, h, d).transpose(1, 2)  # (B, H, T, d)
        wk, _ = heads_of(attn.k_proj, h)  # (H, d, C)
        wv, bv = heads_of(attn.v_proj, h)
        qk = torch.matmul(q, wk) * (1.0 / float(d) ** 0.5)  # (B, H, T, C)
        logits = torch.matmul(qk.reshape(b, h * t, -1), k_in.transpose(1, 2))  # (B, H*T, N)
        weights = torch.softmax(logits, dim=-1)
        pooled = torch.matmul(weights, v_in).reshape(b, h, t, -1)  # (B, H, T, C)
        out = torch.matmul(pooled, wv.transpose(1, 2)) + bv[None, :, None, :]  # (B, H, T, d)
        out = out.transpose(1, 2).reshape(b, t, h * d)
        return attn.out_proj(out)

    def image_to_token(attn, q_in, k_in, v_in):
        """Image tokens (B, N, C) attend to tokens (B, T, C); keys ``k_in``, values ``v_in``."""
        h = attn.num_heads
        b, n, c = q_in.shape
        t = k_in.shape[1]
        k = attn.k_proj(k_in)  # (B, T, D)
        v = attn.v_proj(v_in)
        d = k.shape[-1] // h
        k = k.reshape(b, t, h, d).transpose(1, 2)  # (B, H, T, d)
        v = v.reshape(b, t, h, d).transpose(1, 2)
        wq, bq = heads_of(attn.q_proj, h)  # (H, d, C)
        scale = 1.0 / float(d) ** 0.5
        m = torch.matmul(k, wq) * scale  # (B, H, T, C): per head, X @ m^T = (X W_q^T) k^T
        bias = (k * bq[None, :, None, :]).sum(-1) * scale  # (B, H, T)
        logits = torch.matmul(q_in, m.reshape(b, h * t, c).transpose(1, 2))  # (B, N, H*T)
        logits = logits + bias.reshape(b, 1, h * t)
        weights = torch.softmax(logits.reshape(b, n, h, t), dim=-1).reshape(b, n, h * t)
        wo = attn.out_proj.weight.reshape(c, h, d).permute(1, 2, 0)  # (H, d, C_out)
        vo = torch.matmul(v, wo).reshape(b, h * t, -1)  # (B, H*T, C_out)
        return torch.matmul(weights, vo) + attn.out_proj.bias

    def self_attn(attn, q, k, v):
        return attn(q=q, k=k, v=v)  # tokens only: cheap, the reference code

    def block(layer, queries, keys, query_pe, key_pe):
        if layer.skip_first_layer_pe:
            queries = self_attn(layer.self_attn, queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self_attn(layer.self_attn, q, q, queries)
        queries = layer.norm1(queries)
        k = keys + key_pe
        queries = layer.norm2(queries + token_to_image(layer.cross_attn_token_to_image, queries + query_pe, k, keys))
        queries = layer.norm3(queries + layer.mlp(queries))
        keys = layer.norm4(keys + image_to_token(layer.cross_attn_image_to_token, k, queries + query_pe, queries))
        return queries, keys

    class _FastDecoderGraph(base):
        """:class:`~lkseg.refine.runtime.DecoderGraph` with the reassociated transformer."""

        def _transformer(self, src, pos, tokens):
            tr = self.mask_decoder.transformer
            keys = src.flatten(2).permute(0, 2, 1)
            key_pe = pos.flatten(2).permute(0, 2, 1)
            queries = tokens
            for layer in tr.layers:
                queries, keys = block(layer, queries, keys, tokens, key_pe)
            attn = token_to_image(tr.final_attn_token_to_image, queries + tokens, keys + key_pe, keys)
            return tr.norm_final_attn(queries + attn), keys

        def predict_masks(self, embedding, sparse, dense, rows=None, cols=None):
            """Masks (B, 4, 256, 256) and IoUs; with ``rows`` and ``cols`` (int64 index vectors of
            the 64 x 64 embedding grid) the output upscaling runs on those cells only: masks
            (B, 4, 4 R, 4 C). The upscaling (two 2x2 stride-2 transposed convolutions, a
            per-pixel layer norm and GELUs) maps each cell to its own 4 x 4 output pixels, so the
            window's logits equal the whole decode's there (up to rounding); it is half of a box
            decode's work."""
            md = self.mask_decoder
            out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
            tokens = torch.cat((out_tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1), sparse), dim=1)
            src = embedding + dense
            b, c, h, w = src.shape
            hs, src = self._transformer(src, self.dense_pe, tokens)
            iou_out = hs[:, 0, :]
            mask_out = hs[:, 1 : 1 + md.num_mask_tokens, :]
            grid = src.transpose(1, 2).reshape(b, c, h, w)
            if rows is not None:
                grid = torch.index_select(torch.index_select(grid, 2, rows), 3, cols)
            up = md.output_upscaling(grid)
            hyper = torch.stack([mlp(mask_out[:, i, :]) for i, mlp in enumerate(md.output_hypernetworks_mlps)], dim=1)
            b, c, h, w = up.shape
            masks = torch.matmul(hyper, up.reshape(b, c, h * w)).reshape(b, -1, h, w)
            return masks, md.iou_prediction_head(iou_out)

        def forward(self, embedding, coords, labels, mask_input, has_mask):
            sparse, dense = self.prompt_embeddings(coords, labels, mask_input, has_mask)
            return self.predict_masks(embedding, sparse, dense)

        def forward_window(self, embedding, coords, labels, mask_input, has_mask, rows, cols):
            """:meth:`forward` on the embedding cells ``rows`` x ``cols`` (see :meth:`predict_masks`)."""
            sparse, dense = self.prompt_embeddings(coords, labels, mask_input, has_mask)
            return self.predict_masks(embedding, sparse, dense, rows, cols)

    class _WindowGraph(torch.nn.Module):
        """:meth:`forward_window` as a module's forward (for tracing and ONNX export)."""

        def __init__(self, graph):
            super().__init__()
            self.graph = graph

        def forward(self, embedding, coords, labels, mask_input, has_mask, rows, cols):
            return self.graph.forward_window(embedding, coords, labels, mask_input, has_mask, rows, cols)

    _FastDecoderGraph.Window = _WindowGraph
    return _FastDecoderGraph


def FastDecoderGraph(network):
    """Build the reassociated decoder module for ``network`` (imports torch lazily)."""
    return _fast_decoder_class()(network).eval()


def WindowGraph(graph):
    """The window decode of a :func:`FastDecoderGraph` ``graph`` as a module (its
    ``forward(embedding, coords, labels, mask_input, has_mask, rows, cols)``)."""
    return graph.Window(graph).eval()
