"""pytest-xdist: GPUs per worker, test groups, shared predictions, the merge, and a real -n 2 run."""

import json
import multiprocessing
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from pytest_dsocr.collector import Collector
from pytest_dsocr.records import ImageRun, SampleFailure
from pytest_dsocr.rundir import new_worker_dir
from pytest_dsocr.report.workers import merge_parts, read_worker_parts, workers_reason
from pytest_dsocr.xdist import LockedPredictionWriter, XdistController, group_for
from pytest_dsocr.xdist_setup import assign_gpus, claim_gpu, gpu_for, oversubscription_warning, visible_gpus

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


# --- GPUs per worker ------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    ("0,1,2,3", ["0", "1", "2", "3"]),
    (" 2, 5 ", ["2", "5"]),
    ("GPU-aaaa,GPU-bbbb", ["GPU-aaaa", "GPU-bbbb"]),
    ("", []),
    ("-1", []),
    ("1,-1,2", ["1"]),  # CUDA ignores everything after an invalid entry
])
def test_visible_gpus_from_the_environment(value, expected):
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": value}, device_count=lambda: 99) == expected


def test_visible_gpus_counted_without_the_variable():
    assert visible_gpus({}, device_count=lambda: 3) == ["0", "1", "2"]
    assert visible_gpus({}, device_count=lambda: 0) == []


def spec(worker: str, **env):
    return SimpleNamespace(id=worker, env=dict(env))


def test_gpus_round_robin_by_worker_number():
    specs = [spec(f"gw{i}") for i in range(5)]
    assert assign_gpus(specs, ["4", "7"], "auto") == {"gw0": "4", "gw1": "7", "gw2": "4", "gw3": "7", "gw4": "4"}
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in specs] == ["4", "7", "4", "7", "4"]
    assert gpu_for("gw10", ["0", "1", "2"]) == "1"


@pytest.mark.parametrize("gpus, device", [([], "auto"), (["0"], "auto"), (["0", "1"], "cpu"), (["0", "1"], "cuda:1")])
def test_no_assignment_without_several_gpus_or_with_a_fixed_device(gpus, device):
    specs = [spec("gw0"), spec("gw1")]
    assert assign_gpus(specs, gpus, device) == {}
    assert all(s.env == {} for s in specs)


def test_a_worker_spec_with_its_own_gpu_is_left_alone():
    specs = [spec("gw0", CUDA_VISIBLE_DEVICES="3"), spec("gw1")]
    assert assign_gpus(specs, ["0", "1"], "cuda") == {"gw1": "1"}
    assert specs[0].env == {"CUDA_VISIBLE_DEVICES": "3"}


def worker_config(worker: str, **workerinput):
    return SimpleNamespace(workerinput={"workerid": worker, **workerinput})


def test_a_worker_that_starts_on_its_own_claims_a_gpu_round_robin():
    environ = {"CUDA_VISIBLE_DEVICES": "4,7"}
    assert claim_gpu(worker_config("gw3"), "auto", environ) == "7" and environ["CUDA_VISIBLE_DEVICES"] == "7"
    environ = {}
    assert claim_gpu(worker_config("gw2"), "cuda", environ, device_count=lambda: 2) == "0"
    assert environ == {"CUDA_VISIBLE_DEVICES": "0"}


@pytest.mark.parametrize("workerinput, device, gpus", [
    ({"dsocr_cuda_visible_devices": "1"}, "auto", "0,1"),  # the controller chose already
    ({}, "cpu", "0,1"),  # a fixed device
    ({}, "auto", "3"),  # one GPU: nothing to share out
])
def test_a_worker_leaves_its_gpu_alone(workerinput, device, gpus):
    environ = {"CUDA_VISIBLE_DEVICES": gpus}
    assert claim_gpu(worker_config("gw1", **workerinput), device, environ) is None
    assert environ == {"CUDA_VISIBLE_DEVICES": gpus}


# --- test groups for --dist loadgroup ------------------------------------------------------------


