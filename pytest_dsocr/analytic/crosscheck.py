"""Cross-check of the analytic matmul FLOPs against torch's FlopCounterMode on the real modules.

Each stage runs the module the session runs (``model.model.sam_model``, ``vision_model``,
``projector``, ``language_model`` + ``lm_head``) on inputs of the workload's shapes, inside a
``FlopCounterMode``; the count is compared with the stage's ``matmul_flops``. FlopCounterMode
counts mm/bmm/addmm/conv and the CUDA SDPA kernels; this module also registers the CPU flash
SDPA kernel and ``_grouped_mm`` (transformers' default MoE kernel), which stock torch leaves at 0.
On the meta device SDPA decomposes into counted bmm's and nothing is allocated.
"""

from __future__ import annotations

from dataclasses import dataclass

from pytest_dsocr.analytic.model import DeepseekOCRCostModel
from pytest_dsocr.analytic.workload import Workload

CROSSCHECK_STAGES = ("sam", "clip", "projector", "prefill", "decode_step")


@dataclass(frozen=True)
class CrossCheckRow:
    """One stage: analytic matmul FLOPs next to what FlopCounterMode counted."""

    stage: str
    analytic: int
    counted: int

    @property
    def ratio(self) -> float:
        """counted / analytic (1.0 = exact agreement)."""
        return self.counted / self.analytic if self.analytic else float("nan")

    def to_json(self) -> dict:
        return {"stage": self.stage, "analytic_matmul_flops": self.analytic,
                "flop_counter_flops": self.counted, "ratio": self.ratio}


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _grouped_mm_flop(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """``(S, K) @ grouped (G, K, N) -> (S, N)``: every row meets one group's matrix."""
    rows, inner = a_shape[-2], a_shape[-1]
    return 2 * rows * inner * b_shape[-1]


def flop_counter():
    """A silent FlopCounterMode that also counts CPU SDPA and grouped GEMMs."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop}
    if hasattr(aten, "_grouped_mm"):
        mapping[aten._grouped_mm] = _grouped_mm_flop
    return FlopCounterMode(display=False, custom_mapping=mapping)


def count_flops(fn, *args, **kwargs) -> tuple[int, object]:
    """(FLOPs FlopCounterMode counts for ``fn(*args, **kwargs)``, its result)."""
    import torch

    with torch.no_grad(), flop_counter() as counter:
        result = fn(*args, **kwargs)
    return counter.get_total_flops(), result


def measure_stage_flops(model, wl: Workload) -> dict[str, int]:
    """FlopCounterMode counts of each stage of :data:`CROSSCHECK_STAGES` for one workload.

    The vision stages see the global view (batch ``wl.batch``) and, with crops, all tiles in a
    second call; CLIP and the projector get features of the shapes SAM produces. Prefill runs the
    decoder over ``wl.prefill_tokens`` embeddings plus lm_head on the last position; the decode
    step feeds one more token against that cache (context ``prefill_tokens + 1``).
    """
    import torch

    inner = model.model
    param = inner.projector.layers.weight
    device, dtype = param.device, param.dtype
    batch = int(wl.batch)
    crops = int(wl.crops)

    def randn(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    views = [(wl.base_size, batch)] + ([(wl.image_size, batch * crops)] if crops else [])
    counts = {"sam": 0, "clip": 0, "projector": 0}
    for size, n in views:
        flops, sam_out = count_flops(inner.sam_model, randn(n, 3, size, size))
        counts["sam"] += flops
        features = sam_out.last_hidden_state
        flops, clip_out = count_flops(inner.vision_model, None, features)
        counts["clip"] += flops
        q = features.shape[-1]
        projector_in = randn(n, q * q, clip_out.shape[-1] + features.shape[1])
        counts["projector"] += count_flops(inner.projector, projector_in)[0]

    text = inner.language_model
    hidden = text.config.hidden_size
    tokens = int(wl.prefill_tokens)

    def step(embeds, cache):
        out = text(inputs_embeds=embeds, past_key_values=cache, use_cache=True)
        model.lm_head(out.last_hidden_state[:, -1:])
        return out.past_key_values

    counts["prefill"], cache = count_flops(step, randn(batch, tokens, hidden), None)
    counts["decode_step"], _ = count_flops(step, randn(batch, 1, hidden), cache)
    return counts


def crosscheck(model, cost_model: DeepseekOCRCostModel, wl: Workload) -> list[CrossCheckRow]:
    """Analytic vs counted matmul FLOPs per stage for one (scalar) workload."""
    counted = measure_stage_flops(model, wl)
    stages = cost_model.stages(wl)
    return [CrossCheckRow(name, int(stages[name].matmul_flops), int(counted[name]))
            for name in CROSSCHECK_STAGES]


def module_params(model) -> int:
    """Parameter count of the torch module (works on the meta device)."""
    return sum(p.numel() for p in model.parameters())
