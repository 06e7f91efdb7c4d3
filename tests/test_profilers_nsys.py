"""nsys stage: capture hooks, detection, the exact argv of the re-launch and of `nsys stats`,
the stats CSV parsers on documented-column fixtures, and nsys_report/relaunch with a stand-in
for nsys (no nsys on this machine)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pytest_dsocr.errors import DsocrError
from pytest_dsocr.profilers.config import NsysConfig, validate_nsys_config
from pytest_dsocr.profilers.nsys import (
    NsysHooks,
    build_nsys_command,
    build_stats_command,
    capture_mode,
    child_pytest_args,
    find_reports,
    nsys_report,
    parse_help_reports,
    relaunch_under_nsys,
    resolve_report_names,
    should_relaunch_under_nsys,
)
from pytest_dsocr.profilers.nsys_cli import default_run_dir
from pytest_dsocr.profilers.nsys_stats import (
    NsysTables,
    parse_gpu_kern_sum,
    parse_nvtx_kern_sum,
    parse_nvtx_sum,
    summarize,
    summary_markdown,
)
from pytest_dsocr.profilers.tools import under_ncu, under_nsys
from pytest_dsocr.records import Sample

DATA = Path(__file__).parent / "data" / "nsys"
CURRENT = {"nvtx_sum": "report_nvtx_sum.csv", "cuda_gpu_kern_sum": "report_cuda_gpu_kern_sum.csv",
           "nvtx_kern_sum": "report_nvtx_kern_sum.csv"}
LEGACY = {"nvtxsum": "legacy_nvtxsum.csv", "gpukernsum": "legacy_gpukernsum.csv",
          "nvtxkernsum": "report_nvtx_kern_sum.csv"}


def text(name: str) -> str:
    return (DATA / name).read_text()


def preset(**changes) -> NsysConfig:
    cfg = OmegaConf.structured(NsysConfig)
    for key, value in changes.items():
        cfg[key] = value
    return cfg


# --- capture hooks ------------------------------------------------------------------------------

class Recorder:
    def __init__(self):
        self.calls = []

    def start(self):
        self.calls.append("start")

    def stop(self):
        self.calls.append("stop")


def drive(hooks: NsysHooks, samples: list[Sample], warmup: int, rounds: int) -> None:
    """What DsocrSession.measure does with the hooks, sample after sample."""
    for sample in samples:
        for index in range(warmup + rounds):
            measured = index >= warmup
            round_index = index - warmup if measured else index
            hooks.on_iter_start(sample, round_index, measured)
            hooks.on_iter_end(sample, round_index, measured, None)
        hooks.end_sample()
    hooks.finish()


SAMPLES = [Sample(Path(f"p{i}.png"), 0, i, f"page_{i}") for i in range(3)]


@pytest.mark.parametrize("mode, calls, ranges", [
    ("measured", ["start", "stop"] * 3, 3),  # one range per sample, warmup rounds outside
    ("stage", ["start", "stop"], 1),  # one range, closed at the end of the stage
    ("open", ["start"], 1),  # bare nsys command line: never closed by us
])
def test_capture_opens_only_around_measured_rounds(mode, calls, ranges):
    recorder = Recorder()
    hooks = NsysHooks(rounds=2, mode=mode, start=recorder.start, stop=recorder.stop)
    drive(hooks, SAMPLES, warmup=1, rounds=2)
    assert recorder.calls == calls
    assert hooks.ranges == ranges
    assert len(hooks.captured) == 6  # every measured round of every sample was inside a capture


def test_measured_mode_closes_before_the_next_warmup_even_without_end_sample():
    recorder = Recorder()
    hooks = NsysHooks(rounds=5, mode="measured", start=recorder.start, stop=recorder.stop)
    sample = SAMPLES[0]
    hooks.on_iter_start(sample, 0, True)
    hooks.on_iter_start(sample, 0, False)  # a warmup round after a measured one
    assert recorder.calls == ["start", "stop"]


def test_capture_mode_from_environment():
    assert capture_mode({"DSOCR_NSYS_CAPTURE": "measured"}) == "measured"
    assert capture_mode({"DSOCR_NSYS_CAPTURE": "Stage"}) == "stage"
    assert capture_mode({}) == "open"


NSYS_2025 = "/opt/nvidia/nsight-compute/2025.3.1/host/target-linux-x64"  # nsys shipped inside Nsight Compute


@pytest.mark.parametrize("env, nsys, ncu", [
    ({}, False, False),
    ({"DSOCR_PROFILER_CHILD": "nsys"}, True, False),
    # as recorded under nsys 2025.3.1 (benchmarks/perf/gpu_profilers.sh facts)
    ({"NSYS_PROFILING_SESSION_ID": "10529", "CUDA_INJECTION64_PATH": f"{NSYS_2025}/libToolsInjection64.so",
      "NVTX_INJECTION64_PATH": f"{NSYS_2025}/libToolsInjection64.so",
      "LD_PRELOAD": f"{NSYS_2025}/libToolsInjectionProxy64.so:{NSYS_2025}/libLinuxKeyboardInterceptorProxy.so"},
     True, False),
    ({"CUDA_INJECTION64_PATH": "/opt/nvidia/nsight-systems/2024.6/target-linux-x64/libToolsInjection64.so"}, True, False),
    # as recorded under ncu 2025.3.1
    ({"NV_TPS_LAUNCH_TOKEN": "Interactive Profile",
      "NV_COMPUTE_PROFILER_PERFWORKS_DIR": "/opt/nvidia/nsight-compute/2025.3.1/target/linux-desktop-glibc_2_11_3-x64/."},
     False, True),
    ({"DSOCR_PROFILER_CHILD": "ncu"}, False, True),
])
def test_detection(env, nsys, ncu):
    assert under_nsys(env) is nsys
    assert under_ncu(env) is ncu


# --- commands -----------------------------------------------------------------------------------

def test_nsys_command_exact_argv():
    cfg = preset(extra_args=["--gpu-metrics-device=all"], cuda_graph_trace="node")
    argv = build_nsys_command(cfg, "/stage/report", ["benchmarks", "-m", "nsys", "--dsocr-run-dir=/runs/r1"],
                              nsys="/opt/nsys", python="/venv/bin/python")
    assert argv == [
        "/opt/nsys", "profile", "--trace=cuda,nvtx", "--capture-range=cudaProfilerApi",
        "--capture-range-end=repeat", "--sample=none", "--cpuctxsw=none", "--cuda-graph-trace=node",
        "--force-overwrite=true", "--output=/stage/report", "--gpu-metrics-device=all",
        "/venv/bin/python", "-m", "pytest", "benchmarks", "-m", "nsys", "--dsocr-run-dir=/runs/r1",
    ]


def test_child_args_pin_the_run_dir():
    args = ["benchmarks", "--dsocr-run-dir", "old", "-m", "nsys", "--dsocr-run-dir=older", "--dsocr-profiler=nsys"]
    assert child_pytest_args(args, "/runs/r1") == [
        "benchmarks", "-m", "nsys", "--dsocr-profiler=nsys", "--dsocr-run-dir=/runs/r1"]


def test_stats_command_exact_argv():
    assert build_stats_command("r/report.nsys-rep", "r/stats/report",
                               ["nvtx_sum", "cuda_gpu_kern_sum", "nvtx_kern_sum"], nsys="nsys") == [
        "nsys", "stats", "--force-export=true", "--force-overwrite=true", "--format", "csv",
        "--output", "r/stats/report", "--report", "nvtx_sum,cuda_gpu_kern_sum,nvtx_kern_sum", "r/report.nsys-rep"]


def test_should_relaunch():
    assert should_relaunch_under_nsys("nsys", env={}, nsys_path="/usr/bin/nsys")
    assert not should_relaunch_under_nsys("nsys", env={}, nsys_path=None)
    assert not should_relaunch_under_nsys("torch", env={}, nsys_path="/usr/bin/nsys")
    assert not should_relaunch_under_nsys("nsys", env={"DSOCR_PROFILER_CHILD": "nsys"}, nsys_path="/usr/bin/nsys")


def test_capture_policy_is_validated():
    validate_nsys_config(preset())
    with pytest.raises(DsocrError, match="profiling.nsys.capture_range_end='stop'"):
        validate_nsys_config(preset(capture_range_end="stop"))
    validate_nsys_config(preset(capture="stage", capture_range_end="stop"))
    with pytest.raises(DsocrError, match="stop-shutdown"):
        validate_nsys_config(preset(capture="stage", capture_range_end="stop-shutdown"))
    with pytest.raises(DsocrError, match="profiling.nsys.capture="):
        validate_nsys_config(preset(capture="always"))


# --- report names -------------------------------------------------------------------------------

def test_help_reports_of_the_recorded_release():
    names = parse_help_reports(text("help_reports_2025.3.1.txt"))
    assert {"nvtx_sum", "cuda_gpu_kern_sum", "nvtx_kern_sum", "nvtx_gpu_proj_sum"} <= names
    assert resolve_report_names(names) == {"nvtx_sum": "nvtx_sum", "cuda_gpu_kern_sum": "cuda_gpu_kern_sum",
                                           "nvtx_kern_sum": "nvtx_kern_sum"}


def test_help_reports_of_an_older_release():
    names = parse_help_reports(text("help_reports_legacy.txt"))
    assert resolve_report_names(names) == {"nvtx_sum": "nvtxsum", "cuda_gpu_kern_sum": "gpukernsum",
                                           "nvtx_kern_sum": "nvtxkernsum"}
    assert resolve_report_names(None)["nvtx_kern_sum"] == "nvtx_kern_sum"
    with pytest.raises(DsocrError, match="nvtx_kern_sum"):
        resolve_report_names({"nvtx_sum", "cuda_gpu_kern_sum"})


# --- parsers and summary ------------------------------------------------------------------------

def test_parsers_read_documented_columns():
    ranges = parse_nvtx_sum(text("report_nvtx_sum.csv"))
    assert {(r.stage, r.instances, r.total_ns) for r in ranges} >= {("sam", 2, 2_600_000.0), ("decode", 1, 6_500_000.0)}
    assert [r.stage for r in ranges if r.range.startswith(":")] == [None]  # another domain's range
    kernels = parse_gpu_kern_sum(text("report_cuda_gpu_kern_sum.csv"))
    assert kernels[0].name.startswith("void gemv2T_kernel_val<") and kernels[0].instances == 100
    assert sum(k.total_ns for k in kernels) == 9_940_000
    rows = parse_nvtx_kern_sum(text("report_nvtx_kern_sum.csv"))
    assert any(r.range == "" for r in rows)  # a kernel outside every range
    sam = [r for r in rows if r.stage == "sam"]
    assert {(r.kernel_instances, r.total_ns) for r in sam} == {(10, 2_000_000.0), (4, 400_000.0)}
    assert all(r.pid == "4242" and r.nvtx_instances == 2 for r in sam)


def test_time_units_and_legacy_spellings_read_the_same():
    ns = parse_nvtx_kern_sum(text("report_nvtx_kern_sum.csv"))
    us = parse_nvtx_kern_sum(text("report_nvtx_kern_sum_usec.csv"))
    assert [r.total_ns for r in us] == pytest.approx([r.total_ns for r in ns])
    assert parse_gpu_kern_sum(text("legacy_gpukernsum.csv")) == parse_gpu_kern_sum(text("report_cuda_gpu_kern_sum.csv"))
    assert parse_nvtx_sum(text("legacy_nvtxsum.csv")) == [
        r.__class__(r.range, "", r.instances, r.total_ns) for r in parse_nvtx_sum(text("report_nvtx_sum.csv"))]


def tables() -> NsysTables:
    return NsysTables(parse_nvtx_sum(text("report_nvtx_sum.csv")),
                      parse_gpu_kern_sum(text("report_cuda_gpu_kern_sum.csv")),
                      parse_nvtx_kern_sum(text("report_nvtx_kern_sum.csv")))


def test_gpu_time_per_stage_from_the_nvtx_kernel_summary():
    section = summarize(tables(), top_k=3)
    stages = section["stages"]
    assert list(stages) == ["prefill", "vision", "sam", "clip", "projector", "decode"]
    # inclusive: kernels count in every enclosing range
    assert stages["sam"]["gpu_ms"] == pytest.approx(2.4)
    assert stages["vision"]["gpu_ms"] == pytest.approx(3.47)
    assert stages["prefill"]["gpu_ms"] == pytest.approx(4.67)
    assert stages["decode"]["gpu_ms"] == pytest.approx(5.25)
    # exclusive: nested stages taken out
    assert stages["prefill"]["gpu_ms_exclusive"] == pytest.approx(1.2)
    assert stages["vision"]["gpu_ms_exclusive"] == pytest.approx(0.02)
    assert stages["sam"]["gpu_ms_exclusive"] == pytest.approx(2.4)
    assert stages["sam"]["kernel_launches"] == 14 and stages["sam"]["range_instances"] == 2
    assert stages["decode"]["wall_ms"] == pytest.approx(6.5)
    assert stages["decode"]["gpu_busy_pct"] == pytest.approx(100 * 5.25 / 6.5)
    assert section["inferences"] == 1 and stages["decode"]["gpu_ms_per_inference"] == pytest.approx(5.25)
    assert section["samples"] == {"page_001": {"gpu_ms": pytest.approx(9.92), "kernel_launches": 187}}
    assert section["total_gpu_kernel_ms"] == pytest.approx(9.94)
    assert section["attributed_gpu_ms"] == pytest.approx(9.92)
    # top kernels per stage are exclusive: the decoder's prefill GEMM, not SAM's
    prefill_top = section["top_kernels"]["prefill"]
    assert len(prefill_top) == 1 and prefill_top[0]["launches"] == 12 and prefill_top[0]["share_pct"] == pytest.approx(100)
    decode_top = section["top_kernels"]["decode"]
    assert [k["launches"] for k in decode_top] == [100, 50]
    assert decode_top[0]["avg_us"] == pytest.approx(50.0)
    assert len(section["top_kernels_overall"]) == 3
    markdown = summary_markdown(section, ["report.nsys-rep"])
    assert "nvtx_kern_sum" in markdown and "## Top kernels: decode (exclusive)" in markdown


def test_reports_of_several_capture_ranges_add_up():
    merged = summarize(NsysTables.merge([tables(), tables()]))
    assert merged["stages"]["decode"]["gpu_ms"] == pytest.approx(10.5)
    assert merged["inferences"] == 2 and merged["stages"]["decode"]["gpu_ms_per_inference"] == pytest.approx(5.25)


# --- nsys_report and the re-launch with a stand-in for nsys ---------------------------------------

class FakeNsys:
    """Answers `nsys stats --help-reports` and `nsys stats ...` from the fixtures; `nsys profile`
    writes report files (one per capture range)."""

    def __init__(self, help_file="help_reports_2025.3.1.txt", csvs=CURRENT, ranges=1, profile_rc=0):
        self.help_file, self.csvs, self.ranges, self.profile_rc = help_file, csvs, ranges, profile_rc
        self.calls = []

    def __call__(self, command, **kwargs):
        self.calls.append((command, kwargs))
        if command[1:3] == ["stats", "--help-reports"]:
            return subprocess.CompletedProcess(command, 0, stdout=text(self.help_file), stderr="")
        if command[1] == "stats":
            prefix = Path(command[command.index("--output") + 1])
            for name in command[command.index("--report") + 1].split(","):
                if name not in self.csvs:
                    return subprocess.CompletedProcess(command, 1, stdout="", stderr=f"unknown report {name}")
                shutil.copy(DATA / self.csvs[name], prefix.parent / f"{prefix.name}_{name}.csv")
            return subprocess.CompletedProcess(command, 0, stdout="", stderr="")
        if command[1] == "profile":
            output = Path(next(a for a in command if a.startswith("--output=")).split("=", 1)[1])
            names = [output.name + ".nsys-rep"] if self.ranges == 1 else [
                f"{output.name}.{i}.nsys-rep" for i in range(1, self.ranges + 1)]
            run_dir = Path(next(a for a in command if a.startswith("--dsocr-run-dir=")).split("=", 1)[1])
            assert not any(run_dir.iterdir()), "the child must get an empty run dir"
            (run_dir / "metrics.json").write_text(json.dumps({"complete": True}))
            for name in names:
                (output.parent / name).write_bytes(b"nsys report")
            return subprocess.CompletedProcess(command, self.profile_rc)
        raise AssertionError(command)


def test_nsys_report_writes_summary_and_metrics_section(tmp_path):
    run = tmp_path / "run"
    (run / "nsys").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"complete": True, "aggregates": {}}))
    report = run / "nsys" / "report.nsys-rep"
    report.write_bytes(b"nsys report")
    fake = FakeNsys()
    section = nsys_report(report, run, nsys="nsys", runner=fake)
    assert section["stages"]["prefill"]["gpu_ms_exclusive"] == pytest.approx(1.2)
    assert section["report_names"]["nvtx_kern_sum"] == "nvtx_kern_sum"
    stats_call = fake.calls[1][0]
    assert stats_call[:3] == ["nsys", "stats", "--force-export=true"] and stats_call[-1] == str(report)
    assert (run / "nsys" / "summary.md").read_text().startswith("# Nsight Systems")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["nsys"]["stages"]["decode"]["gpu_ms"] == pytest.approx(5.25)
    assert metrics["complete"] is True and metrics["aggregates"]["prefill_ms"]["count"] == 0  # the rest as it was
    assert json.loads((run / "nsys" / "summary.json").read_text())["inferences"] == 1


def test_nsys_report_uses_the_names_of_an_older_release(tmp_path):
    report = tmp_path / "old.qdrep"
    report.write_bytes(b"nsys report")
    section = nsys_report(report, tmp_path, nsys="nsys", runner=FakeNsys("help_reports_legacy.txt", LEGACY))
    assert section["report_names"] == {"nvtx_sum": "nvtxsum", "cuda_gpu_kern_sum": "gpukernsum",
                                       "nvtx_kern_sum": "nvtxkernsum"}
    assert section["stages"]["sam"]["gpu_ms"] == pytest.approx(2.4)
    assert not (tmp_path / "metrics.json").exists()  # nothing to merge into: summary files only


def test_nsys_report_without_a_report_is_a_clear_error(tmp_path):
    with pytest.raises(DsocrError, match="no .nsys-rep file"):
        nsys_report(tmp_path / "missing.nsys-rep", tmp_path, nsys="nsys", runner=FakeNsys())


def test_relaunch_runs_the_session_under_nsys_and_folds_every_capture_range(tmp_path):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    fake = FakeNsys(ranges=3)
    result = relaunch_under_nsys(preset(), run_dir=run, pytest_args=["benchmarks", "--dsocr-profiler=nsys"],
                                 rootdir=tmp_path, nsys="nsys", python="/py", runner=fake)
    command, kwargs = fake.calls[0]
    assert command[:2] == ["nsys", "profile"] and command[-4:] == [
        "pytest", "benchmarks", "--dsocr-profiler=nsys", f"--dsocr-run-dir={run}"]
    assert kwargs["env"]["DSOCR_PROFILER_CHILD"] == "nsys" and kwargs["env"]["DSOCR_NSYS_CAPTURE"] == "measured"
    assert result.error is None and result.returncode == 0
    assert [p.name for p in result.reports] == [f"report.{i}.nsys-rep" for i in (1, 2, 3)]
    assert all(p.parent == run / "nsys" for p in result.reports)
    assert result.summary["inferences"] == 3
    assert json.loads((run / "metrics.json").read_text())["nsys"]["inferences"] == 3
    assert [p.name for p in tmp_path.joinpath("runs").iterdir()] == ["r1"]  # staging folder removed


def test_relaunch_without_a_report_says_why(tmp_path):
    run = tmp_path / "r1"
    run.mkdir()
    fake = FakeNsys(ranges=0, profile_rc=1)
    result = relaunch_under_nsys(preset(), run_dir=run, pytest_args=[], rootdir=tmp_path, nsys="nsys",
                                 python=sys.executable, runner=fake)
    assert result.reports == [] and "wrote no report" in result.error


def test_find_reports_and_default_run_dir(tmp_path):
    for name in ("report.1.nsys-rep", "report.2.nsys-rep", "other.nsys-rep", "report.sqlite"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in find_reports(tmp_path / "report")] == ["report.1.nsys-rep", "report.2.nsys-rep"]
    assert len(find_reports(tmp_path)) == 3
    assert default_run_dir(Path("/runs/r1/nsys/report.nsys-rep")) == Path("/runs/r1")
    assert default_run_dir(Path("/tmp/x/report.nsys-rep")) == Path("/tmp/x")
