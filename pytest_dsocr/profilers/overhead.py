"""``profiler_overhead`` in metrics.json: profiled time over unprofiled time, same samples.

The profiled runs are the measured rounds a profiler actually recorded; the unprofiled ones are
the direct_inference records of the same samples when the session has them, else rounds the
profiler stage ran itself with no hooks right after (said per sample in ``baseline``). Times are
end to end per run (preprocess + prefill + decode) and per stage, each a ratio of means.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence

from pytest_dsocr.records import ImageRun

BASELINE_DIRECT = "direct_inference"
BASELINE_OWN = "unprofiled_rounds"
STAGE_FIELDS = ("preprocess_ms", "prefill_ms", "vision_ms", "decode_ms")


def e2e_ms(run: ImageRun) -> float:
    return run.preprocess_ms + run.prefill_ms + run.decode_ms


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


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
    return {
        "profiler": profiler,
        "ratio": _ratio(total_p, total_b) if per_sample else None,
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
                      "right after profiling)",
    }
