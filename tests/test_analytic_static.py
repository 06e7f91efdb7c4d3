"""The static_analysis stage's work (run_static_analysis): files, cross-check, floor times, MFU/MBU."""

from __future__ import annotations

import json

import pytest

from pytest_dsocr import hardware
from pytest_dsocr.analytic.efficiency import efficiency_markdown
from pytest_dsocr.analytic.model import STAGES, DeepseekOCRCostModel
from pytest_dsocr.analytic.static import JSON_FILE, MARKDOWN_FILE, metrics_section, run_static_analysis
from pytest_dsocr.analytic.workload import workload_for_grid
from pytest_dsocr.config import load_config
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.models.deepseek_ocr.spec import TINY
from pytest_dsocr.records import ImageRun


@pytest.fixture(autouse=True)
def no_gpu(monkeypatch):
    """Detection sees a CPU-only machine, whatever this one has."""
    monkeypatch.setattr(hardware, "detect_device_name", lambda: None)


def _cfg(*overrides: str):
    return load_config(overrides=["model.size=tiny", *overrides])


def _run(device: str, grid=(2, 3), tokens=33, prefill_ms=40.0, vision_ms=25.0, decode_ms=64.0,
         stage="direct_inference"):
    image_tokens = 903 if grid == (2, 3) else 273
    return ImageRun(
        sample_id="page_000", image_path="/x/page_000.png", epoch=0, round=0, stage=stage,
        preprocess_ms=1.0, prefill_ms=prefill_ms, decode_ms=decode_ms, vision_ms=vision_ms, ttft_ms=41.0,
        tokens=tokens, prefill_len=image_tokens + 10, image_tokens=image_tokens, crop_grid=grid,
        substage_ms={"sam": 20.0, "clip": 4.0, "projector": 1.0}, device=device,
    )


def test_files_stages_and_crosscheck(tmp_path):
    result = run_static_analysis(_cfg(), tmp_path / "static_analysis")
    data = json.loads((tmp_path / "static_analysis" / JSON_FILE).read_text())
    assert (tmp_path / "static_analysis" / MARKDOWN_FILE).read_text() == result.markdown
    assert list(data["stages"]) == list(STAGES)
    for stage in data["stages"].values():
        assert {"flops", "matmul_flops", "other_flops", "bytes", "params", "arithmetic_intensity"} <= set(stage)
        assert "floor_ms" not in stage  # no GPU: no floor
    counter = data["flop_counter"]
    assert counter["within_tolerance"] and counter["module_params"] == DeepseekOCRCostModel(TINY).params
    assert all(abs(row["ratio"] - 1) <= 0.01 for row in counter["stages"])
    # with no measured run the workload comes from the config and a reference page
    wl = data["workload"]
    assert wl["crop_grid"] == [2, 3] and wl["prefill_tokens"] == 913 and wl["decode_steps"] == 63
    assert wl["sources"]["decode_steps"] == "infer.max_new_tokens=64"
    assert data["hardware"] is None and "no CUDA device" in data["hardware_choice"]
    assert "no CUDA device" in result.summary_markdown
    assert metrics_section(result)["stages"]["prefill"]["flops"] == data["stages"]["prefill"]["flops"]


def test_floor_times_with_named_gpu(tmp_path):
    result = run_static_analysis(_cfg("hardware.name=h100_sxm", "static_analysis.flop_counter=false"), tmp_path)
    stages = result.report["stages"]
    assert result.report["dtype"] == "bfloat16"  # auto on a GPU
    decode = stages["decode_step"]
    assert decode["bound"] == "memory"
    assert decode["floor_ms"] == pytest.approx(max(decode["flops"] / 989.5e12, decode["bytes"] / 3350e9) * 1e3)
    assert result.report["flop_counter"] == {"skipped": "static_analysis.flop_counter=false"}


