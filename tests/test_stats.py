"""The statistics helper against numpy references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pytest_dsocr.report.stats import Stats, bootstrap_ci

VALUES = [12.5, 10.0, 11.25, 30.0, 9.5, 10.75, 11.0, 13.5]


def reference_ci(values, n_boot=2000, seed=0, level=0.95):
    """Percentile bootstrap of the mean, written out with plain numpy."""
    array = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = array[rng.integers(0, len(array), size=(n_boot, len(array)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return tuple(np.percentile(means, [tail, 100 - tail]))


def test_from_values_matches_numpy():
    stats = Stats.from_values(VALUES)
    array = np.asarray(VALUES)
    assert stats.count == len(VALUES)
    assert stats.mean == pytest.approx(array.mean())
    assert stats.std == pytest.approx(array.std(ddof=1))
    assert stats.min == 9.5 and stats.max == 30.0
    for name, q in (("p50", 50), ("p90", 90), ("p95", 95), ("p99", 99)):
        assert getattr(stats, name) == pytest.approx(np.percentile(array, q))
    assert stats.unit == "ms"
    assert stats.values == VALUES


def test_bootstrap_ci_matches_reference_and_brackets_the_mean():
    stats = Stats.from_values(VALUES)
    low, high = reference_ci(VALUES)
    assert (stats.ci_low, stats.ci_high) == pytest.approx((low, high))
    assert stats.ci_low < stats.mean < stats.ci_high
    assert stats.ci_level == 0.95


def test_bootstrap_ci_is_reproducible_and_seeded():
    assert Stats.from_values(VALUES) == Stats.from_values(VALUES)
    other = Stats.from_values(VALUES, seed=1)
    assert (other.ci_low, other.ci_high) != (Stats.from_values(VALUES).ci_low, Stats.from_values(VALUES).ci_high)


def test_bootstrap_in_blocks_equals_one_draw():
    """Long runs are resampled in blocks; the interval must not depend on that."""
    values = np.random.default_rng(3).lognormal(size=1500)
    assert bootstrap_ci(values, np.mean) == pytest.approx(reference_ci(values))


def test_wider_level_gives_wider_interval():
    narrow = Stats.from_values(VALUES, ci_level=0.8)
    wide = Stats.from_values(VALUES, ci_level=0.99)
    assert wide.ci_low < narrow.ci_low and wide.ci_high > narrow.ci_high


def test_single_value():
    stats = Stats.from_values([4.0], unit="tokens")
    assert (stats.count, stats.mean, stats.std, stats.p99, stats.ci_low, stats.ci_high) == (1, 4.0, 0.0, 4.0, 4.0, 4.0)
    assert stats.unit == "tokens"


def test_empty_input_invents_nothing():
    stats = Stats.from_values([])
    assert stats.count == 0 and stats.values == []
    for name in ("mean", "std", "min", "p50", "p90", "p95", "p99", "max", "ci_low", "ci_high"):
        assert getattr(stats, name) is None, name


def test_none_means_not_measured():
    assert Stats.from_values([None, 2.0, None, 4.0]).values == [2.0, 4.0]
    assert Stats.from_values([None]).count == 0


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_values_are_refused(bad):
    with pytest.raises(ValueError, match="non-finite"):
        Stats.from_values([1.0, bad])


def test_bad_ci_level():
    with pytest.raises(ValueError, match="ci_level"):
        Stats.from_values(VALUES, ci_level=95)


def test_to_json_has_every_field():
    data = Stats.from_values([1, 2, 3], unit="tokens/s").to_json()
    assert list(data) == [
        "count", "mean", "std", "min", "p50", "p90", "p95", "p99", "max",
        "ci_low", "ci_high", "ci_level", "unit", "values",
    ]
    assert data["values"] == [1.0, 2.0, 3.0] and data["unit"] == "tokens/s"


def test_to_json_is_every_field_in_order():
    from dataclasses import asdict, fields

    stats = Stats.from_values([1.0, 2.5, 4.0])
    assert stats.to_json() == asdict(stats) and list(stats.to_json()) == [f.name for f in fields(Stats)]
    assert Stats.from_json(stats.to_json()) == stats
