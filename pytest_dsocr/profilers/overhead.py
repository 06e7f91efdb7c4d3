"""``profiler_overhead`` in metrics.json: profiled time over unprofiled time, same samples.

The profiled runs are the measured rounds a profiler actually recorded; the unprofiled ones are
the direct_inference records of the same samples when the session has them, else rounds the
profiler stage ran itself with no hooks right after (said per sample in ``baseline``). Times are
end to end per run (preprocess + prefill + decode) and per stage, each a ratio of means.

The end-to-end ratio comes with a bootstrap interval over pages (the pages are resampled, the
ratio recomputed), since the page is the unit of every comparison here; an interval that holds
1 reads "within noise". One page gives no interval.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from pytest_dsocr.records import ImageRun
from pytest_dsocr.report.stats import DEFAULT_CI_LEVEL, DEFAULT_N_BOOT, DEFAULT_SEED, percentile_interval

BASELINE_DIRECT = "direct_inference"
BASELINE_OWN = "unprofiled_rounds"
STAGE_FIELDS = ("preprocess_ms", "prefill_ms", "vision_ms", "decode_ms")
MIN_PAGES_FOR_INTERVAL = 2  # a bootstrap over one page has nothing to resample


def e2e_ms(run: ImageRun) -> float:
    return run.preprocess_ms + run.prefill_ms + run.decode_ms


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def ratio_interval(profiled: Sequence[float], unprofiled: Sequence[float], *, ci_level: float = DEFAULT_CI_LEVEL,
                   n_boot: int = DEFAULT_N_BOOT, seed: int = DEFAULT_SEED) -> tuple[float, float] | None:
    """Percentile bootstrap interval of sum(profiled) / sum(unprofiled) over pages (the i-th
    entries of both belong to page i), or None with fewer than MIN_PAGES_FOR_INTERVAL pages."""
    p, b = np.asarray(profiled, dtype=np.float64), np.asarray(unprofiled, dtype=np.float64)
    if len(p) < MIN_PAGES_FOR_INTERVAL or len(p) != len(b):
        return None
    index = np.random.default_rng(seed).integers(0, len(p), size=(n_boot, len(p)))
    denominators = b[index].sum(axis=1)
    ratios = p[index].sum(axis=1)[denominators > 0] / denominators[denominators > 0]
    return percentile_interval(ratios, ci_level) if len(ratios) else None


def overhead_text(section: Mapping) -> str:
    """One sentence on the end-to-end overhead: the ratio, its interval, and "within noise" when
    the interval holds 1 (or when there is no interval to tell)."""
    ratio = section.get("ratio")
    if ratio is None:
        return "Profiler overhead: not measured."
    pages, baseline = section.get("samples"), section.get("baseline")
    low, high = section.get("ci_low"), section.get("ci_high")
    if low is None or high is None:
        return (f"Profiler overhead: {ratio:.3f}x end-to-end from {pages} page ({baseline} baseline); one page "
                f"gives no interval, so it cannot be told from noise: profile at least {MIN_PAGES_FOR_INTERVAL} pages.")
    level = f"{section.get('ci_level', DEFAULT_CI_LEVEL) * 100:.0f}%"
    interval = f"{level} interval {low:.3f}-{high:.3f}x over {pages} pages, {baseline} baseline"
    if section.get("within_noise"):
        return f"Profiler overhead: within noise ({ratio:.3f}x end-to-end; {interval})."
    return f"Profiler overhead: {ratio:.3f}x end-to-end ({interval})."


def _by_sample(runs: Sequence[ImageRun]) -> dict[str, list[ImageRun]]:
    groups: dict[str, list[ImageRun]] = defaultdict(list)
    for run in runs:
        groups[run.sample_id].append(run)
    return groups


def profiler_overhead(profiler: str, profiled: Sequence[ImageRun], baselines: Mapping[str, Sequence[ImageRun]],
                      sources: Mapping[str, str]) -> dict:
    """The section for one profiler; ``baselines``/``sources`` are keyed by sample id."""
    profiled_by = _by_sample(profiled)
    per_sample, profiled_means, baseline_means = {}, [], []
    stage_profiled, stage_baseline = defaultdict(list), defaultdict(list)
    for sample_id in sorted(profiled_by):
        base = list(baselines.get(sample_id, ()))
        if not base:
            continue
        runs = profiled_by[sample_id]
        p, b = _mean([e2e_ms(r) for r in runs]), _mean([e2e_ms(r) for r in base])
        profiled_means.append(p)
        baseline_means.append(b)
        for name in STAGE_FIELDS:
            stage_profiled[name].append(_mean([getattr(r, name) for r in runs]))
            stage_baseline[name].append(_mean([getattr(r, name) for r in base]))
        per_sample[sample_id] = {"profiled_ms": p, "unprofiled_ms": b, "ratio": _ratio(p, b),
                                 "profiled_runs": len(runs), "unprofiled_runs": len(base),
                                 "baseline": sources.get(sample_id)}
    used = {entry["baseline"] for entry in per_sample.values()}
    baseline = used.pop() if len(used) == 1 else ("mixed" if used else None)
    total_p, total_b = sum(profiled_means), sum(baseline_means)
    interval = ratio_interval(profiled_means, baseline_means)
    return {
        "profiler": profiler,
        "ratio": _ratio(total_p, total_b) if per_sample else None,
        "ci_low": interval[0] if interval else None,
        "ci_high": interval[1] if interval else None,
        "ci_level": DEFAULT_CI_LEVEL,
        # None: no interval (fewer than MIN_PAGES_FOR_INTERVAL pages), so nothing to tell from noise
        "within_noise": (interval[0] <= 1.0 <= interval[1]) if interval else None,
        "baseline": baseline,
        "samples": len(per_sample),
        "profiled_ms_mean": _mean(profiled_means),
        "unprofiled_ms_mean": _mean(baseline_means),
        "per_stage": {name[:-3]: _ratio(sum(stage_profiled[name]), sum(stage_baseline[name]))
                      for name in STAGE_FIELDS if per_sample},
        "per_sample": per_sample,
        "definition": "sum over samples of mean end-to-end ms (preprocess + prefill + decode) of the measured "
                      "rounds the profiler recorded, over the same for unprofiled rounds of the same samples "
                      f"({BASELINE_DIRECT}: that stage's records; {BASELINE_OWN}: rounds run without hooks "
                      "right after profiling); ci_low/ci_high: percentile bootstrap over pages",
    }
