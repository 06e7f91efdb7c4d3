"""Accuracy of a run against ground truth: each page's read, and the run's ``accuracy`` section.

The records carry each measured run's :class:`~pytest_dsocr.records.SampleAccuracy` (absent
when the dataset has no ground truth for the page). A page is read once per round and epoch;
greedy decoding gives the same text every time, but sampling or a nondeterministic kernel may
not, so a page counts with its **worst** read (highest edit distance; exact only if every read
was). metrics.json's ``accuracy`` section and the regression gate both reduce pages this way
(:func:`worst_by_page`), so the two never disagree on a page.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pytest_dsocr.records import ImageRun, SampleAccuracy
from pytest_dsocr.report.markdown import ACCURACY_DIGITS

PageKey = Callable[[ImageRun], str]


def by_sample_id(run: ImageRun) -> str:
    return run.sample_id


def worst_by_page(runs: Iterable[ImageRun], key: PageKey = by_sample_id) -> dict[str, SampleAccuracy]:
    """page key -> that page's worst read (see the module doc); pages without accuracy are absent."""
    worst = WorstReads(key)
    for run in runs:
        worst.add(run)
    return worst.pages


class WorstReads:
    """Each page's worst read, gathered one run at a time (see the module doc)."""

    def __init__(self, key: PageKey = by_sample_id) -> None:
        self.key = key
        self.pages: dict[str, SampleAccuracy] = {}

    def add(self, run: ImageRun) -> None:
        accuracy = run.accuracy
        if accuracy is None:
            return
        page = self.key(run)
        seen = self.pages.get(page)
        if seen is None or (accuracy.edit_distance, not accuracy.exact) > (seen.edit_distance, not seen.exact):
            self.pages[page] = accuracy


@dataclass(frozen=True)
class AccuracySummary:
    """metrics.json ``accuracy``: the pages with ground truth, each with its worst read.

    ``mean_edit_distance`` averages the pages' normalized edit distances; ``mean_iou`` averages
    the IoU of every matched box over all pages (None without a match). The per-page values
    are in ``samples[].accuracy``.
    """

    pages: int
    mean_edit_distance: float
    exact_pages: int
    predicted_boxes: int
    truth_boxes: int
    matched_boxes: int
    mean_iou: float | None

    @classmethod
    def from_runs(cls, runs: Iterable[ImageRun]) -> AccuracySummary | None:
        """The summary of ``runs`` (one benchmark stage's), or None when no page had ground truth."""
        return cls.from_pages(worst_by_page(runs).values())

    @classmethod
    def from_pages(cls, worst: Iterable[SampleAccuracy]) -> AccuracySummary | None:
        """The summary of each page's worst read, or None without a page."""
        pages = list(worst)
        if not pages:
            return None
        matched = sum(page.matched_boxes for page in pages)
        iou_sum = sum(page.mean_iou * page.matched_boxes for page in pages if page.mean_iou is not None)
        return cls(
            pages=len(pages),
            mean_edit_distance=sum(page.edit_distance for page in pages) / len(pages),
            exact_pages=sum(page.exact for page in pages),
            predicted_boxes=sum(page.predicted_boxes for page in pages),
            truth_boxes=sum(page.truth_boxes for page in pages),
            matched_boxes=matched,
            mean_iou=iou_sum / matched if matched else None,
        )

    def sentence(self) -> str:
        """One line for the summary: 'Accuracy vs ground truth (6 pages): mean normalized edit
        distance 0.000, 6/6 exact, boxes 31/31 matched (31 predicted), mean IoU 1.000.'"""
        iou = "n/a" if self.mean_iou is None else f"{self.mean_iou:.{ACCURACY_DIGITS}f}"
        return (f"Accuracy vs ground truth ({self.pages} page{'s' if self.pages != 1 else ''}): mean normalized "
                f"edit distance {self.mean_edit_distance:.{ACCURACY_DIGITS}f}, {self.exact_pages}/{self.pages} exact, "
                f"boxes {self.matched_boxes}/{self.truth_boxes} matched ({self.predicted_boxes} predicted), "
                f"mean IoU {iou}.")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> AccuracySummary | None:
        if not data:
            return None
        names = cls.__dataclass_fields__
        return cls(**{key: value for key, value in data.items() if key in names})
