"""ncu stage: the command builders' exact argv, the raw-CSV parser on recorded and written
output, the kernel tables, and the child runs with a stand-in for ncu."""

from __future__ import annotations

import csv
import io
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pytest_dsocr.errors import DsocrError
from pytest_dsocr.profilers.config import NCU_DEFAULT_METRICS, NcuConfig, NcuRange, validate_ncu_config
from pytest_dsocr.profilers.ncu import (
    NcuRunner,
    build_import_command,
    build_ncu_command,
    child_pytest_args,
    load_preset,
    main,
)
from pytest_dsocr.profilers.ncu_csv import (
    classify_bound,
    kernels_csv,
    kernels_markdown,
    ncu_section,
    parse_number,
    parse_raw_csv,
    read_raw_csv,
    unit_scale,
)

DATA = Path(__file__).parent / "data" / "ncu"
RECORDED = DATA / "probe_h100_raw.csv"
TINY_DECODE = DATA / "tiny_decode_h100_raw.csv"
SCALED = DATA / "scaled_units_raw.csv"


def preset(**changes) -> NcuConfig:
    cfg = OmegaConf.structured(NcuConfig)
    for key, value in changes.items():
        cfg[key] = value
    return cfg


# --- command builders ---------------------------------------------------------------------------

def test_ncu_command_exact_argv():
    cfg = preset(metrics=["gpu__time_duration.sum", "dram__bytes.sum"], kernel_regex="gemm|gemv",
                 sections=["MemoryWorkloadAnalysis"], launch_skip=5, launch_count=50)
    prefill = NcuRange("prefill", ["dsocr@prefill/"], ["dsocr@vision/"])
    argv = build_ncu_command(cfg, prefill, log_file="/r/ncu/raw/e0-p.prefill.csv", export="/r/ncu/reports/e0-p.prefill",
                             target=["/py", "-m", "pytest", "x"], ncu="/opt/ncu")
    assert argv == [
        "/opt/ncu", "--nvtx",
        "--nvtx-include", "dsocr@prefill/", "--nvtx-exclude", "dsocr@vision/",
        "--set", "basic", "--section", "MemoryWorkloadAnalysis",
        "--metrics", "gpu__time_duration.sum,dram__bytes.sum",
        "-k", "regex:gemm|gemv",
        "--launch-skip", "5", "--launch-count", "50",
        "--clock-control", "none", "--replay-mode", "kernel", "--cache-control", "all",
        "--target-processes", "all",
        "--csv", "--page", "raw", "--print-units", "base",
        "--log-file", "/r/ncu/raw/e0-p.prefill.csv",
        "--export", "/r/ncu/reports/e0-p.prefill", "--force-overwrite",
        "/py", "-m", "pytest", "x",
    ]


def test_ncu_command_defaults_without_export_or_kernel_filter():
    argv = build_ncu_command(preset(), NcuRange(), log_file="raw.csv", target=["python3", "probe.py"])
    assert "-k" not in argv and "--export" not in argv and "--nvtx-exclude" not in argv
    assert argv[1:4] == ["--nvtx", "--nvtx-include", "dsocr@decode/"]
    assert argv[argv.index("--metrics") + 1] == ",".join(NCU_DEFAULT_METRICS)
    assert argv[-4:] == ["--log-file", "raw.csv", "python3", "probe.py"]


def test_import_command():
    assert build_import_command("r.ncu-rep", "ncu") == [
        "ncu", "--import", "r.ncu-rep", "--csv", "--page", "raw", "--print-units", "base"]


def test_child_pytest_args_select_the_direct_inference_test_of_the_sample():
    args = child_pytest_args(["e0-page_001"], run_dir="/r/tmp/ncu/e0-page_001", config_file="my.yaml",
                             overrides=["model.size=tiny"], child_overrides=["infer.rounds=1"],
                             direct_test="/repo/benchmarks/test_direct_inference.py::test_direct_inference")
    assert args == [
        "-m", "pytest", "/repo/benchmarks/test_direct_inference.py::test_direct_inference[e0-page_001]",
        "-p", "no:cacheprovider", "-q", "--dsocr-profiler=none", "--dsocr-run-dir=/r/tmp/ncu/e0-page_001",
        "--dsocr-config=my.yaml", "--dsocr-set=model.size=tiny", "--dsocr-set=infer.rounds=1",
    ]


