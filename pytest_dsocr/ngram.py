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


def ban_repeated_ngrams(scores: torch.Tensor, seen: torch.Tensor, length: torch.Tensor, ngram_size: int) -> torch.Tensor:
    """The same ban as :class:`IncrementalNoRepeatNGram`, as tensor ops with no host value.

    ``seen`` [batch, capacity] holds each row's ids (prompt and generated) in its first
    ``length[row]`` places; what lies beyond is ignored. ``length`` is a device tensor [batch],
    so the ban can run inside a captured CUDA graph: every shape is fixed by ``capacity``, and
    every window ``seen[i : i + n]`` is compared with the row's last ``n - 1`` ids at once
    (O(capacity x n) element compares per step, a few microseconds on a GPU). Returns new scores
    with the banned ids at -inf.
    """
    n = ngram_size
    batch, capacity = seen.shape
    vocab = scores.shape[-1]
    if capacity < n:  # no n-gram fits in the buffer
        return scores
    windows = seen.unfold(1, n, 1)  # [batch, capacity - n + 1, n]: every n-gram start
    offsets = torch.arange(n - 1, device=seen.device)
    suffix_at = (length.view(batch, 1) - (n - 1) + offsets).clamp(min=0)
    suffix = seen.gather(1, suffix_at)  # [batch, n - 1]: the row's last n - 1 ids
    match = (windows[:, :, : n - 1] == suffix.unsqueeze(1)).all(dim=-1)
    starts = torch.arange(windows.shape[1], device=seen.device)
    # An n-gram counts when it lies wholly in the sequence (start <= length - n); none before
    # the sequence holds n - 1 ids, exactly as transformers' processor.
    match &= starts.view(1, -1) <= (length.view(batch, 1) - n)
    banned = torch.where(match, windows[:, :, n - 1], vocab)  # vocab = a spare column for "no ban"
    mask = torch.zeros(batch, vocab + 1, dtype=torch.bool, device=scores.device)
    mask.scatter_(1, banned, True)
    return scores.masked_fill(mask[:, :vocab], -float("inf"))


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
