"""The one statistics helper: every summary number in metrics.json and the markdown comes from here.

Modelled on optimum-benchmark's ``Latency.from_values``: one constructor computes count,
mean, sample standard deviation, percentiles and a bootstrap confidence interval of the
mean, and keeps the raw values so that later readers can redo the statistics they need. (The
regression gate compares two runs page by page with its own intervals: ``ttest``.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

DEFAULT_CI_LEVEL = 0.95
DEFAULT_N_BOOT = 2000
DEFAULT_SEED = 0
PERCENTILES = (50, 90, 95, 99)
# Bootstrap resamples are drawn in blocks of at most this many indices, so a long run
# (thousands of samples) never allocates n_boot x n integers at once.
BOOTSTRAP_BLOCK_ELEMENTS = 1 << 20
# Beyond this many values the interval of the mean is the normal approximation
# (mean +- z * std / sqrt(n)): at such n it equals the bootstrap's to well within its own
# resampling noise, at a thousandth of the cost (a 100,000-page run has ~20 such statistics).
BOOTSTRAP_MAX_VALUES = 1000
# Raw values kept in a Stats (and metrics.json) up to this count; beyond, the per-sample
# records hold them and the json would only grow by megabytes.
MAX_KEPT_VALUES = 10000
Z_BY_LEVEL = {0.90: 1.6448536269514722, 0.95: 1.959963984540054, 0.99: 2.5758293035489004}


@dataclass(frozen=True)
class Stats:
    """Summary statistics of one measured quantity, with its unit and the raw values.

    ``std`` is the sample standard deviation (ddof=1; 0 for a single value). ``ci_low`` and
    ``ci_high`` bound the mean with a percentile bootstrap (numpy, fixed seed, so the same
    values always give the same interval), or beyond :data:`BOOTSTRAP_MAX_VALUES` values with
    the normal approximation. ``values`` keeps the raw values up to :data:`MAX_KEPT_VALUES`.
    With no values every statistic is None: a report never shows an invented number.
    """

    count: int
    mean: float | None
    std: float | None
    min: float | None
    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None
    max: float | None
    ci_low: float | None
    ci_high: float | None
    ci_level: float
    unit: str
    values: list[float] = field(default_factory=list)

    @classmethod
    def from_values(
        cls,
        values: Iterable[float | int | None],
        unit: str = "ms",
        *,
        ci_level: float = DEFAULT_CI_LEVEL,
        n_boot: int = DEFAULT_N_BOOT,
        seed: int = DEFAULT_SEED,
    ) -> Stats:
        """Statistics of ``values``; None entries mean "not measured" and are left out.

        Raises ValueError on NaN or infinity: a timer that produced one is broken, and
        averaging it away would hide that.
        """
        kept = [float(v) for v in values if v is not None]
        if not all(math.isfinite(v) for v in kept):
            raise ValueError(f"non-finite value among {unit} measurements: {kept}")
        if not 0.0 < ci_level < 1.0:
            raise ValueError(f"ci_level must lie in (0, 1), got {ci_level}")
        if not kept:
            return cls.empty(unit, ci_level)
        array = np.asarray(kept, dtype=np.float64)
        p50, p90, p95, p99 = (float(p) for p in np.percentile(array, PERCENTILES))
        if len(kept) <= BOOTSTRAP_MAX_VALUES or ci_level not in Z_BY_LEVEL:
            ci_low, ci_high = bootstrap_ci(array, np.mean, ci_level=ci_level, n_boot=n_boot, seed=seed)
        else:
            half = Z_BY_LEVEL[ci_level] * float(array.std(ddof=1)) / math.sqrt(len(kept))
            ci_low, ci_high = float(array.mean()) - half, float(array.mean()) + half
        return cls(
            count=len(kept),
            mean=float(array.mean()),
            std=float(array.std(ddof=1)) if len(kept) > 1 else 0.0,
            min=float(array.min()),
            p50=p50,
            p90=p90,
            p95=p95,
            p99=p99,
            max=float(array.max()),
            ci_low=ci_low,
            ci_high=ci_high,
            ci_level=ci_level,
            unit=unit,
            values=kept if len(kept) <= MAX_KEPT_VALUES else [],
        )

    def to_json(self) -> dict[str, Any]:
        """Plain dict for metrics.json: every field, ``values`` last (field by field: the interim
        metrics.json of a long run converts a few dozen of these every rewrite, and
        ``dataclasses.asdict`` costs ten times as much)."""
        return {
            "count": self.count, "mean": self.mean, "std": self.std, "min": self.min, "p50": self.p50,
            "p90": self.p90, "p95": self.p95, "p99": self.p99, "max": self.max, "ci_low": self.ci_low,
            "ci_high": self.ci_high, "ci_level": self.ci_level, "unit": self.unit, "values": list(self.values),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None, unit: str = "ms") -> Stats:
        """The Stats :meth:`to_json` wrote; fields a file lacks read as absent (None, or empty)."""
        if not data:
            return cls.empty(unit)
        names = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in names}
        values.setdefault("count", len(values.get("values") or ()))
        values.setdefault("ci_level", DEFAULT_CI_LEVEL)
        values.setdefault("unit", unit)
        for name in names - values.keys():
            values[name] = [] if name == "values" else None
        values["values"] = list(values.get("values") or [])
        return cls(**values)

    @classmethod
    def empty(cls, unit: str = "ms", ci_level: float = DEFAULT_CI_LEVEL) -> Stats:
        """No values: every statistic None (a report never shows an invented number)."""
        return cls(count=0, mean=None, std=None, min=None, p50=None, p90=None, p95=None, p99=None, max=None,
                   ci_low=None, ci_high=None, ci_level=ci_level, unit=unit, values=[])


def bootstrap_ci(
    array: np.ndarray,
    statistic: Any,
    *,
    ci_level: float = DEFAULT_CI_LEVEL,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = DEFAULT_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(sample, axis=1)`` over resamples of ``array``.

    ``statistic`` must reduce along ``axis`` (np.mean, np.median). Deterministic for a seed.
    """
    array = np.asarray(array, dtype=np.float64)
    n = len(array)
    if n == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = np.random.default_rng(seed)
    return percentile_interval(resample_statistic(array, statistic, n_boot, rng), ci_level)


def resample_statistic(array: np.ndarray, statistic: Any, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``statistic`` of ``n_boot`` resamples (with replacement) of ``array``, drawn in blocks."""
    n = len(array)
    block = max(1, BOOTSTRAP_BLOCK_ELEMENTS // n)
    out = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, block):
        stop = min(n_boot, start + block)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = statistic(array[idx], axis=1)
    return out


def percentile_interval(resampled: np.ndarray, ci_level: float) -> tuple[float, float]:
    tail = (1.0 - ci_level) / 2.0 * 100.0
    low, high = np.percentile(resampled, [tail, 100.0 - tail])
    return float(low), float(high)
