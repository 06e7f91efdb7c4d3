"""The regression gate on synthetic samples with fixed seeds: its verdicts, its inputs, its report."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from report_factory import image_run, make_metrics, noisy_runs, page_rounds, typed

from pytest_dsocr.errors import DsocrError
from pytest_dsocr.report.gate import (
    IMPROVED,
    INCONCLUSIVE,
    INSUFFICIENT,
    PAIRED,
    REGRESSED,
    REGRESSION_FILE,
    UNPAIRED,
    VERDICTS,
    WITHIN_THRESHOLD,
    GateResult,
    GateRow,
    classify,
    compare_runs,
    judge,
    load_baseline,
    page_key,
    page_medians,
    page_name,
    parse_inconclusive,
    parse_min_pages,
    parse_stage_thresholds,
    parse_threshold,
    run_gate,
    values_by_page,
)
from pytest_dsocr.report.metrics import write_metrics

GOLDEN = Path(__file__).parent / "data" / "golden"
SAMPLES = 20
NOISE = 0.05
STAGES = ["prefill", "vision", "sam", "clip", "projector", "decode", "ttft", "tpot", "e2e"]
FAR = 1000  # page numbers this far apart never pair


def run(factor=1.0, *, seed, count=SAMPLES, pages=True, first_page=0, **kwargs):
    return make_metrics(noisy_runs(count, factor=factor, noise=NOISE, seed=seed, pages=pages, first_page=first_page),
                        **kwargs)


def verdicts(result):
    return {row.stage: row.verdict for row in result.rows}


def prefill_row(result):
    return next(row for row in result.rows if row.stage == "prefill")


def pages_metrics(prefill_ms, **kwargs):
    """A metrics dict of pages whose prefill rounds are given (page i: prefill_ms[i])."""
    return make_metrics(page_rounds(prefill_ms, **kwargs))


# --- verdicts on whole runs ------------------------------------------------------------------


@pytest.mark.parametrize("pages", [True, False], ids=["paired", "unpaired"])
def test_true_20_percent_slowdown_is_caught(pages):
    """Paired: the same pages in both runs. Unpaired: the current run measured other pages (of
    the same size, as two samples from one dataset would be)."""
    current_first = 0 if pages else FAR
    result = compare_runs(run(seed=1, pages=pages), run(1.20, seed=2, pages=pages, first_page=current_first))
    assert result.failed and result.status == "failed"
    assert [row.stage for row in result.rows] == STAGES
    assert set(verdicts(result).values()) == {REGRESSED}
    assert {row.method for row in result.rows} == {PAIRED if pages else UNPAIRED}
    for row in result.rows:
        assert row.ci_low > 1.10
        assert 1.1 < row.ratio < 1.3
        assert (row.n_baseline, row.n_current) == (SAMPLES, SAMPLES)


@pytest.mark.parametrize("seed", [10, 20, 30, 40, 50])
def test_pure_noise_at_the_same_spread_passes(seed):
    result = compare_runs(run(seed=seed), run(seed=seed + 1))
    assert not result.failed and result.status == "passed"
    assert set(verdicts(result).values()) == {WITHIN_THRESHOLD}
    assert "**Regression gate: passed**" in result.headline()


def test_three_percent_shift_under_a_ten_percent_threshold_passes():
    """Nearly always: of 200 seeded draws of 20 pages at 5% noise, at least 180 are within
    threshold, and none is called regressed (the interval's upper end reaches 1.10 rarely)."""
    rng = np.random.default_rng(11)
    found = []
    for _ in range(200):
        sizes = 100.0 * (1 + np.arange(SAMPLES) % 4)
        base = sizes * (1 + NOISE * rng.standard_normal(SAMPLES))
        current = 1.03 * sizes * (1 + NOISE * rng.standard_normal(SAMPLES))
        found.append(judge("prefill", {str(i): [v] for i, v in enumerate(base)},
                           {str(i): [v] for i, v in enumerate(current)}, threshold=0.10).verdict)
    assert found.count(WITHIN_THRESHOLD) >= 180
    assert set(found) <= {WITHIN_THRESHOLD, INCONCLUSIVE}
    result = compare_runs(run(seed=5), run(1.03, seed=6), threshold=0.10)
    assert not result.failed and result.status == "passed"


def test_the_same_shift_fails_under_a_zero_threshold():
    """Guards the test above: a 10% shift is real and detectable at this spread."""
    result = compare_runs(run(seed=3), run(1.10, seed=4), threshold=0.0)
    assert result.failed and set(verdicts(result).values()) == {REGRESSED}


def test_improvement_is_reported_and_passes():
    result = compare_runs(run(seed=5), run(0.75, seed=6))
    assert not result.failed and result.status == "passed"
    assert set(verdicts(result).values()) == {IMPROVED}


def test_identical_runs_are_within_threshold():
    metrics = run(seed=1)
    result = compare_runs(metrics, metrics)
    assert set(verdicts(result).values()) == {WITHIN_THRESHOLD}
    assert all(row.ratio == pytest.approx(1.0) and row.ci_low == pytest.approx(1.0) for row in result.rows)


def test_per_stage_threshold_overrides():
    result = compare_runs(run(seed=1), run(1.20, seed=2), per_stage={"decode": 0.5, "tpot": 0.5})
    found = verdicts(result)
    assert found["decode"] == WITHIN_THRESHOLD and found["tpot"] == WITHIN_THRESHOLD
    assert found["prefill"] == REGRESSED
    assert "threshold 50%" in result.markdown()


def test_a_threshold_for_an_unknown_stage_is_noted():
    result = compare_runs(run(seed=1), run(seed=2), per_stage={"decod": 0.5})
    assert "'decod' matches no compared stage" in result.markdown()


def test_only_stages_of_both_runs_are_compared():
    baseline = make_metrics([image_run(i, substage_ms={}) for i in range(8)])
    result = compare_runs(baseline, run(seed=1))
    assert [row.stage for row in result.rows] == ["prefill", "vision", "decode", "ttft", "tpot", "e2e"]


def test_medians_not_means_within_a_page():
    """One slow round of one page moves that page's mean by 3x but not its median."""
    rounds = [[100.0 * (1 + i % 4)] * 5 for i in range(6)]
    spiked = [list(r) for r in rounds]
    spiked[2][0] *= 10
    row = prefill_row(compare_runs(pages_metrics(rounds), pages_metrics(spiked)))
    assert row.verdict == WITHIN_THRESHOLD and row.ratio == pytest.approx(1.0)


# --- the page is the unit --------------------------------------------------------------------


def test_values_by_page_groups_rounds_and_epochs():
    runs = page_rounds([[10.0, 11.0, 12.0], [20.0, 21.0, 22.0]])
    runs.append(image_run(0, epoch=1, prefill_ms=13.0))
    grouped = values_by_page([r.to_json() for r in runs])
    assert grouped["prefill"] == {"page_000#300": [10.0, 11.0, 12.0, 13.0], "page_001#300": [20.0, 21.0, 22.0]}
    assert page_medians(grouped["prefill"]) == {"page_000#300": 11.5, "page_001#300": 21.0}
    assert set(grouped) >= {"prefill", "vision", "decode", "ttft", "e2e", "sam"}


@pytest.mark.parametrize("paired", [True, False], ids=["paired", "unpaired"])
def test_more_rounds_of_the_same_pages_do_not_narrow_the_interval(paired):
    """Rounds are reduced to one value per page first: ten copies of each round give exactly the
    interval of one (rounds counted as samples would shrink it by sqrt(10))."""
    rng = np.random.default_rng(3)
    base = [[v] for v in 100 * (1 + rng.random(8))]
    current = [[v * 1.05 * (1 + 0.05 * rng.standard_normal())] for (v,) in base]
    first = 0 if paired else FAR
    one = prefill_row(compare_runs(pages_metrics(base), pages_metrics(current, first_page=first)))
    many = prefill_row(compare_runs(pages_metrics([r * 10 for r in base]),
                                    pages_metrics([r * 10 for r in current], first_page=first)))
    assert one.method == many.method == (PAIRED if paired else UNPAIRED)
    assert (many.ci_low, many.ci_high) == pytest.approx((one.ci_low, one.ci_high))
    assert many.n_baseline == one.n_baseline == 8


# --- the minimum-pages rule, one for every path ------------------------------------------------


@pytest.mark.parametrize("paired", [True, False], ids=["paired", "unpaired"])
@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_fewer_than_six_pages_is_insufficient_on_every_path(count, paired):
    result = compare_runs(run(seed=1, count=count), run(1.5, seed=2, count=count, first_page=0 if paired else FAR))
    assert set(verdicts(result).values()) == {INSUFFICIENT}
    assert all(row.ci_low is None and row.method is None for row in result.rows)
    assert result.failed and result.status == "failed"  # no verdict fails by default ...
    assert "passed" not in result.headline() and "no verdict" in result.headline()
    warned = compare_runs(run(seed=1, count=count), run(1.5, seed=2, count=count), inconclusive="warn")
    assert not warned.failed and warned.status == "inconclusive"  # ... and is never a pass
    assert warned.headline().startswith("**Regression gate: INCONCLUSIVE (warn)**")


@pytest.mark.parametrize("paired", [True, False], ids=["paired", "unpaired"])
def test_six_pages_give_a_verdict_on_every_path(paired):
    result = compare_runs(run(seed=1, count=6, pages=False),
                          run(1.5, seed=2, count=6, pages=False, first_page=0 if paired else FAR))
    assert set(verdicts(result).values()) == {REGRESSED}
    assert {row.method for row in result.rows} == {PAIRED if paired else UNPAIRED}


def test_more_pages_never_give_less_of_a_verdict():
    """A clear 30% slowdown: no verdict below the minimum, then regressed for every count above."""
    found = {}
    for count in range(1, 13):
        result = compare_runs(run(seed=1, count=count), run(1.3, seed=2, count=count))
        found[count] = prefill_row(result).verdict
    assert [found[c] for c in range(1, 6)] == [INSUFFICIENT] * 5
    assert [found[c] for c in range(6, 13)] == [REGRESSED] * 7


def test_shared_pages_below_the_minimum_fall_back_to_unpaired_pages():
    """3 pages in common, 8 in each run: unpaired over the pages, never over rounds."""
    baseline = run(seed=1, count=8, pages=False)
    current = make_metrics(noisy_runs(3, seed=2, pages=False) + noisy_runs(5, seed=3, pages=False, first_page=FAR))
    row = prefill_row(compare_runs(baseline, current))
    assert row.method == UNPAIRED and (row.n_baseline, row.n_current) == (8, 8)


def test_min_pages_option():
    assert prefill_row(compare_runs(run(seed=1, count=4), run(seed=2, count=4), min_pages=4)).method == PAIRED
    assert parse_min_pages("6") == 6
    for bad in ("1", "six", "-3"):
        with pytest.raises(DsocrError, match="gate.min_pages"):
            parse_min_pages(bad)


# --- the cases of the issue, each with its right verdict now -----------------------------------


def test_one_page_four_rounds_thirty_percent_slower_is_insufficient_not_failed_on_rounds():
    """Four rounds of one page used to be four samples (Mann–Whitney p = 0.029: "FAILED")."""
    result = compare_runs(pages_metrics([[100.0, 101.0, 99.0, 100.5]]), pages_metrics([[130.0, 131.0, 129.0, 130.5]]))
    row = prefill_row(result)
    assert row.verdict == INSUFFICIENT and row.n_baseline == row.n_current == 1
    assert not result.regressions
    assert "no verdict for" in result.headline() and "passed" not in result.headline()


def test_two_pages_three_rounds_twenty_seven_percent_slower_is_never_passed():
    base = [[100.0, 102.0, 98.0], [200.0, 203.0, 199.0]]
    result = compare_runs(pages_metrics(base), pages_metrics([[v * 1.27 for v in r] for r in base]))
    assert prefill_row(result).verdict == INSUFFICIENT
    assert result.status == "failed" and "passed" not in result.markdown()
    warned = compare_runs(pages_metrics(base), pages_metrics([[v * 1.27 for v in r] for r in base]), inconclusive="warn")
    assert warned.status == "inconclusive" and "passed" not in warned.markdown()


def test_five_of_six_pages_thirty_percent_slower_one_faster_is_a_regression():
    """At 6 pages x 1 round the signed-rank test could not go below p = 0.0625 here: "passed"."""
    base = [[100.0 * (1 + i)] for i in range(6)]
    factors = [1.28, 1.29, 1.30, 1.31, 1.32, 0.99]
    current = [[b * f] for (b,), f in zip(base, factors)]
    result = compare_runs(pages_metrics(base), pages_metrics(current))
    row = prefill_row(result)
    assert row.method == PAIRED and row.verdict == REGRESSED and row.ci_low > 1.10
    assert result.failed and result.headline().startswith("**Regression gate: FAILED**")


def test_inconclusive_stage_is_not_passed():
    """A stage whose interval straddles 1 + threshold: no verdict; fails by default, warns on request."""
    base = [[100.0 * (1 + i)] for i in range(6)]
    factors = [1.35, 0.92, 1.25, 1.02, 1.30, 0.97]  # geometric mean 1.12, wide spread
    current = [[b * f] for (b,), f in zip(base, factors)]
    failing = compare_runs(pages_metrics(base), pages_metrics(current))
    assert prefill_row(failing).verdict == INCONCLUSIVE
    assert failing.failed and failing.status == "failed"
    assert failing.headline().startswith("**Regression gate: FAILED (inconclusive)**")
    warned = compare_runs(pages_metrics(base), pages_metrics(current), inconclusive="warn")
    assert not warned.failed and warned.status == "inconclusive"
    assert warned.headline().startswith("**Regression gate: INCONCLUSIVE (warn)**")
    assert "passed" not in warned.headline()


def test_ratio_is_current_over_baseline_the_geometric_mean_of_page_ratios():
    """The table's Ratio is exactly Current / Baseline and the geometric mean of the per-page
    ratios; the median of the per-page ratios (what the column used to show) differs here."""
    base = [8.0, 8.2, 8.32, 8.5, 9.0, 9.5]
    ratios = [0.80, 0.85, 1.008, 1.010, 1.012, 1.015]
    current = [b * r for b, r in zip(base, ratios)]
    row = prefill_row(compare_runs(pages_metrics([[b] for b in base]), pages_metrics([[c] for c in current])))
    geometric = math.exp(np.mean(np.log(ratios)))
    assert row.ratio == pytest.approx(geometric, rel=1e-12)
    assert row.ratio == pytest.approx(row.current / row.baseline, rel=1e-12)
    assert row.baseline == pytest.approx(math.exp(np.mean(np.log(base))))
    assert abs(row.ratio - float(np.median(ratios))) > 0.05
    result = compare_runs(pages_metrics([[b] for b in base]), pages_metrics([[c] for c in current]))
    line = next(line for line in result.markdown().splitlines() if line.startswith("| prefill |"))
    assert f"| {row.baseline:.2f} | {row.current:.2f} | {row.ratio:.3f} [" in line
    assert "Ratio = Current / Baseline" in result.markdown()


@pytest.mark.parametrize(
    ("low", "high", "verdict"),
    [
        (0.865, 0.926, WITHIN_THRESHOLD),  # a confirmed speed-up smaller than 1 / 1.1: passes
        (0.944, 0.979, WITHIN_THRESHOLD),
        (0.80, 0.88, IMPROVED),
        (0.95, 1.08, WITHIN_THRESHOLD),
        (1.05, 1.12, INCONCLUSIVE),
        (0.85, 1.15, INCONCLUSIVE),
        (1.11, 1.30, REGRESSED),
    ],
)
def test_classify(low, high, verdict):
    assert classify(low, high, 0.10) == verdict


def test_labels_are_monotone_as_the_interval_moves():
    """Slide an interval of fixed width from slow to fast: the labels go regressed ->
    inconclusive -> within threshold -> improved, never back (speed-ups get consistent labels)."""
    order = [REGRESSED, INCONCLUSIVE, WITHIN_THRESHOLD, IMPROVED]
    for width in (0.01, 0.05, 0.2):
        labels = [classify(math.exp(c - width), math.exp(c + width), 0.10) for c in np.linspace(0.6, -0.6, 241)]
        ranks = [order.index(label) for label in labels]
        assert ranks == sorted(ranks) and labels[0] == REGRESSED and labels[-1] == IMPROVED


def test_every_verdict_is_named_once():
    assert len(set(VERDICTS)) == 5


# --- the t intervals against scipy's ---------------------------------------------------------


def test_paired_interval_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(4)
    base = np.exp(rng.normal(4, 0.6, size=7))
    current = base * np.exp(rng.normal(0.08, 0.05, size=7))
    row = judge("prefill", {str(i): [b] for i, b in enumerate(base)}, {str(i): [c] for i, c in enumerate(current)},
                threshold=0.1, alpha=0.05, min_pages=6)
    expected = stats.ttest_rel(np.log(current), np.log(base)).confidence_interval(0.95)
    assert (row.ci_low, row.ci_high) == pytest.approx((math.exp(expected.low), math.exp(expected.high)))


def test_unpaired_interval_matches_scipy_welch():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(5)
    base, current = np.exp(rng.normal(4, 0.3, size=6)), np.exp(rng.normal(4.2, 0.5, size=9))
    row = judge("prefill", {f"b{i}": [v] for i, v in enumerate(base)}, {f"c{i}": [v] for i, v in enumerate(current)},
                min_pages=6)
    expected = stats.ttest_ind(np.log(current), np.log(base), equal_var=False).confidence_interval(0.95)
    assert row.method == UNPAIRED
    assert (row.ci_low, row.ci_high) == pytest.approx((math.exp(expected.low), math.exp(expected.high)))


def test_t_distribution_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    from pytest_dsocr.report.ttest import regularized_beta, student_t_cdf, student_t_quantile

    for df in (1, 2, 3.5, 5, 11, 40, 1e4):
        for p in (0.6, 0.9, 0.975, 0.995, 0.025):
            assert student_t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)
        for x in (-20.0, -1.5, 0.0, 0.7, 4.0):
            assert student_t_cdf(x, df) == pytest.approx(stats.t.cdf(x, df), abs=1e-10)
    special = pytest.importorskip("scipy.special")
    for a, b, x in ((0.5, 0.5, 0.3), (2.5, 0.5, 0.99), (30.0, 0.5, 0.2), (1.0, 3.0, 0.5)):
        assert regularized_beta(x, a, b) == pytest.approx(special.betainc(a, b, x), rel=1e-10)


