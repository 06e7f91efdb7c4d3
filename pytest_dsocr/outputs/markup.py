"""Parse DeepSeek-OCR's grounding markup and clean it into markdown as the vendor does.

A span is ``<|ref|>label<|/ref|><|det|>[[x1, y1, x2, y2], ...]<|/det|>``: a layout label and one
or more boxes on a 0..999 grid, followed by the element's text up to the next span. Pixels are
``int(v / 999 * side)``, the vendor's arithmetic (run_dpsk_ocr_image.py), so 999 is the far edge.

Malformed spans never raise; they are skipped and counted:
- a ``<|ref|>`` not followed by a complete ``label<|/ref|><|det|>...<|/det|>`` (unclosed tags,
  typically output cut by max_new_tokens), or a ``<|det|>`` block with no ``<|ref|>`` before it;
- coordinates that are not a list of 4-number lists, numbers outside 0..999, or x2 < x1 / y2 < y1
  (one bad box skips its whole span). Zero-width boxes are kept.
Unlike the vendor's regular expression, a span's label and box list cannot contain ``<|``, so an
unclosed span never swallows the spans after it.

``clean_text`` follows the vendor's result.mmd: image spans become ``![](images/N.jpg)`` links,
every other complete span is removed, ``\\coloneqq`` / ``\\eqqcolon`` become ``:=`` / ``=:``.
Differences: an image span with several boxes gets one link per box (the vendor writes one link
numbered per span while numbering crops per box, so its links can point at the wrong crop);
an image span with bad coordinates is removed instead of linked to a crop that does not exist;
unclosed spans are left in the text, as the vendor leaves them.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass

GRID_MAX = 999  # the model's box grid runs 0..999 inclusive; the vendor divides by 999, not 1000
IMAGE_LABELS = frozenset({"image"})  # labels whose boxes are cropped to images/N.jpg and linked
# Tokens of the DeepSeek tokenizer that may reach the decoded text (skip_special_tokens=False).
SPECIAL_TOKENS = ("<｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜>", "<｜▁pad▁｜>")
# LaTeX the vendor rewrites in result.mmd (commands most markdown renderers lack)
LATEX_REWRITES = (("\\coloneqq", ":="), ("\\eqqcolon", "=:"))

REF_OPEN = "<|ref|>"
_NO_TAG = r"(?:(?!<\|).)*?"  # anything up to the next tag, never across one
SPAN = re.compile(
    rf"<\|ref\|>(?P<label>{_NO_TAG})<\|/ref\|><\|det\|>(?P<coords>{_NO_TAG})<\|/det\|>", re.DOTALL
)

TAG = re.compile(r"<\|/?(?:ref|det)\|>")

Box = tuple[int, int, int, int]  # x1, y1, x2, y2


@dataclass(frozen=True)
class Span:
    """One well-formed span: label, boxes on the grid and in pixels, and the text after it."""

    label: str
    grid_boxes: tuple[Box, ...]  # as emitted, 0..999
    boxes: tuple[Box, ...]  # in pixels of the page the markup describes
    text: str  # the segment after the span up to the next span, stripped, specials removed
    raw: str  # the span's markup exactly as emitted
    start: int  # offsets of ``raw`` in the parsed text
    end: int

    @property
    def is_image(self) -> bool:
        return self.label in IMAGE_LABELS


@dataclass(frozen=True)
class ParsedMarkup:
    """The spans of one output, in order, and how many malformed spans were skipped."""

    spans: tuple[Span, ...]
    skipped: int
    # raw markup of complete spans whose coordinates were invalid (removed by clean_text)
    invalid: tuple[tuple[int, int], ...] = ()


def to_pixels(box: Box, width: int, height: int) -> Box:
    """Scale one grid box to pixels exactly as the vendor does."""
    x1, y1, x2, y2 = box
    return (
        int(x1 / GRID_MAX * width),
        int(y1 / GRID_MAX * height),
        int(x2 / GRID_MAX * width),
        int(y2 / GRID_MAX * height),
    )


def parse_markup(text: str, width: int, height: int) -> ParsedMarkup:
    """All spans of ``text`` with boxes scaled to a ``width`` x ``height`` page."""
    starts = [m.start() for m in re.finditer(re.escape(REF_OPEN), text)]
    ends = starts[1:] + [len(text)]  # a span's text runs to the next <|ref|>, good or bad
    spans: list[Span] = []
    invalid: list[tuple[int, int]] = []
    skipped = 0
    for start, next_start in zip(starts, ends):
        match = SPAN.match(text, start)
        if match is None:
            skipped += 1
            continue
        grid_boxes = _parse_boxes(match.group("coords"))
        if grid_boxes is None:
            skipped += 1
            invalid.append((match.start(), match.end()))
            continue
        spans.append(
            Span(
                label=match.group("label").strip(),
                grid_boxes=grid_boxes,
                boxes=tuple(to_pixels(box, width, height) for box in grid_boxes),
                text=remove_special_tokens(text[match.end():next_start]).strip(),
                raw=match.group(0),
                start=match.start(),
                end=match.end(),
            )
        )
    skipped += _orphan_box_lists(text)
    return ParsedMarkup(spans=tuple(spans), skipped=skipped, invalid=tuple(invalid))


def _orphan_box_lists(text: str) -> int:
    """``<|det|>`` tags not inside a ``<|ref|>`` span (those are counted with their span)."""
    orphans, previous = 0, None
    for match in TAG.finditer(text):
        tag = match.group(0)
        if tag == "<|det|>" and previous not in ("<|ref|>", "<|/ref|>"):
            orphans += 1
        previous = tag
    return orphans


def _parse_boxes(coords: str) -> tuple[Box, ...] | None:
    try:
        value = ast.literal_eval(coords.strip())
    except Exception:  # SyntaxError, ValueError, MemoryError, RecursionError on garbage
        return None
    if not isinstance(value, (list, tuple)) or not value:
        return None
    boxes = []
    for box in value:
        if not isinstance(box, (list, tuple)) or len(box) != 4:
            return None
        if not all(_is_grid_number(v) for v in box):
            return None
        x1, y1, x2, y2 = box
        if x2 < x1 or y2 < y1:
            return None
        boxes.append(tuple(box))
    return tuple(boxes)


def _is_grid_number(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= GRID_MAX
    )


def remove_special_tokens(text: str) -> str:
    """``text`` without the tokenizer's special tokens (end of sentence and the like)."""
    for token in SPECIAL_TOKENS:
        text = text.replace(token, "")
    return text


