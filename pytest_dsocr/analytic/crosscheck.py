"""Cross-check of the analytic matmul FLOPs against torch's FlopCounterMode on the real modules.

Each stage runs the module the session runs (``model.model.sam_model``, ``vision_model``,
``projector``, ``language_model`` + ``lm_head``) on inputs of the workload's shapes, inside a
``FlopCounterMode``; the count is compared with the stage's ``matmul_flops``. FlopCounterMode
counts mm/bmm/addmm/conv and the CUDA SDPA kernels; this module also registers the CPU flash
SDPA kernel and ``_grouped_mm`` (transformers' default MoE kernel), which stock torch leaves at 0.
On the meta device SDPA decomposes into counted bmm's and nothing is allocated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_dsocr.analytic.family import crosscheck_stages
from pytest_dsocr.compat import cache_kwargs, output_cache
from pytest_dsocr.analytic.model import DeepseekOCRCostModel
from pytest_dsocr.analytic.workload import Workload

CROSSCHECK_STAGES = crosscheck_stages("deepseek_ocr")


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


def count_stage_flops(model, wl: Workload, param, count_view: Callable[..., dict[str, int]]) -> dict[str, int]:
    """FlopCounterMode counts of the vision parts, prefill and the first decode step.

    The vision tower sees the global view (batch ``wl.batch``) and, with crops, all tiles in a
    second call: ``count_view(size, n, randn)`` counts one call on ``n`` views of ``size`` px per
    vision part, ``randn(*shape)`` making inputs on the device and dtype of ``param``. Prefill
    runs the decoder (``model.model.language_model``) over ``wl.prefill_tokens`` embeddings plus
    lm_head on the last position; the decode step feeds one more token against that cache
    (context ``prefill_tokens + 1``).
    """
    import torch

    inner = model.model
    device, dtype = param.device, param.dtype
    batch = int(wl.batch)
    crops = int(wl.crops)

    def randn(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    views = [(wl.base_size, batch)] + ([(wl.image_size, batch * crops)] if crops else [])
    counts: dict[str, int] = {}
    for size, n in views:
        for name, flops in count_view(size, n, randn).items():
            counts[name] = counts.get(name, 0) + flops

    text = inner.language_model
    hidden = text.config.hidden_size
    tokens = int(wl.prefill_tokens)

    def step(embeds, cache):
        out = text(inputs_embeds=embeds, use_cache=True, **cache_kwargs(cache))
        model.lm_head(out.last_hidden_state[:, -1:])
        return output_cache(out)

    counts["prefill"], cache = count_flops(step, randn(batch, tokens, hidden), None)
    counts["decode_step"], _ = count_flops(step, randn(batch, 1, hidden), cache)
    return counts


def measure_stage_flops(model, wl: Workload) -> dict[str, int]:
    """FlopCounterMode counts of each stage of :data:`CROSSCHECK_STAGES` for one workload
    (see :func:`count_stage_flops`): CLIP and the projector get features of the shapes SAM
    produces."""
    inner = model.model

    def view(size: int, n: int, randn) -> dict[str, int]:
        sam_flops, sam_out = count_flops(inner.sam_model, randn(n, 3, size, size))
        features = sam_out.last_hidden_state
        clip_flops, clip_out = count_flops(inner.vision_model, None, features)
        q = features.shape[-1]
        projector_in = randn(n, q * q, clip_out.shape[-1] + features.shape[1])
        return {"sam": sam_flops, "clip": clip_flops, "projector": count_flops(inner.projector, projector_in)[0]}

    return count_stage_flops(model, wl, inner.projector.layers.weight, view)


def crosscheck(model, cost_model: DeepseekOCRCostModel, wl: Workload, *,
               measure: Callable[[Any, Workload], dict[str, int]] = measure_stage_flops,
               stages: Sequence[str] = CROSSCHECK_STAGES) -> list[CrossCheckRow]:
    """Analytic vs counted matmul FLOPs per stage for one (scalar) workload; ``measure`` and
    ``stages`` are the model family's (v1's by default)."""
    counted = measure(model, wl)
    costs = cost_model.stages(wl)
    return [CrossCheckRow(name, int(costs[name].matmul_flops), int(counted[name])) for name in stages]


def module_params(model) -> int:
    """Parameter count of the torch module (works on the meta device)."""
    return sum(p.numel() for p in model.parameters())
