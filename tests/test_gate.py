"""The regression gate on synthetic samples with fixed seeds, its refusals and its inputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from report_factory import image_run, make_metrics, noisy_runs, typed

from pytest_dsocr.errors import DsocrError
from pytest_dsocr.report.gate import (
    IMPROVEMENT,
    INSUFFICIENT,
    LIKELY_NOISE,
    PAIRED,
    REGRESSION,
    REGRESSION_FILE,
    UNPAIRED,
    WITHIN_THRESHOLD,
    GateResult,
    GateRow,
    compare_runs,
    load_baseline,
    parse_stage_thresholds,
    parse_threshold,
    run_gate,
)
from pytest_dsocr.report.metrics import write_metrics
from pytest_dsocr.report.ranktests import mann_whitney_u, rank_average, wilcoxon_signed_rank

GOLDEN = Path(__file__).parent / "data" / "golden"
SAMPLES = 20
NOISE = 0.05
STAGES = ["prefill", "vision", "sam", "clip", "projector", "decode", "ttft", "tpot", "e2e"]


def run(factor=1.0, *, seed, count=SAMPLES, pages=True, **kwargs):
    return make_metrics(noisy_runs(count, factor=factor, noise=NOISE, seed=seed, pages=pages), **kwargs)


def verdicts(result):
    return {row.stage: row.verdict for row in result.rows}


@pytest.mark.parametrize("pages", [True, False], ids=["paired", "unpaired"])
def test_true_20_percent_slowdown_is_caught(pages):
    result = compare_runs(run(seed=1, pages=pages), run(1.20, seed=2, pages=pages))
    assert result.failed and result.status == "failed"
    assert [row.stage for row in result.rows] == STAGES
    assert set(verdicts(result).values()) == {REGRESSION}
    assert {row.method for row in result.rows} == {PAIRED}  # pages repeat their ids in both runs
    for row in result.rows:
        assert row.ci_low > 1.10 and row.p_value < 0.05
        assert 1.1 < row.ratio < 1.3


@pytest.mark.parametrize("seed", [10, 20, 30, 40, 50])
def test_pure_noise_at_the_same_spread_is_not_a_regression(seed):
    result = compare_runs(run(seed=seed), run(seed=seed + 1))
    assert not result.failed and result.status == "passed"
    assert set(verdicts(result).values()) <= {LIKELY_NOISE, WITHIN_THRESHOLD}


def test_three_percent_shift_under_a_ten_percent_threshold_passes():
    result = compare_runs(run(seed=3), run(1.03, seed=4), threshold=0.10)
    assert not result.failed and result.status == "passed"
    assert set(verdicts(result).values()) <= {LIKELY_NOISE, WITHIN_THRESHOLD}


def test_the_same_shift_fails_under_a_zero_threshold():
    """Guards the test above: a 10% shift is real and detectable at this spread."""
    result = compare_runs(run(seed=3), run(1.10, seed=4), threshold=0.0)
    assert result.failed


def test_improvement_is_reported_not_failed():
    result = compare_runs(run(seed=5), run(0.75, seed=6))
    assert not result.failed
    assert set(verdicts(result).values()) == {IMPROVEMENT}


def test_too_few_samples_is_said_never_passed():
    result = compare_runs(run(seed=1, count=2), run(2.0, seed=2, count=2))
    assert set(verdicts(result).values()) == {INSUFFICIENT}
    assert not result.failed and result.status == "no verdict"
    assert "no verdict" in result.markdown() and "passed" not in result.markdown()
    assert all(row.ci_low is None for row in result.rows)


def test_five_pages_cannot_reach_significance_so_no_verdict():
    """A signed-rank test on 5 pairs cannot go below p = 2/32: no verdict rather than "noise"."""
    result = compare_runs(run(seed=1, count=5), run(1.5, seed=2, count=5))
    assert set(verdicts(result).values()) == {INSUFFICIENT}
    assert "a paired verdict needs 6" in result.markdown()
    six = compare_runs(run(seed=1, count=6), run(1.5, seed=2, count=6))
    assert six.failed


def test_unpaired_when_the_pages_differ():
    baseline = make_metrics(noisy_runs(SAMPLES, seed=1, pages=False))
    current = make_metrics([image_run(100 + i, prefill_ms=r.prefill_ms * 1.2, decode_ms=r.decode_ms * 1.2,
                                      vision_ms=r.vision_ms * 1.2, preprocess_ms=r.preprocess_ms,
                                      substage_ms={k: v * 1.2 for k, v in r.substage_ms.items()})
                            for i, r in enumerate(noisy_runs(SAMPLES, seed=2, pages=False))])
    result = compare_runs(baseline, current)
    prefill = result.rows[0]
    assert prefill.method == UNPAIRED and prefill.verdict == REGRESSION


def test_medians_not_means():
    """One slow outlier moves the mean by more than 40% but not the median: no regression."""
    baseline = noisy_runs(SAMPLES, seed=7)
    current = list(baseline)
    slow = baseline[3]  # the largest page size
    current[3] = image_run(3, prefill_ms=slow.prefill_ms * 10, decode_ms=slow.decode_ms, vision_ms=slow.vision_ms,
                           preprocess_ms=slow.preprocess_ms, prefill_len=slow.prefill_len, substage_ms=slow.substage_ms)
    before, after = make_metrics(baseline), make_metrics(current)
    assert after["aggregates"]["prefill_ms"]["mean"] > 1.4 * before["aggregates"]["prefill_ms"]["mean"]
    assert verdicts(compare_runs(before, after))["prefill"] != REGRESSION


def test_per_stage_threshold_overrides():
    result = compare_runs(run(seed=1), run(1.20, seed=2), per_stage={"decode": 0.5, "tpot": 0.5})
    found = verdicts(result)
    assert found["decode"] != REGRESSION and found["tpot"] != REGRESSION
    assert found["prefill"] == REGRESSION
    assert "threshold 50%" in result.markdown()


def test_a_threshold_for_an_unknown_stage_is_noted():
    result = compare_runs(run(seed=1), run(seed=2), per_stage={"decod": 0.5})
    assert "'decod' matches no compared stage" in result.markdown()


def test_identical_runs():
    metrics = run(seed=1)
    result = compare_runs(metrics, metrics)
    assert set(verdicts(result).values()) == {LIKELY_NOISE}
    assert all(row.ratio == pytest.approx(1.0) for row in result.rows)


def test_only_stages_of_both_runs_are_compared():
    baseline = make_metrics([image_run(i, substage_ms={}) for i in range(8)])
    result = compare_runs(baseline, run(seed=1))
    assert [row.stage for row in result.rows] == ["prefill", "vision", "decode", "ttft", "tpot", "e2e"]


def without_samples(metrics):
    del metrics["samples"]
    return metrics


def test_metrics_without_samples_compare_unpaired():
    """A metrics.json that kept only the raw Stats values still gets verdicts."""
    result = compare_runs(without_samples(run(seed=1, pages=False)), without_samples(run(1.2, seed=2, pages=False)))
    assert result.rows[0].method == UNPAIRED and result.rows[0].verdict == REGRESSION
    assert {"prefill", "decode", "ttft", "e2e"} <= {row.stage for row in result.rows}


def test_pairing_sees_through_the_spread_between_pages():
    """Pages of 1x to 4x the work: unpaired, a 20% slowdown drowns in that spread; paired by page it shows."""
    unpaired = compare_runs(without_samples(run(seed=1)), without_samples(run(1.2, seed=2)))
    assert unpaired.rows[0].method == UNPAIRED and unpaired.rows[0].verdict != REGRESSION
    paired = compare_runs(run(seed=1), run(1.2, seed=2))
    assert paired.rows[0].method == PAIRED and paired.rows[0].verdict == REGRESSION


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"size": "full"}, "model.size (tiny vs full)"),
        ({"family": "deepseek_ocr2"}, "model.family"),
        ({"device": "cuda"}, "device (cpu vs cuda)"),
    ],
)
def test_refuses_another_model_or_device_unless_forced(change, named):
    baseline, current = run(seed=1), run(seed=2, **change)
    with pytest.raises(DsocrError, match="--dsocr-baseline-force") as excinfo:
        compare_runs(baseline, current)
    assert named in str(excinfo.value)
    forced = compare_runs(baseline, current, force=True)
    assert forced.rows and forced.mismatches
    assert "forced" in forced.markdown()


def test_profiler_runs_are_not_compared_with_plain_runs():
    baseline = make_metrics(noisy_runs(SAMPLES, seed=1))
    current = make_metrics(noisy_runs(SAMPLES, seed=2, stage="torch_profiler"))
    with pytest.raises(DsocrError, match="aggregated benchmark stage .direct_inference vs torch_profiler."):
        compare_runs(baseline, current)


def test_config_keys_are_compared():
    baseline, current = run(seed=1), run(seed=2)
    current["config"]["infer"]["max_new_tokens"] = 8192
    current["config"]["model"]["crop_mode"] = False
    with pytest.raises(DsocrError, match=r"crop_mode.*max_new_tokens"):
        compare_runs(baseline, current)


def test_another_gpu_of_the_same_kind_is_comparable():
    baseline, current = run(seed=1, device="cuda:0"), run(seed=2, device="cuda:1")
    assert compare_runs(baseline, current).rows


def test_incomplete_runs_are_noted():
    result = compare_runs(run(seed=1, complete=False, reason="SIGTERM"), run(seed=2))
    assert "baseline run is incomplete (SIGTERM)" in result.markdown()


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
    assert "| Stage | Baseline (ms) | Current (ms) | Ratio [CI] | Verdict |" in text
    with pytest.raises(DsocrError, match="--dsocr-max-regression"):
        run_gate(run(seed=2), tmp_path / "base", "ten")


def test_gate_markdown_golden():
    """Rows fixed by hand: the golden pins the table layout, not the statistics."""
    rows = [
        GateRow("prefill", 100.0, 121.5, 1.215, 1.18, 1.25, 0.0001, 0.10, REGRESSION, PAIRED, 20, 20),
        GateRow("decode", 300.0, 303.0, 1.01, 0.98, 1.04, 0.4, 0.05, LIKELY_NOISE, PAIRED, 20, 20),
        GateRow("sam", 30.0, 33.0, 1.1, None, None, None, 0.10, INSUFFICIENT, None, 2, 2,
                detail="2 vs 2 runs; need at least 3 in each"),
    ]
    result = GateResult(rows, threshold=0.10, alpha=0.05, n_boot=2000, min_samples=3)
    text = result.markdown(heading=True)
    path = GOLDEN / "regression.md"
    if os.environ.get("DSOCR_UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")
    assert result.failed and result.to_json()["rows"][0]["verdict"] == REGRESSION


# --- rank tests: numpy implementations against scipy's ------------------------------------------


def test_rank_average_ties():
    ranks, ties = rank_average(np.array([3.0, 1.0, 3.0, 2.0]))
    assert list(ranks) == [3.5, 1.0, 3.5, 2.0] and list(ties) == [2.0]


def test_rank_tests_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for trial in range(60):
        x = rng.normal(size=int(rng.integers(2, 14)))
        y = rng.normal(0.8, size=int(rng.integers(2, 14)))
        if trial % 3 == 0:  # ties: normal approximation with tie correction
            x, y = np.round(x), np.round(y)
        assert mann_whitney_u(x, y) == pytest.approx(stats.mannwhitneyu(x, y, alternative="two-sided").pvalue)
        d = rng.normal(0.3, size=int(rng.integers(1, 70)))
        if trial % 3 == 0:
            d = np.round(d, 1)
        nonzero = d[d != 0]
        if len(nonzero) == 0:
            continue
        tied = len(np.unique(np.abs(nonzero))) < len(nonzero)
        method = "exact" if len(nonzero) <= 50 and not tied else "approx"
        expected = stats.wilcoxon(d, method=method, correction=True, zero_method="wilcox").pvalue
        assert wilcoxon_signed_rank(d) == pytest.approx(expected), (trial, method)


def test_rank_tests_known_values():
    # complete separation of 4 vs 4: p = 2 / C(8, 4)
    assert mann_whitney_u([1, 2, 3, 4], [5, 6, 7, 8]) == pytest.approx(2 / 70)
    # six positive differences: p = 2 / 2**6
    assert wilcoxon_signed_rank([1, 2, 3, 4, 5, 6]) == pytest.approx(2 / 64)
    assert wilcoxon_signed_rank([0.0, 0.0]) == 1.0