def test_efficiency_omitted_without_runs_or_on_cpu(tmp_path):
    cfg = _cfg("static_analysis.flop_counter=false")
    none = run_static_analysis(cfg, tmp_path, records=[])
    assert "no measured runs" in none.efficiency["omitted"]
    cpu = run_static_analysis(cfg, tmp_path, records=[_run("cpu")])
    assert "measured on cpu" in cpu.efficiency["omitted"]
    assert efficiency_markdown(cpu.efficiency).startswith("MFU/MBU omitted: measured on cpu")
    # a GPU table named explicitly does not make CPU times comparable with it
    named = run_static_analysis(_cfg("static_analysis.flop_counter=false", "hardware.name=h100_sxm"),
                                tmp_path, records=[_run("cpu")])
    assert "measured on cpu" in named.efficiency["omitted"]


def test_unknown_gpu_omits_with_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "detect_device_name", lambda: "Tesla T4")
    result = run_static_analysis(_cfg("static_analysis.flop_counter=false"), tmp_path, records=[_run("cuda:0")])
    assert "'Tesla T4' is not in conf/hardware" in result.efficiency["omitted"]


def test_mfu_mbu_from_measured_gpu_runs(tmp_path):
    runs = [_run("cuda:0"), _run("cuda:0", prefill_ms=50.0, decode_ms=70.0),
            _run("cuda:0", stage="torch_profiler", prefill_ms=500.0)]  # profiled runs are not judged
    cfg = _cfg("hardware.name=h100_sxm", "static_analysis.flop_counter=false", "model.dtype=bfloat16")
    section = run_static_analysis(cfg, tmp_path, records=runs).efficiency
    stages = section["stages"]
    assert set(stages) == {"sam", "clip", "projector", "vision", "prefill", "decode"}
    # the analytic work of that run's workload: 2x3 grid, 913-token prompt, 32 decode steps
    model = DeepseekOCRCostModel(TINY)
    cost = model.stages(workload_for_grid(TINY, 1024, 640, (2, 3), text_tokens=10, decode_steps=32))
    prefill_s = ((40.0 - 25.0) + (50.0 - 25.0)) / 1e3  # decoder part of both runs
    assert stages["prefill"]["runs"] == 2
    assert stages["prefill"]["mfu"] == pytest.approx(2 * cost["prefill"].flops / prefill_s / 989.5e12)
    decode_s = (64.0 + 70.0) / 1e3
    assert stages["decode"]["mbu"] == pytest.approx(2 * cost["decode"].bytes / decode_s / 3350e9)
    assert stages["sam"]["mfu"] == pytest.approx(2 * cost["sam"].flops / 0.040 / 989.5e12)
    table = efficiency_markdown(section)
    assert "| prefill | 2 |" in table and "**" in table


def test_measured_workload_and_metrics_file(tmp_path):
    runs = [_run("cuda:0", grid=(1, 1)), _run("cuda:0", grid=(1, 1)), _run("cuda:0", grid=(2, 3))]
    metrics = {"samples": [r.to_json() for r in runs],
               "env": {"device": "cuda:0", "device_name": "NVIDIA H100 80GB HBM3"}}
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics))
    cfg = _cfg(f"static_analysis.metrics={path}", "static_analysis.flop_counter=false")
    result = run_static_analysis(cfg, tmp_path / "out")
    wl = result.report["workload"]
    assert wl["crop_grid"] == [1, 1] and wl["sources"]["crop_grid"] == "measured (most common)"
    assert wl["decode_steps"] == 32 and wl["text_tokens"] == 10
    assert result.report["hardware"]["name"] == "h100_sxm"  # from the file's device, not this machine
    assert result.efficiency["stages"]["decode"]["runs"] == 3


def test_bad_metrics_file_names_the_key(tmp_path):
    cfg = _cfg(f"static_analysis.metrics={tmp_path / 'missing.json'}")
    with pytest.raises(DsocrError, match="static_analysis.metrics="):
        run_static_analysis(cfg, tmp_path)


def test_config_crop_grid_wins(tmp_path):
    cfg = _cfg("static_analysis.crop_grid=[3,1]", "static_analysis.flop_counter=false",
               "static_analysis.decode_steps=5", "static_analysis.text_tokens=12")
    wl = run_static_analysis(cfg, tmp_path, records=[_run("cpu")]).report["workload"]
    assert (wl["crop_grid"], wl["crops"], wl["text_tokens"], wl["decode_steps"]) == ([3, 1], 3, 12, 5)
