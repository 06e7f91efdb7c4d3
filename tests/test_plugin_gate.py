"""The regression gate and the metrics hook through real pytest sessions (pytester)."""

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
# All six bundled pages (a verdict needs at least six paired samples), two tokens each.
QUICK = [
    "-m", "direct_inference", "-p", "no:cacheprovider",
    "--dsocr-set", "infer.max_new_tokens=2", "--dsocr-set", "infer.warmup_rounds=0",
]
TIME_KEYS = ("preprocess_ms", "prefill_ms", "decode_ms", "vision_ms", "ttft_ms")


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory, inference_modules_loaded):
    """One measured run of the six pages, shared by the gate tests."""
    pytester_dir = tmp_path_factory.mktemp("baseline")
    # A module name of its own: pytest.main leaves the module imported in this process.
    (pytester_dir / "test_baseline_stage.py").write_text((BENCHMARKS / "test_direct_inference.py").read_text())
    run_dir = pytester_dir / "run"
    result = pytest.main([str(pytester_dir), "--rootdir", str(pytester_dir), "--dsocr-run-dir", str(run_dir),
                          "-q", *QUICK])
    sys.modules.pop("test_baseline_stage", None)
    assert result == 0
    return json.loads((run_dir / "metrics.json").read_text())


def scaled(metrics: dict, factor: float) -> dict:
    """A copy whose every per-sample time is multiplied by ``factor``."""
    copy = json.loads(json.dumps(metrics))
    for sample in copy["samples"]:
        for key in TIME_KEYS:
            sample[key] *= factor
        sample["substage_ms"] = {k: v * factor for k, v in sample["substage_ms"].items()}
    return copy


@pytest.fixture
def stage_dir(pytester, inference_modules_loaded):
    pytester.makepyfile(test_direct_inference=(BENCHMARKS / "test_direct_inference.py").read_text())
    return pytester


def test_a_large_slowdown_fails_the_session(stage_dir, baseline_run, tmp_path):
    # The baseline was 1000 times faster on every page: a regression beyond any noise or machine load.
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(scaled(baseline_run, 0.001)))
    run_dir = tmp_path / "run"
    result = stage_dir.runpytest(*QUICK, "--dsocr-run-dir", str(run_dir), "--dsocr-baseline", str(baseline),
                                 "--dsocr-max-regression", "10%")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=6)  # every test passed: only the gate failed the session
    result.stdout.fnmatch_lines(["*Regression gate: FAILED*", "*| Stage | Pages | Baseline (ms) | Current (ms) | Ratio*"])
    assert "| regressed |" in result.stdout.str()
    assert "regressed" in (run_dir / "regression.md").read_text()
    assert "Regression gate" in (run_dir / "stakeholder_summary.md").read_text()


def test_a_faster_run_passes_the_gate(stage_dir, baseline_run, tmp_path):
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(scaled(baseline_run, 1000.0)))  # far beyond any machine noise (a loaded machine ran 25x slower)
    result = stage_dir.runpytest(*QUICK, "--dsocr-run-dir", str(tmp_path / "run"), "--dsocr-baseline", str(baseline))
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-4000:]
    assert "| improved |" in result.stdout.str()
    assert "| regressed |" not in result.stdout.str()


def test_a_baseline_of_another_model_is_refused(stage_dir, baseline_run, tmp_path):
    other = json.loads(json.dumps(baseline_run))
    other["config"]["model"]["size"] = "full"
    other["identity"]["config"]["model"]["size"] = "full"
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(other))
    result = stage_dir.runpytest(*QUICK, "--dsocr-run-dir", str(tmp_path / "run"), "--dsocr-baseline", str(baseline))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    # refused before any model is built or any page measured: no run dir at all
    result.stderr.fnmatch_lines(["*pytest-dsocr: baseline is not comparable*config.model.size (full vs tiny)*"])
    assert not (tmp_path / "run").exists()


def test_forced_baseline_records_its_differences(stage_dir, baseline_run, tmp_path):
    other = json.loads(json.dumps(baseline_run))
    other["identity"]["config"]["infer"]["temperature"] = 0.5
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(other))
    run_dir = tmp_path / "run"
    result = stage_dir.runpytest(*QUICK, "--dsocr-run-dir", str(run_dir), "--dsocr-baseline", str(baseline),
                                 "--dsocr-baseline-force", "--dsocr-gate-inconclusive", "warn")
    result.assert_outcomes(passed=6)
    text = (run_dir / "regression.md").read_text()
    assert "- `config.infer.temperature`: `0.5` (baseline) vs `0.0` (current)" in text


def test_metrics_hook_adds_fields(stage_dir, tmp_path):
    stage_dir.makeconftest("""
        def pytest_dsocr_update_metrics(config, metrics):
            metrics["team"] = {"owner": "perf", "samples_seen": len(metrics["samples"])}
    """)
    run_dir = tmp_path / "run"
    result = stage_dir.runpytest(*QUICK, "--dsocr-run-dir", str(run_dir),
                                 "--dsocr-set", "dataset.sampling.num_samples_per_epoch=1")
    result.assert_outcomes(passed=1)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["team"] == {"owner": "perf", "samples_seen": 1}


def test_benchmark_json_carries_stage_timings(stage_dir, tmp_path):
    out = tmp_path / "bench.json"
    result = stage_dir.runpytest(*QUICK, "--dsocr-run-dir", str(tmp_path / "run"), f"--benchmark-json={out}",
                                 "--dsocr-set", "dataset.sampling.num_samples_per_epoch=1")
    result.assert_outcomes(passed=1)
    data = json.loads(out.read_text())
    extra = data["benchmarks"][0]["extra_info"]
    assert {"prefill_ms", "decode_ms", "vision_ms", "sam_ms", "clip_ms", "projector_ms"} <= set(extra)
    assert data["dsocr"]["run_dir"] == str(tmp_path / "run")
    assert "stage_ms" in data["dsocr"]["aggregates"]