def test_presets_load_and_command_line_prints_argv(capsys):
    assert load_preset("roofline").set == "roofline"
    assert load_preset("full").launch_count < load_preset("default").launch_count
    with pytest.raises(DsocrError, match="nope"):
        load_preset("nope")
    assert main(["command", "--log-file", "raw.csv", "--", "python3", "-m", "probe"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:4] == ["ncu", "--nvtx", "--nvtx-include", "dsocr@sam/"] and lines[-3:] == ["python3", "-m", "probe"]
    assert main(["command", "--log-file", "raw.csv", "--include", "dsocr@prefill/", "--include", "dsocr@decode/",
                 "--", "python3"]) == 0
    assert capsys.readouterr().out.splitlines()[1:6] == [
        "--nvtx", "--nvtx-include", "dsocr@prefill/", "--nvtx-include", "dsocr@decode/"]


def test_default_ranges_give_every_stage_its_own_pass():
    cfg = load_preset("default")
    assert [(r.name, list(r.include), list(r.exclude)) for r in cfg.ranges] == [
        ("sam", ["dsocr@sam/"], []), ("clip", ["dsocr@clip/"], []), ("projector", ["dsocr@projector/"], []),
        ("prefill", ["dsocr@prefill/"], ["dsocr@vision/"]), ("decode", ["dsocr@decode/"], [])]
    validate_ncu_config(cfg)
    cfg.ranges[1].name = "sam"
    with pytest.raises(DsocrError, match="names repeat"):
        validate_ncu_config(cfg)
    with pytest.raises(DsocrError, match="profiling.ncu.launch_count"):
        validate_ncu_config(preset(launch_count=0))


# --- parsing ------------------------------------------------------------------------------------

def test_recorded_h100_probe_parses_per_stage():
    kernels = parse_raw_csv(RECORDED.read_text())
    assert len(kernels) == 36
    assert {k.sample for k in kernels} == {"probe"}
    counts = {stage: sum(k.stage == stage for k in kernels) for stage in {k.stage for k in kernels}}
    # the probe runs one block (GEMM, its split-k part, softmax, add) per sub-stage and per
    # decoder prefill, and 4 decode steps with one more copy each
    assert counts == {"sam": 4, "clip": 4, "projector": 4, "prefill": 4, "decode": 20}
    first = kernels[0]
    assert first.stage == "sam" and first.kernel.startswith("sm80_xmma_gemm_f32f32")
    assert first.duration_ns == pytest.approx(6528)
    assert first.dram_bytes == pytest.approx(553_472)
    assert first.sm_throughput_pct == pytest.approx(16.96)
    assert first.memory_throughput_pct == pytest.approx(18.53)
    assert first.dram_throughput_pct == pytest.approx(2.55)
    assert first.achieved_occupancy_pct == pytest.approx(6.01)
    # a 256^3 fp32 GEMM: 256^3 FFMA = 2 * 256^3 FLOPs (plus a few FADD/FMUL in the epilogue)
    assert first.flops >= 2 * 256 ** 3
    assert first.flops == pytest.approx(2 * 256 ** 3, rel=0.01)
    assert first.arithmetic_intensity == pytest.approx(first.flops / 553_472)
    assert first.bound(60.0) == "latency"  # tiny kernels: neither unit near its peak


def test_recorded_decode_pass_of_the_tiny_model():
    kernels = parse_raw_csv(TINY_DECODE.read_text(), range_name="decode")
    assert len(kernels) == 20  # launch count of the default preset
    assert {(k.sample, k.stage, k.range) for k in kernels} == {("page_001", "decode", "decode")}
    assert all(k.duration_ns and k.duration_ns > 0 for k in kernels)
    assert all(k.sm_throughput_pct is not None and k.achieved_occupancy_pct is not None for k in kernels)


def test_raw_csv_layout_and_prof_lines():
    header, units, rows = read_raw_csv(RECORDED.read_text())
    assert header[0] == "ID" and "Kernel Name" in header
    assert units["gpu__time_duration.sum"] == "ns" and units["dram__bytes.sum"] == "byte"
    assert len(rows) == 36


def test_scaled_units_na_cells_and_unattributed_launches():
    kernels = parse_raw_csv(SCALED.read_text())
    gemm, gemv, fill = kernels
    assert (gemm.sample, gemm.stage) == ("decode", "clip")  # a page called "decode" is not the stage
    assert gemm.duration_ns == pytest.approx(12_500)  # 12.5 usecond
    assert gemm.dram_bytes == pytest.approx(2.5e6)  # 2.5 Mbyte
    assert gemm.flops == pytest.approx(2 * 1_000_000 + 2 * 2_000)  # FFMA inst + HFMA Kinst
    assert gemm.bound(60.0) == "compute"
    assert gemv.stage == "decode" and gemv.flops is None and gemv.arithmetic_intensity is None
    assert gemv.bound(60.0) == "memory"
    assert (fill.sample, fill.stage) == (None, "outside")


def test_missing_header_is_a_clear_error():
    with pytest.raises(DsocrError, match="no header row"):
        parse_raw_csv("==PROF== Connected to process 1\n==ERROR== something\n")


@pytest.mark.parametrize("text, value", [("1,234.5", 1234.5), ("n/a", None), ("", None), ("7", 7.0), ("x", None)])
def test_parse_number(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize("unit, scale", [("ns", 1), ("nsecond", 1), ("usecond", 1e3), ("msecond", 1e6),
                                         ("byte", 1), ("Kbyte", 1e3), ("Mbyte", 1e6), ("Gbyte", 1e9),
                                         ("%", 1), ("inst", 1), ("Kinst", 1e3), ("", 1)])
def test_unit_scale(unit, scale):
    assert unit_scale(unit) == scale


@pytest.mark.parametrize("sm, memory, bound", [(80, 30, "compute"), (30, 80, "memory"), (20, 30, "latency"),
                                               (None, 70, "memory"), (None, None, None)])
def test_classify_bound(sm, memory, bound):
    assert classify_bound(sm, memory, 60.0) == bound


# --- tables -------------------------------------------------------------------------------------

def test_tables_and_section():
    kernels = parse_raw_csv(RECORDED.read_text())
    markdown = kernels_markdown(kernels, 60.0, 5, header="Preset: basic")
    assert "## Per stage" in markdown and "## Top 5 kernels" in markdown and "Preset: basic" in markdown
    stage_rows = [line for line in markdown.splitlines() if line.startswith("| sam ") or line.startswith("| decode ")]
    assert len(stage_rows) >= 2
    rows = list(csv.DictReader(io.StringIO(kernels_csv(kernels, 60.0))))
    assert len(rows) == 36 and rows[0]["stage"] == "sam" and float(rows[0]["duration_us"]) == pytest.approx(6.528)
    section = ncu_section(kernels, 60.0, 5)
    assert section["launches"] == 36
    assert list(section["per_stage"]) == ["prefill", "sam", "clip", "projector", "decode"]
    decode = section["per_stage"]["decode"]
    assert decode["launches"] == 20
    assert decode["duration_ms"] == pytest.approx(sum(k.duration_ns for k in kernels if k.stage == "decode") / 1e6)
    assert len(section["top_kernels"]) == 5
    durations = [row["duration_ms"] for row in section["top_kernels"]]
    assert durations == sorted(durations, reverse=True)


# --- child runs -----------------------------------------------------------------------------------

class FakeNcu:
    """Stands in for subprocess.run: writes the recorded CSV where ncu would log it."""

    def __init__(self, csv_text: str, returncode: int = 0, log: str = "==PROF== done\n", to_log: bool = True):
        self.csv_text, self.returncode, self.log, self.to_log = csv_text, returncode, log, to_log
        self.calls = []

    def __call__(self, command, **kwargs):
        self.calls.append((command, kwargs))
        if "--import" in command:
            return subprocess.CompletedProcess(command, 0, stdout=self.csv_text, stderr="")
        if "--export" in command:
            Path(command[command.index("--export") + 1] + ".ncu-rep").write_bytes(b"report")
        if self.to_log:
            Path(command[command.index("--log-file") + 1]).write_text(self.csv_text)
        return subprocess.CompletedProcess(command, self.returncode, stdout=self.log, stderr="")


ONE_RANGE = [NcuRange("decode", ["dsocr@decode/"])]


def runner_for(tmp_path, fake, **changes):
    changes.setdefault("ranges", ONE_RANGE)
    return NcuRunner(preset(**changes), tmp_path / "run", tmp_path, ncu="ncu", python="/py",
                     config_file=None, overrides=["infer.max_new_tokens=4"], runner=fake)


def test_run_sample_writes_tables_and_marks_the_child(tmp_path):
    fake = FakeNcu(RECORDED.read_text())
    runner = runner_for(tmp_path, fake)
    result = runner.run_sample("e0-page_001")
    assert result.error is None and result.skip is None and len(result.kernels) == 36
    command, kwargs = fake.calls[0]
    assert kwargs["env"]["DSOCR_PROFILER_CHILD"] == "ncu"
    assert "--dsocr-profiler=none" in command and "--dsocr-set=infer.max_new_tokens=4" in command
    assert "--dsocr-set=infer.warmup_rounds=0" in command  # the preset's child overrides come last
    assert "--dsocr-run-dir=" + str(tmp_path / "run" / "tmp" / "ncu" / "e0-page_001.decode") in command
    ncu_dir = tmp_path / "run" / "ncu"
    assert (ncu_dir / "kernels.md").is_file() and (ncu_dir / "kernels.csv").is_file()
    assert (ncu_dir / "raw" / "e0-page_001.decode.csv").is_file()
    assert (ncu_dir / "logs" / "e0-page_001.decode.log").read_text().startswith("ncu --nvtx")
    section = runner.section()
    assert section["samples"] == ["e0-page_001"] and section["launches"] == 36
    assert section["preset"]["set"] == "basic"
    assert {k.range for k in result.kernels} == {"decode"}
    assert "decode" in runner.summary_markdown()


def test_one_pass_per_range_and_sample_limit(tmp_path):
    fake = FakeNcu(RECORDED.read_text())
    runner = runner_for(tmp_path, fake, ranges=[NcuRange("sam", ["dsocr@sam/"]),
                                                NcuRange("prefill", ["dsocr@prefill/"], ["dsocr@vision/"])],
                        max_samples=1)
    assert not runner.limit_reached()
    result = runner.run_sample("e0-page_001")
    assert len(fake.calls) == 2 and len(result.kernels) == 72
    assert [c[c.index("--nvtx-include") + 1] for c, _ in fake.calls] == ["dsocr@sam/", "dsocr@prefill/"]
    assert "--nvtx-exclude" in fake.calls[1][0]
    assert runner.limit_reached()


def test_a_range_without_kernels_is_not_an_error(tmp_path):
    nothing = "==PROF== Disconnected from process 1\n==WARNING== No kernels were profiled.\n"
    fake = FakeNcu(RECORDED.read_text())
    runner = runner_for(tmp_path, fake, ranges=[NcuRange("sam", ["dsocr@sam/"]), NcuRange("decode", ["dsocr@decode/"])],
                        export=False)
    calls = iter([nothing, RECORDED.read_text()])

    def one_empty(command, **kwargs):
        fake.csv_text = next(calls)
        return fake(command, **kwargs)

    runner.runner = one_empty
    result = runner.run_sample("e0-page_001")
    assert result.error is None and len(result.kernels) == 36


def test_run_sample_imports_the_report_when_the_log_has_no_csv(tmp_path):
    fake = FakeNcu(RECORDED.read_text(), to_log=False)
    result = runner_for(tmp_path, fake).run_sample("e0-page_001")
    assert result.error is None and len(result.kernels) == 36
    assert any("--import" in command for command, _ in fake.calls)


def test_counter_permission_error_skips(tmp_path):
    fake = FakeNcu("", returncode=1, log="==ERROR== ERR_NVGPUCTRPERM - The user does not have permission\n")
    result = runner_for(tmp_path, fake).run_sample("e0-page_001")
    assert result.skip and "ERR_NVGPUCTRPERM" in result.skip and not result.kernels


def test_failed_child_is_an_error_with_the_log(tmp_path):
    fake = FakeNcu(RECORDED.read_text(), returncode=1, log="FAILED test_direct_inference\n")
    result = runner_for(tmp_path, fake).run_sample("e0-page_001")
    assert "exited with 1" in result.error and "FAILED test_direct_inference" in result.error


def test_no_kernel_in_any_range_is_an_error(tmp_path):
    header_only = "\n".join(RECORDED.read_text().splitlines()[:6]) + "\n"
    result = runner_for(tmp_path, FakeNcu(header_only)).run_sample("e0-page_001")
    assert "profiled no kernel" in result.error
    nothing = "==WARNING== No kernels were profiled.\n"
    result = runner_for(tmp_path, FakeNcu(nothing, to_log=True)).run_sample("e0-page_002")
    assert "profiled no kernel" in result.error
