"""Two-sided rank tests in numpy (scipy is not a dependency): Mann–Whitney U and Wilcoxon
signed-rank, exact for small samples without ties, normal approximation otherwise.

The choice of method follows scipy's, so its tests double as references (tests/test_gate.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Mann–Whitney: exact distribution when the smaller sample has at most this many values and
# nothing is tied (scipy's 'auto' rule); the normal approximation is accurate beyond it.
MWU_EXACT_MAX_SMALLER = 8
# Wilcoxon signed-rank: exact distribution up to this many non-zero differences without ties.
WILCOXON_EXACT_MAX_N = 50
CONTINUITY = 0.5


def mann_whitney_u(x: Sequence[float], y: Sequence[float]) -> float:
    """Two-sided p-value that ``x`` and ``y`` come from the same distribution."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        raise ValueError("mann_whitney_u needs two non-empty samples")
    ranks, ties = rank_average(np.concatenate([x, y]))
    u1 = float(ranks[:n1].sum()) - n1 * (n1 + 1) / 2
    u = max(u1, n1 * n2 - u1)
    if min(n1, n2) <= MWU_EXACT_MAX_SMALLER and not ties.any():
        counts = _mwu_counts(n1, n2)
        tail = sum(counts[math.ceil(u) :])
        return min(1.0, 2.0 * tail / math.comb(n1 + n2, n1))
    n = n1 + n2
    tie_term = float((ties**3 - ties).sum()) / (n * (n - 1))
    sigma = math.sqrt(n1 * n2 / 12.0 * ((n + 1) - tie_term))
    if sigma == 0.0:
        return 1.0
    z = (u - n1 * n2 / 2.0 - CONTINUITY) / sigma
    return min(1.0, _two_sided_normal(z))


def wilcoxon_signed_rank(differences: Sequence[float]) -> float:
    """Two-sided p-value that paired ``differences`` are symmetric around zero.

    Zero differences are dropped (Wilcoxon's own convention); none left gives p = 1.
    """
    d = np.asarray(differences, dtype=np.float64)
    d = d[d != 0.0]
    n = len(d)
    if n == 0:
        return 1.0
    ranks, ties = rank_average(np.abs(d))
    r_plus = float(ranks[d > 0].sum())
    total = n * (n + 1) / 2
    if n <= WILCOXON_EXACT_MAX_N and not ties.any():
        counts = _signed_rank_counts(n)
        low = sum(counts[: math.floor(r_plus) + 1])
        high = sum(counts[math.ceil(r_plus) :])
        return min(1.0, 2.0 * min(low, high) / 2**n)
    sigma = math.sqrt(n * (n + 1) * (2 * n + 1) / 24.0 - float((ties**3 - ties).sum()) / 48.0)
    if sigma == 0.0:
        return 1.0
    z = (abs(r_plus - total / 2) - CONTINUITY) / sigma
    return min(1.0, _two_sided_normal(z))


def rank_average(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ranks 1..n with ties given their average rank, and the size of every tie group (> 1)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    starts = np.concatenate([[0], boundaries])
    sizes = np.diff(np.concatenate([starts, [len(values)]]))
    average = starts + (sizes + 1) / 2.0  # 1-based average rank of each group
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(average, sizes)
    return ranks, sizes[sizes > 1].astype(np.float64)


def _two_sided_normal(z: float) -> float:
    """P(|Z| >= z) for a standard normal Z (z may be negative: then it is above 1, clipped later)."""
    return math.erfc(z / math.sqrt(2.0))


def _mwu_counts(n1: int, n2: int) -> list[int]:
    """Number of orderings of n1 + n2 distinct values giving each U = 0..n1*n2 (exact ints).

    The generating function is the Gaussian binomial prod_{i=1..m} (1 - q^(n+i)) / (1 - q^i)
    with m the smaller size; multiply and divide term by term (each division is exact).
    """
    m, n = sorted((n1, n2))
    size = m * n + 1
    poly = [1] + [0] * (size - 1)
    for i in range(1, m + 1):
        shift = n + i
        for k in range(size - 1, shift - 1, -1):
            poly[k] -= poly[k - shift]
        for k in range(i, size):
            poly[k] += poly[k - i]
    return poly


def _signed_rank_counts(n: int) -> list[int]:
    """Number of sign assignments of ranks 1..n giving each positive-rank sum (exact ints)."""
    total = n * (n + 1) // 2
    counts = [1] + [0] * total
    for rank in range(1, n + 1):
        for s in range(total, rank - 1, -1):
            counts[s] += counts[s - rank]
    return counts
