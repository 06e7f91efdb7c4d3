"""torch_profiler stage: real short CPU profiles of a tiny model run through the real engine,
stage attribution, the operator tables, the merged trace and profiler_overhead."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.profiler import ProfilerAction

from pytest_dsocr.decoding import DecodePolicy
from pytest_dsocr.engine import Engine
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.profilers.config import TorchProfilerConfig, validate_torch_config
from pytest_dsocr.profilers.overhead import overhead_text, profiler_overhead
from pytest_dsocr.profilers.tables import OperatorTable, attribute_events
from pytest_dsocr.profilers.torch_profiler import (
    TorchProfilerHooks,
    TorchProfilerStage,
    make_schedule,
    merge_chrome_traces,
)
from pytest_dsocr.records import ImageRun, Sample

VOCAB, WIDTH = 32, 16
NEVER = VOCAB + 1  # an EOS id the model cannot emit: every decode runs to its budget


@dataclass
class Prepared:
    image: torch.Tensor
    input_ids: torch.Tensor
    num_image_tokens: int = 4
    crop_grid: tuple[int, int] = (1, 1)


class TinyAdapter(nn.Module):
    """The engine's adapter protocol around a few layers, each stage with its own operator:
    relu in vision (between the sub-stages), tanh in the decoder's prefill, sigmoid in decode."""

    family = "tiny-test"
    substages = ("sam", "clip", "projector")
    max_positions = None

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.device = torch.device("cpu")
        self.sam, self.clip, self.projector = nn.Linear(WIDTH, WIDTH), nn.Linear(WIDTH, WIDTH), nn.Linear(WIDTH, 8)
        self.embed, self.head = nn.Embedding(VOCAB, 8), nn.Linear(8, VOCAB)

    def substage_modules(self):
        return [("sam", self.sam), ("clip", self.clip), ("projector", self.projector)]

    def load(self, image_path):
        return torch.ones(4, WIDTH)

    def prepare(self, image):
        return Prepared(image=image * 0.5, input_ids=torch.tensor([[1, 2, 3]]))

    def encode_images(self, prepared):
        features = torch.relu(self.sam(prepared.image))
        return self.projector(self.clip(features))

    def prefill(self, prepared, image_embeds):
        hidden = image_embeds.mean(0, keepdim=True) + self.embed(prepared.input_ids).mean(1)
        return self.head(torch.tanh(hidden)), {"hidden": hidden}

    def decode_step(self, token, cache):
        cache["hidden"] = cache["hidden"] + self.embed(token).reshape(1, -1)
        return self.head(torch.sigmoid(cache["hidden"]))

    def decode_text(self, token_ids):
        return " ".join(map(str, token_ids))


def engine(tokens: int = 3) -> Engine:
    return Engine(TinyAdapter(), DecodePolicy(eos_token_id=NEVER, no_repeat_ngram_size=0), tokens)


def sample(name: str = "page_a") -> Sample:
    return Sample(Path(f"{name}.png"), 0, 0, name)


def cfg(**changes) -> TorchProfilerConfig:
    config = OmegaConf.structured(TorchProfilerConfig)
    for key, value in changes.items():
        config[key] = value
    return config


def measure(eng: Engine, hooks, item: Sample, warmup: int = 1, rounds: int = 2) -> list[ImageRun]:
    """What DsocrSession.measure does: warmup rounds, then measured rounds."""
    runs = []
    for index in range(warmup + rounds):
        measured = index >= warmup
        run = eng.run(item, stage="torch_profiler", hooks=hooks, measured=measured,
                      round_index=index - warmup if measured else index)
        if measured:
            runs.append(run)
    hooks.end_sample()
    return runs


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    """Two samples through the real engine under the hooks: warmup 1, 2 measured rounds each."""
    trace_dir = tmp_path_factory.mktemp("traces")
    hooks = TorchProfilerHooks(cfg(record_shapes=True, with_flops=True), torch.device("cpu"), trace_dir=trace_dir)
    eng = engine()
    runs = measure(eng, hooks, sample("page_a")) + measure(eng, hooks, sample("page_b"))
    return hooks, runs


