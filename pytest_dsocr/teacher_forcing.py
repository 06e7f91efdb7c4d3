"""Teacher-forced parity: two inference paths fed the same tokens, their logits compared per step.

Comparing greedy tokens is a poor test on random weights: their logits are flat, so a rounding
difference anywhere flips an argmax and every later token differs, though both paths compute the
same function. Teacher forcing feeds both paths the reference path's tokens, so each step sees
the same prefix whatever either would have chosen, and compares the raw logits (before the
n-gram ban) step by step:

- ``max |Δlogit|`` per step, relative to that step's reference logit range (max - min), so the
  figure means the same for trained and random weights;
- top-1 agreement: the share of steps whose two argmaxes agree.

A path agrees when the largest relative difference is within the tolerance of the dtype
(:data:`TOLERANCES`: bf16 keeps 8 bits of mantissa, 2^-8 = 0.4 % per value, and a 12-layer
decoder with different reduction orders lands within a few percent of the range).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from pytest_dsocr.decoding import DecodePolicy
from pytest_dsocr.engine import Engine
from pytest_dsocr.records import Sample

# Largest per-step max |Δlogit| / logit range two paths may show and still compute the same
# function: float32 differs only in reduction order (~1e-6 of the range); bf16/fp16 in rounding.
TOLERANCES = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 2e-2}
# Steps whose argmax must agree for a path to count as the same greedy decoder (flat random
# logits leave near-ties, which a difference within tolerance may still flip).
TOP1_AGREEMENT_GOAL = 0.9


@dataclass(frozen=True)
class TeacherForcedParity:
    """Per-step logit comparison of a candidate path against a reference path on the same tokens."""

    steps: int
    max_abs: float  # largest |Δlogit| over every step and vocabulary entry
    max_rel: float  # largest per-step max |Δlogit| / reference logit range
    median_rel: float
    top1_agreement: float  # share of steps whose argmaxes agree
    first_top1_mismatch: int | None
    tolerance: float
    per_step_rel: tuple[float, ...] = ()

    @property
    def within_tolerance(self) -> bool:
        return self.max_rel <= self.tolerance

    @property
    def agrees(self) -> bool:
        """Within the dtype's tolerance and agreeing on the argmax at :data:`TOP1_AGREEMENT_GOAL` of the steps."""
        return self.within_tolerance and self.top1_agreement >= TOP1_AGREEMENT_GOAL

    def to_json(self) -> dict:
        data = asdict(self)
        data.update(within_tolerance=self.within_tolerance, agrees=self.agrees)
        return data


def tolerance_for(dtype: torch.dtype) -> float:
    return TOLERANCES.get(dtype, TOLERANCES[torch.float32])


def compare_logits(reference: torch.Tensor, candidate: torch.Tensor, dtype: torch.dtype) -> TeacherForcedParity:
    """Compare ``[steps, vocab]`` logits of two paths on the same forced tokens."""
    if reference.shape != candidate.shape:
        raise ValueError(f"logits differ in shape: {tuple(reference.shape)} vs {tuple(candidate.shape)}")
    reference, candidate = reference.float().cpu(), candidate.float().cpu()
    diff = (reference - candidate).abs()
    span = (reference.max(dim=-1).values - reference.min(dim=-1).values).clamp(min=torch.finfo(torch.float32).tiny)
    rel = diff.max(dim=-1).values / span
    agree = reference.argmax(dim=-1) == candidate.argmax(dim=-1)
    mismatches = (~agree).nonzero()
    per_step = tuple(float(v) for v in rel)
    return TeacherForcedParity(
        steps=int(reference.shape[0]), max_abs=float(diff.max()), max_rel=float(rel.max()),
        median_rel=statistics.median(per_step), top1_agreement=float(agree.float().mean()),
        first_top1_mismatch=int(mismatches[0, 0]) if len(mismatches) else None,
        tolerance=tolerance_for(dtype), per_step_rel=per_step,
    )


def _host_copy(logits: torch.Tensor) -> torch.Tensor:
    # A copy, never a view: graph replays overwrite their output buffers in place.
    return logits.to(device="cpu", dtype=torch.float32, copy=True)


