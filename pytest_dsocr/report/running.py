"""Aggregates kept up to date record by record at constant cost, for the interim metrics.json.

While a run goes on, metrics.json is rewritten from these: exact count, mean, standard
deviation (Welford's update), min and max per quantity and benchmark stage, throughput from
running sums. Percentiles and confidence intervals need every value and are left to the full
metrics.json the session end writes (or ``python -m pytest_dsocr report``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pytest_dsocr.records import ImageRun
from pytest_dsocr.report.metrics import MS_PER_S, sample_metrics
from pytest_dsocr.report.model import Aggregates, Throughput
from pytest_dsocr.report.stats import DEFAULT_CI_LEVEL, Stats
from pytest_dsocr.stages import DECODE, PREFILL, VISION


@dataclass
class RunningStats:
    """Count, mean, variance (Welford), min and max of a stream of values."""

    unit: str = "ms"
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    low: float = math.inf
    high: float = -math.inf

    def add(self, value: float | None) -> None:
        if value is None:
            return
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (value - self.mean)
        self.low = min(self.low, value)
        self.high = max(self.high, value)

    def stats(self) -> Stats:
        if not self.count:
            return Stats.empty(self.unit)
        std = math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 0.0
        return Stats(count=self.count, mean=self.mean, std=std, min=self.low, p50=None, p90=None, p95=None,
                     p99=None, max=self.high, ci_low=None, ci_high=None, ci_level=DEFAULT_CI_LEVEL, unit=self.unit,
                     values=[])


@dataclass
class _StageTotals:
    """One benchmark stage's running statistics and per-worker throughput sums."""

    stats: dict[str, RunningStats] = field(default_factory=dict)
    worker_sums: dict[str, list[float]] = field(default_factory=dict)  # worker -> [busy s, pages, out, img, prompt]

    def stat(self, name: str, unit: str = "ms") -> RunningStats:
        if name not in self.stats:
            self.stats[name] = RunningStats(unit)
        return self.stats[name]


class RunningAggregates:
    """Per benchmark stage, the cheap aggregates of every record added so far."""

    def __init__(self) -> None:
        self._stages: dict[str, _StageTotals] = {}

    def add(self, run: ImageRun) -> None:
        totals = self._stages.setdefault(run.stage, _StageTotals())
        values = sample_metrics(run)
        for name, value in values.items():
            totals.stat(name).add(value)
        totals.stat("preprocess").add(run.preprocess_ms)
        totals.stat("tokens", "tokens").add(run.tokens)
        totals.stat("tokens_per_s", "tokens/s").add(
            (run.tokens - 1) / (run.decode_ms / MS_PER_S) if run.tokens > 1 and run.decode_ms > 0 else None)
        totals.stat("input", "tokens").add(run.prefill_len)
        totals.stat("image", "tokens").add(run.image_tokens)
        sums = totals.worker_sums.setdefault(run.worker, [0.0, 0, 0, 0, 0])
        sums[0] += values["e2e"] / MS_PER_S
        sums[1] += 1
        sums[2] += run.tokens
        sums[3] += run.image_tokens
        sums[4] += run.prefill_len - run.image_tokens

    @property
    def stages(self) -> list[str]:
        return list(self._stages)

    def aggregates(self, stage: str | None, parts: list[str]) -> Aggregates:
        totals = self._stages.get(stage or "", _StageTotals())

        def stats(name: str, unit: str = "ms") -> Stats:
            running = totals.stats.get(name)
            return running.stats() if running is not None else Stats.empty(unit)

        stage_ms = {name: stats(name) for name in (PREFILL, VISION, *parts, DECODE) if name in totals.stats}
        tokens = stats("tokens", "tokens")
        return Aggregates(
            prefill_ms=stats(PREFILL), decode_ms=stats(DECODE), tokens=tokens,
            tokens_per_s=stats("tokens_per_s", "tokens/s"), stage_ms=stage_ms,
            preprocess_ms=stats("preprocess"), ttft_ms=stats("ttft"), tpot_ms=stats("tpot"), e2e_ms=stats("e2e"),
            sequence_lengths={"input": stats("input", "tokens"), "output": tokens, "image": stats("image", "tokens")},
            throughput=self._throughput(totals),
        )

    @staticmethod
    def _throughput(totals: _StageTotals) -> Throughput:
        rates = [0.0, 0.0, 0.0, 0.0]
        sums = [0, 0, 0, 0]
        busy = 0.0
        for seconds, *counted in totals.worker_sums.values():
            busy += seconds
            for index, value in enumerate(counted):
                sums[index] += value
                if seconds > 0:
                    rates[index] += value / seconds
        if busy <= 0:
            return Throughput(workers=len(totals.worker_sums))
        pages, output, image, prompt = rates
        return Throughput(
            pages_per_s=pages, output_tokens_per_s=output, image_tokens_per_s=image, prompt_tokens_per_s=prompt,
            input_tokens_per_s=image + prompt, total_tokens_per_s=image + prompt + output,
            workers=len(totals.worker_sums), busy_s=busy, pages=int(sums[0]), output_tokens=int(sums[1]),
            image_tokens=int(sums[2]), prompt_tokens=int(sums[3]), input_tokens=int(sums[2] + sums[3]),
        )