# --- metrics.json without per-page samples ---------------------------------------------------


def without_samples(metrics):
    del metrics["samples"]
    return metrics


def test_metrics_without_samples_one_round_compare_unpaired():
    """Without samples, one round per page: each raw value is one page; they never pair."""
    result = compare_runs(without_samples(run(seed=1, pages=False)), without_samples(run(1.2, seed=2, pages=False)))
    assert prefill_row(result).method == UNPAIRED and prefill_row(result).verdict == REGRESSED
    assert {"prefill", "decode", "ttft", "e2e"} <= {row.stage for row in result.rows}
    assert "no per-page samples" in result.markdown()


def test_metrics_without_samples_several_rounds_get_no_verdict():
    baseline = without_samples(run(seed=1))
    baseline["counts"]["rounds"] = 3
    result = compare_runs(baseline, run(1.2, seed=2))
    assert prefill_row(result).verdict == INSUFFICIENT
    assert "cannot be reduced to pages" in result.markdown()


def test_pairing_sees_through_the_spread_between_pages():
    """Pages of 1x to 4x the work: unpaired, a 20% slowdown drowns in that spread; paired it shows."""
    unpaired = compare_runs(without_samples(run(seed=1)), without_samples(run(1.2, seed=2)))
    assert prefill_row(unpaired).method == UNPAIRED and prefill_row(unpaired).verdict == INCONCLUSIVE
    paired = compare_runs(run(seed=1), run(1.2, seed=2))
    assert prefill_row(paired).method == PAIRED and prefill_row(paired).verdict == REGRESSED


