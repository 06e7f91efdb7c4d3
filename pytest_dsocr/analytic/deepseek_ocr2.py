"""Analytic cost model of DeepSeek-OCR-2, and its side of the static_analysis and sweep stages.

Read top to bottom as the architecture: SAM ViT-B (v1's :class:`SamCost`) -> DeepEncoder V2, a
Qwen2 decoder over SAM's features followed by as many learned causal-flow queries (new here) ->
linear projector over the queries' outputs -> DeepSeek-V2 MoE decoder (v1's
:class:`DecoderCost`, and v1's prefill/decode arithmetic, inherited). Only the encoder and the
projector are v2's own terms; everything the two families share is v1's code.

The encoder runs over ``2p`` tokens per view (``p = q*q`` SAM features, then ``p`` queries) under
a hybrid mask (bidirectional over the features, causal over the queries). Counted kernels compute
the full ``2p x 2p`` score rectangle whatever the mask (see :mod:`pytest_dsocr.analytic.ops`), and
so does this model; the boolean mask is read once per score. Only the queries' outputs (``p`` per
view) reach the projector and the decoder.

:data:`ANALYTIC` is what the static_analysis and sweep stages (:mod:`pytest_dsocr.analytic.static`,
:mod:`pytest_dsocr.analytic.sweeps`) use for this family: v2's token layout, tile-grid rule and
sub-stage names (``sam``, ``encoder``, ``projector``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from pytest_dsocr.analytic import ops
from pytest_dsocr.analytic.crosscheck import (
    CrossCheckRow,
    count_flops,
    count_stage_flops,
)
from pytest_dsocr.analytic.crosscheck import crosscheck as v1_crosscheck
from pytest_dsocr.analytic.model import (
    DecoderCost,
    DeepseekOCRCostModel,
    LayerCost,
    ProjectorCost,
    SamCost,
    _sum_layers,
)
from pytest_dsocr.analytic.family import Views, analytic_stages, crosscheck_stages
from pytest_dsocr.analytic.ops import Cost, Number
from pytest_dsocr.analytic.workload import DEFAULT_TEXT_TOKENS, Workload, crop_count
from pytest_dsocr.families import FAMILIES
from pytest_dsocr.models.deepseek_ocr2.processing import (
    MIN_CROPS,
    ViewSettings,
    candidate_grids,
    crop_grid_for,
    image_token_count,
)
from pytest_dsocr.models.deepseek_ocr2.spec import SPECS, DeepseekOCR2Spec, EncoderSpec

FAMILY = "deepseek_ocr2"
STAGES = analytic_stages(FAMILY)
CROSSCHECK_STAGES = crosscheck_stages(FAMILY)
# transformers builds the encoder's hybrid mask as a boolean tensor for SDPA: one byte per score.
MASK_BYTES = 1


class EncoderCost:
    """DeepEncoder V2: per view, ``p`` SAM features and ``p`` causal-flow queries through a Qwen2
    stack (RMSNorm, GQA attention with RoPE and biased q/k/v, SwiGLU MLP), then a final norm."""

    def __init__(self, spec: EncoderSpec) -> None:
        self.spec = spec
        w, hd = spec.width, spec.head_dim
        q_out, kv_out = spec.heads * hd, spec.kv_heads * hd
        self.layer_params = (
            2 * w  # input and post-attention RMSNorm
            + (w * q_out + q_out) + 2 * (w * kv_out + kv_out)  # q, k, v with bias
            + q_out * w  # o_proj, no bias
            + 3 * w * spec.mlp_dim  # gate, up, down
        )
        self.query_params = spec.query_count * w  # both query tables (768 px and 1024 px views)
        self.params = self.query_params + spec.layers * self.layer_params + w  # + final norm

    def layers(self, side: int, batch: Number, mode: str, nbytes: int) -> list[LayerCost]:
        """The encoder over ``batch`` views whose SAM output is ``side x side``."""
        s = self.spec
        w, hd, mlp = s.width, s.head_dim, s.mlp_dim
        seq = 2 * side * side  # features, then as many queries
        tokens = batch * seq
        # flatten SAM's map to tokens, expand the query table over the batch, concatenate
        embed = ops.elementwise(tokens * w, 0, 1, 1, nbytes) * 2
        layer = ops.total((
            ops.rmsnorm(tokens, w, nbytes),
            ops.linear(tokens, w, s.heads * hd, True, nbytes),  # q_proj
            ops.linear(tokens, w, s.kv_heads * hd, True, nbytes),  # k_proj
            ops.linear(tokens, w, s.kv_heads * hd, True, nbytes),  # v_proj
            ops.elementwise(tokens * (s.heads + s.kv_heads) * hd, ops.ROPE_FLOPS, 1, 1, nbytes),
            ops.attention(batch * s.heads, seq, seq, hd, mode, nbytes, kv_batch_heads=batch * s.kv_heads),
            Cost(activation_bytes=batch * seq * seq * MASK_BYTES),  # hybrid mask, shared by the heads
            ops.linear(tokens, s.heads * hd, w, False, nbytes),  # o_proj
            ops.residual_add(tokens, w, nbytes),
            ops.rmsnorm(tokens, w, nbytes),
            ops.linear(tokens, w, mlp, False, nbytes),  # gate_proj
            ops.linear(tokens, w, mlp, False, nbytes),  # up_proj
            ops.elementwise(tokens * mlp, ops.SILU_GATE_FLOPS, 2, 1, nbytes),
            ops.linear(tokens, mlp, w, False, nbytes),  # down_proj
            ops.residual_add(tokens, w, nbytes),
        ))
        return [
            LayerCost("encoder.embeddings", 1, embed, self.query_params),
            LayerCost("encoder.layer", s.layers, layer, self.layer_params),
            LayerCost("encoder.norm", 1, ops.rmsnorm(tokens, w, nbytes), w),
        ]

    def forward(self, side: int, batch: Number, mode: str, nbytes: int) -> Cost:
        return _sum_layers(self.layers(side, batch, mode, nbytes))


class QueryProjectorCost(ProjectorCost):
    """Linear projector over the queries' outputs (no concatenation, unlike v1); owns the view
    separator embedding (v2 has no image_newline)."""

    def __init__(self, spec) -> None:
        super().__init__(spec)
        self.params = self.linear_params + spec.n_embed  # + view_separator

    def layers(self, side: int, batch: Number, nbytes: int) -> list[LayerCost]:
        s = self.spec
        cost = ops.linear(batch * side * side, s.input_dim, s.n_embed, True, nbytes)
        return [LayerCost("projector", 1, cost, self.params)]


class DeepseekOCR2CostModel(DeepseekOCRCostModel):
    """SAM, the causal-flow encoder, the projector and v1's decoder; build once, evaluate any
    workload. Only the parts are v2's: views, stages, layer breakdown, prefill and decode are v1's
    methods, whose vision calls (the global view, then all tiles in one more call) are also how
    transformers' ``get_image_features`` runs v2."""

    VISION_PARTS = FAMILIES[FAMILY].stages.vision_parts
    STAGES = STAGES

    def __init__(self, spec: DeepseekOCR2Spec) -> None:  # v1's __init__ would build CLIP
        self.spec = spec
        self.sam = SamCost(spec.sam)
        self.encoder = EncoderCost(spec.encoder)
        self.projector = QueryProjectorCost(spec.projector)
        self.decoder = DecoderCost(spec.text)
        self._views: dict[tuple, tuple[tuple[Cost, Cost], ...]] = {}
        self._steps: dict[tuple, tuple[Cost, Cost]] = {}

    @property
    def vision_encoder(self) -> EncoderCost:
        return self.encoder


