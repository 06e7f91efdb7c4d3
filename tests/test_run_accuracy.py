"""Accuracy next to speed, and which weights ran: records, metrics.json, the reports and the gate.

The pytester runs read one bundled page each (the bundled tiny weights stop at EOS after a few
hundred tokens, a few seconds on a CPU); the gate and report tests use synthetic records.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from report_factory import make_metrics, noisy_runs, typed

from pytest_dsocr.__main__ import main as dsocr_main
from pytest_dsocr.data.groundtruth import bundled_truth
from pytest_dsocr.data.pages import PAGES_DIR
from pytest_dsocr.outputs.accuracy import sample_accuracy
from pytest_dsocr.records import ImageRun, SampleAccuracy
from pytest_dsocr.report.accuracy import AccuracySummary
from pytest_dsocr.report.gate import ACCURACY, IMPROVED, REGRESSED, WITHIN_THRESHOLD, run_gate
from pytest_dsocr.report.provenance import describe_weights
from pytest_dsocr.report.summary import render_report, render_stakeholder_summary

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
QUICK = ("-p", "no:cacheprovider", "--dsocr-set", "infer.max_new_tokens=4", "--dsocr-set", "infer.warmup_rounds=0")
# The shortest bundled page (its read ends at EOS soonest).
ONE_PAGE = ("--dsocr-set", "dataset.patterns=['page_005.png']", "--dsocr-set", "dataset.sampling.num_samples_per_epoch=1")
UNTIL_EOS = ("--dsocr-set", "infer.max_new_tokens=inf")
EXACT = SampleAccuracy(edit_distance=0.0, raw_edit_distance=0.0, exact=True, predicted_boxes=5, truth_boxes=5,
                       matched_boxes=5, mean_iou=1.0)
WRONG = SampleAccuracy(edit_distance=0.4, raw_edit_distance=0.45, exact=False, predicted_boxes=3, truth_boxes=5,
                       matched_boxes=2, mean_iou=0.7)


def read_runs(runs: list[ImageRun], accuracy: dict[int, SampleAccuracy] | SampleAccuracy) -> list[ImageRun]:
    """``runs`` with an accuracy each: one for all, or by position (others exact)."""
    pick = accuracy if isinstance(accuracy, dict) else dict.fromkeys(range(len(runs)), accuracy)
    return [dataclasses.replace(run, accuracy=pick.get(index, EXACT)) for index, run in enumerate(runs)]


# -- records and the accuracy section --------------------------------------------------------


def test_accuracy_round_trips_through_the_record_json():
    run = read_runs(noisy_runs(1), WRONG)[0]
    again = ImageRun.from_json(json.loads(json.dumps(run.to_json())))
    assert again == run and again.accuracy == WRONG
    plain = noisy_runs(1)[0]
    assert plain.to_json()["accuracy"] is None and ImageRun.from_json(plain.to_json()).accuracy is None


def test_a_bundled_page_read_exactly_scores_perfectly():
    truth = bundled_truth()["page_001.png"]
    accuracy = sample_accuracy(truth.markup, truth)
    assert accuracy.exact and accuracy.edit_distance == 0.0
    assert accuracy.matched_boxes == accuracy.truth_boxes == accuracy.predicted_boxes == len(truth.blocks)
    assert accuracy.mean_iou > 0.99  # boxes on the 0..999 grid come back within a grid cell


def test_each_page_counts_with_its_worst_read():
    first, second = noisy_runs(1), noisy_runs(1)  # the same page, two rounds
    runs = read_runs(first, EXACT) + [dataclasses.replace(second[0], round=1, accuracy=WRONG)]
    summary = AccuracySummary.from_runs(runs)
    assert summary.pages == 1 and summary.exact_pages == 0 and summary.mean_edit_distance == WRONG.edit_distance
    assert AccuracySummary.from_runs(noisy_runs(3)) is None  # no ground truth: no section


def test_metrics_section_and_summary_line():
    metrics = typed(make_metrics(read_runs(noisy_runs(4), {1: WRONG})))
    assert metrics.accuracy.pages == 4 and metrics.accuracy.exact_pages == 3
    assert metrics.accuracy.matched_boxes == 17 and metrics.accuracy.truth_boxes == 20
    assert metrics.accuracy.mean_iou == (15 * 1.0 + 2 * 0.7) / 17
    assert typed(metrics.to_json()).accuracy == metrics.accuracy
    line = ("Accuracy vs ground truth (4 pages): mean normalized edit distance 0.100, 3/4 exact, "
            "boxes 17/20 matched (18 predicted), mean IoU 0.965.")
    assert line in render_stakeholder_summary(metrics) and line in render_report(metrics)
    plain = typed(make_metrics(noisy_runs(4)))
    assert "accuracy" not in plain.to_json() and "Accuracy" not in render_stakeholder_summary(plain)


def test_weights_in_words():
    digest = "ab" * 32
    assert describe_weights({"kind": "bundled", "seed": None, "path": "/b", "index_sha256": digest}, "tiny") == \
        "bundled trained tiny (index sha256 abababababab…)"
    assert describe_weights({"kind": "random", "seed": 0, "path": None, "index_sha256": None}) == "random (seed 0)"
    assert describe_weights({"kind": "checkpoint", "seed": None, "path": "/models/ocr", "index_sha256": digest}) == \
        "checkpoint /models/ocr (index sha256 abababababab…)"
    assert describe_weights(None) is None


# -- the gate --------------------------------------------------------------------------------


def test_faster_but_wrong_fails_the_gate_on_accuracy(tmp_path: Path):
    baseline = make_metrics(read_runs(noisy_runs(6, seed=0), EXACT))
    current = make_metrics(read_runs(noisy_runs(6, factor=0.6, seed=1), {2: WRONG, 4: WRONG}))
    result = run_gate(current, baseline, "10%", run_dir=tmp_path)
    verdicts = {row.stage: row.verdict for row in result.rows}
    assert verdicts.pop(ACCURACY) == REGRESSED
    assert set(verdicts.values()) == {IMPROVED}  # every timing row: faster
    assert result.failed and [row.stage for row in result.regressions] == [ACCURACY]
    row = result.regressions[0]
    assert row.pages == 6 and row.baseline == 0.0 and abs(row.current - 0.8 / 6) < 1e-12
    assert row.detail == "no longer exact: page_002, page_004"
    text = (tmp_path / "regression.md").read_text()
    assert "no longer exact: page_002, page_004" in text and "gate.per_stage.accuracy" in text


def test_accuracy_threshold_is_an_absolute_rise_of_the_mean_edit_distance():
    slightly = dataclasses.replace(WRONG, edit_distance=0.03)
    baseline = make_metrics(read_runs(noisy_runs(6), dataclasses.replace(WRONG, edit_distance=0.0)))
    current = make_metrics(read_runs(noisy_runs(6), slightly))  # every page 0.03 worse, none was exact
    rows = {threshold: {r.stage: r for r in run_gate(current, baseline, per_stage={ACCURACY: threshold}).rows}
            for threshold in ("0.02", "0.05")}
    assert rows["0.02"][ACCURACY].verdict == REGRESSED
    assert rows["0.05"][ACCURACY].verdict == WITHIN_THRESHOLD
    assert {r.stage: r for r in run_gate(baseline, current, per_stage={ACCURACY: "0.02"}).rows}[ACCURACY].verdict \
        == IMPROVED


def test_a_baseline_without_accuracy_gets_a_note_not_a_row():
    baseline = make_metrics(noisy_runs(6))
    current = make_metrics(read_runs(noisy_runs(6), EXACT))
    result = run_gate(current, baseline)
    assert ACCURACY not in {row.stage for row in result.rows}
    assert any("accuracy not compared" in note for note in result.notes)


# -- real runs -------------------------------------------------------------------------------


@pytest.fixture
def stage_dir(pytester, inference_modules_loaded):
    """A pytester dir holding the direct_inference benchmark file."""
    pytester.makepyfile(test_direct_inference=(BENCHMARKS / "test_direct_inference.py").read_text())
    return pytester


def run_direct(pytester, run_dir: Path, *args: str):
    return pytester.runpytest("-m", "direct_inference", "--dsocr-run-dir", str(run_dir), *QUICK, *args)


def test_bundled_weights_read_the_page_exactly_and_the_rebuild_keeps_it(stage_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_direct(stage_dir, run_dir, *ONE_PAGE, *UNTIL_EOS).assert_outcomes(passed=1)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["accuracy"]["pages"] == 1 and metrics["accuracy"]["exact_pages"] == 1
    assert metrics["accuracy"]["mean_edit_distance"] == 0.0
    assert metrics["accuracy"]["matched_boxes"] == metrics["accuracy"]["truth_boxes"] > 0
    assert all(sample["accuracy"]["exact"] and sample["finish_reason"] == "eos" for sample in metrics["samples"])
    weights = metrics["identity"]["weights"]
    assert weights["kind"] == "bundled" and "weights" not in metrics  # one home: identity.weights
    summary = (run_dir / "stakeholder_summary.md").read_text()
    assert "Accuracy vs ground truth (1 page): mean normalized edit distance 0.000, 1/1 exact" in summary
    assert f"bundled trained tiny (index sha256 {weights['index_sha256'][:12]}…)" in summary
    report = (run_dir / "report.md").read_text()
    assert "1/1 exact" in report and "bundled trained tiny" in report

    (run_dir / "metrics.json").unlink()
    assert dsocr_main(["report", str(run_dir)]) == 0
    rebuilt = json.loads((run_dir / "metrics.json").read_text())
    assert rebuilt["accuracy"] == metrics["accuracy"]
    assert [s["accuracy"] for s in rebuilt["samples"]] == [s["accuracy"] for s in metrics["samples"]]
    assert "1/1 exact" in (run_dir / "stakeholder_summary.md").read_text()


def test_random_weights_read_far_from_exact(stage_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_direct(stage_dir, run_dir, *ONE_PAGE, "--dsocr-set", "model.weights=random").assert_outcomes(passed=1)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["accuracy"]["exact_pages"] == 0 and metrics["accuracy"]["mean_edit_distance"] > 0.9
    assert metrics["identity"]["weights"]["kind"] == "random"
    summary = (run_dir / "stakeholder_summary.md").read_text()
    assert "0/1 exact" in summary and "random (seed 0)" in summary


def test_a_folder_without_ground_truth_has_no_accuracy(stage_dir, tmp_path):
    images = tmp_path / "scans"
    images.mkdir()
    shutil.copy(PAGES_DIR / "page_005.png", images / "scan.png")  # the image alone, no .mmd beside it
    run_dir = tmp_path / "run"
    run_direct(stage_dir, run_dir, "--dsocr-set", "dataset=folder",
               "--dsocr-set", f"dataset.root={images}").assert_outcomes(passed=1)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "accuracy" not in metrics
    assert all(sample["accuracy"] is None for sample in metrics["samples"])
    assert "Accuracy vs ground truth" not in (run_dir / "stakeholder_summary.md").read_text()
