"""The offline tokenizer's merges: learned deterministically from the bundled ground truth, shipped,
and what they buy (tokens per page)."""

from __future__ import annotations

import pytest

from pytest_dsocr.data.groundtruth import read_truth_markup
from pytest_dsocr.data.pages import bundled_pages
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.models.deepseek_ocr import merges
from pytest_dsocr.models.deepseek_ocr.spec import FULL, TINY
from pytest_dsocr.models.deepseek_ocr.tokenizer import SPLIT_TOKENS, build_offline_tokenizer

# A bundled page costs one token per byte without merges; with them, at most this share of that.
MAX_TOKENS_PER_BYTE = 0.25


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return [read_truth_markup(page) for page in bundled_pages()]


def test_shipped_merges_are_the_ones_learned_from_the_ground_truth(corpus):
    learned = merges.learn_merges(corpus, SPLIT_TOKENS)
    assert tuple(learned) == merges.load_merges()
    assert len(learned) <= merges.MAX_MERGES


def test_learning_is_deterministic_and_prefers_frequent_pairs():
    texts = ["abab abab", "ab"]
    first = merges.learn_merges(texts, ())
    assert first == merges.learn_merges(list(texts), ())
    assert first[0] == ("a", "b")  # 5 times, more than any other pair
    assert merges.learn_merges(["xy<|ref|>xy"], ("<|ref|>",)) == [("x", "y")]  # never across a split token
    assert merges.learn_merges(["abcd"], ()) == []  # pairs seen once are not merged


def test_every_page_round_trips_in_a_fraction_of_its_bytes(corpus):
    tiny, full = build_offline_tokenizer(TINY), build_offline_tokenizer(FULL)
    for text in corpus:
        ids = tiny.encode(text, add_special_tokens=False)
        assert tiny.decode(ids) == text
        assert len(ids) <= MAX_TOKENS_PER_BYTE * len(text.encode("utf-8"))
        # both sizes split a text into the same tokens (their markup ids differ)
        assert full.convert_ids_to_tokens(full.encode(text, add_special_tokens=False)) == tiny.convert_ids_to_tokens(ids)


def test_merges_use_spare_ids_only():
    tokenizer = build_offline_tokenizer(TINY)
    vocab = tokenizer.get_vocab()
    assert len(vocab) == TINY.text.vocab_size == len(set(vocab.values()))
    assert vocab["<|ref|>"] == TINY.image_token_id + 1 and vocab["Ġ"] == 3 + ord(" ")
    merged = {"".join(pair) for pair in merges.load_merges()}
    assert all(259 <= vocab[token] < TINY.image_token_id or vocab[token] >= TINY.image_token_id + 10
               for token in merged)


def test_malformed_merges_file_is_named(tmp_path):
    bad = tmp_path / "merges.txt"
    bad.write_text(f"{merges.HEADER}\na b c\n")
    with pytest.raises(DsocrError, match=r"merges\.txt:2: expected 'LEFT RIGHT'"):
        merges.load_merges.__wrapped__(bad)
    (tmp_path / "headless.txt").write_text("a b\n")
    with pytest.raises(DsocrError, match="header"):
        merges.load_merges.__wrapped__(tmp_path / "headless.txt")
    with pytest.raises(DsocrError, match="cannot read the tokenizer merges"):
        merges.load_merges.__wrapped__(tmp_path / "missing.txt")


def test_a_merge_line_may_start_with_a_hash():
    assert ("#", "Ġ") in merges.load_merges()  # markdown headings: "# " is a merge, not a comment
