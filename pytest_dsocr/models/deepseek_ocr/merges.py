"""BPE merges of the offline tokenizer, learned from the bundled pages' ground truth.

Without merges the offline tokenizer spends one token per byte: a bundled page's ~2,000 bytes
of markup would take ~2,000 decode steps. The tiny vocabulary has ~750 ids to spare, so the
offline tokenizer turns them into merges learned here, deterministically, from the ground-truth
corpus (the ``.mmd`` files beside the bundled pages): a page then costs a few hundred tokens.

Learning is plain byte-level BPE over the text between the markup tokens, with no further
splitting (so a merge may span a space: frequent phrases become one token). Each step merges the
most frequent adjacent pair; ties go to the lexicographically smallest pair, so the list depends
only on the corpus. Pairs seen fewer than :data:`MIN_PAIR_COUNT` times are never merged.

The list ships as ``merges.txt`` beside this module (one ``left right`` pair per line, in the
byte-level alphabet where a space is ``Ġ`` and a newline ``Ċ``); regenerate it with

    python -m pytest_dsocr.models.deepseek_ocr.merges
"""

from __future__ import annotations

import functools
import re
import sys
from collections import Counter
from pathlib import Path

from pytest_dsocr.errors import DsocrError

MERGES_FILE = Path(__file__).resolve().parent / "merges.txt"
VERSION_PREFIX = "#version:"  # the first line of a merges.txt, as tokenizers writes it
HEADER = f"{VERSION_PREFIX} pytest-dsocr offline tokenizer merges, learned from the bundled pages' ground truth"
# Merges to learn: enough to fill every spare id of the tiny vocabulary (1024 ids - 3 specials -
# 256 bytes - 10 markup tokens = 755).
MAX_MERGES = 755
MIN_PAIR_COUNT = 2  # a pair seen once saves nothing on the corpus


def byte_alphabet() -> dict[int, str]:
    """The byte-level alphabet: printable bytes map to themselves, the rest to unused code points.

    This is the mapping ``tokenizers``' ByteLevel pre-tokenizer and decoder use, so a vocab
    written in it decodes back to the original bytes.
    """
    printable = [
        *range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)
    ]
    mapping = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping


def split_at_tokens(text: str, tokens: tuple[str, ...]) -> list[str]:
    """The pieces of ``text`` between occurrences of ``tokens`` (added tokens never take part in merges)."""
    if not tokens:
        return [text] if text else []
    pattern = "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True))
    return [piece for piece in re.split(pattern, text) if piece]


def learn_merges(texts: list[str], split_tokens: tuple[str, ...], max_merges: int = MAX_MERGES) -> list[tuple[str, str]]:
    """Byte-level BPE merges of ``texts``, most useful first (see the module doc for the rules)."""
    alphabet = byte_alphabet()
    words: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        for piece in split_at_tokens(text, split_tokens):
            words[tuple(alphabet[b] for b in piece.encode("utf-8"))] += 1
    sequences = [list(word) for word in sorted(words)]
    counts = [words[word] for word in sorted(words)]
    pairs: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = {}  # pair -> sequences holding it (may hold stale ones)
    for index, (symbols, count) in enumerate(zip(sequences, counts)):
        _count_pairs(symbols, count, index, pairs, where)
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges and pairs:
        best_count = max(pairs.values())
        if best_count < MIN_PAIR_COUNT:
            break
        best = min(pair for pair, count in pairs.items() if count == best_count)
        merges.append(best)
        for index in sorted(where.pop(best, ())):  # only the sequences holding the pair change
            symbols, count = sequences[index], counts[index]
            _count_pairs(symbols, -count, None, pairs, where)
            _merge_in_place(symbols, best)
            _count_pairs(symbols, count, index, pairs, where)
        pairs = +pairs  # drop pairs that no longer occur
    return merges


def _count_pairs(symbols: list[str], count: int, index: int | None, pairs: Counter, where: dict) -> None:
    for pair in zip(symbols, symbols[1:]):
        pairs[pair] += count
        if index is not None:
            where.setdefault(pair, set()).add(index)


def _merge_in_place(symbols: list[str], pair: tuple[str, str]) -> None:
    left, right = pair
    i = 0
    while i < len(symbols) - 1:
        if symbols[i] == left and symbols[i + 1] == right:
            symbols[i:i + 2] = [left + right]
        i += 1


def format_merges(merges: list[tuple[str, str]]) -> str:
    return HEADER + "\n" + "".join(f"{left} {right}\n" for left, right in merges)


@functools.lru_cache(maxsize=None)
def load_merges(path: Path = MERGES_FILE) -> tuple[tuple[str, str], ...]:
    """The shipped merge list; DsocrError naming the file when it is missing or malformed."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DsocrError(f"cannot read the tokenizer merges {path} ({exc}); reinstall pytest-dsocr or "
                         "regenerate them with python -m pytest_dsocr.models.deepseek_ocr.merges") from exc
    if not lines or not lines[0].startswith(VERSION_PREFIX):
        raise DsocrError(f"{path}: the first line must be the {VERSION_PREFIX!r} header")
    merges = []
    for number, line in enumerate(lines[1:], start=2):  # a merge may start with "#": only line 1 is a header
        if not line:
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise DsocrError(f"{path}:{number}: expected 'LEFT RIGHT', got {line!r}")
        merges.append((parts[0], parts[1]))
    return tuple(merges)


def bundled_corpus() -> list[str]:
    """The ground truth of every bundled page, in page order."""
    from pytest_dsocr.data.groundtruth import read_truth_markup
    from pytest_dsocr.data.pages import bundled_pages

    return [read_truth_markup(page) for page in bundled_pages()]


def learn_bundled_merges() -> list[tuple[str, str]]:
    """The merges the offline tokenizer uses, learned from the bundled ground truth."""
    from pytest_dsocr.models.deepseek_ocr.tokenizer import SPLIT_TOKENS

    return learn_merges(bundled_corpus(), SPLIT_TOKENS)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or (args and args[0] in ("-h", "--help")):
        print("usage: python -m pytest_dsocr.models.deepseek_ocr.merges [OUT_FILE]", file=sys.stderr)
        return 2
    out = Path(args[0]) if args else MERGES_FILE
    merges = learn_bundled_merges()
    out.write_text(format_merges(merges), encoding="utf-8")
    print(f"{out}: {len(merges)} merges")
    return 0


if __name__ == "__main__":
    sys.exit(main())
