"""The routed experts of one decode step, reading the selected experts' weights in place.

transformers' ``batched_mm`` experts kernel first gathers the weights of every (token, expert)
pair into a new tensor (``gate_up_proj[expert_ids]``: 6 x 6.9 MB per layer and token for
DeepSeek-OCR) and then runs a batched GEMM over the copy, so each weight crosses memory three
times. Here two Triton GEMV kernels index the expert tables directly:

1. gate/up: for each pair and a block of intermediate rows, ``silu(x W_g^T) * (x W_u^T)``;
2. down: for each token and a block of hidden rows, ``sum_k w_k * (a_k W_d^T)``.

Rounding follows ``batched_mm`` step by step (projections, SiLU and product stored in the model
dtype; routing weights and the sum over the top-k in float32), so the result differs from it
only by the order of the float32 accumulation inside each dot product.

Registered as transformers' experts implementation :data:`EXPERTS_IMPLEMENTATION`; on a device
without Triton (a CPU, unless ``TRITON_INTERPRET=1``) it falls back to ``batched_mm``.
"""

from __future__ import annotations

import functools
import logging
import os

import torch

log = logging.getLogger(__name__)

EXPERTS_IMPLEMENTATION = "dsocr_gemv"
INTERPRET_ENV = "TRITON_INTERPRET"
# Rows per program: small blocks give a decode step (one token, 6 experts) enough programs to
# cover the GPU's 132 multiprocessors; 128 columns = 256 contiguous bytes of a bf16 row per load.
GATE_UP_BLOCK_ROWS = 16
DOWN_BLOCK_ROWS = 8
BLOCK_COLS = 128

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU installs without Triton
    triton = None
    tl = None


_KERNELS: dict[str, object] = {}  # "gate_up", "down", "interpret": built once by build_kernels()


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get(INTERPRET_ENV, "0") not in ("", "0")


def build_kernels() -> dict[str, object]:
    """Jit the two kernels once, in the mode in force (the interpreter is chosen at jit time).

    Called before any torch.compile trace reaches :func:`moe_gemv`, so the trace only looks
    the kernels up; built again only if ``TRITON_INTERPRET`` changed since (tests).
    """
    if triton is not None and (not _KERNELS or _KERNELS["interpret"] != interpreting()):
        _KERNELS.update(gate_up=triton.jit(_gate_up_kernel), down=triton.jit(_down_kernel),
                        interpret=interpreting())
    return _KERNELS


def triton_usable(device: torch.device) -> bool:
    """Whether the kernels can run for tensors on ``device`` (a GPU, or the Triton interpreter)."""
    if triton is None:
        return False
    return device.type == "cuda" or bool(build_kernels().get("interpret"))


if triton is not None:  # the kernels' annotations need triton.language

    def _gate_up_kernel(x_ptr, ids_ptr, w_ptr, act_ptr, top_k, stride_expert, stride_row,
                        hidden: tl.constexpr, inter: tl.constexpr, BLOCK_ROWS: tl.constexpr,
                        BLOCK_COLS: tl.constexpr):
        pair = tl.program_id(0)  # token * top_k + slot
        block = tl.program_id(1)
        token = pair // top_k
        expert = tl.load(ids_ptr + pair)
        rows = block * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        row_ok = rows < inter
        base = w_ptr + expert * stride_expert
        gate = tl.zeros([BLOCK_ROWS], dtype=tl.float32)
        up = tl.zeros([BLOCK_ROWS], dtype=tl.float32)
        for start in range(0, hidden, BLOCK_COLS):
            cols = start + tl.arange(0, BLOCK_COLS)
            col_ok = cols < hidden
            x = tl.load(x_ptr + token * hidden + cols, mask=col_ok, other=0.0).to(tl.float32)
            ok = row_ok[:, None] & col_ok[None, :]
            w_gate = tl.load(base + rows[:, None] * stride_row + cols[None, :], mask=ok, other=0.0)
            w_up = tl.load(base + (rows[:, None] + inter) * stride_row + cols[None, :], mask=ok, other=0.0)
            gate += tl.sum(w_gate.to(tl.float32) * x[None, :], axis=1)
            up += tl.sum(w_up.to(tl.float32) * x[None, :], axis=1)
        # As batched_mm: each projection and the SiLU are stored in the model dtype before the product.
        STORE = act_ptr.dtype.element_ty
        gate = gate.to(STORE).to(tl.float32)
        up = up.to(STORE).to(tl.float32)
        act = (gate * tl.sigmoid(gate)).to(STORE).to(tl.float32)
        tl.store(act_ptr + pair * inter + rows, (act * up).to(STORE), mask=row_ok)


    def _down_kernel(act_ptr, ids_ptr, weights_ptr, w_ptr, out_ptr, stride_expert, stride_row,
                     hidden: tl.constexpr, inter: tl.constexpr, TOP_K: tl.constexpr, BLOCK_ROWS: tl.constexpr,
                     BLOCK_COLS: tl.constexpr):
        token = tl.program_id(0)
        block = tl.program_id(1)
        rows = block * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        row_ok = rows < hidden
        STORE = out_ptr.dtype.element_ty
        total = tl.zeros([BLOCK_ROWS], dtype=tl.float32)
        for slot in tl.static_range(TOP_K):
            pair = token * TOP_K + slot
            expert = tl.load(ids_ptr + pair)
            weight = tl.load(weights_ptr + pair).to(tl.float32)
            base = w_ptr + expert * stride_expert
            acc = tl.zeros([BLOCK_ROWS], dtype=tl.float32)
            for start in range(0, inter, BLOCK_COLS):
                cols = start + tl.arange(0, BLOCK_COLS)
                col_ok = cols < inter
                a = tl.load(act_ptr + pair * inter + cols, mask=col_ok, other=0.0).to(tl.float32)
                w = tl.load(base + rows[:, None] * stride_row + cols[None, :],
                            mask=row_ok[:, None] & col_ok[None, :], other=0.0)
                acc += tl.sum(w.to(tl.float32) * a[None, :], axis=1)
            # As batched_mm: the expert's output in the model dtype, weighted and summed in float32.
            total += acc.to(STORE).to(tl.float32) * weight
        tl.store(out_ptr + token * hidden + rows, total.to(STORE), mask=row_ok)


