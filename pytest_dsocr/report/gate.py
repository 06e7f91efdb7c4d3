"""The noise-aware regression gate: is this run slower than a baseline, beyond noise and beyond a threshold?

For each stage measured in both runs (prefill, vision, its sub-stages, decode, plus ttft,
tpot and e2e) the gate compares medians of the per-sample values, never means:

- **paired** when both runs measured at least ``min_samples`` of the same pages (same
  sample id and prompt length): the ratio is the median over pages of current / baseline
  (each page's rounds and epochs reduced to their median first), its interval a bootstrap
  over pages, and the rank test Wilcoxon signed-rank on the log ratios. Pages differ a lot
  (crop grids, output lengths); pairing removes that spread, so real changes show through.
- **unpaired** otherwise: ratio of medians, bootstrap of both samples, Mann–Whitney U.

A stage **regresses** only when both hold: the rank test finds a difference (p < alpha)
and the whole confidence interval of the ratio lies above 1 + threshold. Improvements are
judged the same way below 1 - threshold. A ratio beyond the threshold that the statistics
do not confirm is "inconclusive"; a confirmed change within the threshold is "within
threshold"; anything else "likely noise". Fewer than ``min_samples`` values is
"insufficient samples": no verdict, never a pass.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pytest_dsocr.errors import DsocrError
from pytest_dsocr.atomic import atomic_write_text
from pytest_dsocr.report.markdown import RATIO_DIGITS, fmt, table
from pytest_dsocr.records import ImageRun
from pytest_dsocr.report.metrics import METRICS_FILE, sample_metrics
from pytest_dsocr.report.model import RunMetrics
from pytest_dsocr.stages import DECODE, LATENCY_METRICS, PREFILL, VISION
from pytest_dsocr.report.ranktests import mann_whitney_u, wilcoxon_signed_rank
from pytest_dsocr.report.stats import percentile_interval, resample_statistic

DEFAULT_THRESHOLD = 0.10
DEFAULT_ALPHA = 0.05
DEFAULT_N_BOOT = 2000
DEFAULT_SEED = 0
DEFAULT_MIN_SAMPLES = 3
THRESHOLD_OPTION = "--dsocr-max-regression"
BASELINE_OPTION = "--dsocr-baseline"
FORCE_OPTION = "--dsocr-baseline-force"
PER_STAGE_KEY = "gate.per_stage"
REGRESSION_FILE = "regression.md"
TITLE = "Regression gate"

REGRESSION = "regression"
IMPROVEMENT = "improvement"
INCONCLUSIVE = "inconclusive"
WITHIN_THRESHOLD = "within threshold"
LIKELY_NOISE = "likely noise"
INSUFFICIENT = "insufficient samples"
PAIRED, UNPAIRED = "paired", "unpaired"

# What must match between a baseline and this run for timings to be comparable: (where in
# metrics.json, what to call it). Only keys present in both runs are compared.
COMPATIBILITY_KEYS = (
    (("config", "model", "family"), "model.family"),
    (("config", "model", "size"), "model.size"),
    (("config", "model", "base_size"), "model.base_size"),
    (("config", "model", "image_size"), "model.image_size"),
    (("config", "model", "crop_mode"), "model.crop_mode"),
    (("config", "model", "dtype"), "model.dtype"),
    (("config", "infer", "max_new_tokens"), "infer.max_new_tokens"),
    (("env", "device"), "device"),
    (("env", "device_name"), "device name"),
    (("aggregates_stage",), "aggregated benchmark stage"),  # profiler overhead is not a regression
)
FAMILY_KEY = "model.family"


@dataclass(frozen=True)
class GateRow:
    """The verdict on one stage. Times in ms; ratio = current / baseline (>1 is slower)."""

    stage: str
    baseline: float | None  # median of the baseline's per-sample values
    current: float | None  # median of this run's per-sample values
    ratio: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None  # rank test, two-sided
    threshold: float
    verdict: str
    method: str | None  # "paired" | "unpaired" | None (no verdict)
    n_baseline: int
    n_current: int
    detail: str | None = None  # why there is no verdict

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GateResult:
    """All rows of one comparison; ``failed`` when any stage regressed."""

    rows: list[GateRow]
    threshold: float
    alpha: float
    n_boot: int
    min_samples: int
    mismatches: list[str] = field(default_factory=list)  # compared anyway (force)
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[GateRow]:
        return [row for row in self.rows if row.verdict == REGRESSION]

    @property
    def failed(self) -> bool:
        return bool(self.regressions)

    @property
    def status(self) -> str:
        """"failed", "passed" (every stage got a verdict, none a regression) or "no verdict"
        (some stage had too few samples: not a pass)."""
        if self.failed:
            return "failed"
        if not self.rows or any(row.verdict == INSUFFICIENT for row in self.rows):
            return "no verdict"
        return "passed"

    def headline(self) -> str:
        if self.failed:
            names = ", ".join(row.stage for row in self.regressions)
            return f"**{TITLE}: FAILED**: {len(self.regressions)} stage(s) regressed ({names})."
        if not self.rows:
            return f"**{TITLE}: no verdict**: no stage was measured in both runs."
        missing = [row.stage for row in self.rows if row.verdict == INSUFFICIENT]
        if len(missing) == len(self.rows):
            return f"**{TITLE}: no verdict**: too few samples for any stage (see the Verdict column)."
        if missing:
            return (
                f"**{TITLE}: no verdict** for {', '.join(missing)} (too few samples); no regression "
                f"among the other {len(self.rows) - len(missing)} stage(s)."
            )
        return f"**{TITLE}: passed**: no stage regressed ({len(self.rows)} compared)."

    def markdown(self, heading: bool = False) -> str:
        """Headline, the table (Stage | Baseline | Current | Ratio [CI] | Verdict) and how to read it."""
        rows = [
            (
                row.stage,
                fmt(row.baseline),
                fmt(row.current),
                _ratio_text(row),
                _verdict_text(row, self.threshold),
            )
            for row in self.rows
        ]
        confidence = _pct(1 - self.alpha)
        parts = ([f"## {TITLE}", ""] if heading else []) + [self.headline(), ""]
        if rows:
            parts += [table(("Stage", "Baseline (ms)", "Current (ms)", "Ratio [CI]", "Verdict"), rows, align="lrrrl"), ""]
        parts.append(
            f"Medians of per-sample times. Ratio = current / baseline with its {confidence} bootstrap "
            f"interval ({self.n_boot} resamples); paired by page where both runs measured the same "
            f"pages. A regression needs a rank test p < {self.alpha:g} and the whole interval above "
            f"1 + {_pct(self.threshold)}."
        )
        parts += [f"Note: {note}" for note in self.notes]
        if self.mismatches:
            parts.append(f"Note: compared despite differing {', '.join(self.mismatches)} (forced).")
        return "\n".join(parts) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "failed": self.failed,
            "threshold": self.threshold,
            "alpha": self.alpha,
            "n_boot": self.n_boot,
            "min_samples": self.min_samples,
            "mismatches": list(self.mismatches),
            "notes": list(self.notes),
            "rows": [row.to_json() for row in self.rows],
        }


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


def compatibility_mismatches(baseline: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """"name (baseline vs current)" for each model/config/device key that differs."""
    found = []
    for path, name in COMPATIBILITY_KEYS:
        before, after = _lookup(baseline, path), _lookup(current, path)
        if name == "device":
            before, after = _device_type(before), _device_type(after)
        if before is not None and after is not None and before != after:
            found.append(f"{name} ({before} vs {after})")
    return found


def compare_runs(
    baseline: dict,
    current: dict,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    per_stage: dict[str, float] | None = None,
    force: bool = False,
    alpha: float = DEFAULT_ALPHA,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = DEFAULT_SEED,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    force_hint: str = FORCE_OPTION,
) -> GateResult:
    """Judge every stage measured in both runs (see module doc). Refuses, with a DsocrError
    naming the differing keys, a baseline of another model, config or device unless ``force``."""
    mismatches = compatibility_mismatches(baseline, current)
    if mismatches and not force:
        raise DsocrError(
            f"baseline is not comparable with this run: it differs in {', '.join(mismatches)}; "
            f"compare like with like, or pass {force_hint} to compare anyway"
        )
    base_values, current_values = _values_by_page(baseline), _values_by_page(current)
    both = {stage for stage in base_values if stage in current_values}
    rows = [
        _judge(
            stage, base_values.get(stage, {}), current_values.get(stage, {}),
            threshold=(per_stage or {}).get(stage, threshold), alpha=alpha, n_boot=n_boot,
            seed=seed + index, min_samples=min_samples,
        )
        for index, stage in enumerate(_common_stages(baseline, current, both))
    ]
    notes = [
        f"the {which} run is incomplete ({run.get('reason') or 'no reason recorded'})."
        for which, run in (("baseline", baseline), ("current", current))
        if run.get("complete") is False
    ]
    compared = {row.stage for row in rows}
    notes += [
        f"the threshold given for stage {stage!r} matches no compared stage ({', '.join(row.stage for row in rows)})."
        for stage in per_stage or {}
        if stage not in compared
    ]
    return GateResult(rows, threshold, alpha, n_boot, min_samples, mismatches if force else [], notes)


def run_gate(
    metrics: RunMetrics | dict,
    baseline: str | os.PathLike[str] | dict,
    max_regression: str | float = DEFAULT_THRESHOLD,
    *,
    per_stage: Mapping[str, str | float] | None = None,
    force: bool = False,
    run_dir: str | os.PathLike[str] | None = None,
) -> GateResult:
    """The plugin's entry: load and check the baseline, parse thresholds, compare, and write
    ``<run_dir>/regression.md``. Bad input raises DsocrError naming the option."""
    base = baseline if isinstance(baseline, Mapping) else load_baseline(baseline)
    result = compare_runs(
        base, as_metrics_json(metrics), threshold=parse_threshold(max_regression), per_stage=parse_stage_thresholds(per_stage),
        force=force,
    )
    if run_dir is not None:
        write_regression_report(run_dir, result)
    return result


def write_regression_report(run_dir: str | os.PathLike[str], result: GateResult) -> Path:
    """``<run_dir>/regression.md``, written atomically."""
    return atomic_write_text(Path(run_dir) / REGRESSION_FILE, result.markdown(heading=True))


def _judge(
    stage: str,
    base_pages: Mapping[str | None, list[float]],
    current_pages: Mapping[str | None, list[float]],
    *,
    threshold: float,
    alpha: float,
    n_boot: int,
    seed: int,
    min_samples: int,
) -> GateRow:
    base_all = [v for values in base_pages.values() for v in values if v > 0]  # a zero time has no ratio
    current_all = [v for values in current_pages.values() for v in values if v > 0]
    row = dict(
        stage=stage,
        baseline=float(np.median(base_all)) if base_all else None,
        current=float(np.median(current_all)) if current_all else None,
        threshold=threshold,
        n_baseline=len(base_all),
        n_current=len(current_all),
    )
    rng = np.random.default_rng(seed)
    ci_level = 1.0 - alpha
    paired = {
        key: (float(np.median(base_pages[key])), float(np.median(current_pages[key])))
        for key in base_pages
        if key is not None and key in current_pages and min(base_pages[key]) > 0 and min(current_pages[key]) > 0
    }
    if len(paired) >= min_samples and _smallest_p_paired(len(paired)) < alpha:
        log_ratios = np.log([after / before for before, after in paired.values()])
        ratio = float(np.exp(np.median(log_ratios)))
        low, high = percentile_interval(np.exp(resample_statistic(log_ratios, np.median, n_boot, rng)), ci_level)
        p_value, method = wilcoxon_signed_rank(log_ratios), PAIRED
    elif (
        len(paired) < min_samples  # the runs measured different pages: compare all runs
        and min(len(base_all), len(current_all)) >= min_samples
        and _smallest_p_unpaired(len(base_all), len(current_all)) < alpha
    ):
        base, cur = np.asarray(base_all), np.asarray(current_all)
        ratio = float(np.median(cur) / np.median(base))
        ratios = resample_statistic(cur, np.median, n_boot, rng) / resample_statistic(base, np.median, n_boot, rng)
        low, high = percentile_interval(ratios, ci_level)
        p_value, method = mann_whitney_u(base, cur), UNPAIRED
    else:
        if len(paired) >= min_samples:
            detail = f"{len(paired)} pages in both runs; a paired verdict needs {_pairs_needed(alpha)}"
        else:
            detail = f"{len(base_all)} vs {len(current_all)} runs; need at least {min_samples} in each"
        return GateRow(ratio=_safe_ratio(row["current"], row["baseline"]), ci_low=None, ci_high=None,
                       p_value=None, verdict=INSUFFICIENT, method=None, detail=detail, **row)
    verdict = _verdict(ratio, low, high, p_value, threshold=threshold, alpha=alpha)
    return GateRow(ratio=ratio, ci_low=low, ci_high=high, p_value=p_value, verdict=verdict, method=method, **row)


def _smallest_p_paired(n: int) -> float:
    """The smallest two-sided p-value the signed-rank test can give for n pairs: all signs agree."""
    return 2.0 / 2**n


def _smallest_p_unpaired(n1: int, n2: int) -> float:
    """The smallest two-sided p-value Mann–Whitney U can give: the samples do not overlap."""
    return 2.0 / math.comb(n1 + n2, n1)


def _pairs_needed(alpha: float) -> int:
    """Fewest pairs for which the signed-rank test can reach ``alpha`` at all."""
    n = 1
    while _smallest_p_paired(n) >= alpha:
        n += 1
    return n


def _verdict(ratio: float, low: float, high: float, p_value: float, *, threshold: float, alpha: float) -> str:
    significant = p_value < alpha and (low > 1.0 or high < 1.0)
    if significant and low > 1.0 + threshold:
        return REGRESSION
    if significant and high < 1.0 - threshold:
        return IMPROVEMENT
    if ratio > 1.0 + threshold or ratio < 1.0 - threshold:
        return INCONCLUSIVE
    return WITHIN_THRESHOLD if significant else LIKELY_NOISE


def _common_stages(baseline: Mapping[str, Any], current: Mapping[str, Any], values: Mapping[str, Any]) -> list[str]:
    """Stages of both runs in reading order, then ttft, tpot and e2e where both have values."""
    theirs = set((baseline.get("aggregates") or {}).get("stage_ms") or {})
    ours = list((current.get("aggregates") or {}).get("stage_ms") or {})
    ordered = [PREFILL, VISION] + [s for s in ours if s not in (PREFILL, VISION, DECODE)] + [DECODE]
    common = [s for s in ordered if s in theirs and s in ours]
    return common + [m for m in LATENCY_METRICS if m in values]


def _values_by_page(metrics: Mapping[str, Any]) -> dict[str, dict[str | None, list[float]]]:
    """stage -> page key -> that page's values (one per round and epoch).

    A page key is the sample id and prompt length: the same file under another config has
    another prompt length and never pairs. A metrics.json written without samples falls back
    to the raw Stats values of each stage under the key None, which never pairs.
    """
    grouped: dict[str, dict[str | None, list[float]]] = {}
    samples = _primary_samples(metrics)
    for sample in samples:
        key = f"{sample['sample_id']}#{sample.get('prefill_len')}"
        for stage, value in sample_metrics(ImageRun.from_json(sample)).items():
            grouped.setdefault(stage, {}).setdefault(key, []).append(value)
    if not samples:
        aggregates = metrics.get("aggregates") or {}
        named = {**{m: aggregates.get(f"{m}_ms") for m in LATENCY_METRICS}, **(aggregates.get("stage_ms") or {})}
        for stage, stats in named.items():
            values = (stats or {}).get("values") or []
            if values:
                grouped[stage] = {None: [float(v) for v in values]}
    return grouped


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


def _pct(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def _safe_ratio(current: float | None, baseline: float | None) -> float | None:
    return current / baseline if current is not None and baseline else None


def _device_type(device: Any) -> Any:
    return str(device).split(":")[0] if device is not None else None


def _lookup(mapping: Any, path: tuple[str, ...]) -> Any:
    """``mapping[path[0]][path[1]]...``, or None where a level is missing or not a mapping."""
    for key in path:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def _primary_samples(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The per-sample records of a metrics dict that its top-level aggregates are made of."""
    samples = list(metrics.get("samples") or [])
    stage = metrics.get("aggregates_stage")
    return [s for s in samples if s.get("stage", stage) == stage]


def as_metrics_json(metrics: RunMetrics | Mapping[str, Any]) -> Mapping[str, Any]:
    """The json form the gate reads (a RunMetrics is converted)."""
    return metrics.to_json() if isinstance(metrics, RunMetrics) else metrics
