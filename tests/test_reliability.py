"""Nothing lost on faults: per-sample failures, Ctrl-C, SIGTERM and -x leave a valid run behind.

Every run here is a real pytest session (pytester) over three small pages with two tokens
each; faults are injected by a conftest.py in the pytester dir that patches the model adapter
for one sample, as a bad page, an out-of-memory or a signal would strike in a real run.
"""

import json
import signal
from pathlib import Path

import pytest
from PIL import Image

from pytest_dsocr.recordlog import read_records

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
PAGES = ("p1", "p2", "p3")


def quick(images: Path, run_dir: Path) -> list[str]:
    return [
        "-m", "direct_inference", "-p", "no:cacheprovider", "--dsocr-run-dir", str(run_dir),
        "--dsocr-set", "dataset=folder", "--dsocr-set", f"dataset.root={images}",
        "--dsocr-set", "infer.max_new_tokens=2", "--dsocr-set", "infer.warmup_rounds=0",
        "--dsocr-set", "pipeline.direct_inference.output.prediction.enable=true",
    ]


# The adapter of one sample misbehaves inside prefill (after vision ran), as a real fault would.
INJECT = """
import json, os, signal
from pathlib import Path

import pytest
import torch

FAULTS = {faults}


@pytest.fixture(autouse=True)
def inject(request, monkeypatch):
    sample = request.node.callspec.params["dsocr_sample"]
    session = request.getfixturevalue("dsocr_session")
    fault = FAULTS.get(sample.sample_id)
    if fault == "oom":
        def prefill(*args, **kwargs):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        monkeypatch.setattr(session.adapter, "prefill", prefill)
    elif fault == "error":
        def prefill(*args, **kwargs):
            raise RuntimeError("kernel exploded")
        monkeypatch.setattr(session.adapter, "prefill", prefill)
    elif fault in ("SIGINT", "SIGTERM"):
        def prefill(*args, **kwargs):
            os.kill(os.getpid(), getattr(signal, fault))
            raise AssertionError("the signal should have stopped the run")
        monkeypatch.setattr(session.adapter, "prefill", prefill)
    freed = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: freed.append(sample.sample_id))
    yield
    # What a reader of the run dir sees right after this sample (once the interim files this
    # sample submitted are written: the collector writes them on a thread of their own).
    request.getfixturevalue("dsocr_collector").wait_for_writes()
    run_dir = Path(request.config.getoption("--dsocr-run-dir"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    predictions = run_dir / "direct_inference" / "pred" / "predictions.jsonl"
    from pytest_dsocr.recordlog import read_records
    log = read_records(run_dir / "records.jsonl")
    seen = {{
        "sample": sample.sample_id, "complete": metrics["complete"], "reason": metrics["reason"],
        "samples": [run.sample_id for run in log.runs],
        "metrics_samples": [s["sample_id"] for s in metrics["samples"]],
        "failures": [f.sample_id for f in log.failures],
        "metrics_failures": [f["sample_id"] for f in metrics["failures"]],
        "predictions": len(predictions.read_text().splitlines()) if predictions.exists() else 0,
        "summary": (run_dir / "stakeholder_summary.md").read_text().splitlines()[2],
        "freed": freed,
    }}
    with open(run_dir.parent / "progress.jsonl", "a") as out:
        out.write(json.dumps(seen) + "\\n")
"""


@pytest.fixture
def pages(tmp_path) -> Path:
    folder = tmp_path / "pages"
    folder.mkdir()
    for index, name in enumerate(PAGES):
        Image.new("RGB", (200, 150), (255, 255 - 40 * index, 255)).save(folder / f"{name}.png")
    return folder


def stage(pytester, faults: dict[str, str]):
    pytester.makepyfile(test_direct_inference=(BENCHMARKS / "test_direct_inference.py").read_text())
    pytester.makeconftest(INJECT.format(faults=repr(faults)))
    return pytester


def progress(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir.parent / "progress.jsonl").read_text().splitlines()]


def assert_valid_partial_run(run_dir: Path, samples: list[str], reason: str) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["complete"] is False
    assert reason in metrics["reason"]
    assert [s["sample_id"] for s in metrics["samples"]] == samples
    assert metrics["aggregates"]["prefill_ms"]["count"] == len(samples)
    lines = (run_dir / "direct_inference" / "pred" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["sample_id"] for line in lines] == samples
    summary = (run_dir / "stakeholder_summary.md").read_text()
    assert "**Run incomplete**" in summary and reason in summary
    assert not list(run_dir.rglob("*.tmp")), "no temporary file left behind"
    return metrics