class FakeItem:
    def __init__(self, marker: str | None, sample_id: str | None = None):
        self.marker = marker
        params = {"dsocr_sample": SimpleNamespace(sample_id=sample_id)} if sample_id else {}
        self.callspec = SimpleNamespace(params=params)

    def get_closest_marker(self, name):
        return object() if name == self.marker else None


def test_groups_keep_an_image_or_a_whole_stage_on_one_worker():
    assert group_for(FakeItem("direct_inference", "page_003")) == "direct_inference-page_003"
    assert group_for(FakeItem("torch_profiler", "page_003")) == "torch_profiler"
    assert group_for(FakeItem("static_analysis")) == "static_analysis"
    assert group_for(FakeItem(None)) is None


# --- one predictions.jsonl for every worker ------------------------------------------------------


def _append_lines(path: str, worker: int, count: int) -> None:
    writer = LockedPredictionWriter(path)
    for index in range(count):
        writer.write({"worker": worker, "index": index, "text_raw": "x" * (index * 97 % 5000)})
    writer.close()


def test_locked_appends_of_several_processes_never_mix(tmp_path):
    path = tmp_path / "pred" / "predictions.jsonl"
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_append_lines, args=(str(path), worker, 150)) for worker in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 450
    for worker in range(3):
        assert [r["index"] for r in records if r["worker"] == worker] == list(range(150))


# --- merging worker records -----------------------------------------------------------------------


def run(sample_id: str, e2e_ms: float, **fields) -> ImageRun:
    values = dict(sample_id=sample_id, image_path=f"/data/{sample_id}.png", epoch=0, round=0,
                  stage="direct_inference", preprocess_ms=0.0, prefill_ms=e2e_ms / 2, decode_ms=e2e_ms / 2,
                  vision_ms=e2e_ms / 4, ttft_ms=e2e_ms / 2, tokens=5, prefill_len=100, image_tokens=90,
                  crop_grid=(2, 3), text_raw="# text", substage_ms={"sam": 1.0}, token_ids=(4, 5), device="cuda:0")
    values.update(fields)
    return ImageRun(**values)


def worker_collector(run_dir: Path, worker: str) -> Collector:
    def env():
        return {"device": "cuda:0", "cuda_visible_devices": worker[-1]}

    def memory():
        return {"max_rss_mib": 100.0 + int(worker[-1])}

    return Collector(lambda: run_dir, {"infer": {"rounds": 1}}, env, memory, {}, worker=worker)


def test_a_record_survives_its_json():
    record = run("a", 10.0)
    assert ImageRun.from_json(json.loads(json.dumps(record.to_json()))) == record


