"""The static_analysis and sweep stage files through the plugin (pytester)."""

import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
QUICK = [
    "-p", "no:cacheprovider",
    "--dsocr-set", "dataset.sampling.num_samples_per_epoch=1",
    "--dsocr-set", "infer.max_new_tokens=3",
    "--dsocr-set", "infer.warmup_rounds=0",
]


@pytest.fixture
def stages(pytester, inference_modules_loaded, monkeypatch):
    """A pytester dir with direct_inference, static_analysis and sweep; no GPU is detected."""
    from pytest_dsocr import hardware

    monkeypatch.setattr(hardware, "detect_device_name", lambda: None)
    for name in ("test_direct_inference", "test_static_analysis", "test_sweeps"):
        pytester.makepyfile(**{name: (BENCHMARKS / f"{name}.py").read_text()})
    return pytester


def test_static_analysis_and_sweep_stages(stages, tmp_path):
    run = tmp_path / "run"
    result = stages.runpytest("-m", "static_analysis or sweep", "--dsocr-run-dir", str(run), *QUICK)
    result.assert_outcomes(passed=2)
    report = json.loads((run / "static_analysis" / "static_compute.json").read_text())
    assert report["flop_counter"]["within_tolerance"]
    assert "FlopCounterMode cross-check" in (run / "static_analysis" / "static_compute.md").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    assert "no measured runs" in metrics["efficiency"]["omitted"]
    assert set(metrics["static_analysis"]["stages"]) >= {"sam", "clip", "projector", "vision", "prefill", "decode"}
    assert metrics["sweep"]["points"]["vision_crops"] == 23
    for name in ("vision_crops", "vision_prefill", "decode"):
        assert (run / "sweeps" / f"{name}.csv").is_file()
    summary = (run / "stakeholder_summary.md").read_text()
    assert "## Static Analysis" in summary and "## Efficiency (MFU/MBU)" in summary


def test_efficiency_after_cpu_runs_says_why_omitted(stages, tmp_path):
    run = tmp_path / "run"
    result = stages.runpytest("-m", "direct_inference or static_analysis", "--dsocr-run-dir", str(run),
                              "--dsocr-set", "static_analysis.flop_counter=false", *QUICK)
    result.assert_outcomes(passed=2)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["efficiency"]["omitted"].startswith("measured on cpu")
    # the static report describes the measured run's workload
    report = json.loads((run / "static_analysis" / "static_compute.json").read_text())
    sample = metrics["samples"][0]
    assert report["workload"]["prefill_tokens"] == sample["prefill_len"]
    assert report["workload"]["sources"]["crop_grid"] == "measured (most common)"
