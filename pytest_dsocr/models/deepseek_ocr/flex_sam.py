"""SAM attention with the vendor's decomposed rel-pos bias inside flex_attention (no bias tensor).

The SDPA path builds the bias ``rel_h[..., :, None] + rel_w[..., None, :]`` as a dense
``[batch, heads, N, N]`` tensor (400 MB per 1024-px view in the global blocks, 4096 x 4096 x 12
heads in bf16) and hands it to SDPA, which then cannot use its flash kernel. Here the two
factors stay small (``[batch, heads, N, h]`` and ``[batch, heads, N, w]``) and are added to each
score inside the fused flex_attention kernel (``score_mod``), for the windowed blocks (14 x 14
windows) and the global blocks alike. Same parameters, same function: the bias is added to the
float32 scores without first being rounded to the model dtype, the one numerical difference.

flex_attention is fast only under torch.compile (:mod:`pytest_dsocr.models.fast_paths` compiles
the SAM blocks that hold it); called eagerly it runs a reference implementation (tests).
"""

from __future__ import annotations

import logging

import torch
from torch.nn.attention.flex_attention import flex_attention

from pytest_dsocr.models.deepseek_ocr.modeling import SamSdpaAttention

log = logging.getLogger(__name__)


class SamFlexAttention(SamSdpaAttention):
    """transformers' SAM attention, the vendor's rel-pos bias applied in flex_attention's score_mod."""

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False) -> tuple[torch.Tensor, None]:
        batch, height, width, _ = hidden_states.shape
        heads, tokens = self.num_attention_heads, height * width
        qkv = self.qkv(hidden_states).reshape(batch, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)  # [batch, heads, tokens, head_dim]
        table_h = self.get_rel_pos(height, height, self.rel_pos_h)
        table_w = self.get_rel_pos(width, width, self.rel_pos_w)
        grid = query.reshape(batch * heads, height, width, -1)
        rel_h = torch.einsum("bhwc,hkc->bhwk", grid, table_h).reshape(batch, heads, tokens, height)
        rel_w = torch.einsum("bhwc,wkc->bhwk", grid, table_w).reshape(batch, heads, tokens, width)

        def rel_pos_bias(score, b, h, q_index, kv_index):
            # Key index kv = row * width + column: the bias of its row plus the bias of its column.
            return score + rel_h[b, h, q_index, kv_index // width] + rel_w[b, h, q_index, kv_index % width]

        out = flex_attention(query, key, value, score_mod=rel_pos_bias)
        out = out.view(batch, heads, height, width, -1).permute(0, 2, 3, 1, 4).reshape(batch, height, width, -1)
        return self.proj(out), None


def use_flex_attention(encoder: torch.nn.Module) -> list[tuple[torch.nn.Module, type]]:
    """Switch each SDPA SAM block to :class:`SamFlexAttention`; returns (module, old class) to undo it."""
    switched = []
    for layer in encoder.layers:
        if type(layer.attn) is SamSdpaAttention:
            switched.append((layer.attn, type(layer.attn)))
            layer.attn.__class__ = SamFlexAttention
        else:
            log.warning("SAM attention %s kept: flex_attention replaces only %s", type(layer.attn).__name__,
                        SamSdpaAttention.__name__)
    return switched