def test_worker_records_merge_into_one_run_with_rows_per_gpu(tmp_path):
    # gw0 measured two pages in 1 s each, gw1 one page in 0.5 s: 2 + 2 pages/s across GPUs.
    gw0, gw1 = worker_collector(tmp_path, "gw0"), worker_collector(tmp_path, "gw1")
    gw0.add_runs([run("a", 1000.0)])
    gw1.add_runs([run("b", 500.0)])
    gw0.add_runs([run("c", 1000.0)])
    gw1.add_failure(SampleFailure("d", "/data/d.png", 0, "direct_inference", "RuntimeError: boom", "RuntimeError"))
    gw1.add_section("nsys_capture", {"ranges": 3})
    gw1.add_summary_section("Nsight", "captured")
    gw0.finish(complete=True)
    gw1.wait_for_writes()  # then gw1 was killed outright: its file is what it had written

    assert not (tmp_path / "metrics.json").exists()  # workers write only their own files
    parts = read_worker_parts(tmp_path)
    assert [p.label for p in parts] == ["gw0", "gw1"]
    assert workers_reason(parts) == "worker(s) did not finish (gw1: still running)"

    collector = Collector(lambda: tmp_path, {"infer": {"rounds": 1}}, lambda: {"argv": ["pytest"]}, dict, {})
    options = SimpleNamespace(option=SimpleNamespace(dist="loadgroup"))
    state = SimpleNamespace(run_dir=tmp_path, has_run_dir=True, pytest_config=options, collector=collector)
    controller = XdistController(state)
    controller.gpus = {"gw0": "0", "gw1": "1"}
    assert controller.merge()
    metrics = state.collector.finish(complete=False, reason=controller.reason()).to_json()

    assert [s["sample_id"] for s in metrics["samples"]] == ["a", "c", "b"]
    assert [s["worker"] for s in metrics["samples"]] == ["gw0", "gw0", "gw1"]
    assert [f["sample_id"] for f in metrics["failures"]] == ["d"]
    rows = {row["worker"]: row for row in metrics["by_worker"]["rows"]}
    assert rows["gw0"]["pages_per_s"] == pytest.approx(1.0) and rows["gw1"]["pages_per_s"] == pytest.approx(2.0)
    assert rows["gw1"]["device"] == "cuda:0 (CUDA_VISIBLE_DEVICES=1)"
    assert metrics["by_worker"]["totals"]["pages_per_s"] == pytest.approx(3.0)
    assert metrics["aggregates"]["throughput"]["pages_per_s"] == pytest.approx(3.0)
    assert metrics["nsys_capture"] == {"ranges": 3} and metrics["xdist"]["sections_from"] == {"nsys_capture": "gw1"}
    assert metrics["xdist"]["workers"]["gw0"]["complete"] is True
    assert metrics["xdist"]["workers"]["gw1"] | {"memory": None} == {
        "records": "workers/gw1/records.jsonl", "complete": False, "reason": "still running",
        "cuda_visible_devices": "1", "device": "cuda:0", "device_name": None, "measured_runs": 1, "failed": 1,
        "memory": None}
    assert metrics["memory"] == {"max_rss_mib": 100.0}  # gw1 never ended: its peak is unknown
    assert metrics["env"]["argv"] == ["pytest"] and metrics["env"]["xdist_workers"] == 2
    assert metrics["complete"] is False and "gw1: still running" in metrics["reason"]
    summary = (tmp_path / "stakeholder_summary.md").read_text()
    assert "## Workers" in summary and "CUDA_VISIBLE_DEVICES=1" in summary and "Nsight" in summary


def test_a_restarted_worker_keeps_the_records_of_the_crashed_one(tmp_path):
    first = worker_collector(tmp_path, "gw1")
    first.add_runs([run("a", 10.0)])
    first.wait_for_writes()
    again = worker_collector(tmp_path, "gw1")  # xdist restarts a crashed worker under the same id
    again.add_runs([run("b", 10.0)])
    again.wait_for_writes()
    assert new_worker_dir(tmp_path, "gw1").name == "gw1-3"
    parts = read_worker_parts(tmp_path)
    assert [p.label for p in parts] == ["gw1", "gw1-2"]
    assert [(r.sample_id, r.worker) for r in merge_parts(parts).records] == [("a", "gw1"), ("b", "gw1-2")]


def test_an_unreadable_worker_file_is_reported_not_fatal(tmp_path):
    gw0 = worker_collector(tmp_path, "gw0")
    gw0.add_runs([run("a", 10.0)])
    gw0.wait_for_writes()
    (tmp_path / "workers" / "gw1").mkdir()
    (tmp_path / "workers" / "gw1" / "records.jsonl").write_text('{not json\n{"kind": "end"}\n')
    parts = read_worker_parts(tmp_path)
    assert len(merge_parts(parts).records) == 1
    assert "gw1: worker gw1:" in workers_reason(parts) and "records.jsonl:1: not a records line" in workers_reason(parts)


# --- the real thing: two workers on the CPU -----------------------------------------------------------


