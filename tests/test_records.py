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
    c.wait_for_writes()  # written off the sample's path, by the collector's writer thread
    first = (tmp_path / METRICS_FILE).read_text()
    clock.now += 0.5
    c.add_runs([image_run(1)])
    c.wait_for_writes()
    assert (tmp_path / METRICS_FILE).read_text() == first  # within the interval: no rewrite
    assert len((tmp_path / RECORDS_FILE).read_text().splitlines()) == 3  # session + 2 runs
    clock.now += c.interim_interval_s
    c.add_runs([image_run(2)])
    c.wait_for_writes()
    data = json.loads((tmp_path / METRICS_FILE).read_text())
    assert data["complete"] is False and data["reason"] == RUNNING and len(data["samples"]) == 3
    assert (tmp_path / SUMMARY_FILE).is_file()
    c.add_failure(FAILURE)  # rare events write at once
    c.wait_for_writes()
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
    c.wait_for_writes()
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


def test_a_record_json_holds_every_field():
    from dataclasses import fields

    from pytest_dsocr.records import ImageRun

    run = image_run(0)
    assert set(run.to_json()) == {f.name for f in fields(ImageRun)} | {"tpot_ms"}


def test_batched_pages_count_their_share_of_the_batch_wall_time():
    import dataclasses

    runs = [dataclasses.replace(image_run(i), batch_size=4, batch_wall_ms=2000.0) for i in range(4)]
    metrics = build_metrics(runs, [], env={}, config=CONFIG, tree=TREE, complete=True)
    assert metrics.aggregates.throughput.pages_per_s == pytest.approx(4 / 2.0)  # 4 pages in one 2 s batch
    from pytest_dsocr.report.running import RunningAggregates

    running = RunningAggregates()
    for run in runs:
        running.add(run)
    assert running.aggregates("direct_inference", []).throughput.pages_per_s == pytest.approx(2.0)