def forced_logits(adapter, prepared, tokens: Sequence[int]) -> torch.Tensor:
    """float32 logits ``[len(tokens), vocab]`` (on the host) of ``adapter``'s path fed ``tokens``.

    Row 0 is the prefill's last position (what chose ``tokens[0]``); row i the step fed
    ``tokens[i - 1]``. The decode runs on the adapter's own backend: the eager loop, the static
    cache's graph, or the in-graph selection graph (fed the forced ids in place of its choices).
    """
    return forced_logits_batch(adapter, [prepared], [tokens])[0]


def forced_logits_batch(adapter, prepared: Sequence, tokens: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """:func:`forced_logits` of several pages decoded together as one batch (one page: alone)."""
    steps = max(len(t) for t in tokens)
    if steps < 1:
        raise ValueError("teacher forcing needs at least one token per page")
    # Shorter rows repeat their last id (their extra logits are dropped).
    padded = [list(t) + [t[-1]] * (steps - len(t)) for t in tokens]
    device = adapter.device
    with torch.inference_mode():
        if len(prepared) == 1:
            logits, cache = adapter.prefill(prepared[0], adapter.encode_images(prepared[0]))
            layout = None
        else:
            embeds = adapter.encode_images_batch(list(prepared))
            logits, cache, layout = adapter.prefill_batch(
                [adapter.prompt_embeds(p, e) for p, e in zip(prepared, embeds)])
        rows = [_host_copy(logits)]
        prompt_len = int(prepared[0].input_ids.shape[1])
        begin = getattr(adapter, "begin_decode", None)
        if begin is not None and layout is None:
            cache = begin(cache, prompt_len, steps)
        forced = torch.tensor(padded, dtype=torch.long, device=device)  # [batch, steps]
        with adapter.decode_context():
            if getattr(adapter, "selects_in_graph", False) and layout is None:
                rows.extend(_graph_steps(adapter, cache, prepared, forced, steps))
            else:
                for index in range(steps - 1):
                    step = adapter.decode_step_batch(forced[:, index], cache, layout)
                    rows.append(_host_copy(step))
    stacked = torch.stack(rows, dim=1)  # [batch, steps, vocab]
    return [stacked[row, : len(t)] for row, t in enumerate(tokens)]


def _graph_steps(adapter, cache, prepared: Sequence, forced: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """The in-graph decoder's logits with the forced ids written over its own choices."""
    batch = forced.shape[0]
    prompt_len = int(prepared[0].input_ids.shape[1])
    seen = torch.zeros((batch, prompt_len + 1), dtype=torch.long, device=adapter.device)
    for row, p in enumerate(prepared):
        seen[row, :prompt_len] = p.input_ids[0]
    seen[:, prompt_len] = forced[:, 0]
    adapter.begin_selection(cache, seen, prompt_len + 1, prompt_len, forced[:, 0], None, adapter.eos_token_id, 0)
    per_replay = cache.steps_per_replay
    rows: list[torch.Tensor] = []
    start = 1
    while len(rows) < steps - 1:
        chunk = forced[:, start: start + per_replay]
        if chunk.shape[1] < per_replay:  # the last replay: fill with the last id (its logits dropped)
            chunk = torch.cat([chunk, forced[:, -1:].expand(batch, per_replay - chunk.shape[1])], dim=1)
        adapter.next_tokens(cache, forced=chunk)
        logits = cache.chunk_logits  # [steps per replay, batch, vocab]
        rows.extend(_host_copy(logits[index]) for index in range(per_replay))
        start += per_replay
    return rows[: steps - 1]


def reference_tokens(adapter, policy: DecodePolicy, sample: Sample, max_new_tokens: int,
                     min_new_tokens: int = 0) -> list[int]:
    """The tokens ``adapter``'s own engine path generates for ``sample`` (the ids to force)."""
    return list(Engine(adapter, policy, max_new_tokens, min_new_tokens=min_new_tokens).run(
        sample, instrument=False).token_ids)


def teacher_forced_parity(reference, candidate, sample: Sample, tokens: Sequence[int]) -> TeacherForcedParity:
    """``candidate``'s logits against ``reference``'s on ``tokens`` for one page (same preprocessing)."""
    prepared = reference.prepare(reference.load_pixels(sample.image_path) if hasattr(reference, "load_pixels")
                                 else reference.load(sample.image_path))
    want = forced_logits(reference, prepared, tokens)
    got = forced_logits(candidate, prepared, tokens)
    return compare_logits(want, got, getattr(reference, "dtype", torch.float32))
