"""Accuracy functions on hand-made cases: edit distances, box matching, a page against its truth."""

from __future__ import annotations

import random

import pytest

from pytest_dsocr.data.groundtruth import PageTruth, TruthBlock, bundled_truth, truth_from_markup
from pytest_dsocr.outputs import accuracy

EOS = "<｜end▁of▁sentence｜>"


def reference_levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


@pytest.mark.parametrize("a, b, distance", [
    ("", "", 0), ("abc", "", 3), ("", "abc", 3), ("kitten", "sitting", 3), ("flaw", "lawn", 2),
    ("same", "same", 0), ("ab", "ba", 2), ("中文排版", "中文版", 1),
])
def test_levenshtein_known_distances(a, b, distance):
    assert accuracy.levenshtein(a, b) == distance


def test_levenshtein_matches_the_textbook_recurrence():
    rng = random.Random(0)
    for _ in range(300):
        a = "".join(rng.choice("abcd") for _ in range(rng.randint(0, 70)))
        b = "".join(rng.choice("abcd") for _ in range(rng.randint(0, 70)))
        assert accuracy.levenshtein(a, b) == reference_levenshtein(a, b), (a, b)


def test_normalized_edit_distance_is_divided_by_the_longer_text():
    assert accuracy.normalized_edit_distance("kitten", "sitting") == pytest.approx(3 / 7)
    assert accuracy.normalized_edit_distance("", "") == 0.0
    assert accuracy.normalized_edit_distance("abc", "") == 1.0


def test_normalization_keeps_word_characters_only_as_omnidocbench():
    assert accuracy.normalize_text("# Title\n\nA, b-c.\t中文！\\n") == "TitleAbc中文"
    assert accuracy.text_edit_distance("Hello, world.", "hello world") == pytest.approx(1 / 10)
    assert accuracy.text_edit_distance("Hello, world.", "hello world", normalize=False) == pytest.approx(3 / 13)


def test_markup_text_drops_spans_tags_and_special_tokens():
    markup = ("<|ref|>title<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>\n# Head\n\n"
              "<|ref|>table<|/ref|><|det|>[[1, 5, 9, 9]]<|/det|>\n<table><tr><td>a</td><td>b</td></tr></table>"
              "<|ref|>text<|/ref|><|det|>[[9, 9, 1, 1]]<|/det|>\nbad box" + EOS)
    assert accuracy.markup_text(markup) == "# Head a b bad box"
    assert accuracy.markup_text("plain words, no markup") == "plain words, no markup"


@pytest.mark.parametrize("a, b, iou", [
    ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
    ((0, 0, 10, 10), (5, 0, 15, 10), 50 / 150),
    ((0, 0, 10, 10), (20, 20, 30, 30), 0.0),
    ((0, 0, 0, 0), (0, 0, 0, 0), 0.0),
])
def test_box_iou(a, b, iou):
    assert accuracy.box_iou(a, b) == pytest.approx(iou)


def test_match_boxes_pairs_best_overlaps_and_counts_the_rest():
    truth = [("title", (0, 0, 100, 20)), ("text", (0, 30, 100, 80)), ("table", (0, 90, 100, 150))]
    predicted = [
        ("text", (0, 32, 100, 80)),      # the text block, IoU 0.96
        ("sub_title", (0, 0, 100, 20)),  # the title, same class
        ("image", (0, 90, 100, 150)),    # the table's box, wrong label
        ("text", (200, 200, 300, 300)),  # nothing there
    ]
    match = accuracy.match_boxes(predicted, truth)
    assert (match.predicted, match.truth, match.matched) == (4, 3, 3)
    assert [(i, j) for i, j, _ in match.pairs] == [(0, 1), (1, 0), (2, 2)]
    assert match.unmatched_predicted == 1 and match.unmatched_truth == 0
    assert match.mean_iou == pytest.approx((48 / 50 + 1 + 1) / 3)
    assert match.label_agreement == pytest.approx(2 / 3)
    assert match.precision == pytest.approx(3 / 4) and match.recall == 1.0


def test_match_boxes_is_one_to_one_and_respects_the_threshold():
    truth = [("text", (0, 0, 10, 10))]
    predicted = [("text", (0, 0, 10, 10)), ("text", (0, 0, 10, 9))]
    match = accuracy.match_boxes(predicted, truth)
    assert [(i, j) for i, j, _ in match.pairs] == [(0, 0)]
    assert accuracy.match_boxes([("text", (0, 0, 10, 4))], truth).matched == 0  # IoU 0.4 < 0.5
    empty = accuracy.match_boxes([], truth)
    assert empty.mean_iou is None and empty.label_agreement is None and empty.precision is None
    assert empty.recall == 0.0


def test_a_perfect_read_of_every_bundled_page():
    for name, truth in bundled_truth().items():
        result = accuracy.compare_page(truth.markup + EOS, truth)
        assert result.exact and result.edit_distance == 0.0 and result.raw_edit_distance == 0.0, name
        assert result.boxes.matched == result.boxes.truth == result.boxes.predicted == len(truth.blocks)
        assert result.boxes.mean_iou == 1.0 and result.boxes.label_agreement == 1.0


def test_a_page_read_with_mistakes():
    markup = ("<|ref|>title<|/ref|><|det|>[[0, 0, 999, 99]]<|/det|>\n# Report\n\n"
              "<|ref|>text<|/ref|><|det|>[[0, 200, 999, 499]]<|/det|>\nThe quick fox.")
    truth = truth_from_markup(markup, 1000, 1000)
    wrong = ("<|ref|>title<|/ref|><|det|>[[0, 0, 999, 99]]<|/det|>\n# Report\n\n"
             "<|ref|>image<|/ref|><|det|>[[0, 200, 999, 449]]<|/det|>\nThe quack fox.")
    result = accuracy.compare_page(wrong, truth)
    assert not result.exact
    assert result.edit_distance == pytest.approx(1 / len("ReportThequickfox"))
    assert result.boxes.matched == 2 and result.boxes.label_agreement == 0.5
    assert result.boxes.mean_iou == pytest.approx((1 + 250 / 300) / 2, abs=0.01)
    garbage = accuracy.compare_page("<filler_656>" * 20, truth)
    assert garbage.edit_distance > 0.9 and garbage.boxes.matched == 0 and garbage.boxes.predicted == 0


def test_truth_without_markup_compares_block_texts():
    truth = PageTruth("p.png", 100, 100, (TruthBlock("title", (0, 0, 100, 10), "Head"),
                                          TruthBlock("table", (0, 20, 100, 90), "<table><tr><td>1</td></tr></table>")))
    read = ("<|ref|>title<|/ref|><|det|>[[0, 0, 999, 99]]<|/det|>\n# Head\n\n"
            "<|ref|>table<|/ref|><|det|>[[0, 200, 999, 899]]<|/det|>\n<table><tr><td>1</td></tr></table>")
    result = accuracy.compare_page(read, truth)
    assert result.edit_distance == 0.0 and not result.exact
    assert result.boxes.matched == 2
    assert result.to_json()["boxes"]["matched"] == 2
