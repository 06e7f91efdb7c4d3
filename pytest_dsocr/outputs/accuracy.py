"""How well a page was read: text edit distance and layout-box matching against ground truth.

Pure functions, no I/O. Ground truth comes as :class:`~pytest_dsocr.data.groundtruth.PageTruth`
(the bundled pages' ``.mmd`` files or an OmniDocBench annotation file, see
:func:`pytest_dsocr.data.groundtruth.truth_for_dataset`); a prediction is the model's raw text.

Text: the **normalized edit distance**, as OmniDocBench scores text (its ``Edit_dist``):
``levenshtein(pred, truth) / max(len(pred), len(truth))`` (0 when both are empty; 0 is a perfect
read, 1 nothing in common), on *comparable text*: the blocks' texts in reading order with the
grounding markup, HTML tags and special tokens removed, then OmniDocBench's ``clean_string``
normalization (drop tabs and newlines, also written as ``\\t``/``\\n``/``/t``/``/n``, then keep
only word characters and CJK ideographs). OmniDocBench also rewrites inline LaTeX to Unicode
first (pylatexenc); we do not, so pages with inline formulas score slightly worse here. Its
official page score matches blocks first and averages per block; this is one distance over the
whole page, the simpler quantity a profiler needs to tell "reads the page" from "does not".

Boxes: predicted and true blocks are matched greedily by IoU (the highest-IoU pair first, ties to
the earlier blocks; a pair needs IoU >= ``iou_threshold``); reported are the counts, the matched
pairs' mean IoU and how many of them agree on the label (``sub_title`` counts as ``title``:
OmniDocBench has one heading class).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pytest_dsocr.outputs.markup import parse_markup, remove_special_tokens
from pytest_dsocr.records import SampleAccuracy

IOU_THRESHOLD = 0.5  # a predicted block matches a true one only above this overlap
# Labels that name the same kind of block for the agreement check.
LABEL_CLASSES = {"sub_title": "title"}
_HTML_TAG = re.compile(r"<[^>]+>")
_NOT_WORD = re.compile(r"[^\w\u4e00-\u9fff]")
# OmniDocBench's clean_string removes these before keeping word characters (escaped and slashed
# spellings included, as its annotations contain them).
_WHITESPACE_SPELLINGS = ("\\t", "\\n", "\t", "\n", "/t", "/n")

Box = tuple[int, int, int, int]


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions, each cost 1) between two strings.

    Bit-parallel (Myers 1999, in Hyyrö's formulation for the global distance): one pass over
    ``a`` with ``len(b)``-bit integers, fast enough for whole pages in pure Python.
    """
    if len(a) < len(b):
        a, b = b, a
    m = len(b)
    if m == 0:
        return len(a)
    peq: dict[str, int] = {}
    for i, char in enumerate(b):
        peq[char] = peq.get(char, 0) | (1 << i)
    full = (1 << m) - 1
    last = 1 << (m - 1)
    pv, mv, score = full, 0, m
    for char in a:
        eq = peq.get(char, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = (mv | ~(xh | pv)) & full
        mh = pv & xh
        if ph & last:
            score += 1
        elif mh & last:
            score -= 1
        ph = ((ph << 1) | 1) & full  # the top row grows by one per character of ``a``
        mh = (mh << 1) & full
        pv = (mh | ~(xv | ph)) & full
        mv = ph & xv
    return score


def normalized_edit_distance(pred: str, truth: str) -> float:
    """``levenshtein / max(len)``: 0 for equal strings (both empty included), 1 for nothing shared."""
    longest = max(len(pred), len(truth))
    return levenshtein(pred, truth) / longest if longest else 0.0


def normalize_text(text: str) -> str:
    """OmniDocBench's ``clean_string``: no tabs or newlines, only word characters and CJK."""
    for spelling in _WHITESPACE_SPELLINGS:
        text = text.replace(spelling, "")
    return _NOT_WORD.sub("", text)


def block_text(text: str) -> str:
    """Readable text: HTML tags (tables, ``<center>``) and special tokens removed, whitespace runs
    collapsed to one space (so layout whitespace between blocks never counts as an edit)."""
    return " ".join(_HTML_TAG.sub(" ", remove_special_tokens(text)).split())


def markup_text(markup: str) -> str:
    """The readable text of grounding markup: every span removed, block texts kept in order.

    Text outside any span (a model that writes no markup) is kept as it is.
    """
    parsed = parse_markup(markup, width=1, height=1)
    cuts = sorted([(span.start, span.end) for span in parsed.spans] + list(parsed.invalid))
    pieces, position = [], 0
    for start, end in cuts:
        pieces.append(markup[position:start])
        position = end
    pieces.append(markup[position:])
    return block_text(" ".join(pieces))


def text_edit_distance(pred: str, truth: str, normalize: bool = True) -> float:
    """Normalized edit distance of two texts, OmniDocBench-normalized unless ``normalize`` is False."""
    if normalize:
        pred, truth = normalize_text(pred), normalize_text(truth)
    return normalized_edit_distance(pred, truth)


# ---------------------------------------------------------------------------------------
# Boxes
# ---------------------------------------------------------------------------------------


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes (0 when both are empty)."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def same_label(a: str, b: str) -> bool:
    return LABEL_CLASSES.get(a, a) == LABEL_CLASSES.get(b, b)


@dataclass(frozen=True)
class BoxMatch:
    """Predicted vs true layout boxes of one page.

    ``pairs`` holds ``(predicted index, true index, IoU)`` of each match; ``mean_iou`` and
    ``label_agreement`` (share of matched pairs with the same label) are None without a match.
    """

    predicted: int
    truth: int
    pairs: tuple[tuple[int, int, float], ...]
    labels_agree: int

    @property
    def matched(self) -> int:
        return len(self.pairs)

    @property
    def unmatched_predicted(self) -> int:
        return self.predicted - self.matched

    @property
    def unmatched_truth(self) -> int:
        return self.truth - self.matched

    @property
    def mean_iou(self) -> float | None:
        return sum(iou for _, _, iou in self.pairs) / self.matched if self.pairs else None

    @property
    def label_agreement(self) -> float | None:
        return self.labels_agree / self.matched if self.pairs else None

    @property
    def precision(self) -> float | None:
        return self.matched / self.predicted if self.predicted else None

    @property
    def recall(self) -> float | None:
        return self.matched / self.truth if self.truth else None

    def to_json(self) -> dict:
        return {"predicted": self.predicted, "truth": self.truth, "matched": self.matched,
                "mean_iou": self.mean_iou, "label_agreement": self.label_agreement,
                "precision": self.precision, "recall": self.recall}


def match_boxes(predicted: list[tuple[str, Box]], truth: list[tuple[str, Box]],
                iou_threshold: float = IOU_THRESHOLD) -> BoxMatch:
    """Greedy one-to-one matching of ``(label, box)`` lists by IoU (see the module doc)."""
    candidates = []
    for i, (_, pred_box) in enumerate(predicted):
        for j, (_, true_box) in enumerate(truth):
            iou = box_iou(pred_box, true_box)
            if iou >= iou_threshold and iou > 0:
                candidates.append((-iou, i, j))
    candidates.sort()
    used_pred, used_truth, pairs = set(), set(), []
    for negative_iou, i, j in candidates:
        if i in used_pred or j in used_truth:
            continue
        used_pred.add(i)
        used_truth.add(j)
        pairs.append((i, j, -negative_iou))
    pairs.sort()
    agree = sum(same_label(predicted[i][0], truth[j][0]) for i, j, _ in pairs)
    return BoxMatch(len(predicted), len(truth), tuple(pairs), agree)


# ---------------------------------------------------------------------------------------
# A page
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PageAccuracy:
    """One page read against its ground truth: text distance (normalized and raw) and boxes."""

    edit_distance: float
    raw_edit_distance: float  # on the readable text before OmniDocBench's normalization
    boxes: BoxMatch
    exact: bool  # the raw output equals the ground-truth markup (bundled pages)

    def to_json(self) -> dict:
        return {"edit_distance": self.edit_distance, "raw_edit_distance": self.raw_edit_distance,
                "exact": self.exact, "boxes": self.boxes.to_json()}


def truth_text(truth) -> str:
    """The readable text of a :class:`~pytest_dsocr.data.groundtruth.PageTruth`: of its markup
    when it has one (the bundled pages), else its blocks' texts in order."""
    if truth.markup is not None:
        return markup_text(truth.markup)
    return " ".join(text for text in (block_text(block.text) for block in truth.blocks) if text)


def compare_page(text_raw: str, truth, iou_threshold: float = IOU_THRESHOLD) -> PageAccuracy:
    """Score the model's raw output for one page against that page's ``PageTruth``.

    Predicted boxes are the spans' first boxes scaled to the truth's page size, as the vendor
    scales them; ``exact`` compares the output (special tokens removed) with ``truth.markup``.
    """
    parsed = parse_markup(text_raw, truth.width, truth.height)
    predicted = [(span.label, span.boxes[0]) for span in parsed.spans]
    expected = [(block.label, block.box) for block in truth.blocks]
    pred_text, true_text = markup_text(text_raw), truth_text(truth)
    exact = truth.markup is not None and remove_special_tokens(text_raw) == truth.markup
    return PageAccuracy(
        edit_distance=text_edit_distance(pred_text, true_text),
        raw_edit_distance=text_edit_distance(pred_text, true_text, normalize=False),
        boxes=match_boxes(predicted, expected, iou_threshold),
        exact=exact,
    )


def sample_accuracy(text_raw: str, truth, iou_threshold: float = IOU_THRESHOLD) -> SampleAccuracy:
    """What a measured run's record keeps of :func:`compare_page`: the text distances, the exact
    flag and the box counts with the matches' mean IoU (the pairs themselves are left out)."""
    page = compare_page(text_raw, truth, iou_threshold)
    boxes = page.boxes
    return SampleAccuracy(
        edit_distance=page.edit_distance, raw_edit_distance=page.raw_edit_distance, exact=page.exact,
        predicted_boxes=boxes.predicted, truth_boxes=boxes.truth, matched_boxes=boxes.matched,
        mean_iou=boxes.mean_iou,
    )
