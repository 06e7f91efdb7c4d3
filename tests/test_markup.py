"""Vendor markup: span parsing, 0..999 grid scaling, malformed spans, result.mmd cleaning."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pytest_dsocr.outputs.markup import (
    GRID_MAX,
    SPECIAL_TOKENS,
    clean_text,
    parse_markup,
    to_pixels,
)

MARKUP = Path(__file__).parent / "data" / "markup"
EOS = SPECIAL_TOKENS[0]


def fixture_text(name: str) -> str:
    return (MARKUP / f"{name}.txt").read_text(encoding="utf-8")


def span(label: str, coords: str) -> str:
    return f"<|ref|>{label}<|/ref|><|det|>{coords}<|/det|>"


@pytest.mark.parametrize(
    "name,labels,skipped",
    [
        ("portrait_report", ["title", "text", "sub_title", "text", "table", "table_caption", "image",
                             "image_caption", "sub_title", "text", "text"], 0),
        ("two_column_paper", ["title", "text", "sub_title", "text", "equation", "image", "image_caption",
                              "image", "image_caption", "table_caption", "table", "text"], 0),
        ("receipt", ["title", "text", "table", "sub_title", "text"], 0),
        ("malformed", ["title", "image", "text"], 8),
        ("no_spans", [], 0),
    ],
)
def test_fixtures_parse(name, labels, skipped):
    parsed = parse_markup(fixture_text(name), 1000, 1400)
    assert [s.label for s in parsed.spans] == labels
    assert parsed.skipped == skipped


def test_several_boxes_per_span():
    parsed = parse_markup(fixture_text("two_column_paper"), 999, 999)
    abstract = parsed.spans[3]
    assert abstract.grid_boxes == ((52, 162, 480, 402), (520, 140, 948, 260))
    assert abstract.boxes == abstract.grid_boxes  # a 999 x 999 page maps the grid 1:1
    assert len(parsed.spans[7].boxes) == 2  # figure 2 (a) and (b)


def test_text_is_the_segment_up_to_the_next_span():
    parsed = parse_markup(fixture_text("portrait_report"), 900, 1273)
    assert parsed.spans[0].text == "# Quarterly Throughput Report"
    assert parsed.spans[4].text.startswith("<table><tr><td>Item</td>") and parsed.spans[4].text.endswith("</table>")
    assert parsed.spans[6].text == ""  # an image span has no text
    assert parsed.spans[-1].text == "- 1 -"  # the end-of-sentence token is not part of the text
    assert parsed.spans[0].raw == span("title", "[[71, 51, 530, 82]]")
    text = fixture_text("portrait_report")
    assert all(text[s.start:s.end] == s.raw for s in parsed.spans)


@pytest.mark.parametrize(
    "box,size,expected",
    [
        ((0, 0, 999, 999), (900, 1273), (0, 0, 900, 1273)),
        ((500, 250, 750, 999), (1000, 2000), (500, 500, 750, 2000)),  # 500.5 and 750.75 truncate
        ((1, 1, 998, 998), (640, 640), (0, 0, 639, 639)),
        ((333.3, 0, 666.6, 500), (999, 10), (333, 0, 666, 5)),
    ],
)
def test_grid_scaling_matches_vendor(box, size, expected):
    assert to_pixels(box, *size) == expected
    x1, y1, x2, y2 = box
    width, height = size
    assert expected == (int(x1 / 999 * width), int(y1 / 999 * height), int(x2 / 999 * width), int(y2 / 999 * height))
    assert GRID_MAX == 999


def test_parse_scales_every_box():
    parsed = parse_markup(span("text", "[[0, 0, 999, 999], [100, 200, 300, 400]]"), 1998, 999)
    assert parsed.spans[0].boxes == ((0, 0, 1998, 999), (200, 200, 600, 400))


@pytest.mark.parametrize(
    "bad",
    [
        span("text", "[[1, 2, 3, x]]"),
        span("text", "[[1, 2, 3]]"),
        span("text", "[[1, 2, 3, 4, 5]]"),
        span("text", "[[1, 2, 3, 4], [5, 6]]"),
        span("text", "[[-1, 2, 3, 4]]"),
        span("text", "[[1, 2, 1000, 4]]"),
        span("text", "[[500, 2, 400, 4]]"),
        span("text", "[[1, 500, 3, 400]]"),
        span("text", "[]"),
        span("text", "[1, 2, 3, 4]"),
        span("text", "[[[[["),
        span("text", "[[nan, 0, 1, 1]]"),
        span("text", "[[True, 0, 1, 1]]"),
        span("text", "[['1', 0, 1, 1]]"),
        span("text", ""),
        "<|ref|>text<|/ref|><|det|>[[1, 2, 3, 4]]\n",  # unclosed det
        "<|ref|>text<|det|>[[1, 2, 3, 4]]<|/det|>\n",  # unclosed ref
        "<|ref|>text<|/ref|>\n",  # ref without det
        "<|det|>[[1, 2, 3, 4]]<|/det|>\n",  # det without ref
    ],
)
def test_each_malformed_span_is_skipped_and_counted(bad):
    good = span("title", "[[10, 10, 20, 20]]")
    text = f"{good}\n# Head\n{bad}\nbody\n{good}\n# Tail"
    parsed = parse_markup(text, 100, 100)
    assert [s.label for s in parsed.spans] == ["title", "title"]
    assert parsed.skipped == 1
    assert parsed.spans[1].text == "# Tail"


def test_unclosed_span_does_not_swallow_the_next():
    text = "<|ref|>text<|/ref|><|det|>[[1, 2, 3, 4]]\nA\n" + span("title", "[[5, 6, 7, 8]]") + "\nB"
    parsed = parse_markup(text, 999, 999)
    assert [(s.label, s.boxes) for s in parsed.spans] == [("title", ((5, 6, 7, 8),))]
    assert parsed.skipped == 1


def test_output_cut_mid_span_at_the_end():
    text = span("title", "[[1, 1, 9, 9]]") + "\n# T\n<|ref|>text<|/ref|><|det|>[[1, 2"
    parsed = parse_markup(text, 10, 10)
    assert len(parsed.spans) == 1 and parsed.skipped == 1
    assert parsed.spans[0].text.startswith("# T")


def test_zero_width_box_is_kept_and_floats_are_accepted():
    parsed = parse_markup(span("text", "[[10, 10, 10, 20.5]]"), 999, 999)
    assert parsed.skipped == 0 and parsed.spans[0].boxes == ((10, 10, 10, 20),)


def test_garbage_never_raises():
    pieces = ["<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "[[", "]]", "[", "]", ",", "1", "999", "-5",
              "1e3", "x", "\n", "image", "title", EOS, "((", "'", '"', "{", "}", "\\"]
    rng = random.Random(0)
    for _ in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        parsed = parse_markup(text, rng.randint(1, 3000), rng.randint(1, 3000))
        assert parsed.skipped >= 0
        for s in parsed.spans:
            assert all(x1 <= x2 and y1 <= y2 for x1, y1, x2, y2 in s.boxes)
        clean_text(text, strip_special_tokens=True)


def test_clean_text_exact():
    raw = (
        span("title", "[[1, 2, 3, 4]]") + "\n# T\n"
        + span("image", "[[10, 10, 20, 20]]") + "\n\n"
        + span("text", "[[1, 2, 3, 4]]") + "\nA \\coloneqq B \\eqqcolon C" + EOS
    )
    assert clean_text(raw) == "\n# T\n![](images/0.jpg)\n\n\n\nA := B =: C" + EOS
    assert clean_text(raw, strip_special_tokens=True) == "\n# T\n![](images/0.jpg)\n\n\n\nA := B =: C"


def test_clean_text_of_fixtures():
    cleaned = clean_text(fixture_text("portrait_report"))
    assert "<|ref|>" not in cleaned and "<|det|>" not in cleaned
    assert cleaned.count("![](images/") == 1 and "![](images/0.jpg)\n" in cleaned
    assert "# Quarterly Throughput Report" in cleaned and "<table><tr><td>Item</td>" in cleaned
    assert cleaned.rstrip().endswith(EOS)
    assert EOS not in clean_text(fixture_text("portrait_report"), strip_special_tokens=True)


def test_clean_text_links_every_box_of_image_spans():
    cleaned = clean_text(fixture_text("two_column_paper"))
    links = [line for line in cleaned.splitlines() if line.startswith("![](")]
    assert links == ["![](images/0.jpg)", "![](images/1.jpg)", "![](images/2.jpg)"]
    assert ":=" in cleaned and "=:" in cleaned and "\\coloneqq" not in cleaned


def test_clean_text_of_malformed_markup():
    cleaned = clean_text(fixture_text("malformed"))
    assert "[[100, 100, 900, a]]" not in cleaned  # complete spans with bad boxes are removed
    assert "Non-numeric coordinate." in cleaned
    assert cleaned.count("![](images/") == 1 and "![](images/0.jpg)" in cleaned
    # unclosed spans stay as the model wrote them, as the vendor leaves them
    assert "<|ref|>text<|/ref|><|det|>[[100, 820, 900, 860]]\nThe closing det tag is missing here." in cleaned
    assert cleaned.rstrip().endswith("<|ref|>text<|/ref|><|det|>[[100, 930, 9")


def test_clean_text_without_spans_is_unchanged():
    text = fixture_text("no_spans")
    assert clean_text(text) == text
    assert clean_text(text, strip_special_tokens=True) == text.replace(EOS, "")