# --- the result: status, headline, markdown ---------------------------------------------------


def row(stage, verdict, ratio=1.0, low=0.98, high=1.02, **kwargs):
    fields = dict(stage=stage, baseline=100.0, current=100.0 * ratio, ratio=ratio, ci_low=low, ci_high=high,
                  threshold=0.10, verdict=verdict, method=PAIRED, pages=6, n_baseline=6, n_current=6)
    fields.update(kwargs)
    return GateRow(**fields)


@pytest.mark.parametrize(
    ("verdicts_", "policy", "failed", "status", "headline"),
    [
        ([WITHIN_THRESHOLD, IMPROVED], "fail", False, "passed", "**Regression gate: passed**"),
        ([WITHIN_THRESHOLD, INCONCLUSIVE], "fail", True, "failed", "**Regression gate: FAILED (inconclusive)**"),
        ([WITHIN_THRESHOLD, INCONCLUSIVE], "warn", False, "inconclusive", "**Regression gate: INCONCLUSIVE (warn)**"),
        ([WITHIN_THRESHOLD, INSUFFICIENT], "warn", False, "inconclusive", "**Regression gate: INCONCLUSIVE (warn)**"),
        ([REGRESSED, INCONCLUSIVE], "warn", True, "failed", "**Regression gate: FAILED**: 1 stage(s) regressed"),
        ([], "fail", True, "failed", "**Regression gate: FAILED (inconclusive)**: no verdict for no stage"),
        ([], "warn", False, "inconclusive", "**Regression gate: INCONCLUSIVE (warn)**"),
    ],
)
def test_status_and_headline(verdicts_, policy, failed, status, headline):
    result = GateResult(tuple(row(f"s{i}", v) for i, v in enumerate(verdicts_)), threshold=0.10, inconclusive=policy)
    assert (result.failed, result.status) == (failed, status)
    assert result.headline().startswith(headline)
    if status != "passed":
        assert "passed" not in result.headline()
    assert result.to_json()["status"] == status and result.to_json()["inconclusive"] == policy


