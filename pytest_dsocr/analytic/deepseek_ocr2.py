"""Analytic cost model of DeepSeek-OCR-2, and its static_analysis and sweep stages.

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

The stage functions mirror :mod:`pytest_dsocr.analytic.static` and
:mod:`pytest_dsocr.analytic.sweeps` (and reuse their helpers and output format) with v2's token
layout, tile-grid rule and sub-stage names (``sam``, ``encoder``, ``projector``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pytest_dsocr.analytic import efficiency as eff
from pytest_dsocr.analytic import ops, static, sweeps
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
from pytest_dsocr.analytic.ops import Cost, Number
from pytest_dsocr.analytic.workload import (
    DEFAULT_TEXT_TOKENS,
    Workload,
    crop_count,
    dtype_bytes,
    resolve_dtype_name,
)
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.models.deepseek_ocr2.processing import (
    ViewSettings,
    candidate_grids,
    crop_grid_for,
    image_token_count,
)
from pytest_dsocr.models.deepseek_ocr2.spec import SPECS, DeepseekOCR2Spec, EncoderSpec

FAMILY = "deepseek_ocr2"
STAGES = ("sam", "encoder", "projector", "vision", "prefill", "decode_step", "decode", "lm_head")
CROSSCHECK_STAGES = ("sam", "encoder", "projector", "prefill", "decode_step")
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

    VISION_PARTS = ("sam", "encoder", "projector")
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


def workload_for_grids(spec: DeepseekOCR2Spec, views: ViewSettings, grids: Sequence[tuple[int, int]], *,
                       text_tokens: int = DEFAULT_TEXT_TOKENS, decode_steps: int = 0, batch: int = 1,
                       dtype_bytes: int = 2, attention: str = "flash") -> Workload:
    """Pages cut into ``grids`` (``(1, 1)``: global view only) as one array workload, with the
    processor's image-token count of each."""
    crops = np.array([crop_count(g) for g in grids], dtype=np.int64)
    tokens = np.array([image_token_count(spec, views, tuple(g)) for g in grids], dtype=np.int64)
    return Workload(base_size=views.base_size, image_size=views.tile_size, crops=crops, image_tokens=tokens,
                    text_tokens=text_tokens, decode_steps=decode_steps, batch=batch, dtype_bytes=dtype_bytes,
                    attention=attention)


def workload_for_grid(spec: DeepseekOCR2Spec, views: ViewSettings, grid: tuple[int, int], **kwargs) -> Workload:
    """One page cut into ``grid`` tiles, as a scalar workload."""
    wl = workload_for_grids(spec, views, [grid], **kwargs)
    return dataclasses.replace(wl, crops=int(wl.crops[0]), image_tokens=int(wl.image_tokens[0]))


def view_settings(cfg: Any) -> ViewSettings:
    model = cfg.model
    return ViewSettings.from_model_config(int(model.base_size), int(model.image_size), bool(model.crop_mode),
                                          int(model.max_crops))


def _spec(cfg: Any) -> DeepseekOCR2Spec:
    if cfg.model.size not in SPECS:
        raise DsocrError(f"model.size={cfg.model.size!r}: choose one of {', '.join(SPECS)}")
    return SPECS[cfg.model.size]


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


# -- static_analysis stage --------------------------------------------------------------------


def static_workload(cfg: Any, spec: DeepseekOCR2Spec, views: ViewSettings, runs: Sequence[eff.Measured],
                    dtype: str) -> tuple[Workload, tuple[int, int], dict]:
    """The workload the report describes and where each number came from (v1's rules:
    config, else the measured runs, else a reference page / the default prompt / max_new_tokens)."""
    return static.workload_from_config(
        cfg, runs, dtype, spec.text.max_position_embeddings,
        reference_grid=lambda page: crop_grid_for(page, views),
        for_grid=lambda grid, **sizes: workload_for_grid(spec, views, grid, **sizes),
    )


def run_static_analysis(cfg: Any, out_dir: Path, records: Sequence[Any] = ()) -> static.StaticAnalysisResult:
    """The static_analysis stage for DeepSeek-OCR-2 (same files and sections as v1's)."""
    spec, views = _spec(cfg), view_settings(cfg)
    return static.analyse(cfg, out_dir, records, DeepseekOCR2CostModel(spec),
                          lambda runs, dtype: static_workload(cfg, spec, views, runs, dtype), crosscheck)


