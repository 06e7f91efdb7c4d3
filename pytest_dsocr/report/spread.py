"""Where the spread of a run's stage times comes from, as far as its records show it.

The summary used to blame pages of different crop grids and output lengths for any wide
spread; this module states what the data says instead:

- per page across repeated measurements (rounds, epochs) when pages were measured more than
  once: the same page taking different times means the machine's speed varied (load, clocks);
- between pages (each page's median) otherwise;
- whether the output length and the crop grid actually varied between the runs.

The page (its image) is the unit, as everywhere in the statistics of this project.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pytest_dsocr.records import ImageRun
from pytest_dsocr.report.metrics import sample_metrics


@dataclass(frozen=True)
class StageSpread:
    """Coefficients of variation (std / mean) of one stage's times."""

    stage: str
    within_page: float | None  # median over pages measured >= 2 times of their CV; None: no such page
    between_pages: float | None  # CV of the per-page medians; None: fewer than 2 pages


@dataclass(frozen=True)
class SpreadFacts:
    """What the runs of one benchmark stage show about their spread."""

    pages: int
    repeated_pages: int  # pages measured more than once (rounds or epochs)
    stages: tuple[StageSpread, ...]
    tokens: tuple[int, int]  # fewest and most generated tokens of a run
    grids: tuple[tuple[int, int], ...]  # the distinct crop grids, in order of first appearance

    @property
    def length_varied(self) -> bool:
        return self.tokens[0] != self.tokens[1]

    @property
    def grid_varied(self) -> bool:
        return len(self.grids) > 1

    def stage(self, name: str) -> StageSpread | None:
        return next((spread for spread in self.stages if spread.stage == name), None)


def _cv(values: Sequence[float]) -> float | None:
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    return statistics.stdev(values) / mean if mean > 0 else None


def spread_facts(runs: Iterable[ImageRun], stages: Sequence[str]) -> SpreadFacts | None:
    """The facts of ``runs`` (one benchmark stage's, read once) for ``stages``; None without runs."""
    by_page: dict[str, dict[str, list[float]]] = {}  # image -> stage -> its times
    runs_of: dict[str, int] = {}  # image -> its runs
    fewest = most = None
    grids: dict[tuple[int, int], None] = {}
    for run in runs:
        values = sample_metrics(run)
        page = by_page.setdefault(run.image_path, {})
        runs_of[run.image_path] = runs_of.get(run.image_path, 0) + 1
        for stage in stages:
            if stage in values:
                page.setdefault(stage, []).append(values[stage])
        fewest = run.tokens if fewest is None else min(fewest, run.tokens)
        most = run.tokens if most is None else max(most, run.tokens)
        grids[tuple(run.crop_grid)] = None
    if not by_page:
        return None
    spreads = []
    for stage in stages:
        per_page = [page[stage] for page in by_page.values() if page.get(stage)]
        within = [cv for times in per_page if (cv := _cv(times)) is not None]
        medians = [statistics.median(times) for times in per_page]
        spreads.append(StageSpread(stage, statistics.median(within) if within else None, _cv(medians)))
    return SpreadFacts(
        pages=len(by_page),
        repeated_pages=sum(1 for count in runs_of.values() if count > 1),
        stages=tuple(spreads),
        tokens=(fewest, most),
        grids=tuple(grids),
    )