@pytest.mark.parametrize(("text", "value"), [(None, "fail"), ("fail", "fail"), ("warn", "warn"), (" WARN ", "warn")])
def test_parse_inconclusive(text, value):
    assert parse_inconclusive(text) == value


@pytest.mark.parametrize("bad", ["", "pass", "ignore", "1"])
def test_parse_inconclusive_names_the_option_and_value(bad):
    with pytest.raises(DsocrError, match=f"--dsocr-gate-inconclusive={bad!r}: expected one of fail, warn"):
        parse_inconclusive(bad)
    with pytest.raises(DsocrError, match="gate.inconclusive"):
        parse_inconclusive(bad, "gate.inconclusive")
    with pytest.raises(DsocrError, match="--dsocr-gate-inconclusive"):
        GateResult((), threshold=0.1, inconclusive=bad)


@pytest.mark.parametrize(
    ("text", "value"),
    [("10%", 0.10), ("0.1", 0.1), ("2.5%", 0.025), (" 15% ", 0.15), ("0%", 0.0), (0.2, 0.2), ("1", 1.0)],
)
def test_parse_threshold(text, value):
    assert parse_threshold(text) == pytest.approx(value)


@pytest.mark.parametrize("bad", ["abc", "10", "-5%", "nan%", "", "inf", "%"])
def test_parse_threshold_names_the_option(bad):
    with pytest.raises(DsocrError, match="--dsocr-max-regression"):
        parse_threshold(bad)


