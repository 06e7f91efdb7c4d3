"""Analytic cost model of DeepSeek-OCR v1, built from the same spec as the torch module.

Read top to bottom as the architecture: SAM ViT-B -> CLIP-L fed by SAM features -> projector ->
DeepSeek-V2 MoE decoder -> lm_head. Each part is built once from its spec record
(:mod:`pytest_dsocr.models.deepseek_ocr.spec`, the one source of truth for sizes) and then
evaluated for any workload; the sizes that vary (batch, crop count, tokens, context length) may be
numpy integer arrays, so a whole sweep is one evaluation.

Parameter counts are exact (they must equal the module's ``numel`` sum, unused CLIP patch
embedding included); FLOPs and bytes follow :mod:`pytest_dsocr.analytic.ops`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pytest_dsocr.analytic import ops
from pytest_dsocr.analytic.family import analytic_stages
from pytest_dsocr.analytic.ops import Cost, Number
from pytest_dsocr.compat import router_weight_bytes
from pytest_dsocr.families import FAMILIES
from pytest_dsocr.models.deepseek_ocr.spec import (
    ClipSpec,
    DeepseekOCRSpec,
    ProjectorSpec,
    SamSpec,
    TextSpec,
)

RGB_CHANNELS = 3


@dataclass(frozen=True)
class LayerCost:
    """One layer kind of a stage: ``count`` identical layers, each costing ``cost``."""

    name: str
    count: int
    cost: Cost  # per layer
    params: int  # per layer

    @property
    def total(self) -> Cost:
        return self.cost * self.count


def _sum_layers(layers: list[LayerCost]) -> Cost:
    return ops.total(layer.total for layer in layers)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class SamCost:
    """SAM ViT-B: patch conv, windowed and global blocks with rel-pos, neck, two stride-2 convs."""

    def __init__(self, spec: SamSpec) -> None:
        self.spec = spec
        self.head_dim = spec.width // spec.heads
        self.pos_grid = spec.image_size // spec.patch_size  # side the rel-pos / abs-pos were trained at
        self.global_layers = len(spec.global_attn_indexes)
        self.window_layers = spec.layers - self.global_layers
        w, mlp = spec.width, spec.mlp_dim
        block = 2 * 2 * w + (w * 3 * w + 3 * w) + (w * w + w) + (w * mlp + mlp) + (mlp * w + w)
        self.window_block_params = block + 2 * (2 * spec.window_size - 1) * self.head_dim
        self.global_block_params = block + 2 * (2 * self.pos_grid - 1) * self.head_dim
        self.stem_params = RGB_CHANNELS * spec.patch_size**2 * w + w + self.pos_grid**2 * w
        out, (d0, d1) = spec.out_chans, spec.downsample_channels
        self.neck_params = w * out + 2 * out + out * out * 9 + 2 * out + out * d0 * 9 + d0 * d1 * 9
        self.params = (
            self.stem_params
            + self.window_layers * self.window_block_params
            + self.global_layers * self.global_block_params
            + self.neck_params
        )

    def grid(self, size: int) -> int:
        """Patch tokens per side of a square view of ``size`` pixels."""
        return size // self.spec.patch_size

    def out_side(self, size: int) -> int:
        """Feature side after the two stride-2 convs (= queries per side)."""
        return ops.conv_out(ops.conv_out(self.grid(size), 3, 2, 1), 3, 2, 1)

    def _block(self, grid: int, batch: Number, window: int, mode: str, nbytes: int) -> Cost:
        s = self.spec
        w, hd = s.width, self.head_dim
        tokens = batch * grid * grid
        if window:
            padded = _ceil_div(grid, window) * window
            windows, side = (padded // window) ** 2, window
        else:
            padded, windows, side = grid, 1, grid
        attn_tokens = batch * padded * padded
        bh = batch * windows * s.heads
        seq = side * side
        core = ops.decomposed_rel_pos(bh, side, side, hd, nbytes) + ops.attention(
            bh, seq, seq, hd, mode, nbytes, bias=True)
        if window:  # pad + window partition copy, and the reverse after attention
            core = core + ops.elementwise(attn_tokens * w, 0, 1, 1, nbytes) * 2
        return ops.prenorm_block(tokens, w, s.mlp_dim, core, ops.GELU_FLOPS, nbytes, attn_tokens)

    def layers(self, size: int, batch: Number, mode: str, nbytes: int) -> list[LayerCost]:
        s = self.spec
        g = self.grid(size)
        out, (d0, d1) = s.out_chans, s.downsample_channels
        half = ops.conv_out(g, 3, 2, 1)
        stem = ops.conv2d(batch, RGB_CHANNELS, s.width, s.patch_size, s.patch_size, 0, size, True, nbytes)
        stem = stem + ops.elementwise(batch * g * g * s.width, 1, 2, 1, nbytes)  # + abs pos embed
        neck = ops.total((
            ops.conv2d(batch, s.width, out, 1, 1, 0, g, False, nbytes),
            ops.layernorm(batch * g * g, out, nbytes),
            ops.conv2d(batch, out, out, 3, 1, 1, g, False, nbytes),
            ops.layernorm(batch * g * g, out, nbytes),
            ops.conv2d(batch, out, d0, 3, 2, 1, g, False, nbytes),
            ops.conv2d(batch, d0, d1, 3, 2, 1, half, False, nbytes),
        ))
        return [
            LayerCost("sam.patch_embed", 1, stem, self.stem_params),
            LayerCost("sam.block.window", self.window_layers,
                      self._block(g, batch, s.window_size, mode, nbytes), self.window_block_params),
            LayerCost("sam.block.global", self.global_layers,
                      self._block(g, batch, 0, mode, nbytes), self.global_block_params),
            LayerCost("sam.neck", 1, neck, self.neck_params),
        ]

    def forward(self, size: int, batch: Number, mode: str, nbytes: int) -> Cost:
        return _sum_layers(self.layers(size, batch, mode, nbytes))


class ClipCost:
    """CLIP-L/14 whose patch embeddings are SAM's features: ``q*q + 1`` positions, no patch conv."""

    def __init__(self, spec: ClipSpec) -> None:
        self.spec = spec
        self.head_dim = spec.width // spec.heads
        w, mlp = spec.width, spec.mlp_dim
        self.layer_params = 2 * 2 * w + (w * 3 * w + 3 * w) + (w * w + w) + (w * mlp + mlp) + (mlp * w + w)
        # class embedding, the (unused at run time) patch conv, position table, pre_layrnorm
        self.embed_params = w + RGB_CHANNELS * spec.patch_size**2 * w + spec.num_positions * w + 2 * w
        self.params = self.embed_params + spec.layers * self.layer_params

    def layers(self, side: int, batch: Number, mode: str, nbytes: int) -> list[LayerCost]:
        s = self.spec
        w = s.width
        seq = side * side + 1
        tokens = batch * seq
        embed = ops.total((
            ops.elementwise(tokens * w, 0, 1, 1, nbytes),  # flatten SAM features, prepend class token
            ops.elementwise(tokens * w, 1, 2, 1, nbytes),  # + position embedding
            ops.layernorm(tokens, w, nbytes),  # pre_layrnorm
        ))
        core = ops.attention(batch * s.heads, seq, seq, self.head_dim, mode, nbytes)
        layer = ops.prenorm_block(tokens, w, s.mlp_dim, core, ops.QUICK_GELU_FLOPS, nbytes)
        return [
            LayerCost("clip.embeddings", 1, embed, self.embed_params),
            LayerCost("clip.layer", s.layers, layer, self.layer_params),
        ]

    def forward(self, side: int, batch: Number, mode: str, nbytes: int) -> Cost:
        return _sum_layers(self.layers(side, batch, mode, nbytes))


