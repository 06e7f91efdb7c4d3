"""The incremental no-repeat-n-gram processor bans exactly what transformers' processor bans."""

import pytest
import torch
from transformers import NoRepeatNGramLogitsProcessor

from pytest_dsocr.ngram import IncrementalNoRepeatNGram


@pytest.mark.parametrize("ngram_size, vocab, seed", [(2, 5, 0), (3, 4, 1), (20, 3, 2), (4, 50, 3)])
def test_matches_transformers_step_by_step(ngram_size, vocab, seed):
    generator = torch.Generator().manual_seed(seed)
    # A random period repeated, with random changes in the first ten ids: n-grams recur after them,
    # as in degenerate decodes.
    period = torch.randint(0, vocab, (2, 5), generator=generator)
    ids = period.repeat(1, (2 * ngram_size + 10) // 5 + 1)
    flips = torch.rand(ids.shape, generator=generator) < 0.5
    flips[:, 10:] = False
    ids = torch.where(flips, torch.randint(0, vocab, ids.shape, generator=generator), ids)
    ours, theirs = IncrementalNoRepeatNGram(ngram_size), NoRepeatNGramLogitsProcessor(ngram_size)
    bans = 0
    for length in range(1, ids.shape[1] + 1):
        scores = torch.randn(2, vocab, generator=generator)
        expected = theirs(ids[:, :length], scores.clone())
        got = ours(ids[:, :length], scores.clone())
        assert torch.equal(torch.isinf(got), torch.isinf(expected)), length
        bans += int(torch.isinf(expected).sum())
    assert bans > 0  # the case exercised banning


def test_reads_a_long_prompt_once_then_one_id_per_step():
    prompt = torch.tensor([[1, 2, 3, 1, 2]])
    processor = IncrementalNoRepeatNGram(3)
    scores = processor(prompt, torch.zeros(1, 5))
    assert torch.isinf(scores[0, 3])  # (1, 2) was followed by 3: banned
    assert torch.isfinite(scores[0, [0, 1, 2, 4]]).all()


def test_rejects_a_reused_instance():
    processor = IncrementalNoRepeatNGram(2)
    processor(torch.tensor([[1, 2, 3]]), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="new instance"):
        processor(torch.tensor([[1]]), torch.zeros(1, 4))