def test_kept_runs_are_not_walked_by_the_cycle_collector():
    """A long run's records must not make every full collection pause the run: RunRows keeps
    its runs in containers the collector does not walk run by run (counted, not timed)."""
    import dataclasses
    import gc

    from pytest_dsocr.records import RunRows, SampleAccuracy

    runs = [image_run(i % 10, round=i // 10, prefill_ms=100.0 + i) for i in range(2000)]
    runs.append(image_run(7, stage="torch_profiler"))
    runs[3] = dataclasses.replace(runs[3], accuracy=SampleAccuracy(0.25, 3.0, False, 2, 3, 1, 0.5),
                                  token_ids=(5, 900, 70000))
    for run in runs:
        vars(run)  # pickling reads each instance's __dict__, which CPython then keeps: the caller's
    gc.collect()
    before = len(gc.get_objects())
    rows = RunRows(runs)
    gc.collect()
    assert len(gc.get_objects()) - before < 50  # one index per page (10 here), none per run
    assert len(rows) == len(runs) and list(rows) == runs
    assert rows[3] == runs[3] and rows[-1] == runs[-1] and rows[1:4] == runs[1:4]
    assert rows.last(2) == runs[-2:] and rows.of_page("torch_profiler", runs[-1].sample_id) == runs[-1:]
    assert rows.of_page("direct_inference", runs[5].sample_id) == [r for r in runs[:-1] if r.sample_id == runs[5].sample_id]


def test_distinct_attempts_count_each_page_of_each_epoch_once(tmp_path):
    c = collector(tmp_path)
    c.add_runs([image_run(0, round=0), image_run(0, round=1)])
    c.add_runs([image_run(0, stage="torch_profiler")])  # the same page in another stage
    c.add_runs([image_run(0, epoch=1), image_run(1)])
    c.add_failure(FAILURE)
    assert c.interim_metrics().counts.samples == 4  # page_000 e0, page_000 e1, page_001 e0, page_009 e0


def test_run_texts_are_the_samples_json(tmp_path):
    import dataclasses

    from pytest_dsocr.recordlog import run_texts

    runs = noisy_runs(3, seed=8)
    runs[1] = dataclasses.replace(runs[1], substage_ms={"sam": float("nan")}, text_raw='quote " and ü')
    path = tmp_path / RECORDS_FILE
    log = RecordLog(path)
    log.append("session", {"config": CONFIG})
    for run in runs:
        log.append("run", run.to_json())
    log.append("section", {"name": "x", "data": {"kind": "run"}})
    log.close()
    with open(path, "a") as handle:
        handle.write('{"kind": "run", "sample_id": "page_0')  # cut short by a crash
    texts = list(run_texts(path))
    assert [json.loads(text) for text in texts] == [json.loads(json.dumps(run.to_json())) for run in
                                                   (runs[0], dataclasses.replace(runs[1], substage_ms={"sam": None}),
                                                    runs[2])]
    assert texts[0] == json.dumps(runs[0].to_json(), ensure_ascii=False)  # byte for byte what metrics.json held


def test_build_metrics_reads_the_records_once():
    """A 100,000-run RunRows unpickles on every pass: the full metrics take exactly one."""
    from pytest_dsocr.records import RunRows

    runs = noisy_runs(12, seed=9) + [image_run(3, stage="torch_profiler", worker="gw1")]

    class Counted(RunRows):
        passes = 0

        def __iter__(self):
            Counted.passes += 1
            return super().__iter__()

    metrics = build_metrics(Counted(runs), [FAILURE], env={}, config=CONFIG, tree=TREE, complete=True)
    assert Counted.passes == 1
    pages = {(run.epoch, run.sample_id) for run in runs} | {(FAILURE.epoch, FAILURE.sample_id)}
    attempts = {(run.stage, run.epoch, run.sample_id) for run in runs} | {(FAILURE.stage, 0, FAILURE.sample_id)}
    assert metrics.counts.measured_runs == len(runs) and metrics.counts.samples == len(pages)
    assert metrics.by_stage["torch_profiler"].prefill_ms.count == 1
    assert metrics.error_rate == pytest.approx(1 / len(attempts))


def test_background_writer_writes_the_newest_content_and_survives_a_failure(tmp_path, caplog):
    from pytest_dsocr.atomic import BackgroundWriter

    writer = BackgroundWriter()
    for n in range(20):
        writer.submit({tmp_path / "a.json": f"{n}".encode(), tmp_path / "b.md": b"b"})
    writer.wait()
    assert (tmp_path / "a.json").read_text() == "19" and (tmp_path / "b.md").read_text() == "b"
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    writer.submit({blocked / "x.json": b"1"})
    writer.submit({blocked / "x.json": b"2", tmp_path / "a.json": b"last"})
    writer.close()  # writes what is pending first
    assert (tmp_path / "a.json").read_text() == "last"
    assert [r.getMessage() for r in caplog.records].count(
        f"pytest-dsocr: cannot write {blocked / 'x.json'} ([Errno 20] Not a directory: "
        f"'{blocked}'); the records file keeps every sample") <= 1
    assert any("cannot write" in r.getMessage() for r in caplog.records)
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit({tmp_path / "a.json": b"late"})


def test_a_slow_interim_write_never_lands_after_the_final_files(tmp_path, monkeypatch):
    import threading

    from pytest_dsocr import atomic

    write = atomic.atomic_write_bytes
    released = threading.Event()

    def slow(path, data, durable=True):
        if not durable:  # the interim writes, on the writer thread: held until the test lets go
            released.wait(timeout=1.0)
        return write(path, data, durable)

    monkeypatch.setattr(atomic, "atomic_write_bytes", slow)
    c = collector(tmp_path)
    c.add_runs(noisy_runs(3, seed=11))  # submits the interim files; the writer is held on them
    c.finish(complete=True)
    released.set()
    c.wait_for_writes()
    data = json.loads((tmp_path / METRICS_FILE).read_text())
    assert data["complete"] is True and data["aggregates"]["prefill_ms"]["p50"] is not None
    assert "still running" not in (tmp_path / SUMMARY_FILE).read_text()


def test_appends_never_wait_for_an_fsync(tmp_path, monkeypatch):
    """The fsync thread takes the disk's stalls: while its fsync hangs, appends still return,
    and the lines are all there once it is released (ordered by events, not timed)."""
    import threading

    from pytest_dsocr import recordlog

    entered, release, returned = threading.Event(), threading.Event(), threading.Event()
    real_fsync = recordlog.os.fsync

    def stalled_fsync(fd):
        entered.set()
        release.wait(timeout=10)
        real_fsync(fd)
        returned.set()

    monkeypatch.setattr(recordlog.os, "fsync", stalled_fsync)
    log = RecordLog(tmp_path / RECORDS_FILE)
    log.append("run", image_run(0).to_json())
    assert entered.wait(timeout=10)  # the fsync thread is now stuck in the disk
    for index in range(1, 50):
        log.append("run", image_run(index).to_json())
    assert not returned.is_set()  # every append returned while the fsync still hung
    release.set()
    log.close()
    assert [r.sample_id for r in read_records(tmp_path / RECORDS_FILE).runs] == [f"page_{i:03d}" for i in range(50)]


def test_a_write_error_is_raised_naming_the_records_file():
    log = RecordLog("/dev/full")  # every write fails: no space left on device
    with pytest.raises(DsocrError, match=r"/dev/full: cannot write the records file \(\[Errno 28\]"):
        log.append("run", image_run(0).to_json())
    log.close()  # what the failed write left behind is not raised again


def test_background_writer_survives_a_write_that_raises(tmp_path, monkeypatch, caplog):
    import threading

    from pytest_dsocr import atomic

    write = atomic.atomic_write_bytes

    def flaky(path, data, durable=True):
        if Path(path).name == "bad.json":
            raise ValueError("not an OSError")
        return write(path, data, durable)

    monkeypatch.setattr(atomic, "atomic_write_bytes", flaky)
    writer = atomic.BackgroundWriter()
    writer.submit({tmp_path / "bad.json": b"x", tmp_path / "good.json": b"y"})
    waiter = threading.Thread(target=writer.wait, daemon=True)
    waiter.start()
    waiter.join(timeout=10)
    assert not waiter.is_alive(), "wait() hung on a write that raised"
    writer.submit({tmp_path / "good.json": b"z"})  # the thread is still there
    writer.close()
    assert (tmp_path / "good.json").read_text() == "z"
    assert any("bad.json" in r.getMessage() and "not an OSError" in r.getMessage() for r in caplog.records)
