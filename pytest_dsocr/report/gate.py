"""The regression gate: is this run slower than a baseline, beyond noise and beyond a threshold?

**The page is the unit.** Every stage's values are grouped by page (sample id and prompt
length), and each page is reduced to one value per run, the median of its rounds and epochs,
before any statistics: repeated rounds of one page are not independent samples of the pages
a change affects.

**The test.** Per stage, on the log of the per-page values (a slowdown multiplies a page's
time, so it shifts the log):

- **paired** when both runs measured at least ``min_pages`` of the same pages: one log ratio
  per page, ``log(current / baseline)``, and the Student-t interval of their mean;
- **unpaired** otherwise, when each run measured at least ``min_pages`` pages: Welch's t
  interval of the difference of the mean log times;
- fewer pages than that: **insufficient samples**, whichever path. One rule for both.

``exp`` of the mean and its interval gives the ratio current / baseline, a geometric mean
(of the per-page ratios when paired), and its two-sided ``1 - alpha`` interval. The threshold
is built into the verdict:

- **regressed**: the whole interval lies above ``1 + threshold`` (confidently slower than allowed);
- **improved**: the whole interval lies below ``1 / (1 + threshold)`` (the mirror image in log space);
- **within threshold**: the interval's upper end lies below ``1 + threshold``;
- **inconclusive**: otherwise (the interval straddles ``1 + threshold``).

Only "within threshold" and "improved" pass. An inconclusive stage (or one with
insufficient samples) fails the gate by default and only warns with ``inconclusive=warn``
(:func:`parse_inconclusive`). Each one-sided claim holds at ``1 - alpha / 2`` confidence, so a
change exactly at the threshold passes at most 2.5% of the time, and an unchanged run fails
only when its interval is too wide to exclude the threshold: enough pages and rounds (the
``infer=gate sampling=gate`` presets, calibrated by benchmarks/perf/gate_calibration.py) keep that rare.

Why t and not ranks: with 6 pages the signed-rank test reaches p < 0.05 only when all 6 move
the same way; the t interval uses the sizes of the changes, and the per-page medians keep
single slow rounds from dominating it. The calibration compares it with a sign-flip
permutation test on the same pages (BENCHMARKS.md).

**Accuracy** (when both runs have ground truth for some page, :mod:`pytest_dsocr.report.accuracy`)
gets a row of its own, named ``accuracy``: the normalized edit distance of each page (its worst
read), paired over the pages both runs read. It is not a statistical estimate (greedy decoding
reads a page the same way every round), so no interval and no ``min_pages``:

- **regressed**: a page that read exactly in the baseline no longer does, or the mean edit
  distance over the paired pages rose by more than the threshold (an absolute difference, 0..1);
- **improved**: it fell by more than the threshold, and no page lost its exact read;
- **within threshold**: otherwise; **insufficient samples**: no page has accuracy in both runs
  (when only one run has accuracy at all, e.g. an older baseline, there is no row, only a note).

Its threshold is ``gate.per_stage.accuracy`` (e.g. ``0.02``: two points of edit distance),
:data:`DEFAULT_ACCURACY_THRESHOLD` by default; ``--dsocr-max-regression`` (a time ratio) does
not apply to it. A faster run that reads the pages wrong fails the gate here.

The statistics take per-page values only (:func:`values_by_page`, :func:`judge`); the runs are
:class:`~pytest_dsocr.report.model.RunMetrics` (a metrics.json's json form is read into one by
:func:`compare_runs`).
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pytest_dsocr.atomic import atomic_write_text
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.report.compatibility import (
    ABSENT,
    FORCE_OPTION,
    Difference,
    compatibility_differences,
    identity_from_metrics,
    incompatible_error,
)
from pytest_dsocr.records import ImageRun, SampleAccuracy
from pytest_dsocr.report.accuracy import worst_by_page
from pytest_dsocr.report.markdown import ACCURACY_DIGITS, RATIO_DIGITS, fmt, table
from pytest_dsocr.report.metrics import METRICS_FILE, sample_metrics
from pytest_dsocr.report.model import RunMetrics
from pytest_dsocr.report.ttest import PAIRED, UNPAIRED, RatioInterval, paired_ratio_interval, unpaired_ratio_interval
from pytest_dsocr.stages import DECODE, LATENCY_METRICS, PREFILL, VISION

DEFAULT_THRESHOLD = 0.10
ACCURACY = "accuracy"  # the gate row (and gate.per_stage key) of the pages' edit distance
# A rise of the mean normalized edit distance (absolute, 0..1) that fails the gate when
# gate.per_stage.accuracy is not set: one point, a few characters of an average page.
DEFAULT_ACCURACY_THRESHOLD = 0.01
DEFAULT_ALPHA = 0.05  # the interval is two-sided at 1 - alpha; each verdict's claim holds at 1 - alpha / 2
DEFAULT_MIN_PAGES = 6
MIN_PAGES_FLOOR = 2  # a t interval needs a spread, so two pages at the very least
THRESHOLD_OPTION = "--dsocr-max-regression"
BASELINE_OPTION = "--dsocr-baseline"
INCONCLUSIVE_OPTION = "--dsocr-gate-inconclusive"
MIN_PAGES_OPTION = "gate.min_pages"
PER_STAGE_KEY = "gate.per_stage"
REGRESSION_FILE = "regression.md"
TITLE = "Regression gate"

REGRESSED = "regressed"
IMPROVED = "improved"
WITHIN_THRESHOLD = "within threshold"
INCONCLUSIVE = "inconclusive"
INSUFFICIENT = "insufficient samples"
VERDICTS = (REGRESSED, IMPROVED, WITHIN_THRESHOLD, INCONCLUSIVE, INSUFFICIENT)
PASSING = frozenset({WITHIN_THRESHOLD, IMPROVED})
NO_VERDICT = frozenset({INCONCLUSIVE, INSUFFICIENT})

# What an inconclusive stage (or one with too few pages) does to the exit status.
FAIL, WARN = "fail", "warn"
INCONCLUSIVE_CHOICES = (FAIL, WARN)
DEFAULT_INCONCLUSIVE = FAIL
# Status of a whole comparison.
STATUS_FAILED, STATUS_INCONCLUSIVE, STATUS_PASSED = "failed", "inconclusive", "passed"

AGGREGATES_STAGE = "aggregates_stage"  # profiled runs are never compared with plain ones


@dataclass(frozen=True)
class GateRow:
    """The verdict on one stage. Times in ms; ratio = current / baseline (> 1 is slower).

    ``baseline`` and ``current`` are geometric means over pages of each page's median (over the
    pages both runs measured when paired), so ``ratio == current / baseline``.
    """

    stage: str
    baseline: float | None
    current: float | None
    ratio: float | None
    ci_low: float | None
    ci_high: float | None
    threshold: float
    verdict: str
    method: str | None  # "paired" | "unpaired" | None (no verdict)
    pages: int  # pages in the interval: paired pages, or the smaller run's page count
    n_baseline: int  # pages with a value in the baseline
    n_current: int  # pages with a value in this run
    detail: str | None = None  # why there is no verdict

    @property
    def passed(self) -> bool:
        return self.verdict in PASSING

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GateResult:
    """All rows of one comparison, and what they mean for the exit status.

    ``failed`` when a stage regressed, or when a stage has no verdict (inconclusive, or
    insufficient samples) or no stage was compared at all, under ``inconclusive="fail"``.
    """

    rows: tuple[GateRow, ...]
    threshold: float
    alpha: float = DEFAULT_ALPHA
    min_pages: int = DEFAULT_MIN_PAGES
    inconclusive: str = DEFAULT_INCONCLUSIVE
    differences: tuple[Difference, ...] = ()  # compared anyway (forced)
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", tuple(self.rows))
        object.__setattr__(self, "differences", tuple(self.differences))
        object.__setattr__(self, "notes", tuple(self.notes))
        object.__setattr__(self, "inconclusive", parse_inconclusive(self.inconclusive))

    @property
    def regressions(self) -> list[GateRow]:
        return [row for row in self.rows if row.verdict == REGRESSED]

    @property
    def without_verdict(self) -> list[GateRow]:
        """Stages the gate could not judge: inconclusive or insufficient samples."""
        return [row for row in self.rows if row.verdict in NO_VERDICT]

    @property
    def undecided(self) -> bool:
        """Whether some stage, or the comparison as a whole, has no verdict."""
        return not self.rows or bool(self.without_verdict)

    @property
    def failed(self) -> bool:
        return bool(self.regressions) or (self.undecided and self.inconclusive == FAIL)

    @property
    def status(self) -> str:
        """"failed" (the exit status is non-zero), "inconclusive" (no verdict for some stage, and
        ``inconclusive="warn"``) or "passed" (every stage within threshold or improved)."""
        if self.failed:
            return STATUS_FAILED
        return STATUS_INCONCLUSIVE if self.undecided else STATUS_PASSED

    def headline(self) -> str:
        """One line: FAILED / INCONCLUSIVE (warn) / passed, and which stages. Never "passed"
        while a stage has no verdict."""
        missing = self._missing_text()
        if self.regressions:
            names = ", ".join(row.stage for row in self.regressions)
            text = f"**{TITLE}: FAILED**: {len(self.regressions)} stage(s) regressed ({names})."
            return text + (f" No verdict for {missing}." if missing else "")
        if self.undecided:
            what = missing or "no stage was measured in both runs"
            if self.inconclusive == FAIL:
                return (f"**{TITLE}: FAILED (inconclusive)**: no verdict for {what}; an inconclusive "
                        f"gate fails ({INCONCLUSIVE_OPTION}=warn only warns).")
            return (f"**{TITLE}: INCONCLUSIVE (warn)**: no verdict for {what}; not failing because "
                    f"{INCONCLUSIVE_OPTION}=warn.")
        return f"**{TITLE}: passed**: every stage within threshold or improved ({len(self.rows)} compared)."

    def markdown(self, heading: bool = False) -> str:
        """Headline, the table (Stage | Pages | Baseline | Current | Ratio [CI] | Verdict), how to
        read it, notes, and the differences compared despite (forced)."""
        confidence = _pct(1 - self.alpha)
        rows = [
            (row.stage, _pages_text(row), fmt(row.baseline), fmt(row.current), _ratio_text(row),
             _verdict_text(row, self.threshold))
            for row in self.rows if row.stage != ACCURACY
        ]
        parts = ([f"## {TITLE}", ""] if heading else []) + [self.headline(), ""]
        if rows:
            headers = ("Stage", "Pages", "Baseline (ms)", "Current (ms)", f"Ratio [{confidence} CI]", "Verdict")
            parts += [table(headers, rows, align="lrrrrl"), ""]
        bound, mirror = 1 + self.threshold, 1 / (1 + self.threshold)
        parts.append(
            "Baseline and Current: geometric mean over pages of each page's median time (over its rounds "
            "and epochs); paired rows use the pages both runs measured. Ratio = Current / Baseline, which "
            f"for paired rows is the geometric mean of the per-page ratios, with its {confidence} Student-t "
            "interval (paired: per-page log ratios; unpaired: Welch on per-page log times). "
            f"Regressed: the whole interval above {bound:.{RATIO_DIGITS}f} (1 + {_pct(self.threshold)}); "
            f"improved: the whole interval below {mirror:.{RATIO_DIGITS}f}; within threshold: its upper end "
            f"below {bound:.{RATIO_DIGITS}f}; inconclusive otherwise. Fewer than {self.min_pages} pages: "
            f"insufficient samples. Only within threshold and improved pass; inconclusive: {self.inconclusive}."
        )
        accuracy = [row for row in self.rows if row.stage == ACCURACY]
        if accuracy:
            parts += ["", _accuracy_markdown(accuracy[0])]
        for note in self.notes:
            parts += ["", f"Note: {note}"]
        if self.differences:
            parts += ["", "Compared despite these differences from the baseline (forced):", ""]
            parts += [f"- `{d.key}`: {_value_text(d.baseline)} (baseline) vs {_value_text(d.current)} (current)"
                      for d in self.differences]
        return "\n".join(parts) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "failed": self.failed,
            "threshold": self.threshold,
            "alpha": self.alpha,
            "min_pages": self.min_pages,
            "inconclusive": self.inconclusive,
            "differences": [d.to_json() for d in self.differences],
            "notes": list(self.notes),
            "rows": [row.to_json() for row in self.rows],
        }

    def _missing_text(self) -> str:
        groups = []
        for verdict in (INCONCLUSIVE, INSUFFICIENT):
            names = [row.stage for row in self.rows if row.verdict == verdict]
            if names:
                groups.append(f"{', '.join(names)} ({verdict})")
        return "; ".join(groups)


def parse_threshold(value: str | float | int, option: str = THRESHOLD_OPTION) -> float:
    """"10%" -> 0.10, "0.1" -> 0.1; a bad value is a DsocrError naming ``option``.

    A bare number is a fraction; one above 1 is refused (10 would mean 1000%) rather than guessed.
    """
    text = str(value).strip()
    try:
        number = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        raise DsocrError(f"{option}={value!r}: expected a percentage like 10% or a fraction like 0.1") from None
    if not math.isfinite(number) or number < 0:
        raise DsocrError(f"{option}={value!r}: must be a finite, non-negative percentage like 10%")
    if not text.endswith("%") and number > 1:
        raise DsocrError(f"{option}={value!r}: a bare number is a fraction (0.1 = 10%); write {text}% for {text} percent")
    return number


def parse_stage_thresholds(per_stage: Mapping[str, str | float] | None, key: str = PER_STAGE_KEY) -> dict[str, float]:
    """Per-stage thresholds from config (``{decode: "5%"}``), each parsed by :func:`parse_threshold`."""
    return {str(stage): parse_threshold(value, f"{key}.{stage}") for stage, value in (per_stage or {}).items()}


def parse_inconclusive(value: str | None, option: str = INCONCLUSIVE_OPTION) -> str:
    """What an inconclusive stage does: "fail" (the default, also for None) or "warn".

    Anything else is a DsocrError naming ``option`` and the value.
    """
    if value is None:
        return DEFAULT_INCONCLUSIVE
    text = str(value).strip().lower()
    if text not in INCONCLUSIVE_CHOICES:
        raise DsocrError(f"{option}={value!r}: expected one of {', '.join(INCONCLUSIVE_CHOICES)}")
    return text


def parse_min_pages(value: str | int, option: str = MIN_PAGES_OPTION) -> int:
    """The fewest pages a verdict needs: an integer >= 2, else a DsocrError naming ``option``."""
    try:
        number = int(str(value).strip())
    except ValueError:
        raise DsocrError(f"{option}={value!r}: expected a whole number of pages like {DEFAULT_MIN_PAGES}") from None
    if number < MIN_PAGES_FLOOR:
        raise DsocrError(f"{option}={value!r}: a verdict needs at least {MIN_PAGES_FLOOR} pages")
    return number


def load_baseline(path: str | os.PathLike[str], option: str = BASELINE_OPTION) -> dict:
    """A previous run's metrics.json, given as the file or its run dir; DsocrError when unusable."""
    given = Path(path)
    file = given / METRICS_FILE if given.is_dir() else given
    if not file.is_file():
        where = f"{given} has no {METRICS_FILE}" if given.is_dir() else f"{given} does not exist"
        raise DsocrError(f"{option}={path}: {where}; pass a previous run's {METRICS_FILE} or its run dir")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DsocrError(f"{option}={path}: {file} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("aggregates"), dict):
        raise DsocrError(f"{option}={path}: {file} is not a pytest-dsocr {METRICS_FILE} (no 'aggregates' section)")
    return data


def values_by_page(samples: Iterable[ImageRun | Mapping[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """stage -> page key -> that page's values, one per record (round and epoch).

    ``samples`` are records: :class:`ImageRun` (e.g. ``RunMetrics.primary_samples()``) or their
    json (``ImageRun.to_json()``, a metrics.json's ``samples``); their stage values come from
    :func:`pytest_dsocr.report.metrics.sample_metrics`. A page key is the sample id and the
    prompt length: the same file under another config has another prompt length and never pairs.
    """
    grouped: dict[str, dict[str, list[float]]] = {}
    for sample in samples:
        run = sample if isinstance(sample, ImageRun) else ImageRun.from_json(sample)
        key = page_key(run.sample_id, run.prefill_len)
        for stage, value in sample_metrics(run).items():
            grouped.setdefault(stage, {}).setdefault(key, []).append(value)
    return grouped


def page_key(sample_id: str, prefill_len: int | None) -> str:
    """What identifies a page across runs: its sample id and prompt length."""
    return f"{sample_id}#{prefill_len}"


def page_name(key: str) -> str:
    """The sample id of a :func:`page_key` (a sample id may itself hold a ``#``)."""
    return key.rpartition("#")[0]


def page_medians(pages: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Each page reduced to one value: the median of its positive values (a zero time has no
    ratio); pages without one are left out. (statistics.median: a page has a handful of rounds,
    where numpy's per-call overhead dominates.)"""
    reduced = {}
    for key, values in pages.items():
        kept = [float(v) for v in values if v > 0]
        if kept:
            reduced[key] = float(statistics.median(kept))
    return reduced


def classify(ci_low: float, ci_high: float, threshold: float) -> str:
    """The verdict of a ratio interval against ``threshold`` (see the module doc)."""
    bound = 1.0 + threshold
    if ci_low > bound:
        return REGRESSED
    if ci_high < 1.0 / bound:
        return IMPROVED
    if ci_high < bound:
        return WITHIN_THRESHOLD
    return INCONCLUSIVE


def judge(
    stage: str,
    base_pages: Mapping[str, Sequence[float]],
    current_pages: Mapping[str, Sequence[float]],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    alpha: float = DEFAULT_ALPHA,
    min_pages: int = DEFAULT_MIN_PAGES,
) -> GateRow:
    """The verdict on one stage from page key -> values (rounds, epochs) of each run.

    Paired over the pages both runs measured when there are at least ``min_pages`` of them;
    else unpaired over all pages when each run has at least ``min_pages``; else insufficient
    samples. Page keys of one run that must never pair with the other's need distinct keys.
    """
    base, current = page_medians(base_pages), page_medians(current_pages)
    common = [key for key in current if key in base]
    interval: RatioInterval | None = None
    if len(common) >= min_pages:
        interval = paired_ratio_interval([base[k] for k in common], [current[k] for k in common], 1.0 - alpha)
    elif min(len(base), len(current)) >= min_pages:
        interval = unpaired_ratio_interval(list(base.values()), list(current.values()), 1.0 - alpha)
    counts = dict(stage=stage, threshold=threshold, n_baseline=len(base), n_current=len(current))
    if interval is None:
        geo_base, geo_current = _geometric_mean(base.values()), _geometric_mean(current.values())
        detail = (f"{len(common)} pages in both runs, {len(base)} vs {len(current)} in all; "
                  f"a verdict needs {min_pages}")
        ratio = geo_current / geo_base if geo_base and geo_current is not None else None
        return GateRow(baseline=geo_base, current=geo_current, ratio=ratio, ci_low=None, ci_high=None,
                       verdict=INSUFFICIENT, method=None, pages=len(common), detail=detail, **counts)
    return GateRow(baseline=interval.baseline, current=interval.current, ratio=interval.ratio,
                   ci_low=interval.low, ci_high=interval.high,
                   verdict=classify(interval.low, interval.high, threshold), method=interval.method,
                   pages=interval.pages, **counts)


def judge_accuracy(base_pages: Mapping[str, SampleAccuracy], current_pages: Mapping[str, SampleAccuracy],
                   threshold: float = DEFAULT_ACCURACY_THRESHOLD) -> GateRow:
    """The accuracy row from page key -> each run's read of the page (see the module doc).

    ``baseline`` and ``current`` are the mean normalized edit distances over the paired pages;
    ``ratio`` and the interval are None (the change, ``current - baseline``, is the measure).
    """
    common = [key for key in current_pages if key in base_pages]
    counts = dict(stage=ACCURACY, threshold=threshold, n_baseline=len(base_pages), n_current=len(current_pages),
                  ratio=None, ci_low=None, ci_high=None)
    if not common:
        return GateRow(baseline=None, current=None, verdict=INSUFFICIENT, method=None, pages=0,
                       detail=(f"no page has ground truth in both runs ({len(base_pages)} vs "
                               f"{len(current_pages)} pages with accuracy)"), **counts)
    before = statistics.fmean(base_pages[key].edit_distance for key in common)
    after = statistics.fmean(current_pages[key].edit_distance for key in common)
    lost = [page_name(key) for key in common if base_pages[key].exact and not current_pages[key].exact]
    if lost or after - before > threshold:
        verdict = REGRESSED
    elif before - after > threshold:
        verdict = IMPROVED
    else:
        verdict = WITHIN_THRESHOLD
    detail = f"no longer exact: {', '.join(lost)}" if lost else None
    return GateRow(baseline=before, current=after, verdict=verdict, method=PAIRED, pages=len(common),
                   detail=detail, **counts)


def accuracy_by_page(metrics: RunMetrics) -> dict[str, SampleAccuracy]:
    """page key -> the page's worst read in a run's aggregated stage (absent without ground
    truth), keyed as the timing rows key pages."""
    return worst_by_page(metrics.primary_samples(), key=lambda run: page_key(run.sample_id, run.prefill_len))


def compare_runs(
    baseline: RunMetrics | Mapping[str, Any],
    current: RunMetrics | Mapping[str, Any],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    per_stage: Mapping[str, float] | None = None,
    force: bool = False,
    alpha: float = DEFAULT_ALPHA,
    min_pages: int = DEFAULT_MIN_PAGES,
    inconclusive: str = DEFAULT_INCONCLUSIVE,
    differences: Sequence[Difference] | None = None,
    force_hint: str = FORCE_OPTION,
) -> GateResult:
    """Judge every stage measured in both runs (:class:`RunMetrics`, or metrics.json's json form,
    read into one).

    ``differences``: the identity differences already found (the plugin checks before the
    run); None computes them here from the metrics' ``identity`` sections (or their config/env).
    Differences, or another aggregated benchmark stage, raise a DsocrError naming every key
    unless ``force``; forced ones are listed in the result (and regression.md).
    """
    baseline, current = _typed(baseline, "the baseline"), _typed(current, "the current run")
    if differences is None:
        differences = compatibility_differences(identity_from_metrics(baseline), identity_from_metrics(current))
    found = list(differences) + _measurement_differences(baseline, current)
    if found and not force:
        raise incompatible_error(found, force_hint)
    notes = [
        f"the {which} run is incomplete ({run.reason or 'no reason recorded'})."
        for which, run in (("baseline", baseline), ("current", current))
        if not run.complete
    ]
    base_values, base_note = _run_values(baseline, "baseline")
    current_values, current_note = _run_values(current, "current")
    notes += [note for note in (base_note, current_note) if note]
    stages = _common_stages(baseline, current, set(base_values) & set(current_values))
    rows = [
        judge(stage, base_values.get(stage, {}), current_values.get(stage, {}),
              threshold=(per_stage or {}).get(stage, threshold), alpha=alpha, min_pages=min_pages)
        for stage in stages
    ]
    base_reads, current_reads = accuracy_by_page(baseline), accuracy_by_page(current)
    if base_reads and current_reads:
        rows.append(judge_accuracy(base_reads, current_reads,
                                   (per_stage or {}).get(ACCURACY, DEFAULT_ACCURACY_THRESHOLD)))
        stages = [*stages, ACCURACY]
    elif base_reads or current_reads:  # e.g. a baseline from before accuracy was recorded
        which = "baseline" if current_reads else "current"
        notes.append(f"accuracy not compared: the {which} run has no page read against ground truth.")
    notes += [
        f"the threshold given for stage {stage!r} matches no compared stage ({', '.join(stages)})."
        for stage in per_stage or {}
        if stage not in stages
    ]
    return GateResult(tuple(rows), threshold, alpha, min_pages, parse_inconclusive(inconclusive),
                      tuple(found) if force else (), tuple(notes))


def run_gate(
    metrics: RunMetrics | Mapping[str, Any],
    baseline: str | os.PathLike[str] | RunMetrics | Mapping[str, Any],
    max_regression: str | float = DEFAULT_THRESHOLD,
    *,
    per_stage: Mapping[str, str | float] | None = None,
    force: bool = False,
    run_dir: str | os.PathLike[str] | None = None,
    inconclusive: str | None = None,
    min_pages: int | str = DEFAULT_MIN_PAGES,
    differences: Sequence[Difference] | None = None,
) -> GateResult:
    """The plugin's entry: load the baseline, parse the options, compare, and write
    ``<run_dir>/regression.md`` (with the forced ``differences``, when given, listed in it).
    Bad input raises DsocrError naming the option."""
    base = baseline if isinstance(baseline, (Mapping, RunMetrics)) else load_baseline(baseline)
    result = compare_runs(
        base, metrics, threshold=parse_threshold(max_regression), per_stage=parse_stage_thresholds(per_stage),
        force=force, min_pages=parse_min_pages(min_pages), inconclusive=parse_inconclusive(inconclusive),
        differences=differences,
    )
    if run_dir is not None:
        write_regression_report(run_dir, result)
    return result


def write_regression_report(run_dir: str | os.PathLike[str], result: GateResult) -> Path:
    """``<run_dir>/regression.md``, written atomically."""
    return atomic_write_text(Path(run_dir) / REGRESSION_FILE, result.markdown(heading=True))


def _typed(metrics: RunMetrics | Mapping[str, Any], which: str) -> RunMetrics:
    return metrics if isinstance(metrics, RunMetrics) else RunMetrics.from_json(metrics, source=which)


def _measurement_differences(baseline: RunMetrics, current: RunMetrics) -> list[Difference]:
    """Differences in what was measured rather than how: the benchmark stage whose records make
    the aggregates (a profiled stage's overhead is not a regression)."""
    before, after = baseline.aggregates_stage, current.aggregates_stage
    if before is not None and after is not None and before != after:
        return [Difference(AGGREGATES_STAGE, before, after)]
    return []


def _run_values(metrics: RunMetrics, label: str) -> tuple[dict[str, dict[str, list[float]]], str | None]:
    """stage -> page -> values of one run, and a note when it had to do without samples.

    A metrics.json without per-sample records keeps only each stage's raw values (one per
    round and epoch, without page ids). They are per-page values only when every page ran
    once (1 round, 1 epoch); they then get keys of their own run (``label``), so they never
    pair. Otherwise they cannot be reduced to pages and the stages get no verdict.
    """
    values = values_by_page(metrics.primary_samples())
    if values:
        return values, None
    aggregates = metrics.aggregates
    named = {**{m: aggregates.stat(m) for m in LATENCY_METRICS}, **aggregates.stage_ms}
    raw = {stage: [float(v) for v in stats.values] for stage, stats in named.items() if stats is not None}
    raw = {stage: values for stage, values in raw.items() if values}
    rounds = metrics.counts.rounds
    epochs = _lookup(metrics.config, ("dataset", "sampling", "num_epochs"))
    if rounds == 1 and epochs == 1:
        pages = {stage: {f"{label}:{i}": [v] for i, v in enumerate(values)} for stage, values in raw.items()}
        return pages, f"the {label} metrics.json has no per-page samples; its values (1 round each) are taken as pages, unpaired."
    note = (f"the {label} metrics.json has no per-page samples and {rounds} round(s) per page: its values "
            "cannot be reduced to pages.")
    return {stage: {} for stage in raw}, note


def _common_stages(baseline: RunMetrics, current: RunMetrics, measured: set[str]) -> list[str]:
    """Stages of both runs in reading order, then ttft, tpot and e2e where both have values."""
    theirs = set(baseline.aggregates.stage_ms)
    ours = list(current.aggregates.stage_ms)
    ordered = [PREFILL, VISION] + [s for s in ours if s not in (PREFILL, VISION, DECODE)] + [DECODE]
    common = [s for s in ordered if s in theirs and s in ours]
    return common + [m for m in LATENCY_METRICS if m in measured]


def _lookup(mapping: Any, path: tuple[str, ...]) -> Any:
    """``mapping[path[0]][path[1]]...``, or None where a level is missing or not a mapping."""
    for key in path:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def _geometric_mean(values: Any) -> float | None:
    array = np.asarray(list(values), dtype=np.float64)
    return float(np.exp(np.log(array).mean())) if len(array) else None


def _accuracy_markdown(row: GateRow) -> str:
    """The accuracy row's own table (its values are edit distances, not times) and its rule."""
    digits = ACCURACY_DIGITS
    change = "n/a" if row.baseline is None or row.current is None else f"{row.current - row.baseline:+.{digits}f}"
    verdict = row.verdict + (f" ({row.detail})" if row.detail else "")
    headers = ("Accuracy", "Pages", "Baseline", "Current", "Change", "Verdict")
    body = table(headers, [("edit distance", _pages_text(row), fmt(row.baseline, digits), fmt(row.current, digits),
                            change, verdict)], align="lrrrrl")
    return body + (
        "\n\nAccuracy: mean normalized edit distance (0 is a perfect read) over the pages both runs read "
        "against ground truth, each page with its worst read. Regressed: a page that read exactly in the "
        f"baseline no longer does, or the mean rose by more than {row.threshold:.{digits}f} "
        f"({PER_STAGE_KEY}.{ACCURACY}, absolute); improved: it fell by more than that and no page lost its "
        "exact read; within threshold otherwise. No interval: a greedy read does not vary between rounds."
    )


def _pages_text(row: GateRow) -> str:
    if row.method == PAIRED:
        return f"{row.pages} paired"
    if row.method == UNPAIRED:
        return f"{row.n_baseline} / {row.n_current} unpaired"
    return f"{row.n_baseline} / {row.n_current}"


def _verdict_text(row: GateRow, threshold: float) -> str:
    extras = [] if row.threshold == threshold else [f"threshold {_pct(row.threshold)}"]
    extras += [row.detail] if row.detail else []
    return row.verdict + (f" ({'; '.join(extras)})" if extras else "")


def _ratio_text(row: GateRow) -> str:
    if row.ratio is None:
        return "n/a"
    if row.ci_low is None or row.ci_high is None:
        return f"{row.ratio:.{RATIO_DIGITS}f}"
    return f"{row.ratio:.{RATIO_DIGITS}f} [{row.ci_low:.{RATIO_DIGITS}f}, {row.ci_high:.{RATIO_DIGITS}f}]"


def _value_text(value: Any) -> str:
    return "absent" if value == ABSENT else f"`{json.dumps(value, default=str)}`"


def _pct(fraction: float) -> str:
    return f"{fraction * 100:g}%"
