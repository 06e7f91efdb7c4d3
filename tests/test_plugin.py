"""The plugin end to end through pytester: options, run files, metrics.json keys, bad input."""

import json
from pathlib import Path

import pytest
from PIL import Image

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
# Small and quick: two pages, a few tokens, no warmup.
QUICK = [
    "-p", "no:cacheprovider",
    "--dsocr-set", "dataset.sampling.num_samples_per_epoch=2",
    "--dsocr-set", "infer.max_new_tokens=4",
    "--dsocr-set", "infer.warmup_rounds=0",
]
SKELETON_AGGREGATES = ("prefill_ms", "decode_ms", "tokens", "tokens_per_s")


@pytest.fixture
def stage_dir(pytester, inference_modules_loaded):
    """A pytester dir holding the direct_inference benchmark file."""
    source = (BENCHMARKS / "test_direct_inference.py").read_text()
    pytester.makepyfile(test_direct_inference=source)
    return pytester


def run_direct(pytester, run_dir, *args):
    return pytester.runpytest("-m", "direct_inference", "--dsocr-run-dir", str(run_dir), *QUICK, *args)


def test_direct_inference_writes_the_run(stage_dir, tmp_path):
    run_dir = tmp_path / "run"
    result = run_direct(stage_dir, run_dir, "--dsocr-set", "pipeline.direct_inference.output.prediction.enable=true")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*pytest-dsocr*", f"*run dir: {run_dir}*"])

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["complete"] is True
    for key in SKELETON_AGGREGATES:
        assert {"mean", "std"} <= set(metrics["aggregates"][key]), key
    assert set(metrics["aggregates"]["stage_ms"]) == {"prefill", "decode", "vision", "sam", "clip", "projector"}
    assert len(metrics["samples"]) == 2
    assert metrics["failures"] == []
    assert {"python", "torch", "transformers", "device"} <= set(metrics["env"])
    assert metrics["config"]["model"]["size"] == "tiny"
    sample = metrics["samples"][0]
    assert sample["tokens"] == 4
    for key in ("prefill_ms", "decode_ms", "tokens", "prefill_len", "vision_ms", "ttft_ms", "text_raw"):
        assert key in sample

    summary = (run_dir / "stakeholder_summary.md").read_text()
    for heading in ("Environment", "Aggregates", "Per-Stage Timings (ms)"):
        assert heading in summary
    assert "nest" in summary  # vision sub-stages nest inside prefill

    lines = (run_dir / "direct_inference" / "pred" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 2
    assert {"image_path", "text_raw"} <= set(json.loads(lines[0]))
    viz = sorted(p for p in (run_dir / "direct_inference" / "viz").iterdir() if p.is_dir())
    assert len(viz) == 2
    assert {p.name for p in (run_dir / "direct_inference" / "viz").iterdir() if p.is_file()} == {"index.md", "index.json"}
    info = json.loads((viz[0] / "info.json").read_text())
    assert {"source_image", "result_image", "text_raw", "text_clean", "boxes", "timings_ms"} <= set(info)
    assert (viz[0] / "result.mmd").is_file() and (viz[0] / "result_with_boxes.jpg").is_file()


def test_test_ids_are_stable_and_readable(stage_dir):
    result = stage_dir.runpytest("--collect-only", "-q", "-m", "direct_inference", *QUICK)
    result.stdout.fnmatch_lines(["*test_direct_inference[[]e0-page_001[]]*", "*test_direct_inference[[]e0-page_002[]]*"])


@pytest.mark.parametrize("args, message", [
    (["--dsocr-set", "model.nope=1"], "unknown config key 'model.nope'"),
    (["--dsocr-set", "infer.max_new_tokens=0"], "infer.max_new_tokens=0"),
    (["--dsocr-set", "infer.max_new_tokens=abc"], "infer.max_new_tokens='abc'"),
    (["--dsocr-set", "dataset=folder", "--dsocr-set", "dataset.root=/no/such/dir"], "/no/such/dir"),
    (["--dsocr-set", "model.path=/no/such/checkpoint"], "model.path=/no/such/checkpoint"),
    (["--dsocr-profiler", "perf"], "--dsocr-profiler=perf"),
])
def test_bad_input_is_one_usage_error(stage_dir, args, message):
    result = stage_dir.runpytest("-m", "direct_inference", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()
    assert "Traceback" not in result.stderr.str()


def test_existing_run_dir_is_never_overwritten(stage_dir, tmp_path):
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text("{}")
    result = run_direct(stage_dir, run_dir)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "never overwritten" in result.stderr.str()
    assert (run_dir / "metrics.json").read_text() == "{}"


def test_bad_image_fails_its_sample_only(stage_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (300, 400), "white").save(images / "good.png")
    (images / "broken.png").write_bytes(b"not an image at all")
    run_dir = tmp_path / "run"
    result = stage_dir.runpytest(
        "-m", "direct_inference", "--dsocr-run-dir", str(run_dir), "-p", "no:cacheprovider",
        "--dsocr-set", "dataset=folder", "--dsocr-set", f"dataset.root={images}",
        "--dsocr-set", "infer.max_new_tokens=2", "--dsocr-set", "infer.warmup_rounds=0",
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*broken.png*"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [s["sample_id"] for s in metrics["samples"]] == ["good"]
    assert len(metrics["failures"]) == 1 and "broken.png" in metrics["failures"][0]["error"]


def test_ini_keys_configure_the_run(stage_dir, tmp_path):
    run_dir = tmp_path / "ini-run"
    stage_dir.makeini(f"""
        [pytest]
        dsocr_run_dir = {run_dir}
        dsocr_set =
            dataset.sampling.num_samples_per_epoch=1
            infer.max_new_tokens=3
            infer.warmup_rounds=0
    """)
    result = stage_dir.runpytest("-m", "direct_inference", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["samples"][0]["tokens"] == 3


def test_progress_lines_in_a_long_run_and_none_under_q(stage_dir, tmp_path, monkeypatch):
    """Run and decode progress with both thresholds at 0; the decode lines are written while
    pytest captures the test's output (a captured line of a passing test would never show)."""
    import pytest_dsocr.progress as progress

    # in-process run: the inner session reads these module constants; undone after this test
    monkeypatch.setattr(progress, "START_AFTER_S", 0.0)
    monkeypatch.setattr(progress, "DECODE_START_AFTER_S", 0.0)
    result = run_direct(stage_dir, tmp_path / "run")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["pytest-dsocr: page_001 decoding: 1 tokens, * tokens/s",
                                 "pytest-dsocr: page_001 decoded: 4 tokens in *s, * tokens/s",
                                 "pytest-dsocr: 1/2 samples, 0 failed, * samples/s, ETA *",
                                 "pytest-dsocr: page_002 decoding: 1 tokens, * tokens/s",
                                 "pytest-dsocr: 2/2 samples, 0 failed, * samples/s, ETA 0s"])
    quiet = run_direct(stage_dir, tmp_path / "quiet", "-q")
    assert "samples/s" not in quiet.stdout.str() and " decoding: " not in quiet.stdout.str()


def test_batches_run_through_the_harness(stage_dir, tmp_path):
    """infer.batch_size=2: the two pages run as one batch; each test records its own page."""
    run_dir = tmp_path / "run"
    result = run_direct(stage_dir, run_dir, "--dsocr-set", "infer.batch_size=2")
    result.assert_outcomes(passed=2)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    samples = metrics["samples"]
    assert [s["batch_size"] for s in samples] == [2, 2] and len({s["sample_id"] for s in samples}) == 2
    assert samples[0]["batch_wall_ms"] == samples[1]["batch_wall_ms"] > 0  # one batch, one wall time
    busy_s = samples[0]["batch_wall_ms"] / 1000
    assert metrics["aggregates"]["throughput"]["pages_per_s"] == pytest.approx(2 / busy_s)