def stage_of(table: OperatorTable, operator: str) -> set[str]:
    return {stage for stage, name in table.ops if name == operator}


def test_operators_belong_to_the_innermost_stage_range(profiled):
    hooks, _ = profiled
    table = hooks.table
    assert stage_of(table, "aten::relu") == {"vision"}  # between sam and clip, inside vision
    assert stage_of(table, "aten::tanh") == {"prefill"}  # the decoder's prefill, outside vision
    assert stage_of(table, "aten::sigmoid") == {"decode"}
    assert {"sam", "clip", "projector"} <= stage_of(table, "aten::linear")
    assert "vision" not in stage_of(table, "aten::linear")  # sub-stage calls are not counted twice
    assert {"prefill", "decode"} <= stage_of(table, "aten::embedding")


def test_only_measured_rounds_in_active_steps_are_recorded(profiled):
    hooks, runs = profiled
    table = hooks.table
    assert table.iterations == 4 and dict(table.samples) == {"page_a": 2, "page_b": 2}
    assert hooks.recorded == runs
    assert [hooks.recorded_for(name) for name in ("page_a", "page_b")] == [runs[:2], runs[2:]]
    ranges = table.stage_totals()
    assert ranges["sam"]["ranges"] == 4 and ranges["decode"]["ranges"] == 4
    # a decode of 3 tokens runs 2 decode steps: 2 sigmoid calls per inference
    assert table.ops[("decode", "aten::sigmoid")].calls == 8


def test_tables_markdown_and_json(profiled):
    hooks, _ = profiled
    table = hooks.table
    assert table.sort_by == "self_cpu"  # CPU-only profile
    rows = table.rows()
    keys = [r["self_cpu_ms"] for r in rows]
    assert keys == sorted(keys, reverse=True)
    for stage in {r["stage"] for r in rows}:
        shares = [r["share_of_stage_pct"] for r in rows if r["stage"] == stage]
        assert sum(shares) == pytest.approx(100.0)
    linear = next(r for r in rows if r["operator"] == "aten::addmm" and r["stage"] == "sam")
    assert linear["flops"] == 4 * 2 * 4 * WIDTH * WIDTH  # with_flops: 2*M*N*K per call, 4 calls
    assert linear["top_input_shapes"][0]["calls"] == 4
    markdown = table.operators_markdown(5, header="Activities: CPU.")
    assert "## Stages" in markdown and "## Top 5 operators" in markdown and "Self CPU ms" in markdown
    stage_md = table.stage_operators_markdown(3)
    for stage in ("## prefill", "## vision", "## sam", "## clip", "## projector", "## decode"):
        assert stage in stage_md
    data = json.loads(json.dumps(table.to_json()))
    assert data["profiled_iterations"] == 4 and data["sort_by"] == "self_cpu"
    assert {"stage", "operator", "calls", "self_cpu_ms", "cpu_total_ms", "share_of_stage_pct"} <= set(data["operators"][0])


def test_traces_merge_into_one_gzipped_chrome_trace(profiled, tmp_path):
    hooks, _ = profiled
    assert [p.name for p in hooks.traces] == ["e0-page_a.json", "e0-page_b.json"]
    path = merge_chrome_traces(hooks.traces, tmp_path / "trace.json.gz")
    data = json.loads(gzip.decompress(path.read_bytes()))
    names = {event.get("name") for event in data["traceEvents"]}
    assert {"dsocr::sample:page_a", "dsocr::sample:page_b", "dsocr::sam", "dsocr::decode"} <= names
    meta = [json.dumps(e, sort_keys=True) for e in data["traceEvents"] if e.get("ph") == "M"]
    assert len(meta) == len(set(meta))
    assert "schemaVersion" in data
    assert not list(tmp_path.glob(".*tmp"))


def test_trace_sample_limit(tmp_path):
    hooks = TorchProfilerHooks(cfg(trace_max_samples=1), torch.device("cpu"), trace_dir=tmp_path)
    eng = engine(2)
    measure(eng, hooks, sample("page_a"), rounds=1)
    measure(eng, hooks, sample("page_b"), rounds=1)
    assert hooks.traced_samples == ["e0-page_a"] and hooks.table.iterations == 2