def test_parse_stage_thresholds_names_the_key():
    assert parse_stage_thresholds({"decode": "5%"}) == {"decode": pytest.approx(0.05)}
    with pytest.raises(DsocrError, match="gate.per_stage.decode"):
        parse_stage_thresholds({"decode": "fast"})


def test_incomplete_runs_are_noted():
    result = compare_runs(run(seed=1, complete=False, reason="SIGTERM"), run(seed=2))
    assert "baseline run is incomplete (SIGTERM)" in result.markdown()


def test_load_baseline_file_or_run_dir(tmp_path: Path):
    metrics = run(seed=1)
    write_metrics(tmp_path, typed(metrics))
    assert load_baseline(tmp_path)["aggregates"] == json.loads(json.dumps(metrics["aggregates"]))
    assert load_baseline(tmp_path / "metrics.json")["schema_version"] == metrics["schema_version"]


def test_load_baseline_errors(tmp_path: Path):
    with pytest.raises(DsocrError, match="--dsocr-baseline=.*does not exist"):
        load_baseline(tmp_path / "missing.json")
    with pytest.raises(DsocrError, match="has no metrics.json"):
        load_baseline(tmp_path)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(DsocrError, match="not valid JSON"):
        load_baseline(broken)
    other = tmp_path / "other.json"
    other.write_text('{"benchmarks": []}', encoding="utf-8")
    with pytest.raises(DsocrError, match="not a pytest-dsocr metrics.json"):
        load_baseline(other)