class ProjectorCost:
    """Linear projector over concat(CLIP without class token, SAM flattened); owns the newline
    and view-separator embeddings (parameters only)."""

    def __init__(self, spec: ProjectorSpec) -> None:
        self.spec = spec
        self.linear_params = spec.input_dim * spec.n_embed + spec.n_embed
        self.params = self.linear_params + 2 * spec.n_embed  # + image_newline, view_seperator

    def layers(self, side: int, batch: Number, nbytes: int) -> list[LayerCost]:
        s = self.spec
        tokens = batch * side * side
        cost = ops.elementwise(tokens * s.input_dim, 0, 1, 1, nbytes) + ops.linear(
            tokens, s.input_dim, s.n_embed, True, nbytes
        )
        return [LayerCost("projector", 1, cost, self.params)]

    def forward(self, side: int, batch: Number, nbytes: int) -> Cost:
        return _sum_layers(self.layers(side, batch, nbytes))


class DecoderCost:
    """DeepSeek-V2 decoder: embedding, MHA + dense MLP layers, MHA + MoE layers, final norm; and
    the lm_head kept apart (it runs on the last position only)."""

    def __init__(self, spec: TextSpec) -> None:
        self.spec = spec
        h, hd = spec.hidden_size, spec.head_dim
        self.head_dim = hd
        q_out, kv_out = spec.num_attention_heads * hd, spec.num_key_value_heads * hd
        attn = 2 * h + h * q_out + 2 * h * kv_out + q_out * h  # two RMSNorms + q, k, v, o
        e, im = spec.n_routed_experts, spec.moe_intermediate_size
        self.expert_params = 3 * h * im
        self.dense_layer_params = attn + 3 * h * spec.intermediate_size
        self.moe_layer_params = attn + e * h + e * self.expert_params + 3 * h * im * spec.n_shared_experts
        self.dense_layers = spec.first_k_dense_replace
        self.moe_layers = spec.num_hidden_layers - spec.first_k_dense_replace
        self.embed_params = spec.vocab_size * h
        self.params = (
            self.embed_params + self.dense_layers * self.dense_layer_params
            + self.moe_layers * self.moe_layer_params + h
        )
        self.lm_head_params = spec.vocab_size * h
        self.kv_values_per_token = 2 * spec.num_hidden_layers * kv_out  # K and V of every layer

    def _mlp(self, tokens: Number, inter: int, nbytes: int) -> Cost:
        h = self.spec.hidden_size
        return ops.total((
            ops.linear(tokens, h, inter, False, nbytes),  # gate_proj
            ops.linear(tokens, h, inter, False, nbytes),  # up_proj
            ops.elementwise(tokens * inter, ops.SILU_GATE_FLOPS, 2, 1, nbytes),
            ops.linear(tokens, inter, h, False, nbytes),  # down_proj
        ))

    def _moe(self, tokens: Number, nbytes: int) -> Cost:
        s = self.spec
        h, im, e, k = s.hidden_size, s.moe_intermediate_size, s.n_routed_experts, s.num_experts_per_tok
        pairs = tokens * k  # (token, expert) assignments
        # Experts touched by this call: at most every assignment hits a distinct expert.
        touched = np.minimum(e, pairs)
        routed = Cost(
            matmul_flops=2 * pairs * h * 2 * im + 2 * pairs * im * h,  # gate_up then down per pair
            other_flops=pairs * im * ops.SILU_GATE_FLOPS + pairs * h * 2,  # gate, weight, combine
            weight_bytes=touched * self.expert_params * nbytes,
            # gather (h in, h out), gate_up (h in, 2im out), silu*up (2im in, im out),
            # down (im in, h out), weight and combine (h in, h out): 6h + 6im per pair
            activation_bytes=pairs * (6 * h + 6 * im) * nbytes,
        )
        return ops.total((
            # router: its weights stored as transformers keeps them (float32 in bf16 from 5.24)
            ops.linear(tokens, h, e, False, nbytes, weight_dtype_bytes=router_weight_bytes(nbytes)),
            ops.elementwise(tokens * e, ops.SOFTMAX_FLOPS + ops.TOPK_FLOPS, 1, 1, nbytes),
            routed,
            self._mlp(tokens, im * s.n_shared_experts, nbytes),  # shared experts
            ops.residual_add(tokens, h, nbytes),  # routed + shared
        ))

    def _attention_block(self, batch: Number, s_q: Number, s_k: Number, mode: str, nbytes: int) -> Cost:
        s = self.spec
        h, hd = s.hidden_size, self.head_dim
        heads, kvh = s.num_attention_heads, s.num_key_value_heads
        tokens = batch * s_q
        return ops.total((
            ops.rmsnorm(tokens, h, nbytes),
            ops.linear(tokens, h, heads * hd, False, nbytes),  # q_proj
            ops.linear(tokens, h, kvh * hd, False, nbytes),  # k_proj
            ops.linear(tokens, h, kvh * hd, False, nbytes),  # v_proj
            ops.elementwise(tokens * (heads + kvh) * hd, ops.ROPE_FLOPS, 1, 1, nbytes),
            ops.kv_write(tokens, kvh, hd, nbytes),
            ops.attention(batch * heads, s_q, s_k, hd, mode, nbytes,
                          kv_batch_heads=batch * kvh, kv_cached=True),
            ops.linear(tokens, heads * hd, h, False, nbytes),  # o_proj
            ops.residual_add(tokens, h, nbytes),
            ops.rmsnorm(tokens, h, nbytes),
        ))

    def layers(self, batch: Number, s_q: Number, s_k: Number, mode: str, nbytes: int) -> list[LayerCost]:
        """Decoder body for ``s_q`` new tokens per sequence attending to ``s_k`` positions."""
        s = self.spec
        h = s.hidden_size
        tokens = batch * s_q
        attn = self._attention_block(batch, s_q, s_k, mode, nbytes)
        residual = ops.residual_add(tokens, h, nbytes)
        return [
            LayerCost("decoder.embed_tokens", 1, ops.embedding(tokens, h, nbytes), self.embed_params),
            LayerCost("decoder.layer.dense", self.dense_layers,
                      attn + self._mlp(tokens, s.intermediate_size, nbytes) + residual,
                      self.dense_layer_params),
            LayerCost("decoder.layer.moe", self.moe_layers,
                      attn + self._moe(tokens, nbytes) + residual, self.moe_layer_params),
            LayerCost("decoder.norm", 1, ops.rmsnorm(tokens, h, nbytes), h),
        ]

    def forward(self, batch: Number, s_q: Number, s_k: Number, mode: str, nbytes: int) -> Cost:
        return _sum_layers(self.layers(batch, s_q, s_k, mode, nbytes))

    def lm_head(self, tokens: Number, nbytes: int) -> Cost:
        return ops.linear(tokens, self.spec.hidden_size, self.spec.vocab_size, False, nbytes)

    def kv_cache_bytes(self, batch: Number, context: Number, nbytes: int) -> Number:
        """Bytes the KV cache holds for ``batch`` sequences of ``context`` tokens (all layers)."""
        return batch * context * self.kv_values_per_token * nbytes


