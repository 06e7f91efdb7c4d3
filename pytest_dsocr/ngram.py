"""An incremental no-repeat-n-gram logits processor, exactly equivalent to transformers' own.

transformers' NoRepeatNGramLogitsProcessor rebuilds the table of every n-gram of the whole
sequence at each step: a host copy of all ids and O(sequence x n) Python work per token
(about a millisecond at DeepSeek-OCR's ~1,000-token prompts, as long as a whole decode step on
a GPU). This one keeps the table between steps and reads only the ids added since the last
call, so a step costs O(n). It bans the same tokens: the next token may not complete an n-gram
that already occurs in the sequence.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor


class IncrementalNoRepeatNGram(LogitsProcessor):
    """Use one instance per generation (it remembers the sequence it has seen)."""

    def __init__(self, ngram_size: int) -> None:
        if not isinstance(ngram_size, int) or ngram_size <= 0:
            raise ValueError(f"ngram_size must be a positive integer, got {ngram_size!r}")
        self.ngram_size = ngram_size
        self._tokens: list[list[int]] = []
        self._table: list[dict[tuple[int, ...], list[int]]] = []

    def _extend(self, row: int, new_ids: list[int]) -> None:
        tokens, table, n = self._tokens[row], self._table[row], self.ngram_size
        for token in new_ids:
            tokens.append(token)
            if len(tokens) >= n:
                prefix = tuple(tokens[-n:-1])
                table.setdefault(prefix, []).append(token)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        batch, length = input_ids.shape
        if not self._tokens:
            self._tokens = [[] for _ in range(batch)]
            self._table = [{} for _ in range(batch)]
        seen = len(self._tokens[0])
        if length < seen:
            raise ValueError("IncrementalNoRepeatNGram saw a shorter sequence: use a new instance per generation")
        if length > seen:
            new = input_ids[:, seen:].tolist()  # only the ids added since the last call
            for row in range(batch):
                self._extend(row, new[row])
        n = self.ngram_size
        if length + 1 < n:
            return scores
        scores_processed = scores
        for row in range(batch):
            banned = self._table[row].get(tuple(self._tokens[row][length + 1 - n:]))
            if banned:
                if scores_processed is scores:
                    scores_processed = scores.clone()
                scores_processed[row, banned] = -float("inf")
        return scores_processed


def first_repeated_ngram(ids: list[int], ngram_size: int, start: int = 0) -> int | None:
    """Index of the first token at or after ``start`` that completes an n-gram seen earlier in ``ids``.

    That token is one the n-gram ban (transformers' processor, and :class:`IncrementalNoRepeatNGram`)
    would forbid there, so greedy decoding with that ban can never produce ``ids``; None when
    there is no such token.
    """
    seen: set[tuple[int, ...]] = set()
    for end in range(ngram_size, len(ids) + 1):
        gram = tuple(ids[end - ngram_size:end])
        if gram in seen and end - 1 >= start:
            return end - 1
        seen.add(gram)
    return None
