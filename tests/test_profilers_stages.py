"""The profiler stages through pytester: on the CPU the torch_profiler stage runs and writes its
files; nsys and ncu skip with a reason that says how to enable them."""

import gzip
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
STAGE_FILES = ("test_torch_profiler.py", "test_nsys.py", "test_ncu.py")
ONE_PAGE = [
    "-p", "no:cacheprovider", "-rs",
    "--dsocr-set", "dataset.sampling.num_samples_per_epoch=1",
    "--dsocr-set", "infer.max_new_tokens=4",
]


@pytest.fixture
def stages(pytester, inference_modules_loaded, monkeypatch, tmp_path):
    """A pytester dir with the three profiler stage files and no nsys/ncu on PATH."""
    for name in STAGE_FILES:
        pytester.makepyfile(**{name[:-3]: (BENCHMARKS / name).read_text()})
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    for name in ("DSOCR_PROFILER_CHILD", "DSOCR_NSYS_CAPTURE", "NSYS_PROFILING_SESSION_ID",
                 "CUDA_INJECTION64_PATH", "NVTX_INJECTION64_PATH"):
        monkeypatch.delenv(name, raising=False)
    return pytester


def run(pytester, *args):
    return pytester.runpytest("-m", "torch_profiler or nsys or ncu", *ONE_PAGE, *args)


def test_unselected_profilers_skip_with_how_to_enable(stages, tmp_path):
    result = run(stages, "--dsocr-run-dir", str(tmp_path / "run"))
    result.assert_outcomes(skipped=3)
    result.stdout.fnmatch_lines_random([
        "*torch profiler stage not selected: run with --dsocr-profiler=torch*",
        "*nsys stage not selected: run with --dsocr-profiler=nsys*",
        "*ncu stage not selected: run with --dsocr-profiler=ncu*",
    ])


@pytest.mark.parametrize("profiler, reason", [
    ("nsys", "*nsys not on PATH: install Nsight Systems*"),
    ("ncu", "*ncu not on PATH: install Nsight Compute*"),
])
def test_missing_tools_skip(stages, tmp_path, profiler, reason):
    result = run(stages, f"--dsocr-profiler={profiler}", "--dsocr-run-dir", str(tmp_path / "run"))
    result.assert_outcomes(skipped=3)
    result.stdout.fnmatch_lines([reason])


def test_nsys_on_a_cpu_session_skips(stages, tmp_path, monkeypatch):
    monkeypatch.setenv("DSOCR_PROFILER_CHILD", "nsys")  # as if nsys had launched us
    result = run(stages, "-m", "nsys", "--dsocr-set", "model.device=cpu", "--dsocr-run-dir", str(tmp_path / "run"))
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*nsys stage needs a CUDA device*"])


def test_torch_profiler_stage_runs_on_cpu_and_writes_its_files(stages, tmp_path):
    run_dir = tmp_path / "run"
    result = stages.runpytest("-m", "torch_profiler", *ONE_PAGE, "--dsocr-profiler=torch",
                              "--dsocr-set", "model.device=cpu", "--dsocr-run-dir", str(run_dir))
    result.assert_outcomes(passed=1)
    out = run_dir / "torch_profiler"
    for name in ("operators.md", "stage_operators.md", "operators.json", "trace.json.gz"):
        assert (out / name).is_file(), name
    assert (out / "pred" / "predictions.jsonl").is_file()  # conf/output/torch/default.yaml
    operators = (out / "operators.md").read_text()
    assert "Sorted by self CPU time" in operators and "| decode |" in operators
    trace = json.loads(gzip.decompress((out / "trace.json.gz").read_bytes()))
    assert any(event.get("name") == "dsocr::sam" for event in trace["traceEvents"])

    metrics = json.loads((run_dir / "metrics.json").read_text())
    section = metrics["torch_profiler"]
    assert section["profiled_iterations"] == 1 and section["sort_by"] == "self_cpu"
    assert {"prefill", "vision", "sam", "clip", "projector", "decode"} <= set(section["stages"])
    overhead = metrics["profiler_overhead"]
    assert overhead["baseline"] == "unprofiled_rounds"  # no direct_inference records in this session
    assert overhead["samples"] == 1 and overhead["ratio"] > 0
    assert [r["stage"] for r in metrics["samples"]] == ["torch_profiler"]
    assert "Torch profiler" in (run_dir / "stakeholder_summary.md").read_text()