@pytest.mark.parametrize("changes, recorded", [
    ({"active": 1}, [0]),  # one recorded step: the first measured round
    ({"active": None, "warmup": 2}, [1]),  # profiler warmup takes the benchmark warmup and one measured round
    ({"active": None, "warmup": 0}, [0, 1]),
    ({"skip_first": 3}, []),  # nothing left to record
])
def test_schedule_decides_which_measured_rounds_are_profiled(changes, recorded):
    hooks = TorchProfilerHooks(cfg(trace=False, **changes), torch.device("cpu"))
    runs = measure(engine(2), hooks, sample())
    assert hooks.recorded == [runs[index] for index in recorded]


def test_open_ended_schedule():
    schedule = make_schedule(cfg(skip_first=1, wait=1, warmup=1, active=None))
    assert [schedule(i) for i in range(5)] == [ProfilerAction.NONE, ProfilerAction.NONE, ProfilerAction.WARMUP,
                                               ProfilerAction.RECORD, ProfilerAction.RECORD]


def test_config_validation_names_the_key():
    validate_torch_config(cfg())
    with pytest.raises(DsocrError, match="profiling.torch.activities"):
        validate_torch_config(cfg(activities=["cpu", "tpu"]))
    with pytest.raises(DsocrError, match="must include cpu"):
        validate_torch_config(cfg(activities=["cuda"]))
    with pytest.raises(DsocrError, match="profiling.torch.active"):
        validate_torch_config(cfg(active=0))


def event(name, start, end, thread=1, parent=None, self_cpu=1.0):
    return SimpleNamespace(name=name, time_range=SimpleNamespace(start=start, end=end), cpu_parent=parent,
                           thread=thread, device_type="DeviceType.CPU", is_async=False,
                           self_cpu_time_total=self_cpu, cpu_time_total=end - start)


def test_events_of_other_threads_are_placed_by_time():
    sample_range = event("dsocr::sample:p", 0, 100)
    prefill = event("dsocr::prefill", 10, 60, parent=sample_range)
    vision = event("dsocr::vision", 20, 50, parent=prefill)
    on_thread = event("aten::mm", 30, 40, parent=vision)
    other_thread = event("aten::add", 25, 35, thread=2)
    between = event("aten::copy_", 70, 80, thread=2)
    outside = event("aten::zeros", 200, 210, thread=2)
    result = {e.name: (stage, sample_id) for stage, sample_id, e in attribute_events(
        [sample_range, prefill, vision, on_thread, other_thread, between, outside])}
    assert result == {"aten::mm": ("vision", "p"), "aten::add": ("vision", "p"),
                      "aten::copy_": ("other", "p"), "aten::zeros": ("outside", None)}


def run(sample_id: str, e2e: float, decode: float = 0.0) -> ImageRun:
    return ImageRun(sample_id=sample_id, image_path=f"{sample_id}.png", epoch=0, round=0, stage="x",
                    preprocess_ms=0.0, prefill_ms=e2e - decode, decode_ms=decode, vision_ms=1.0, ttft_ms=e2e - decode,
                    tokens=2, prefill_len=3, image_tokens=1, crop_grid=(1, 1))


def test_profiler_overhead_is_profiled_over_unprofiled_for_the_same_samples():
    profiled = [run("a", 30.0, 10.0), run("a", 34.0, 14.0), run("b", 60.0, 20.0)]
    baselines = {"a": [run("a", 20.0, 8.0)], "b": [run("b", 40.0, 16.0)], "c": [run("c", 5.0)]}
    section = profiler_overhead("torch", profiled, baselines, {"a": "direct_inference", "b": "direct_inference"})
    assert section["ratio"] == pytest.approx((32.0 + 60.0) / (20.0 + 40.0))
    assert section["baseline"] == "direct_inference" and section["samples"] == 2
    assert section["per_sample"]["a"]["ratio"] == pytest.approx(32.0 / 20.0)
    assert section["per_stage"]["decode"] == pytest.approx((12.0 + 20.0) / (8.0 + 16.0))
    mixed = profiler_overhead("torch", profiled, baselines, {"a": "direct_inference", "b": "unprofiled_rounds"})
    assert mixed["baseline"] == "mixed"
    assert profiler_overhead("torch", [], baselines, {})["ratio"] is None


