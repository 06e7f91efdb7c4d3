"""Student-t intervals for the ratio of two runs' per-page times, in numpy (scipy is not a dependency).

The regression gate works on logarithms of per-page times: a slowdown multiplies a page's
time, so it adds a constant to its log, and the geometric mean of per-page ratios is
``exp(mean(log ratios))``. Its confidence interval is the t interval of that mean:

- **paired** (the same pages in both runs): one log ratio per page, ``log(current / baseline)``;
  the interval is ``mean ± t(n-1) · sd / sqrt(n)``.
- **unpaired** (different pages): Welch's interval for the difference of the mean log times,
  with the Welch–Satterthwaite degrees of freedom.

``exp`` of the bounds gives the interval of the ratio. The t quantiles come from the
regularized incomplete beta function (continued fraction), checked against scipy in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

PAIRED, UNPAIRED = "paired", "unpaired"
# Continued fraction of the incomplete beta function: stop when a step changes the value by
# less than this relative amount, or after this many steps (it converges in a few dozen).
BETA_TOLERANCE = 1e-15
BETA_MAX_STEPS = 500
TINY = 1e-300  # keeps the continued fraction's denominators away from zero (Lentz's method)
# The quantile is found by bisection until the bracket is this narrow (relative).
QUANTILE_TOLERANCE = 1e-12
QUANTILE_MAX_STEPS = 400


@dataclass(frozen=True)
class RatioInterval:
    """The geometric-mean ratio current / baseline of per-page times and its t interval.

    ``baseline`` and ``current`` are geometric means of the per-page values used (for a paired
    interval, of the pages both runs measured), so ``ratio == current / baseline`` exactly; for a
    paired interval this is also the geometric mean of the per-page ratios.
    """

    method: str  # "paired" | "unpaired"
    baseline: float
    current: float
    ratio: float
    low: float
    high: float
    df: float  # degrees of freedom of the t quantile
    pages: int  # paired pages, or the smaller of the two page counts


def paired_ratio_interval(baseline: Sequence[float], current: Sequence[float], confidence: float) -> RatioInterval:
    """The interval of the geometric mean of ``current[i] / baseline[i]`` (two-sided, ``confidence``).

    Needs at least two positive pairs; the values must be positive (a time of zero has no log).
    """
    base, cur = _positive(baseline, "baseline"), _positive(current, "current")
    if len(base) != len(cur):
        raise ValueError(f"paired values need equal lengths, got {len(base)} and {len(cur)}")
    n = len(base)
    if n < 2:
        raise ValueError("a paired interval needs at least two pages")
    log_base, log_cur = np.log(base), np.log(cur)
    diffs = log_cur - log_base
    mean = float(diffs.mean())
    half = student_t_quantile(_upper_probability(confidence), n - 1) * float(diffs.std(ddof=1)) / math.sqrt(n)
    return RatioInterval(PAIRED, float(np.exp(log_base.mean())), float(np.exp(log_cur.mean())), math.exp(mean),
                         math.exp(mean - half), math.exp(mean + half), float(n - 1), n)


def unpaired_ratio_interval(baseline: Sequence[float], current: Sequence[float], confidence: float) -> RatioInterval:
    """Welch's interval of geomean(current) / geomean(baseline) over two sets of pages."""
    base, cur = _positive(baseline, "baseline"), _positive(current, "current")
    n1, n2 = len(base), len(cur)
    if min(n1, n2) < 2:
        raise ValueError("an unpaired interval needs at least two pages in each run")
    log_base, log_cur = np.log(base), np.log(cur)
    mean = float(log_cur.mean() - log_base.mean())
    v1, v2 = float(log_base.var(ddof=1)) / n1, float(log_cur.var(ddof=1)) / n2
    se = math.sqrt(v1 + v2)
    if se == 0.0:
        df = float(n1 + n2 - 2)  # no spread at all: the interval is the point, df does not matter
    else:
        df = (v1 + v2) ** 2 / (v1**2 / (n1 - 1) + v2**2 / (n2 - 1))
    half = student_t_quantile(_upper_probability(confidence), df) * se
    return RatioInterval(UNPAIRED, float(np.exp(log_base.mean())), float(np.exp(log_cur.mean())), math.exp(mean),
                         math.exp(mean - half), math.exp(mean + half), df, min(n1, n2))


def student_t_cdf(x: float, df: float) -> float:
    """P(T <= x) for Student's t with ``df`` > 0 degrees of freedom."""
    if df <= 0 or math.isnan(df):
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if math.isinf(x):
        return 1.0 if x > 0 else 0.0
    # P(|T| > |x|) = I_{df / (df + x^2)}(df / 2, 1 / 2)
    tail = 0.5 * regularized_beta(df / (df + x * x), df / 2.0, 0.5)
    return 1.0 - tail if x > 0 else tail


@lru_cache(maxsize=1024)
def student_t_quantile(p: float, df: float) -> float:
    """The x with P(T <= x) = p (0 < p < 1), by bisection on :func:`student_t_cdf`.

    Cached: the gate asks for the same few (p, df) pairs over and over.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"probability must lie in (0, 1), got {p}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < p:
        low, high = high, high * 2.0
    for _ in range(QUANTILE_MAX_STEPS):
        middle = (low + high) / 2.0
        if student_t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low <= QUANTILE_TOLERANCE * high:
            break
    return (low + high) / 2.0


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularized incomplete beta function, for 0 <= x <= 1 and a, b > 0."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must lie in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    # The continued fraction converges fast below the mean of the beta distribution; above
    # it, use I_x(a, b) = 1 - I_{1-x}(b, a).
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - regularized_beta(1.0 - x, b, a)
    log_front = a * math.log(x) + b * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    return math.exp(log_front) / a * _beta_fraction(x, a, b)


def _beta_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction 1 / (1 + d1 / (1 + d2 / (1 + ...))) of I_x(a, b), by Lentz's method.

    Its coefficients: d_{2m} = m (b - m) x / ((a + 2m - 1)(a + 2m)) and
    d_{2m+1} = -(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1)).
    """
    value, numerator_ratio, denominator = 1.0, 1.0, 0.0  # f, C, D of Lentz's recurrence (f_0 = 1)
    for step in range(1, BETA_MAX_STEPS + 1):
        m = step // 2
        if step % 2:
            coefficient = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:
            coefficient = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        denominator = 1.0 + coefficient * denominator
        denominator = 1.0 / (denominator if abs(denominator) > TINY else TINY)
        numerator_ratio = 1.0 + coefficient / numerator_ratio
        numerator_ratio = numerator_ratio if abs(numerator_ratio) > TINY else TINY
        change = numerator_ratio * denominator
        value *= change
        if abs(change - 1.0) < BETA_TOLERANCE:
            break
    # The fraction computed is 1 + d1 / (1 + d2 / ...); I_x needs its reciprocal.
    return 1.0 / value


def _upper_probability(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    return 1.0 - (1.0 - confidence) / 2.0


def _positive(values: Sequence[float], what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or not np.all(np.isfinite(array)) or np.any(array <= 0):
        raise ValueError(f"{what} values must be finite and positive, got {list(values)}")
    return array