def moe_gemv(hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor,
             gate_up_proj: torch.Tensor, down_proj: torch.Tensor) -> torch.Tensor:
    """Routed-experts output ``[tokens, hidden]`` for ``hidden_states`` ``[tokens, hidden]``.

    ``gate_up_proj`` ``[experts, 2 * inter, hidden]`` (gate rows, then up rows) and ``down_proj``
    ``[experts, hidden, inter]``: transformers' concatenated, untransposed layout.
    """
    tokens, hidden = hidden_states.shape
    top_k = top_k_index.shape[-1]
    inter = down_proj.shape[-1]
    kernels = _KERNELS if _KERNELS and hidden_states.is_cuda else build_kernels()
    gate_up_kernel, down_kernel = kernels["gate_up"], kernels["down"]
    x = hidden_states.contiguous()
    ids = top_k_index.reshape(-1).contiguous()
    weights = top_k_weights.reshape(-1).contiguous()
    act = torch.empty(tokens * top_k, inter, dtype=x.dtype, device=x.device)
    gate_up_kernel[(tokens * top_k, triton.cdiv(inter, GATE_UP_BLOCK_ROWS))](
        x, ids, gate_up_proj, act, top_k, gate_up_proj.stride(0), gate_up_proj.stride(1),
        hidden=hidden, inter=inter, BLOCK_ROWS=GATE_UP_BLOCK_ROWS, BLOCK_COLS=BLOCK_COLS)
    out = torch.empty(tokens, hidden, dtype=x.dtype, device=x.device)
    down_kernel[(tokens, triton.cdiv(hidden, DOWN_BLOCK_ROWS))](
        act, ids, weights, down_proj, out, down_proj.stride(0), down_proj.stride(1),
        hidden=hidden, inter=inter, TOP_K=top_k, BLOCK_ROWS=DOWN_BLOCK_ROWS, BLOCK_COLS=BLOCK_COLS)
    return out


def gemv_experts_forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                         top_k_weights: torch.Tensor) -> torch.Tensor:
    """transformers' experts-forward signature over :func:`moe_gemv` (``batched_mm`` where it cannot run)."""
    from transformers.integrations.moe import batched_mm_experts_forward

    gated_silu = getattr(self, "has_gate", True) and not getattr(self, "has_bias", False) \
        and not getattr(self, "is_transposed", False) and getattr(self.config, "hidden_act", "silu") == "silu"
    if not gated_silu or not triton_usable(hidden_states.device):
        return batched_mm_experts_forward(self, hidden_states, top_k_index, top_k_weights)
    return moe_gemv(hidden_states, top_k_index, top_k_weights, self.gate_up_proj, self.down_proj)


@functools.cache
def register() -> str:
    """Register :data:`EXPERTS_IMPLEMENTATION` with transformers (once) and return its name."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    build_kernels()
    ALL_EXPERTS_FUNCTIONS.register(EXPERTS_IMPLEMENTATION, gemv_experts_forward)
    return EXPERTS_IMPLEMENTATION