def test_run_gate_writes_regression_md(tmp_path: Path):
    write_metrics(tmp_path / "base", typed(run(seed=1)))
    result = run_gate(run(1.2, seed=2), tmp_path / "base", "10%", per_stage={"decode": "50%"}, run_dir=tmp_path / "cur")
    assert result.failed
    text = (tmp_path / "cur" / REGRESSION_FILE).read_text(encoding="utf-8")
    assert text.startswith("## Regression gate")
    assert "| Stage | Pages | Baseline (ms) | Current (ms) | Ratio [95% CI] | Verdict |" in text
    with pytest.raises(DsocrError, match="--dsocr-max-regression"):
        run_gate(run(seed=2), tmp_path / "base", "ten")
    with pytest.raises(DsocrError, match="--dsocr-gate-inconclusive"):
        run_gate(run(seed=2), tmp_path / "base", "10%", inconclusive="sometimes")


def test_run_gate_inconclusive_option(tmp_path: Path):
    small = run(seed=1, count=3)
    assert run_gate(run(seed=2, count=3), small).status == "failed"
    warned = run_gate(run(seed=2, count=3), small, inconclusive="warn", run_dir=tmp_path)
    assert warned.status == "inconclusive" and not warned.failed
    assert "INCONCLUSIVE (warn)" in (tmp_path / REGRESSION_FILE).read_text(encoding="utf-8")