def test_failed_samples_fail_their_tests_and_the_rest_is_measured(pytester, pages, tmp_path,
                                                                  inference_modules_loaded):
    run_dir = tmp_path / "run"
    result = stage(pytester, {"p1": "oom", "p2": "error"}).runpytest(*quick(pages, run_dir))
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines([
        "*e0-p1: OutOfMemoryError: CUDA out of memory*",
        "*e0-p2: RuntimeError: kernel exploded*",
    ])

    # records.jsonl and predictions.jsonl hold every sample as soon as it ends; metrics.json and
    # the summary are interim rewrites (throttled) that never hold more than the records
    seen = progress(run_dir)
    assert [s["sample"] for s in seen] == list(PAGES)
    assert [(s["samples"], s["failures"]) for s in seen] == [
        ([], ["p1"]), ([], ["p1", "p2"]), (["p3"], ["p1", "p2"])]
    for s in seen:
        assert s["metrics_samples"] == s["samples"][:len(s["metrics_samples"])]
        assert s["metrics_failures"] == s["failures"][:len(s["metrics_failures"])]
    assert all(s["complete"] is False and s["reason"] == "still running" for s in seen)
    assert all("**Run incomplete** (still running)" in s["summary"] for s in seen)
    assert [s["predictions"] for s in seen] == [0, 0, 1]
    assert seen[0]["freed"] == ["p1"] and seen[1]["freed"] == []  # the cache is emptied after an OOM only

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["complete"] is True and metrics["reason"] is None
    assert [s["sample_id"] for s in metrics["samples"]] == ["p3"]
    failures = {f["sample_id"]: f for f in metrics["failures"]}
    assert failures["p1"]["error_type"] == "OutOfMemoryError"
    assert failures["p1"]["error"].startswith("OutOfMemoryError: CUDA out of memory")
    assert failures["p2"]["error"] == "RuntimeError: kernel exploded"
    assert metrics["counts"]["failed"] == 2 and metrics["error_rate"] == pytest.approx(2 / 3)
    summary = (run_dir / "stakeholder_summary.md").read_text()
    assert "## Failures" in summary and "kernel exploded" in summary and "CUDA out of memory" in summary


def test_ctrl_c_mid_sample_keeps_the_samples_done(pytester, pages, tmp_path, inference_modules_loaded):
    run_dir = tmp_path / "run"
    result = stage(pytester, {"p2": "SIGINT"}).runpytest(*quick(pages, run_dir), no_reraise_ctrlc=True)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert_valid_partial_run(run_dir, ["p1"], "interrupted by SIGINT")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["reason"].endswith("during test_direct_inference.py::test_direct_inference[e0-p2]")
    assert (run_dir / "report.md").is_file()  # the session end still wrote the full report


def test_sigterm_mid_sample_stops_cleanly(pytester, pages, tmp_path):
    run_dir = tmp_path / "run"
    # A process of its own: the signal is real and goes to the pytest process under test.
    result = stage(pytester, {"p2": "SIGTERM"}).runpytest_subprocess(*quick(pages, run_dir), timeout=300)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*pytest-dsocr*", "*Run incomplete*terminated by SIGTERM*", "*Terminated: SIGTERM*"])
    assert_valid_partial_run(run_dir, ["p1"], "terminated by SIGTERM")


def test_sigterm_before_the_first_page_ends_leaves_an_incomplete_run(pytester, pages, tmp_path):
    """Nothing measured yet, but the run was under way: the run dir says so rather than being empty."""
    run_dir = tmp_path / "run"
    result = stage(pytester, {"p1": "SIGTERM"}).runpytest_subprocess(*quick(pages, run_dir), timeout=300)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*pytest-dsocr*", "*Run incomplete*terminated by SIGTERM*", f"*run dir: {run_dir}*"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["complete"] is False
    assert metrics["reason"].startswith("terminated by SIGTERM, during test_direct_inference.py::")
    assert metrics["samples"] == [] and metrics["failures"] == []
    log = read_records(run_dir / "records.jsonl")
    assert log.runs == [] and log.failures == []
    summary = (run_dir / "stakeholder_summary.md").read_text()
    assert "**Run incomplete**" in summary and "terminated by SIGTERM" in summary


def test_maxfail_stop_is_recorded(pytester, pages, tmp_path, inference_modules_loaded):
    run_dir = tmp_path / "run"
    result = stage(pytester, {"p2": "error"}).runpytest(*quick(pages, run_dir), "-x")
    result.assert_outcomes(passed=1, failed=1)
    metrics = assert_valid_partial_run(run_dir, ["p1"], "stopping after 1 failures (-x/--maxfail)")
    assert [f["sample_id"] for f in metrics["failures"]] == ["p2"]


def test_sigterm_handler_is_installed_for_the_session_and_restored(pytester):
    before = signal.getsignal(signal.SIGTERM)  # this very session's own, or the default
    pytester.makepyfile(f"""
        import signal

        def test_handler(dsocr_config):  # a pytest-dsocr test: the plugin is on
            handler = signal.getsignal(signal.SIGTERM)
            assert getattr(handler, "dsocr_handler", False), handler
            assert id(handler) != {id(before)}
    """)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_handler_of_someone_else_is_left_alone(pytester):
    pytester.makepyfile("""
        import signal

        def test_handler():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    """)
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)
