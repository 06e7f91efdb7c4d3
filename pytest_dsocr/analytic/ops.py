"""Cost of one operator: FLOPs and bytes as closed formulas (plain Python + numpy, no torch).

Every function takes the workload-dependent sizes (tokens, batch, sequence lengths) as Python
ints or numpy integer arrays and returns a :class:`Cost` whose fields have the same shape, so one
call evaluates one point or a whole sweep. Integer arithmetic throughout: a sweep point equals
the same point evaluated alone, bit for bit.

Conventions (the ones ``torch.utils.flop_counter.FlopCounterMode`` uses, so the matmul part is
comparable 1:1): a matmul of ``(M, K) @ (K, N)`` is ``2*M*N*K`` FLOPs; a convolution is
``2 * batch * out_elements * in_channels * kh * kw``; attention is ``QK^T`` plus ``AV``, each
``2 * batch_heads * s_q * s_k * head_dim`` over the full ``s_q x s_k`` rectangle (causal masking
is applied to computed scores, as the counted kernels do). Bias adds, norms, softmax, activations
and residual adds are *other* FLOPs, estimated per element with the constants below and kept
apart from the matmul FLOPs.

Bytes model: weights are read once per forward call, every operator reads its inputs and writes
its outputs once (no fusion assumed), the KV cache is read by attention and written once per new
token. ``eager`` attention materialises the score matrix (written by ``QK^T``, read and written by
softmax, read by ``AV``); ``flash`` (IO-aware) keeps it on chip and reads Q, K, V and writes O only.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Union

import numpy as np

Number = Union[int, np.integer, np.ndarray]

ATTENTION_MODES = ("eager", "flash")

# Elementwise FLOPs per element (estimates; they are reported apart from the matmul FLOPs).
LAYERNORM_FLOPS = 5  # mean, subtract, variance, normalise, affine
RMSNORM_FLOPS = 4  # square, mean, rsqrt-scale, weight
SOFTMAX_FLOPS = 5  # max, subtract, exp, sum, divide
GELU_FLOPS = 8  # erf-based GELU
QUICK_GELU_FLOPS = 4  # x * sigmoid(1.702 x)
SILU_GATE_FLOPS = 5  # silu(gate) (4) times up (1)
ROPE_FLOPS = 3  # x*cos + rotate(x)*sin per element of q and k
TOPK_FLOPS = 1  # one compare per routing score

# Passes over the materialised score matrix in eager attention: QK^T writes S, softmax reads S and
# writes P, AV reads P.
EAGER_SCORE_PASSES = 4
# An additive bias (SAM's decomposed rel-pos) costs eager one more read and write of S for the add.
EAGER_BIAS_ADD_PASSES = 2


@dataclass(frozen=True)
class Cost:
    """Work of one operator, layer or stage. Fields are ints or numpy arrays of one shape."""

    matmul_flops: Number = 0  # what FlopCounterMode counts: mm/bmm/conv/sdpa
    other_flops: Number = 0  # elementwise: bias, norms, softmax, activations, residuals
    weight_bytes: Number = 0  # parameters read
    activation_bytes: Number = 0  # activations read and written (score matrix included)
    kv_bytes: Number = 0  # KV cache read by attention and written for new tokens

    @property
    def flops(self) -> Number:
        return self.matmul_flops + self.other_flops

    @property
    def bytes(self) -> Number:
        return self.weight_bytes + self.activation_bytes + self.kv_bytes

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(
            self.matmul_flops + other.matmul_flops,
            self.other_flops + other.other_flops,
            self.weight_bytes + other.weight_bytes,
            self.activation_bytes + other.activation_bytes,
            self.kv_bytes + other.kv_bytes,
        )

    def __sub__(self, other: "Cost") -> "Cost":
        return Cost(
            self.matmul_flops - other.matmul_flops,
            self.other_flops - other.other_flops,
            self.weight_bytes - other.weight_bytes,
            self.activation_bytes - other.activation_bytes,
            self.kv_bytes - other.kv_bytes,
        )

    def __mul__(self, factor: Number) -> "Cost":
        return Cost(
            self.matmul_flops * factor,
            self.other_flops * factor,
            self.weight_bytes * factor,
            self.activation_bytes * factor,
            self.kv_bytes * factor,
        )

    __rmul__ = __mul__

    def as_dict(self) -> dict[str, Number]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


ZERO = Cost()


def total(costs) -> Cost:
    """Sum of an iterable of costs (``sum`` needs a start value; this reads better)."""
    out = ZERO
    for cost in costs:
        out = out + cost
    return out


def linear(tokens: Number, d_in: int, d_out: int, bias: bool, dtype_bytes: int,
           weight_dtype_bytes: int | None = None) -> Cost:
    """``y = x W^T (+ b)`` over ``tokens`` rows: one ``(tokens, d_in) @ (d_in, d_out)`` matmul.

    ``weight_dtype_bytes``: bytes per stored weight when it differs from the activations'
    (a router kept in float32 in a bf16 model).
    """
    weight_bytes = dtype_bytes if weight_dtype_bytes is None else weight_dtype_bytes
    return Cost(
        matmul_flops=2 * tokens * d_in * d_out,
        other_flops=tokens * d_out if bias else 0,
        weight_bytes=(d_in * d_out + (d_out if bias else 0)) * weight_bytes,
        activation_bytes=tokens * (d_in + d_out) * dtype_bytes,
    )


def conv_out(size: Number, kernel: int, stride: int, padding: int) -> Number:
    """Output side of a convolution (integer arithmetic, as torch computes it)."""
    return (size + 2 * padding - kernel) // stride + 1


def conv2d(
    batch: Number, c_in: int, c_out: int, kernel: int, stride: int, padding: int, size: Number,
    bias: bool, dtype_bytes: int,
) -> Cost:
    """Square 2-D convolution on ``batch`` square inputs of side ``size``."""
    out = conv_out(size, kernel, stride, padding)
    out_elements = batch * c_out * out * out
    return Cost(
        matmul_flops=2 * out_elements * c_in * kernel * kernel,
        other_flops=out_elements if bias else 0,
        weight_bytes=(c_out * c_in * kernel * kernel + (c_out if bias else 0)) * dtype_bytes,
        activation_bytes=(batch * c_in * size * size + out_elements) * dtype_bytes,
    )


def norm(tokens: Number, dim: int, flops_per_element: int, weights: int, dtype_bytes: int) -> Cost:
    """LayerNorm (``weights`` = 2: weight and bias) or RMSNorm (``weights`` = 1) over ``dim``."""
    return Cost(
        other_flops=flops_per_element * tokens * dim,
        weight_bytes=weights * dim * dtype_bytes,
        activation_bytes=2 * tokens * dim * dtype_bytes,
    )


def layernorm(tokens: Number, dim: int, dtype_bytes: int) -> Cost:
    return norm(tokens, dim, LAYERNORM_FLOPS, 2, dtype_bytes)


def rmsnorm(tokens: Number, dim: int, dtype_bytes: int) -> Cost:
    return norm(tokens, dim, RMSNORM_FLOPS, 1, dtype_bytes)


def elementwise(
    elements: Number, flops_per_element: int, inputs: int, outputs: int, dtype_bytes: int
) -> Cost:
    """An elementwise op over ``elements`` values reading ``inputs`` and writing ``outputs`` tensors."""
    return Cost(
        other_flops=flops_per_element * elements,
        activation_bytes=(inputs + outputs) * elements * dtype_bytes,
    )


def residual_add(tokens: Number, dim: int, dtype_bytes: int) -> Cost:
    return elementwise(tokens * dim, 1, 2, 1, dtype_bytes)


def attention(
    batch_heads: Number, s_q: Number, s_k: Number, head_dim: int, mode: str, dtype_bytes: int,
    kv_batch_heads: Number | None = None, bias: bool = False, kv_cached: bool = False,
) -> Cost:
    """Scaled dot-product attention core: ``softmax(Q K^T + bias) V`` for ``batch_heads`` heads.

    ``kv_batch_heads`` (default ``batch_heads``) is the number of K/V heads read (grouped-query
    attention reads fewer). With ``kv_cached`` the K/V reads are KV-cache traffic (decoder),
    otherwise activations (vision). ``bias`` marks an additive score bias that is already
    materialised (SAM's rel-pos): every mode reads it once; eager also re-reads and re-writes
    the scores to add it.
    """
    if mode not in ATTENTION_MODES:
        raise ValueError(f"attention mode {mode!r} is not one of {ATTENTION_MODES}")
    kv_heads = batch_heads if kv_batch_heads is None else kv_batch_heads
    scores = batch_heads * s_q * s_k
    qo_bytes = 2 * batch_heads * s_q * head_dim * dtype_bytes
    kv_read = 2 * kv_heads * s_k * head_dim * dtype_bytes
    score_passes = (1 if bias else 0) + (
        EAGER_SCORE_PASSES + (EAGER_BIAS_ADD_PASSES if bias else 0) if mode == "eager" else 0
    )
    activation = qo_bytes + score_passes * scores * dtype_bytes
    return Cost(
        matmul_flops=2 * 2 * scores * head_dim,
        other_flops=SOFTMAX_FLOPS * scores + (scores if bias else 0),
        activation_bytes=activation + (0 if kv_cached else kv_read),
        kv_bytes=kv_read if kv_cached else 0,
    )


def prenorm_block(tokens: Number, width: int, mlp_dim: int, attention_core: Cost, act_flops: int,
                  dtype_bytes: int, attn_tokens: Number | None = None) -> Cost:
    """A pre-norm ViT block with biased linears: LayerNorm, qkv, ``attention_core``, proj,
    residual, LayerNorm, MLP (``act_flops`` per hidden element), residual.

    ``attn_tokens`` (default ``tokens``) is what qkv and proj run on: SAM pads to whole windows.
    """
    attn_tokens = tokens if attn_tokens is None else attn_tokens
    return total((
        layernorm(tokens, width, dtype_bytes),
        linear(attn_tokens, width, 3 * width, True, dtype_bytes),
        attention_core,
        linear(attn_tokens, width, width, True, dtype_bytes),
        residual_add(tokens, width, dtype_bytes),
        layernorm(tokens, width, dtype_bytes),
        linear(tokens, width, mlp_dim, True, dtype_bytes),
        elementwise(tokens * mlp_dim, act_flops, 1, 1, dtype_bytes),
        linear(tokens, mlp_dim, width, True, dtype_bytes),
        residual_add(tokens, width, dtype_bytes),
    ))


def decomposed_rel_pos(
    batch_heads: Number, height: int, width: int, head_dim: int, dtype_bytes: int
) -> Cost:
    """SAM's decomposed relative position bias (MViTv2) for a ``height x width`` token grid.

    Two einsums ``bhwc,hkc->bhwk`` and ``bhwc,wkc->bhwk`` (batched matmuls of
    ``2*BH*h*w*c*h`` and ``2*BH*h*w*c*w`` FLOPs), then the broadcast ``rel_h + rel_w`` that
    materialises a ``BH x (h*w) x (h*w)`` bias. The rel-pos tables are parameters counted by the
    owning layer; reading them is negligible and left out.
    """
    tokens = height * width
    bias = batch_heads * tokens * tokens
    return Cost(
        matmul_flops=2 * batch_heads * tokens * head_dim * (height + width),
        other_flops=bias,
        activation_bytes=(batch_heads * tokens * (head_dim + height + width) + bias) * dtype_bytes,
    )


def kv_write(tokens: Number, kv_heads: int, head_dim: int, dtype_bytes: int) -> Cost:
    """Appending K and V of ``tokens`` new tokens to the cache of one layer."""
    return Cost(kv_bytes=2 * tokens * kv_heads * head_dim * dtype_bytes)


def embedding(tokens: Number, dim: int, dtype_bytes: int) -> Cost:
    """Row gather: reads one row per token (not the whole table) and writes it."""
    return Cost(weight_bytes=tokens * dim * dtype_bytes, activation_bytes=tokens * dim * dtype_bytes)