FAMILY = "deepseek_ocr"
STAGES = analytic_stages(FAMILY)


@dataclass(frozen=True)
class StageCost:
    """Cost of one stage with the parameters of the modules it runs."""

    name: str
    params: int
    cost: Cost

    @property
    def matmul_flops(self) -> Number:
        return self.cost.matmul_flops

    @property
    def flops(self) -> Number:
        return self.cost.flops

    @property
    def bytes(self) -> Number:
        return self.cost.bytes

    @property
    def arithmetic_intensity(self) -> Number:
        """FLOPs per byte moved (every stage moves at least its weights, so bytes > 0)."""
        return np.asarray(self.flops) / np.asarray(self.bytes)

    def to_json(self) -> dict:
        """Scalar stage as plain JSON numbers."""
        c = self.cost
        return {
            "params": int(self.params),
            "flops": int(c.flops),
            "matmul_flops": int(c.matmul_flops),
            "other_flops": int(c.other_flops),
            "bytes": int(c.bytes),
            "weight_bytes": int(c.weight_bytes),
            "activation_bytes": int(c.activation_bytes),
            "kv_bytes": int(c.kv_bytes),
            "arithmetic_intensity": float(self.arithmetic_intensity),
        }


def _present(count: Number) -> Number:
    """1 where ``count`` > 0 else 0 (a call that does not happen reads no weights)."""
    if isinstance(count, np.ndarray):
        return (count > 0).astype(np.int64)
    return int(count > 0)


