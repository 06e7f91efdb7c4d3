"""metrics.json: every key the skeleton wrote, the added quantities, and their definitions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from report_factory import image_run, make_metrics, noisy_runs

from pytest_dsocr.records import SampleFailure
from pytest_dsocr.report.metrics import METRICS_FILE, write_metrics
from pytest_dsocr.report.model import SCHEMA_VERSION, RunMetrics
from pytest_dsocr.stages import StageTree

STATS_KEYS = {"count", "mean", "std", "min", "p50", "p90", "p95", "p99", "max", "ci_low", "ci_high", "ci_level", "unit", "values"}


@pytest.fixture
def runs():
    return noisy_runs(6, seed=1)


def test_skeleton_keys_are_all_still_there(runs):
    metrics = make_metrics(runs, [SampleFailure("page_009", "/data/page_009.png", 0, "direct_inference", "bad")])
    aggregates = metrics["aggregates"]
    for key in ("prefill_ms", "decode_ms", "tokens", "tokens_per_s"):
        assert {"mean", "std"} <= set(aggregates[key]), key
        assert STATS_KEYS <= set(aggregates[key]), key
    assert set(aggregates["stage_ms"]) == {"prefill", "decode", "vision", "sam", "clip", "projector"}
    for stats in aggregates["stage_ms"].values():
        assert STATS_KEYS <= set(stats) and stats["unit"] == "ms"
    assert len(metrics["samples"]) == len(runs)
    assert metrics["failures"][0]["sample_id"] == "page_009"
    assert {"python", "torch", "transformers", "device"} <= set(metrics["env"])
    assert metrics["config"]["model"]["family"] == "deepseek_ocr"


def test_added_keys(runs):
    metrics = make_metrics(runs, memory={"max_rss_mib": 512.0})
    for key in ("schema_version", "generated_at", "complete", "reason", "counts", "error_rate", "memory",
                "aggregates_stage", "stage_nesting"):
        assert key in metrics, key
    assert metrics["schema_version"] == SCHEMA_VERSION
    aggregates = metrics["aggregates"]
    for key in ("ttft_ms", "tpot_ms", "e2e_ms", "preprocess_ms"):
        assert STATS_KEYS <= set(aggregates[key]), key
    assert set(aggregates["sequence_lengths"]) == {"input", "output", "image"}
    assert {"pages_per_s", "output_tokens_per_s", "prompt_tokens_per_s", "image_tokens_per_s",
            "input_tokens_per_s", "total_tokens_per_s"} <= set(aggregates["throughput"])
    assert metrics["memory"] == {"max_rss_mib": 512.0}
    assert metrics["stage_nesting"] == {"prefill": ["vision"], "vision": ["sam", "clip", "projector"]}


def test_values_follow_the_documented_definitions(runs):
    aggregates = make_metrics(runs)["aggregates"]
    prefill = np.array([r.prefill_ms for r in runs])
    decode = np.array([r.decode_ms for r in runs])
    e2e = np.array([r.preprocess_ms + r.prefill_ms + r.decode_ms for r in runs])
    tokens = np.array([r.tokens for r in runs])
    assert aggregates["prefill_ms"]["mean"] == pytest.approx(prefill.mean())
    assert aggregates["decode_ms"]["std"] == pytest.approx(decode.std(ddof=1))
    assert aggregates["stage_ms"]["sam"]["values"] == [r.substage_ms["sam"] for r in runs]
    assert aggregates["tpot_ms"]["values"] == pytest.approx(list(decode / (tokens - 1)))
    assert aggregates["tokens_per_s"]["values"] == pytest.approx(list((tokens - 1) / (decode / 1000)))
    assert aggregates["e2e_ms"]["values"] == pytest.approx(list(e2e))
    assert aggregates["ttft_ms"]["values"] == [r.ttft_ms for r in runs]
    throughput = aggregates["throughput"]
    seconds = e2e.sum() / 1000
    assert throughput["pages_per_s"] == pytest.approx(len(runs) / seconds)
    assert throughput["output_tokens_per_s"] == pytest.approx(tokens.sum() / seconds)
    image = sum(r.image_tokens for r in runs)
    prompt = sum(r.prefill_len - r.image_tokens for r in runs)
    assert throughput["image_tokens_per_s"] == pytest.approx(image / seconds)
    assert throughput["prompt_tokens_per_s"] == pytest.approx(prompt / seconds)
    assert throughput["input_tokens_per_s"] == pytest.approx((image + prompt) / seconds)
    assert throughput["total_tokens_per_s"] == pytest.approx((image + prompt + tokens.sum()) / seconds)
    assert aggregates["sequence_lengths"]["input"]["values"] == [float(r.prefill_len) for r in runs]


def test_single_token_runs_have_no_tpot():
    aggregates = make_metrics([image_run(0, tokens=1), image_run(1, tokens=11, decode_ms=100.0)])["aggregates"]
    assert aggregates["tpot_ms"]["values"] == [10.0]
    assert aggregates["tokens_per_s"]["values"] == [100.0]


def test_only_measured_stages_appear():
    metrics = make_metrics([image_run(0, substage_ms={})])
    assert set(metrics["aggregates"]["stage_ms"]) == {"prefill", "vision", "decode"}
    assert metrics["stage_nesting"] == {"prefill": ["vision"]}


def test_substage_names_come_from_the_records():
    """DeepSeek-OCR 2 has sam, encoder, projector: no clip row, an encoder row."""
    v2 = {"projector": 1.0, "encoder": 20.0, "sam": 30.0}
    metrics = make_metrics([image_run(0, substage_ms=v2)], tree=StageTree(("sam", "encoder", "projector", "unused")))
    assert list(metrics["aggregates"]["stage_ms"]) == ["prefill", "vision", "sam", "encoder", "projector", "decode"]
    assert metrics["stage_nesting"]["vision"] == ["sam", "encoder", "projector"]


def test_by_stage_keeps_profiler_runs_out_of_the_headline():
    direct = noisy_runs(4, seed=1)
    profiled = noisy_runs(4, seed=2, factor=3.0, stage="torch_profiler")
    metrics = make_metrics(profiled + direct)
    assert metrics["aggregates_stage"] == "direct_inference"
    assert list(metrics["by_stage"]) == ["direct_inference", "torch_profiler"]
    assert metrics["aggregates"]["prefill_ms"]["values"] == [r.prefill_ms for r in direct]
    assert metrics["by_stage"]["torch_profiler"]["prefill_ms"]["values"] == [r.prefill_ms for r in profiled]
    assert metrics["counts"]["measured_runs"] == 8


def test_one_stage_other_than_direct_inference():
    metrics = make_metrics(noisy_runs(3, stage="torch_profiler"))
    assert metrics["aggregates_stage"] == "torch_profiler"
    assert "by_stage" not in metrics
    assert metrics["aggregates"]["prefill_ms"]["count"] == 3


def test_by_worker_rows_and_totals():
    runs = [image_run(i, worker="gw0", device="cuda:0") for i in range(3)]
    runs += [image_run(i + 3, worker="gw1", device="cuda:1", decode_ms=600.0) for i in range(2)]
    metrics = make_metrics(runs)
    rows = {row["worker"]: row for row in metrics["by_worker"]["rows"]}
    assert rows["gw0"]["device"] == "cuda:0" and rows["gw0"]["measured_runs"] == 3
    assert rows["gw0"]["pages_per_s"] == pytest.approx(1000 / 405)
    assert rows["gw1"]["pages_per_s"] == pytest.approx(1000 / 705)
    totals = metrics["by_worker"]["totals"]
    assert totals["workers"] == 2 and totals["measured_runs"] == 5
    # workers run concurrently: their rates add up
    assert totals["pages_per_s"] == pytest.approx(1000 / 405 + 1000 / 705)
    assert metrics["aggregates"]["throughput"]["pages_per_s"] == pytest.approx(totals["pages_per_s"])


def test_single_worker_has_no_worker_table(runs):
    assert "by_worker" not in make_metrics(runs)


def test_counts_and_error_rate():
    failure = SampleFailure("page_007", "/data/page_007.png", 0, "direct_inference", "truncated image")
    metrics = make_metrics([image_run(0), image_run(0, round=1), image_run(1)], [failure])
    assert metrics["counts"] == {"warmup_rounds": 1, "rounds": 1, "samples": 3, "measured_runs": 3, "failed": 1}
    assert metrics["error_rate"] == pytest.approx(1 / 3)
    assert make_metrics([image_run(0)], counts={"rounds": 5})["counts"]["rounds"] == 5


def test_incomplete_run_says_why():
    metrics = make_metrics([image_run(0)], complete=False, reason="interrupted by SIGINT")
    assert metrics["complete"] is False and metrics["reason"] == "interrupted by SIGINT"


def test_no_runs_gives_no_numbers():
    metrics = make_metrics([])
    assert metrics["aggregates"]["prefill_ms"]["mean"] is None
    assert metrics["aggregates"]["stage_ms"] == {}
    assert metrics["aggregates"]["throughput"]["pages_per_s"] is None
    assert metrics["error_rate"] is None and metrics["aggregates_stage"] is None


def test_sections_are_added_but_never_replace_core_keys():
    metrics = make_metrics([image_run(0)], sections={"efficiency": {"prefill": {"mfu": 0.3}}})
    assert metrics["efficiency"] == {"prefill": {"mfu": 0.3}}
    with pytest.raises(ValueError, match="aggregates"):
        make_metrics([image_run(0)], sections={"aggregates": {}})


def test_write_metrics_is_strict_json_and_leaves_no_temp_file(tmp_path: Path, runs):
    metrics = make_metrics(runs, sections={"efficiency": {"note": math.nan, "path": Path("/x")}})
    path = write_metrics(tmp_path / "run", RunMetrics.from_json(metrics))
    assert path == tmp_path / "run" / METRICS_FILE
    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")
    data = json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)
    assert data["efficiency"] == {"note": None, "path": "/x"}
    assert data["aggregates"]["stage_ms"]["sam"]["count"] == len(runs)
    assert [p.name for p in path.parent.iterdir()] == [METRICS_FILE]


def test_write_metrics_replaces_the_previous_file(tmp_path: Path):
    write_metrics(tmp_path, RunMetrics.from_json(make_metrics([image_run(0)], complete=False)))
    write_metrics(tmp_path, RunMetrics.from_json(make_metrics([image_run(0), image_run(1)], complete=True)))
    data = json.loads((tmp_path / METRICS_FILE).read_text())
    assert data["complete"] is True and len(data["samples"]) == 2
