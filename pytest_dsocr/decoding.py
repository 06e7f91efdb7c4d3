"""Decode policy shared by every stage, and the token budget of ``max_new_tokens``.

Every stage decodes with one frozen :class:`DecodePolicy`: the engine's own loop and the
reference ``model.generate`` call get their settings from it, so the two can only differ in
the loop itself. No extra stop criteria: only EOS or the token budget ends a decode, so
vendor markup is never cut early.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper
from transformers import TopKLogitsWarper, TopPLogitsWarper

from pytest_dsocr.errors import DsocrError
from pytest_dsocr.ngram import IncrementalNoRepeatNGram

log = logging.getLogger(__name__)

# Used for max_new_tokens=inf when the model config bounds no context length.
FALLBACK_MAX_NEW_TOKENS = 4096
INF_TOKENS = "inf"


def parse_max_new_tokens(value: Any, key: str = "infer.max_new_tokens") -> int | None:
    """An integer >= 1, or None for the string "inf" (any case): decode until EOS."""
    if isinstance(value, bool):
        raise DsocrError(f"{key}={value!r}: expected an integer >= 1 or 'inf'")
    if isinstance(value, int):
        if value < 1:
            raise DsocrError(f"{key}={value}: must be >= 1 (or 'inf' to decode until EOS)")
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == INF_TOKENS:
            return None
        if text.isdigit():
            return parse_max_new_tokens(int(text), key)
    raise DsocrError(f"{key}={value!r}: expected an integer >= 1 or 'inf'")


def token_budget(max_new_tokens: int | None, prompt_len: int, max_positions: int | None) -> int:
    """How many tokens one decode may produce: the cap, never past the model's context limit."""
    if max_positions is None:
        ceiling = None
    else:
        ceiling = max(max_positions - prompt_len, 1)
    if max_new_tokens is None:
        if ceiling is None:
            log.warning(
                "max_new_tokens=inf and the model config bounds no context length: "
                "using FALLBACK_MAX_NEW_TOKENS=%d", FALLBACK_MAX_NEW_TOKENS,
            )
            return FALLBACK_MAX_NEW_TOKENS
        return ceiling
    return max_new_tokens if ceiling is None else min(max_new_tokens, ceiling)


@dataclass(frozen=True)
class DecodePolicy:
    """Greedy by default (temperature 0), as the vendor decodes."""

    eos_token_id: int
    no_repeat_ngram_size: int = 20
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int = 0

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0.0

    def logits_processors(self) -> LogitsProcessorList:
        """Fresh processors for one generation (the n-gram ban keeps state between steps)."""
        processors = LogitsProcessorList()
        if self.no_repeat_ngram_size and self.no_repeat_ngram_size > 0:
            # Bans exactly what transformers' NoRepeatNGramLogitsProcessor (used by generate) bans,
            # at O(n) instead of O(sequence x n) per step.
            processors.append(IncrementalNoRepeatNGram(self.no_repeat_ngram_size))
        if self.do_sample:
            processors.append(TemperatureLogitsWarper(self.temperature))
            if self.top_k is not None:
                processors.append(TopKLogitsWarper(self.top_k))
            if self.top_p is not None:
                processors.append(TopPLogitsWarper(self.top_p))
        return processors

    def generate_kwargs(self) -> dict[str, Any]:
        """The same policy as ``model.generate`` keyword arguments."""
        kwargs: dict[str, Any] = {
            "do_sample": self.do_sample,
            "eos_token_id": self.eos_token_id,
            "no_repeat_ngram_size": self.no_repeat_ngram_size or None,
        }
        if self.do_sample:
            kwargs["temperature"] = self.temperature
            if self.top_k is not None:
                kwargs["top_k"] = self.top_k
            if self.top_p is not None:
                kwargs["top_p"] = self.top_p
        else:
            # Explicit so a checkpoint's generation_config cannot switch on sampling or filters.
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs

    def select(self, input_ids: torch.Tensor, logits: torch.Tensor, processors: LogitsProcessorList,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Next token ids [batch] from float32 last-position logits [batch, vocab]."""
        scores = processors(input_ids, logits)
        if self.do_sample:
            probs = torch.softmax(scores, dim=-1)
            return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
        return torch.argmax(scores, dim=-1)