def image_links(parsed: ParsedMarkup) -> dict[int, list[int]]:
    """Crop numbers of each image span, keyed by the span's start: 0, 1, ... over all image boxes."""
    links: dict[int, list[int]] = {}
    counter = 0
    for span in parsed.spans:
        if span.is_image:
            links[span.start] = list(range(counter, counter + len(span.boxes)))
            counter += len(span.boxes)
    return links


def clean_text(text_raw: str, strip_special_tokens: bool = False, parsed: ParsedMarkup | None = None) -> str:
    """The vendor's result.mmd text for ``text_raw`` (see the module docstring).

    ``parsed`` saves a second parse when the caller already has ``parse_markup(text_raw, ...)``.
    """
    if parsed is None:  # the page size only affects pixel boxes, which cleaning does not use
        parsed = parse_markup(text_raw, width=GRID_MAX, height=GRID_MAX)
    links = image_links(parsed)
    replacements = [(s.start, s.end, _links_markdown(links[s.start]) if s.is_image else "") for s in parsed.spans]
    replacements += [(start, end, "") for start, end in parsed.invalid]
    pieces, position = [], 0
    for start, end, replacement in sorted(replacements):
        pieces.append(text_raw[position:start])
        pieces.append(replacement)
        position = end
    pieces.append(text_raw[position:])
    cleaned = "".join(pieces)
    for old, new in LATEX_REWRITES:
        cleaned = cleaned.replace(old, new)
    return remove_special_tokens(cleaned) if strip_special_tokens else cleaned


def _links_markdown(numbers: list[int]) -> str:
    return "".join(f"![](images/{n}.jpg)\n" for n in numbers)