# -- workloads --------------------------------------------------------------------------------


def workload_for_grids(spec: DeepseekOCR2Spec, base_size: int, tile_size: int, grids: Sequence[tuple[int, int]],
                       *, text_tokens: int = DEFAULT_TEXT_TOKENS, decode_steps: int = 0, batch: int = 1,
                       dtype_bytes: int = 2, attention: str = "flash") -> Workload:
    """Pages cut into ``grids`` (``(1, 1)``: global view only) as one array workload, with the
    processor's image-token count of each."""
    views = ViewSettings(base_size=base_size, tile_size=tile_size, crop_to_patches=True, max_patches=MIN_CROPS)
    crops = np.array([crop_count(g) for g in grids], dtype=np.int64)
    tokens = np.array([image_token_count(spec, views, tuple(g)) for g in grids], dtype=np.int64)
    return Workload(base_size=base_size, image_size=tile_size, crops=crops, image_tokens=tokens,
                    text_tokens=text_tokens, decode_steps=decode_steps, batch=batch, dtype_bytes=dtype_bytes,
                    attention=attention)


def workload_for_grid(spec: DeepseekOCR2Spec, base_size: int, tile_size: int, grid: tuple[int, int],
                      **sizes) -> Workload:
    """One page cut into ``grid`` tiles, as a scalar workload."""
    wl = workload_for_grids(spec, base_size, tile_size, [grid], **sizes)
    return dataclasses.replace(wl, crops=int(wl.crops[0]), image_tokens=int(wl.image_tokens[0]))