# -- sweep stage ------------------------------------------------------------------------------


def crop_sweeps(model: DeepseekOCR2CostModel, views: ViewSettings, grids: Sequence[tuple[int, int]],
                s: sweeps.SweepSettings) -> tuple[sweeps.Columns, sweeps.Columns]:
    """v1's two crop-grid sweeps (same columns, ``encoder_flops`` in place of ``clip_flops``)."""
    wl = workload_for_grids(model.spec, views, grids, text_tokens=s.text_tokens, batch=s.batch,
                            dtype_bytes=s.dtype_bytes, attention=s.attention)
    return sweeps.crop_columns(model, wl, grids, s)


def sweep_points(spec: DeepseekOCR2Spec, max_crops: int, context_lengths: Sequence[int] | None,
                 decode_steps: Sequence[int]) -> sweeps.SweepPoints:
    """v1's points (contexts x steps within the position limit) with the processor's tile grids."""
    points = sweeps.SweepPoints.build(spec, max_crops, context_lengths, decode_steps)
    return dataclasses.replace(points, grids=(sweeps.GLOBAL_ONLY, *candidate_grids(max_crops)))


def run_sweeps(model: DeepseekOCR2CostModel, views: ViewSettings, points: sweeps.SweepPoints,
               s: sweeps.SweepSettings) -> dict[str, sweeps.Columns]:
    """The three sweeps on one cost model; the decode sweep is v1's (the decoder is shared)."""
    crops, with_prefill = crop_sweeps(model, views, points.grids, s)
    return {"vision_crops": crops, "vision_prefill": with_prefill,
            "decode": sweeps.decode(model, points.contexts, points.steps, s)}


def run_sweep_stage(cfg: Any, out_dir: Path) -> sweeps.SweepStageResult:
    """The sweep stage for DeepSeek-OCR-2: same sweeps, files and section as v1's."""
    from pytest_dsocr.hardware import select_hardware

    spec, views = _spec(cfg), view_settings(cfg)
    sweep = cfg.sweep
    max_crops = sweep.max_crops if sweep.max_crops is not None else cfg.model.max_crops
    if max_crops < 2:
        raise DsocrError(f"sweep.max_crops={max_crops}: must be >= 2 (the processor's smallest crop grid)")
    contexts = None if sweep.context_lengths is None else sweeps._positive_ints(
        "sweep.context_lengths", sweep.context_lengths)
    steps = sweeps._positive_ints("sweep.decode_steps", sweep.decode_steps)
    choice = select_hardware(cfg.hardware.name)
    dtype = resolve_dtype_name(str(cfg.model.dtype), choice.hardware is not None)
    settings = sweeps.SweepSettings(
        base_size=views.base_size, image_size=views.tile_size, text_tokens=int(sweep.text_tokens),
        batch=int(sweep.batch_size), dtype_bytes=dtype_bytes(dtype), attention=str(sweep.attention),
        hardware=choice.hardware, dtype=dtype,
    )
    points = sweep_points(spec, int(max_crops), contexts, steps)
    started = time.perf_counter()
    results = run_sweeps(DeepseekOCR2CostModel(spec), views, points, settings)
    elapsed_ms = (time.perf_counter() - started) * 1e3
    paths, notes = sweeps.write_sweeps(results, out_dir, plots=bool(sweep.plots))
    if choice.hardware is None:
        notes.append(f"floor-time columns omitted: {choice.reason}")
    section = {
        "model_family": FAMILY, "model_size": cfg.model.size, "dtype": dtype, "attention": settings.attention,
        "hardware": choice.hardware.name if choice.hardware else None, "hardware_choice": choice.reason,
        "points": {name: len(np.atleast_1d(next(iter(cols.values())))) for name, cols in results.items()},
        "evaluate_ms": elapsed_ms,
        "files": [str(p) for p in paths],
        "notes": notes,
    }
    return sweeps.SweepStageResult(results, tuple(paths), tuple(notes), section)