def test_gate_markdown_golden():
    """Rows fixed by hand: the golden pins the table layout, not the statistics."""
    rows = (
        GateRow("prefill", 100.0, 121.5, 1.215, 1.18, 1.25, 0.10, REGRESSED, PAIRED, 6, 6, 6),
        GateRow("decode", 300.0, 303.0, 1.01, 0.98, 1.04, 0.05, WITHIN_THRESHOLD, PAIRED, 6, 6, 6),
        GateRow("clip", 8.0, 7.0, 0.875, 0.80, 0.88, 0.10, IMPROVED, UNPAIRED, 6, 6, 8),
        GateRow("projector", 1.0, 1.1, 1.1, 0.9, 1.3, 0.10, INCONCLUSIVE, PAIRED, 6, 6, 6),
        GateRow("sam", 30.0, 33.0, 1.1, None, None, 0.10, INSUFFICIENT, None, 2, 2, 2,
                detail="2 pages in both runs, 2 vs 2 in all; a verdict needs 6"),
    )
    from pytest_dsocr.report.compatibility import ABSENT, Difference

    differences = (Difference("config.infer.decode_backend", "eager", "static"), Difference("weights.files", ABSENT, {}))
    result = GateResult(rows, threshold=0.10, differences=differences, notes=("the baseline run is incomplete (x).",))
    text = result.markdown(heading=True)
    path = GOLDEN / "regression.md"
    if os.environ.get("DSOCR_UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")
    assert result.failed and result.to_json()["rows"][0]["verdict"] == REGRESSED
    assert result.to_json()["differences"][0] == {"key": "config.infer.decode_backend", "baseline": "eager",
                                                  "current": "static"}


def test_page_name_is_the_sample_id_of_a_page_key_even_with_a_hash_in_it():
    assert page_name(page_key("scan#2", 939)) == "scan#2"
    assert page_name(page_key("page_001", None)) == "page_001"