# -- FlopCounterMode cross-check --------------------------------------------------------------


def measure_stage_flops(model, wl: Workload) -> dict[str, int]:
    """FlopCounterMode counts of each stage of :data:`CROSSCHECK_STAGES` for one workload, on the
    modules the engine times: ``vision_tower.sam_encoder``, ``vision_tower.vision_encoder`` (fed
    SAM's features and as many queries), ``multi_modal_projector``, then the decoder + lm_head
    (see v1's :func:`~pytest_dsocr.analytic.crosscheck.count_stage_flops`)."""
    import torch

    inner = model.model
    tower = inner.vision_tower

    def view(size: int, n: int, randn) -> dict[str, int]:
        sam_flops, sam_out = count_flops(tower.sam_encoder, randn(n, 3, size, size))
        features = sam_out.last_hidden_state.flatten(2).transpose(1, 2)
        patches, width = features.shape[1], features.shape[2]
        combined = torch.cat([features, randn(n, patches, width)], dim=1)
        encoder_flops, _ = count_flops(tower.vision_encoder, inputs_embeds=combined, num_patches=patches)
        projector_flops = count_flops(inner.multi_modal_projector, randn(n, patches, width))[0]
        return {"sam": sam_flops, "encoder": encoder_flops, "projector": projector_flops}

    return count_stage_flops(model, wl, inner.multi_modal_projector.weight, view)


def crosscheck(model, cost_model: DeepseekOCR2CostModel, wl: Workload) -> list[CrossCheckRow]:
    """Analytic vs counted matmul FLOPs per stage for one (scalar) workload."""
    return v1_crosscheck(model, cost_model, wl, measure=measure_stage_flops, stages=CROSSCHECK_STAGES)


# -- the family's analytic side -----------------------------------------------------------------


class DeepseekOCR2Analytic:
    """:class:`~pytest_dsocr.analytic.family.AnalyticFamily` of DeepSeek-OCR-2: its cost model,
    the processor's tile grids and token layout (1024 px global views, 768 px tiles), and the
    FLOP-count cross-check on transformers' module."""

    def cost_model(self, size: str) -> DeepseekOCR2CostModel:
        return DeepseekOCR2CostModel(SPECS[size])

    def views(self, model_cfg: Any) -> Views:
        settings = self._settings(model_cfg)
        return Views(base_size=settings.base_size, tile_size=settings.tile_size,
                     crop_mode=settings.crop_to_patches, max_crops=settings.max_patches)

    def candidate_grids(self, max_crops: int) -> list[tuple[int, int]]:
        return candidate_grids(max_crops)

    def crop_grid_for(self, page_wh: tuple[int, int], views: Views) -> tuple[int, int]:
        settings = ViewSettings(base_size=views.base_size, tile_size=views.tile_size,
                                crop_to_patches=views.crop_mode, max_patches=views.max_crops)
        return crop_grid_for(page_wh, settings)

    def workload_for_grids(self, spec: DeepseekOCR2Spec, base_size: int, tile_size: int,
                           grids: Sequence[tuple[int, int]], **sizes) -> Workload:
        return workload_for_grids(spec, base_size, tile_size, grids, **sizes)

    def crosscheck(self, module: Any, cost_model: DeepseekOCR2CostModel, wl: Workload) -> list[CrossCheckRow]:
        return crosscheck(module, cost_model, wl)

    @staticmethod
    def _settings(model_cfg: Any) -> ViewSettings:
        return ViewSettings.from_model_config(int(model_cfg.base_size), int(model_cfg.image_size),
                                              bool(model_cfg.crop_mode), int(model_cfg.max_crops))


ANALYTIC = DeepseekOCR2Analytic()