def test_two_workers_write_one_merged_run(pytester, tmp_path):
    pytest.importorskip("xdist")
    images = tmp_path / "images"
    images.mkdir()
    for index, name in enumerate(("left", "right")):
        Image.new("RGB", (160, 120), (255, 255 - 60 * index, 255)).save(images / f"{name}.png")
    pytester.makepyfile(test_direct_inference=(BENCHMARKS / "test_direct_inference.py").read_text())
    # the controller sees one core, so -n 2 oversubscribes it whatever this machine has
    pytester.makeconftest("import pytest_dsocr.xdist\npytest_dsocr.xdist.usable_cores = lambda: 1\n")
    run_dir = tmp_path / "run"
    result = pytester.runpytest_subprocess(
        "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider", "-m", "direct_inference",
        "--dsocr-run-dir", str(run_dir), "--dsocr-set", "dataset=folder", "--dsocr-set", f"dataset.root={images}",
        "--dsocr-set", "dataset.sampling.num_epochs=2", "--dsocr-set", "infer.max_new_tokens=2",
        "--dsocr-set", "infer.warmup_rounds=0",
        "--dsocr-set", "pipeline.direct_inference.output.prediction.enable=true",
        timeout=300,
    )
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*pytest-dsocr*", "*Run complete*4 measured runs*", f"*run dir: {run_dir}*"])
    assert "benchmark: 4 tests" not in result.stdout.str()  # pytest-benchmark is off under xdist

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["complete"] is True and metrics["reason"] is None
    assert len(metrics["samples"]) == 4 and metrics["failures"] == []
    workers = {s["worker"] for s in metrics["samples"]}
    assert workers == {"gw0", "gw1"}
    for page in ("left", "right"):  # both epochs of a page ran on one worker (its xdist_group)
        assert len({s["worker"] for s in metrics["samples"] if s["sample_id"] == page}) == 1
    rows = metrics["by_worker"]["rows"]
    assert [row["measured_runs"] for row in rows] == [2, 2]
    assert metrics["by_worker"]["totals"]["pages_per_s"] == pytest.approx(sum(row["pages_per_s"] for row in rows))
    assert set(metrics["xdist"]["workers"]) == {"gw0", "gw1"} and metrics["xdist"]["dist"] == "loadgroup"
    for worker in ("gw0", "gw1"):
        part = json.loads((run_dir / "workers" / worker / "metrics.json").read_text())
        assert part["complete"] is True and len(part["samples"]) == 2

    assert (run_dir / "direct_inference" / "pred" / ".predictions.jsonl.lock").is_file()  # appends were locked
    lines = (run_dir / "direct_inference" / "pred" / "predictions.jsonl").read_text().splitlines()
    assert sorted((json.loads(line)["sample_id"], json.loads(line)["epoch"]) for line in lines) == [
        ("left", 0), ("left", 1), ("right", 0), ("right", 1)]
    assert len([p for p in (run_dir / "direct_inference" / "viz").iterdir() if p.is_dir()]) == 2
    summary = (run_dir / "stakeholder_summary.md").read_text()
    assert "## Workers" in summary
    assert "| xdist_workers | 2 |" in summary and "xdist_worker |" not in summary and "gw0 |" not in summary.split(
        "## Workers")[0]  # the merged environment names no single worker
    assert "xdist_worker" not in metrics["env"]
    warning = "pytest-dsocr: -n 2 starts 2 xdist workers on 1 CPU core: they compete for the cores"
    result.stdout.fnmatch_lines([f"warning: {warning}*"])
    assert any(entry["message"].startswith(warning) for entry in metrics["notes"]["warnings"])
    index = json.loads((run_dir / "direct_inference" / "viz" / "index.json").read_text())
    assert len(index["folders"]) == 2  # both workers' folders, indexed by the controller at the end
    assert metrics["dataset"]["discovered"] == 2


def test_an_xdist_run_that_measures_nothing_leaves_no_run_dir(pytester):
    pytest.importorskip("xdist")
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = pytester.runpytest("-n", "1", "-p", "no:cacheprovider", "-p", "no:benchmark")
    result.assert_outcomes(passed=1)
    assert not list((pytester.path / "runs").glob("*"))


def test_more_workers_than_cores_is_one_warning_naming_both():
    assert oversubscription_warning(2, 2) is None
    assert oversubscription_warning(3, 2) == (
        "pytest-dsocr: -n 3 starts 3 xdist workers on 2 CPU cores: they compete for the cores, so pages/s "
        "drops and stage times grow; use -n 2 or fewer")
