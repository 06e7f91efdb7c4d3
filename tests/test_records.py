"""The append-only records file, the interim metrics at bounded cost, and rebuilding a run from
its records: the same metrics.json and summary the session end writes, after a crash too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from report_factory import image_run, noisy_runs

from pytest_dsocr.collector import RUNNING, SUMMARY_FILE, Collector
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.recordlog import RECORDS_FILE, RecordLog, read_records
from pytest_dsocr.records import SampleFailure
from pytest_dsocr.report.metrics import INTERIM_SAMPLES, METRICS_FILE, build_metrics, read_metrics
from pytest_dsocr.report.model import RunMetrics
from pytest_dsocr.report.rebuild import NOT_ENDED, rebuild
from pytest_dsocr.stages import StageTree

CONFIG = {"model": {"family": "deepseek_ocr", "size": "tiny"}, "infer": {"warmup_rounds": 1, "rounds": 1}}
TREE = StageTree(("sam", "clip", "projector"))
FAILURE = SampleFailure("page_009", "/data/page_009.png", 0, "direct_inference", "RuntimeError: boom", "RuntimeError")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def collector(run_dir: Path, clock=None, worker=None) -> Collector:
    return Collector(lambda: run_dir, CONFIG, lambda: {"device": "cpu", "argv": ["pytest"]},
                     lambda: {"max_rss_mib": 10.0}, {"samples": 4}, tree=TREE, worker=worker,
                     identity={"weights": {"kind": "random", "seed": 0}}, clock=clock or Clock())


def without_time(data: dict) -> dict:
    return {key: value for key, value in data.items() if key != "generated_at"}


def test_every_event_is_one_line_read_back(tmp_path):
    runs = noisy_runs(3, seed=1)
    c = collector(tmp_path)
    c.add_runs(runs)
    c.add_failure(FAILURE)
    c.add_section("vendor_parity", {"all_ok": True})
    c.add_summary_section("Notes", "hello")
    c.finish(complete=True)
    log = read_records(tmp_path / RECORDS_FILE)
    assert log.runs == runs and log.failures == [FAILURE]
    assert log.sections == {"vendor_parity": {"all_ok": True}} and log.summary_sections == {"Notes": "hello"}
    assert log.session["config"] == CONFIG and log.session["stage_tree"] == ["sam", "clip", "projector"]
    assert log.complete and log.end["memory"] == {"max_rss_mib": 10.0} and log.torn_lines == 0


def test_a_line_cut_short_by_a_crash_is_skipped_and_counted(tmp_path):
    path = tmp_path / RECORDS_FILE
    log = RecordLog(path)
    log.append("run", image_run(0).to_json())
    log.close()
    with open(path, "a") as handle:
        handle.write('{"kind": "run", "sample_id": "page_0')  # the process died mid-write
    read = read_records(path)
    assert [r.sample_id for r in read.runs] == ["page_000"] and read.torn_lines == 1


def test_a_malformed_line_inside_the_file_is_named(tmp_path):
    path = tmp_path / RECORDS_FILE
    path.write_text('{"kind": "run"}\n{"kind": "end", "complete": true}\n')
    with pytest.raises(DsocrError, match=rf"{RECORDS_FILE}:1: not a records line"):
        read_records(path)


def test_records_are_on_disk_at_once_and_metrics_rewrites_are_throttled(tmp_path):
    clock = Clock()
    c = collector(tmp_path, clock)
    c.add_runs([image_run(0)])  # the first record writes the interim file
    first = (tmp_path / METRICS_FILE).read_text()
    clock.now += 0.5
    c.add_runs([image_run(1)])
    assert (tmp_path / METRICS_FILE).read_text() == first  # within the interval: no rewrite
    assert len((tmp_path / RECORDS_FILE).read_text().splitlines()) == 3  # session + 2 runs
    clock.now += c.interim_interval_s
    c.add_runs([image_run(2)])
    data = json.loads((tmp_path / METRICS_FILE).read_text())
    assert data["complete"] is False and data["reason"] == RUNNING and len(data["samples"]) == 3
    c.add_failure(FAILURE)  # rare events write at once
    assert json.loads((tmp_path / METRICS_FILE).read_text())["failures"][0]["sample_id"] == "page_009"


def test_interim_aggregates_are_exact_where_cheap(tmp_path):
    runs = noisy_runs(INTERIM_SAMPLES + 7, seed=3)
    c = collector(tmp_path)
    c.add_runs(runs)
    interim = c.interim_metrics()
    full = build_metrics(runs, [], env={}, config=CONFIG, tree=TREE, complete=False)
    for name in ("prefill", "vision", "sam", "clip", "projector", "decode"):
        got, want = interim.aggregates.stage_ms[name], full.aggregates.stage_ms[name]
        assert got.count == want.count
        assert got.mean == pytest.approx(want.mean) and got.std == pytest.approx(want.std)
        assert (got.min, got.max) == (want.min, want.max)
        assert got.p50 is None and got.ci_low is None  # left to the full file
    assert interim.aggregates.throughput.pages_per_s == pytest.approx(full.aggregates.throughput.pages_per_s)
    assert interim.samples == ()  # more than INTERIM_SAMPLES: the records file has them
    assert interim.counts.measured_runs == len(runs)


def test_the_model_reads_back_what_it_writes(tmp_path):
    runs = noisy_runs(5, seed=2) + [image_run(0, stage="torch_profiler", worker="gw1")]
    metrics = build_metrics(runs, [FAILURE], env={"device": "cpu"}, config=CONFIG, tree=TREE, complete=True,
                            sections={"efficiency": {"omitted": "cpu"}}, identity={"x": 1}, records_file=RECORDS_FILE)
    again = RunMetrics.from_json(json.loads(json.dumps(metrics.to_json())))
    assert again == metrics


def test_rebuild_gives_the_files_the_session_wrote(tmp_path):
    c = collector(tmp_path)
    c.add_runs(noisy_runs(4, seed=5))
    c.add_failure(FAILURE)
    c.add_section("vendor_parity", {"all_ok": True})
    c.finish(complete=True)
    c.add_summary_section("Regression gate", "passed")  # after the end, as the gate does
    c.rewrite_summary(read_metrics(tmp_path))
    written = json.loads((tmp_path / METRICS_FILE).read_text())
    summary = (tmp_path / SUMMARY_FILE).read_text()
    rebuilt = rebuild(tmp_path)
    assert without_time(json.loads((tmp_path / METRICS_FILE).read_text())) == without_time(written)
    generated = f"Generated {rebuilt.generated_at}."
    assert (tmp_path / SUMMARY_FILE).read_text().replace(generated, "") == summary.replace(
        f"Generated {written['generated_at']}.", "")


def test_a_killed_run_is_rebuilt_from_its_records(tmp_path):
    runs = noisy_runs(INTERIM_SAMPLES + 3, seed=6)
    c = collector(tmp_path)
    c.add_runs(runs)  # then the process is killed: no finish, no end line
    interim = json.loads((tmp_path / METRICS_FILE).read_text())
    assert interim["samples"] == [] or len(interim["samples"]) < len(runs)
    metrics = rebuild(tmp_path)
    assert metrics.complete is False and metrics.reason == NOT_ENDED
    assert list(metrics.samples) == runs and metrics.aggregates.prefill_ms.p50 is not None
    assert "**Run incomplete**" in (tmp_path / SUMMARY_FILE).read_text()


def test_rebuild_concatenates_xdist_workers(tmp_path):
    gw0, gw1 = collector(tmp_path, worker="gw0"), collector(tmp_path, worker="gw1")
    gw0.add_runs([image_run(0)])
    gw1.add_runs([image_run(1), image_run(2)])
    gw0.finish(complete=True)
    gw1.finish(complete=True)
    metrics = rebuild(tmp_path)
    assert [(r.sample_id, r.worker) for r in metrics.samples] == [
        ("page_000", "gw0"), ("page_001", "gw1"), ("page_002", "gw1")]
    assert metrics.complete and set(metrics.section("xdist")["workers"]) == {"gw0", "gw1"}
    assert metrics.by_worker is not None


def test_report_command(tmp_path):
    c = collector(tmp_path)
    c.add_runs([image_run(0)])
    done = subprocess.run([sys.executable, "-m", "pytest_dsocr", "report", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "1 measured runs" in done.stdout and "incomplete" in done.stdout
    missing = subprocess.run([sys.executable, "-m", "pytest_dsocr", "report", str(tmp_path / "nope")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "RUN_DIR=" in missing.stderr and "not a directory" in missing.stderr