class DeepseekOCRCostModel:
    """The four parts of DeepSeek-OCR v1 as cost objects; build once, evaluate any workload."""

    # The vision tower's parts in run order, as stages and sweep columns name them (the family's
    # stage tree): SAM, the encoder fed SAM's features (:attr:`vision_encoder`), the projector.
    VISION_PARTS = FAMILIES[FAMILY].stages.vision_parts
    STAGES = STAGES

    def __init__(self, spec: DeepseekOCRSpec) -> None:
        self.spec = spec
        self.sam = SamCost(spec.sam)
        self.clip = ClipCost(spec.clip)
        self.projector = ProjectorCost(spec.projector)
        self.decoder = DecoderCost(spec.text)
        # Workload-independent parts of evaluations, filled on first use (what reuse saves):
        # (view size, mode, dtype bytes) -> (sam, clip, projector) as (at batch 0, per view)
        self._views: dict[tuple, tuple[tuple[Cost, Cost], ...]] = {}
        # (batch, mode, dtype bytes) -> decode step cost as (at context 0, per context token)
        self._steps: dict[tuple, tuple[Cost, Cost]] = {}

    @property
    def vision_encoder(self) -> ClipCost:
        """The part between SAM and the projector (v1: CLIP)."""
        return self.clip

    @property
    def params(self) -> int:
        """Every parameter of the model (must equal the torch module's)."""
        return (
            self.sam.params + self.vision_encoder.params + self.projector.params
            + self.decoder.params + self.decoder.lm_head_params
        )

    def stage_params(self) -> dict[str, int]:
        parts = (self.sam.params, self.vision_encoder.params, self.projector.params)
        text = self.decoder.params + self.decoder.lm_head_params
        return {
            **dict(zip(self.VISION_PARTS, parts)),
            "vision": sum(parts), "prefill": text, "decode_step": text, "decode": text,
            "lm_head": self.decoder.lm_head_params,
        }

    def views(self, size: int, batch: Number, mode: str, nbytes: int) -> tuple[Cost, Cost, Cost]:
        """SAM, encoder and projector costs of one vision-tower call on ``batch`` views of ``size`` px.

        A call is affine in its batch (weights read once, everything else per view), so each
        view size is evaluated once, at batch 0 and 1, and any batch is ``at0 + batch * per_view``:
        exact, integer arithmetic.
        """
        key = (size, mode, nbytes)
        parts = self._views.get(key)
        if parts is None:
            q = self.sam.out_side(size)

            def call(b: int) -> tuple[Cost, Cost, Cost]:
                return (self.sam.forward(size, b, mode, nbytes),
                        self.vision_encoder.forward(q, b, mode, nbytes), self.projector.forward(q, b, nbytes))

            parts = self._views[key] = tuple((at0, at1 - at0) for at0, at1 in zip(call(0), call(1)))
        return tuple(at0 + per_view * batch for at0, per_view in parts)

    def vision(self, wl) -> dict[str, Cost]:
        """SAM, the vision encoder and the projector over the global view (batch ``wl.batch``)
        and, when there are crops, over all tiles in one more call (batch ``wl.batch * wl.crops``),
        as the vendor runs them; each call reads the weights once. Keyed by :attr:`VISION_PARTS`."""
        mode, nb = wl.attention, wl.dtype_bytes
        present = _present(wl.crops)
        global_view = self.views(wl.base_size, wl.batch, mode, nb)
        crops = self.views(wl.image_size, wl.batch * wl.crops, mode, nb)
        sam, encoder, projector = (g + c * present for g, c in zip(global_view, crops))
        return {**dict(zip(self.VISION_PARTS, (sam, encoder, projector))), "vision": sam + encoder + projector}

    def prefill(self, wl) -> Cost:
        """Decoder over the whole prompt (vision excluded) plus lm_head on the last position."""
        tokens = wl.prefill_tokens
        return self.decoder.forward(wl.batch, tokens, tokens, wl.attention, wl.dtype_bytes) + (
            self.decoder.lm_head(wl.batch, wl.dtype_bytes))

    def _step_terms(self, batch: Number, attention: str, dtype_bytes: int) -> tuple[Cost, Cost]:
        """A decode step's cost is affine in its context (attention and KV reads grow linearly,
        the rest is constant): returns (cost at context 0, cost per context token), computed once
        per (batch, mode, dtype) when batch is a plain int."""
        key = (batch, attention, dtype_bytes) if isinstance(batch, (int, np.integer)) else None
        terms = self._steps.get(key) if key is not None else None
        if terms is None:
            def step(context: int) -> Cost:
                return self.decoder.forward(batch, 1, context, attention, dtype_bytes) + (
                    self.decoder.lm_head(batch, dtype_bytes))

            at0 = step(0)
            terms = (at0, step(1) - at0)
            if key is not None:
                self._steps[key] = terms
        return terms

    def decode_step(self, context: Number, batch: Number, attention: str, dtype_bytes: int) -> Cost:
        """One decode step whose new token attends to ``context`` positions (itself included)."""
        at0, per_token = self._step_terms(batch, attention, dtype_bytes)
        return at0 + per_token * context

    def decode(self, prefill_tokens: Number, steps: Number, batch: Number, attention: str,
               dtype_bytes: int) -> Cost:
        """Sum of ``steps`` decode steps after a prompt of ``prefill_tokens``: step i attends to
        ``prefill_tokens + i`` positions, so the sum is closed-form and exact:
        ``n*a + b*(n*P + n(n+1)/2)`` with ``a`` the cost at context 0 and ``b`` per context token."""
        at0, per_token = self._step_terms(batch, attention, dtype_bytes)
        n = steps
        return at0 * n + per_token * (n * prefill_tokens + n * (n + 1) // 2)

    def stages(self, wl) -> dict[str, "StageCost"]:
        """Every stage of :attr:`STAGES` for one workload (fields are arrays for array workloads).

        ``decode_step`` is the first decode step (context ``prefill_tokens + 1``); ``decode`` sums
        ``wl.decode_steps`` steps.
        """
        costs = self.vision(wl)
        costs["prefill"] = self.prefill(wl)
        costs["decode_step"] = self.decode_step(wl.prefill_tokens + 1, wl.batch, wl.attention, wl.dtype_bytes)
        costs["decode"] = self.decode(wl.prefill_tokens, wl.decode_steps, wl.batch, wl.attention,
                                      wl.dtype_bytes)
        costs["lm_head"] = self.decoder.lm_head(wl.batch, wl.dtype_bytes)
        params = self.stage_params()
        return {name: StageCost(name, params[name], costs[name]) for name in self.STAGES}

    def layer_breakdown(self, wl) -> dict[str, list[LayerCost]]:
        """Per-layer costs of the global view, one crop tile (batch 1 each), prefill and the
        first decode step: what the static report lists layer by layer."""
        mode, nb = wl.attention, wl.dtype_bytes
        q_g, q_c = self.sam.out_side(wl.base_size), self.sam.out_side(wl.image_size)
        out = {
            "global_view": self.sam.layers(wl.base_size, wl.batch, mode, nb)
            + self.vision_encoder.layers(q_g, wl.batch, mode, nb) + self.projector.layers(q_g, wl.batch, nb),
            "crop_tile": self.sam.layers(wl.image_size, 1, mode, nb)
            + self.vision_encoder.layers(q_c, 1, mode, nb) + self.projector.layers(q_c, 1, nb),
        }
        t = wl.prefill_tokens
        head = LayerCost("lm_head", 1, self.decoder.lm_head(wl.batch, nb), self.decoder.lm_head_params)
        out["prefill"] = self.decoder.layers(wl.batch, t, t, mode, nb) + [head]
        out["decode_step"] = self.decoder.layers(wl.batch, 1, t + 1, mode, nb) + [head]
        return out
