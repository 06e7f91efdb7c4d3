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
import json
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pytest_dsocr.analytic import efficiency as eff
from pytest_dsocr.analytic import ops, static, sweeps
from pytest_dsocr.analytic.crosscheck import CrossCheckRow, count_flops, module_params
from pytest_dsocr.analytic.model import (
    DecoderCost,
    DeepseekOCRCostModel,
    LayerCost,
    ProjectorCost,
    SamCost,
    StageCost,
    _present,
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
from pytest_dsocr.atomic import atomic_write_text, json_safe
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
    workload. Prefill and decode (the decoder's terms) are v1's methods, unchanged."""

    def __init__(self, spec: DeepseekOCR2Spec) -> None:  # v1's __init__ would build CLIP
        self.spec = spec
        self.sam = SamCost(spec.sam)
        self.encoder = EncoderCost(spec.encoder)
        self.projector = QueryProjectorCost(spec.projector)
        self.decoder = DecoderCost(spec.text)
        self._views: dict[tuple, tuple[tuple[Cost, Cost], ...]] = {}
        self._steps: dict[tuple, tuple[Cost, Cost]] = {}

    @property
    def params(self) -> int:
        """Every parameter of the model (must equal the torch module's)."""
        return (self.sam.params + self.encoder.params + self.projector.params
                + self.decoder.params + self.decoder.lm_head_params)

    def stage_params(self) -> dict[str, int]:
        vision = self.sam.params + self.encoder.params + self.projector.params
        text = self.decoder.params + self.decoder.lm_head_params
        return {"sam": self.sam.params, "encoder": self.encoder.params, "projector": self.projector.params,
                "vision": vision, "prefill": text, "decode_step": text, "decode": text,
                "lm_head": self.decoder.lm_head_params}

    def views(self, size: int, batch: Number, mode: str, nbytes: int) -> tuple[Cost, Cost, Cost]:
        """SAM, encoder and projector costs of one vision-tower call on ``batch`` views of ``size``
        px; affine in the batch, so evaluated once at batch 0 and 1 per view size (as v1)."""
        key = (size, mode, nbytes)
        parts = self._views.get(key)
        if parts is None:
            q = self.sam.out_side(size)

            def call(b: int) -> tuple[Cost, Cost, Cost]:
                return (self.sam.forward(size, b, mode, nbytes), self.encoder.forward(q, b, mode, nbytes),
                        self.projector.forward(q, b, nbytes))

            parts = self._views[key] = tuple((at0, at1 - at0) for at0, at1 in zip(call(0), call(1)))
        return tuple(at0 + per_view * batch for at0, per_view in parts)

    def vision(self, wl: Workload) -> dict[str, Cost]:
        """The global view (batch ``wl.batch``) and, with crops, all tiles in one more call, as
        transformers' ``get_image_features`` runs them; each call reads the weights once."""
        mode, nb = wl.attention, wl.dtype_bytes
        present = _present(wl.crops)
        global_view = self.views(wl.base_size, wl.batch, mode, nb)
        crops = self.views(wl.image_size, wl.batch * wl.crops, mode, nb)
        sam, encoder, projector = (g + c * present for g, c in zip(global_view, crops))
        return {"sam": sam, "encoder": encoder, "projector": projector, "vision": sam + encoder + projector}

    def stages(self, wl: Workload) -> dict[str, StageCost]:
        """Every stage of :data:`STAGES` for one workload (see v1's ``stages``)."""
        costs = self.vision(wl)
        costs["prefill"] = self.prefill(wl)
        costs["decode_step"] = self.decode_step(wl.prefill_tokens + 1, wl.batch, wl.attention, wl.dtype_bytes)
        costs["decode"] = self.decode(wl.prefill_tokens, wl.decode_steps, wl.batch, wl.attention, wl.dtype_bytes)
        costs["lm_head"] = self.decoder.lm_head(wl.batch, wl.dtype_bytes)
        params = self.stage_params()
        return {name: StageCost(name, params[name], costs[name]) for name in STAGES}

    def layer_breakdown(self, wl: Workload) -> dict[str, list[LayerCost]]:
        """Per-layer costs of the global view, one tile (batch 1), prefill and the first decode step."""
        mode, nb = wl.attention, wl.dtype_bytes
        q_g, q_c = self.sam.out_side(wl.base_size), self.sam.out_side(wl.image_size)
        t = wl.prefill_tokens
        head = LayerCost("lm_head", 1, self.decoder.lm_head(wl.batch, nb), self.decoder.lm_head_params)
        return {
            "global_view": self.sam.layers(wl.base_size, wl.batch, mode, nb)
            + self.encoder.layers(q_g, wl.batch, mode, nb) + self.projector.layers(q_g, wl.batch, nb),
            "crop_tile": self.sam.layers(wl.image_size, 1, mode, nb)
            + self.encoder.layers(q_c, 1, mode, nb) + self.projector.layers(q_c, 1, nb),
            "prefill": self.decoder.layers(wl.batch, t, t, mode, nb) + [head],
            "decode_step": self.decoder.layers(wl.batch, 1, t + 1, mode, nb) + [head],
        }


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
    SAM's features and as many queries), ``multi_modal_projector``, then the decoder + lm_head."""
    import torch

    inner = model.model
    tower = inner.vision_tower
    param = inner.multi_modal_projector.weight
    device, dtype = param.device, param.dtype
    batch, crops = int(wl.batch), int(wl.crops)

    def randn(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    views = [(wl.base_size, batch)] + ([(wl.image_size, batch * crops)] if crops else [])
    counts = {"sam": 0, "encoder": 0, "projector": 0}
    for size, n in views:
        flops, sam_out = count_flops(tower.sam_encoder, randn(n, 3, size, size))
        counts["sam"] += flops
        features = sam_out.last_hidden_state.flatten(2).transpose(1, 2)
        patches, width = features.shape[1], features.shape[2]
        combined = torch.cat([features, randn(n, patches, width)], dim=1)
        flops, _ = count_flops(tower.vision_encoder, inputs_embeds=combined, num_patches=patches)
        counts["encoder"] += flops
        counts["projector"] += count_flops(inner.multi_modal_projector, randn(n, patches, width))[0]

    text = inner.language_model
    hidden = text.config.hidden_size

    def step(embeds, cache):
        out = text(inputs_embeds=embeds, past_key_values=cache, use_cache=True)
        model.lm_head(out.last_hidden_state[:, -1:])
        return out.past_key_values

    counts["prefill"], cache = count_flops(step, randn(batch, int(wl.prefill_tokens), hidden), None)
    counts["decode_step"], _ = count_flops(step, randn(batch, 1, hidden), cache)
    return counts


def crosscheck(model, cost_model: DeepseekOCR2CostModel, wl: Workload) -> list[CrossCheckRow]:
    """Analytic vs counted matmul FLOPs per stage for one (scalar) workload."""
    counted = measure_stage_flops(model, wl)
    stages = cost_model.stages(wl)
    return [CrossCheckRow(name, int(stages[name].matmul_flops), int(counted[name])) for name in CROSSCHECK_STAGES]


def _flop_count(cfg: Any, cost_model: DeepseekOCR2CostModel, wl: Workload) -> dict:
    from pytest_dsocr.models import build_model

    module = build_model(FAMILY, cfg.model.size, device=static.COUNT_DEVICE,
                         experts_implementation=static.COUNT_EXPERTS)
    rows = crosscheck(module, cost_model, wl)
    params = module_params(module)
    return {
        "device": static.COUNT_DEVICE,
        "module_params": params,
        "analytic_params": cost_model.params,
        "stages": [row.to_json() for row in rows],
        "within_tolerance": all(abs(row.ratio - 1) <= static.CROSSCHECK_TOLERANCE for row in rows)
        and params == cost_model.params,
    }


# -- static_analysis stage --------------------------------------------------------------------


def static_workload(cfg: Any, spec: DeepseekOCR2Spec, views: ViewSettings, runs: Sequence[eff.Measured],
                    dtype: str) -> tuple[Workload, tuple[int, int], dict]:
    """The workload the report describes and where each number came from (v1's rules:
    config, else the measured runs, else a reference page / the default prompt / max_new_tokens)."""
    sa = cfg.static_analysis
    sources = {}
    if sa.crop_grid is not None:
        grid, sources["crop_grid"] = tuple(int(g) for g in sa.crop_grid), "config"
        if len(grid) != 2 or min(grid) < 1:
            raise DsocrError(f"static_analysis.crop_grid={list(grid)} must be [w, h] with w, h >= 1")
    elif runs:
        grid, sources["crop_grid"] = Counter(m.crop_grid for m in runs).most_common(1)[0][0], "measured (most common)"
    else:
        grid = crop_grid_for(static.REFERENCE_PAGE, views)
        sources["crop_grid"] = f"reference page {static.REFERENCE_PAGE[0]}x{static.REFERENCE_PAGE[1]}"
    if sa.text_tokens is not None:
        text, sources["text_tokens"] = sa.text_tokens, "config"
    elif runs:
        text = round(sum(m.prefill_len - m.image_tokens for m in runs) / len(runs))
        sources["text_tokens"] = "measured (mean)"
    else:
        text, sources["text_tokens"] = DEFAULT_TEXT_TOKENS, "default"
    wl = workload_for_grid(spec, views, grid, text_tokens=int(text), batch=int(sa.batch_size),
                           dtype_bytes=dtype_bytes(dtype), attention=str(sa.attention))
    if sa.decode_steps is not None:
        steps, sources["decode_steps"] = sa.decode_steps, "config"
    elif runs:
        steps = round(sum(max(m.tokens - 1, 0) for m in runs) / len(runs))
        sources["decode_steps"] = "measured (mean)"
    else:  # up to max_new_tokens, within the decoder's positions ("inf": all of them)
        room = spec.text.max_position_embeddings - int(wl.prefill_tokens)
        max_new = cfg.infer.max_new_tokens
        steps = min(int(max_new) - 1, room) if isinstance(max_new, int) else room
        sources["decode_steps"] = f"infer.max_new_tokens={max_new}"
    return dataclasses.replace(wl, decode_steps=max(int(steps), 0)), tuple(grid), sources


def run_static_analysis(cfg: Any, out_dir: Path, records: Sequence[Any] = ()) -> static.StaticAnalysisResult:
    """The static_analysis stage for DeepSeek-OCR-2 (same files and sections as v1's)."""
    spec, views = _spec(cfg), view_settings(cfg)
    runs, file_env = static.load_measured(cfg, records)
    choice = static.choose_hardware(cfg, file_env)
    on_cuda = any(m.device.startswith("cuda") for m in runs) if runs else choice.hardware is not None
    dtype = resolve_dtype_name(str(cfg.model.dtype), on_cuda)
    wl, grid, sources = static_workload(cfg, spec, views, runs, dtype)
    model = DeepseekOCR2CostModel(spec)
    report = {
        "model": {"family": cfg.model.family, "size": cfg.model.size, "params": model.params},
        "workload": {
            "base_size": wl.base_size, "image_size": wl.image_size, "crop_grid": list(grid),
            "crops": int(wl.crops), "image_tokens": int(wl.image_tokens), "text_tokens": int(wl.text_tokens),
            "prefill_tokens": int(wl.prefill_tokens), "decode_steps": int(wl.decode_steps),
            "batch": int(wl.batch), "dtype_bytes": wl.dtype_bytes, "attention": wl.attention,
            "sources": sources,
        },
        "dtype": dtype,
        "hardware": choice.hardware.to_json() if choice.hardware else None,
        "hardware_choice": choice.reason,
        "stages": static._stage_rows(model, wl, choice, dtype),
        "kv_cache_bytes": int(model.decoder.kv_cache_bytes(wl.batch, wl.prefill_tokens + wl.decode_steps,
                                                           wl.dtype_bytes)),
        "layers": static._layers_json(model, wl),
    }
    report["flop_counter"] = (_flop_count(cfg, model, wl) if cfg.static_analysis.flop_counter
                              else {"skipped": "static_analysis.flop_counter=false"})
    markdown = static.render_markdown(report)
    out_dir = Path(out_dir)
    paths = (
        atomic_write_text(out_dir / static.JSON_FILE, json.dumps(json_safe(report), indent=2) + "\n"),
        atomic_write_text(out_dir / static.MARKDOWN_FILE, markdown),
    )
    section = eff.efficiency(model, runs, choice, dtype, wl.base_size, wl.image_size, wl.dtype_bytes, wl.attention)
    return static.StaticAnalysisResult(report, markdown, section, static.summary_markdown(report), paths)


# -- sweep stage ------------------------------------------------------------------------------


def crop_sweeps(model: DeepseekOCR2CostModel, views: ViewSettings, grids: Sequence[tuple[int, int]],
                s: sweeps.SweepSettings) -> tuple[sweeps.Columns, sweeps.Columns]:
    """v1's two crop-grid sweeps (same columns, ``encoder_flops`` in place of ``clip_flops``)."""
    wl = workload_for_grids(model.spec, views, grids, text_tokens=s.text_tokens, batch=s.batch,
                            dtype_bytes=s.dtype_bytes, attention=s.attention)
    v = model.vision(wl)
    vision, prefill = v["vision"], model.prefill(wl)
    grid_cols = {"grid_w": np.array([g[0] for g in grids]), "grid_h": np.array([g[1] for g in grids]),
                 "crops": wl.crops, "image_tokens": wl.image_tokens}
    crops = {
        **grid_cols,
        "sam_flops": v["sam"].flops, "encoder_flops": v["encoder"].flops, "projector_flops": v["projector"].flops,
        "vision_flops": vision.flops, "vision_matmul_flops": vision.matmul_flops,
        "vision_bytes": vision.bytes, "vision_weight_bytes": vision.weight_bytes,
        "vision_activation_bytes": vision.activation_bytes,
    }
    with_prefill = {
        **grid_cols, "prefill_tokens": wl.prefill_tokens,
        "vision_flops": vision.flops, "vision_bytes": vision.bytes,
        "prefill_flops": prefill.flops, "prefill_matmul_flops": prefill.matmul_flops,
        "prefill_bytes": prefill.bytes, "prefill_weight_bytes": prefill.weight_bytes,
        "prefill_kv_bytes": prefill.kv_bytes,
        "total_flops": vision.flops + prefill.flops, "total_bytes": vision.bytes + prefill.bytes,
    }
    if s.hardware is not None:
        vision_floor = sweeps._floor_ms(vision.flops, vision.bytes, s)
        prefill_floor = sweeps._floor_ms(prefill.flops, prefill.bytes, s)
        crops["vision_floor_ms"] = vision_floor
        with_prefill.update(vision_floor_ms=vision_floor, prefill_floor_ms=prefill_floor,
                            ttft_floor_ms=vision_floor + prefill_floor)
    return crops, with_prefill


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