def test_profiler_overhead_has_an_interval_over_pages_and_says_within_noise():
    def section(ratios: list[float]) -> dict:
        profiled = [run(f"p{i}", 100.0 * r) for i, r in enumerate(ratios)]
        baselines = {f"p{i}": [run(f"p{i}", 100.0)] for i in range(len(ratios))}
        return profiler_overhead("torch", profiled, baselines, {name: "direct_inference" for name in baselines})

    noisy = section([0.70, 1.25, 0.80, 1.20, 0.85])  # a ratio of 0.96: faster under the profiler only by chance
    assert noisy["ci_low"] < 1.0 < noisy["ci_high"] and noisy["within_noise"] is True
    assert overhead_text(noisy).startswith("Profiler overhead: within noise (0.960x end-to-end; 95% interval ")
    assert "over 5 pages" in overhead_text(noisy)
    slower = section([1.28, 1.31, 1.30, 1.33, 1.29])
    assert 1.0 < slower["ci_low"] <= slower["ratio"] <= slower["ci_high"] and slower["within_noise"] is False
    assert "within noise" not in overhead_text(slower) and "1.302x end-to-end (95% interval 1.2" in overhead_text(slower)
    single = section([0.848])
    assert single["ci_low"] is None and single["within_noise"] is None
    assert "0.848x end-to-end from 1 page" in overhead_text(single) and "cannot be told from noise" in overhead_text(single)
    assert overhead_text(profiler_overhead("torch", [], {}, {})) == "Profiler overhead: not measured."


class FakeCollector:
    def __init__(self, records=()):
        self.records = list(records)
        self.sections, self.summary = {}, {}

    def records_for(self, stage, sample_id):
        return [r for r in self.records if r.stage == stage and r.sample_id == sample_id]

    def add_section(self, name, data):
        self.sections[name] = data

    def add_summary_section(self, title, markdown):
        self.summary[title] = markdown


class FakeSession:
    def __init__(self, eng):
        self.engine, self.calls = eng, 0

    def run(self, item, **kwargs):
        self.calls += 1
        assert kwargs["hooks"].name == "none"  # the baseline runs without any profiler
        return self.engine.run(item, **kwargs)


def test_stage_writes_files_sections_and_measures_its_own_baseline(tmp_path):
    direct = replace(run("page_a", 10.0), stage="direct_inference")
    collector = FakeCollector([direct])
    stage = TorchProfilerStage(cfg(), device=torch.device("cpu"), run_dir=tmp_path, collector=collector)
    eng = engine()
    session = FakeSession(eng)
    for name in ("page_a", "page_b"):
        item = sample(name)
        with stage.profiling(item) as hooks:
            measure(eng, hooks, item)
        stage.baseline(item, session, rounds=2)
        stage.after_sample()
        assert (tmp_path / "torch_profiler" / "operators.md").is_file()
    assert session.calls == 2  # page_a had direct_inference records, page_b did not
    stage.finish()
    out = tmp_path / "torch_profiler"
    assert {p.name for p in out.iterdir()} >= {"operators.md", "stage_operators.md", "operators.json", "trace.json.gz"}
    assert not (tmp_path / "tmp" / "torch_profiler" / "traces").exists()
    overhead = collector.sections["profiler_overhead"]
    assert overhead["baseline"] == "mixed"
    assert overhead["per_sample"]["page_a"]["baseline"] == "direct_inference"
    assert overhead["per_sample"]["page_b"]["baseline"] == "unprofiled_rounds"
    section = collector.sections["torch_profiler"]
    assert section["profiled_iterations"] == 4 and section["files"]["trace"] == "torch_profiler/trace.json.gz"
    assert "Profiler overhead" in collector.summary["Torch profiler"]
