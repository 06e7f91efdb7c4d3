"""stakeholder_summary.md and report.md: golden tables, measured stages only, plots optional."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import pytest
from report_factory import image_run, make_metrics, typed

from pytest_dsocr.records import SampleFailure
from pytest_dsocr.report import plots, summary
from pytest_dsocr.report.plots import MATPLOTLIB_MISSING_NOTE
from pytest_dsocr.report.summary import NESTING_NOTE


# The renderers take the typed model; these tests build metrics.json dicts and read them back.
def render_stakeholder_summary(metrics, *extra):
    return summary.render_stakeholder_summary(typed(metrics), *extra)


def render_report(metrics, *extra):
    return summary.render_report(typed(metrics), *extra)


def render_terminal_summary(metrics):
    return summary.render_terminal_summary(typed(metrics))


def write_plots(metrics, run_dir):
    return plots.write_plots(typed(metrics), run_dir)

GOLDEN = Path(__file__).parent / "data" / "golden"
# Set to rewrite the golden files after a deliberate change of the markdown, then review the diff.
UPDATE_GOLDEN = os.environ.get("DSOCR_UPDATE_GOLDEN") == "1"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# (prefill, vision, sam, clip, projector, decode, tokens) of four pages, chosen by hand so
# the golden files never depend on a random stream.
PAGES = [
    (120.0, 70.0, 36.0, 30.0, 1.5, 410.0, 41),
    (95.5, 52.25, 27.0, 22.0, 1.25, 330.0, 33),
    (180.0, 110.0, 60.0, 44.0, 2.0, 905.0, 91),
    (101.0, 55.0, 28.5, 23.0, 1.0, 296.0, 30),
]


def golden_metrics() -> dict:
    runs = [
        image_run(i, prefill_ms=p, vision_ms=v, decode_ms=d, tokens=t, preprocess_ms=4.0 + i,
                  substage_ms={"sam": s, "clip": c, "projector": j})
        for i, (p, v, s, c, j, d, t) in enumerate(PAGES)
    ]
    failure = SampleFailure("page_009", "/data/page_009.png", 0, "direct_inference",
                            "/data/page_009.png: cannot identify image file", "DsocrError")
    metrics = make_metrics(runs, [failure], memory={"max_rss_mib": 2048.5})
    metrics["generated_at"] = "2026-01-01T00:00:00+00:00"
    metrics["plots"] = {"files": {"stage_times": "plots/stage_times.png",
                                  "latency_distribution": "plots/latency_distribution.png"}, "note": None}
    return metrics


def pin_intervals(metrics: dict) -> dict:
    """Bootstrap bounds come from numpy's Generator, whose stream may change between numpy
    releases: the report golden pins the rendering, so it pins these numbers too."""
    def walk(node):
        if isinstance(node, dict):
            if "ci_low" in node and node.get("mean") is not None:
                node["ci_low"], node["ci_high"] = node["mean"] - 1.0, node["mean"] + 1.0
            for value in node.values():
                walk(value)
    walk(metrics)
    return metrics


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE_GOLDEN:
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{name} changed: rerun with DSOCR_UPDATE_GOLDEN=1 and review the diff"


def test_stakeholder_summary_golden():
    check_golden("stakeholder_summary.md", render_stakeholder_summary(golden_metrics(), [("Notes", "Extra section body.")]))


def test_report_golden():
    check_golden("report.md", render_report(pin_intervals(golden_metrics())))


def test_summary_sections_in_order():
    text = render_stakeholder_summary(golden_metrics())
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == [
        "## Environment", "## Aggregates", "## Per-Stage Timings (ms)", "## Stage Share (%)",
        "## Stage Takeaways", "## Failures", "## Plots",
    ]
    assert "| Stage | Mean (ms) | Std (ms) | p50 (ms) | p90 (ms) |" in text
    assert NESTING_NOTE.split(":")[0] in text


def test_shares_and_takeaways_follow_the_numbers():
    text = render_stakeholder_summary(golden_metrics())
    prefill = sum(p[0] for p in PAGES) / 4
    decode = sum(p[5] for p in PAGES) / 4
    assert f"| prefill | {prefill:.2f} | {prefill / (prefill + decode) * 100:.1f} |" in text
    assert f"| decode | {decode:.2f} | {decode / (prefill + decode) * 100:.1f} |" in text
    sam = sum(p[2] for p in PAGES) / 4
    assert f"| sam | {sam:.2f} | {sam / prefill * 100:.1f} |" in text
    assert "The largest stage is decode" in text
    assert "Within prefill, sam dominates the measured sub-stages" in text

    prefill_heavy = make_metrics([image_run(0, prefill_ms=900.0, decode_ms=100.0)])
    assert "The largest stage is prefill" in render_stakeholder_summary(prefill_heavy)


def test_efficiency_section_when_present():
    """The section's own renderer (analytic) draws it; the summary places it."""
    from pytest_dsocr.analytic.efficiency import efficiency_markdown

    section = {"omitted": "measured on cpu: MFU/MBU are defined against a GPU's peak"}
    text = render_stakeholder_summary(make_metrics([image_run(0)], sections={"efficiency": section}))
    assert "## Efficiency (MFU/MBU)\n\n" + efficiency_markdown(section) in text
    assert text.index("## Stage Takeaways") < text.index("## Efficiency")


def test_unmeasured_stages_have_no_rows():
    text = render_stakeholder_summary(make_metrics([image_run(0, substage_ms={})]))
    assert "| vision |" in text
    for name in ("sam", "clip", "projector"):
        assert f"| {name} |" not in text
    assert "Prefill level, share of prefill:" in text  # vision alone is the measured part of prefill


def test_v2_substages_get_their_own_rows():
    metrics = make_metrics([image_run(0, substage_ms={"sam": 30.0, "encoder": 20.0, "projector": 1.0})])
    text = render_stakeholder_summary(metrics)
    assert "| encoder |" in text and "| clip |" not in text


def test_optional_sections_only_when_present():
    text = render_stakeholder_summary(make_metrics([image_run(0)]))
    for heading in ("## Efficiency", "## Failures", "## Plots", "## Workers", "## Benchmark Stages"):
        assert heading not in text


def test_workers_and_benchmark_stages():
    runs = [image_run(0, worker="gw0"), image_run(1, worker="gw1"), image_run(0, stage="torch_profiler")]
    text = render_stakeholder_summary(make_metrics(runs))
    assert "## Workers" in text and "| total (2 workers) |" in text
    assert "## Benchmark Stages" in text and "| torch_profiler | 1 |" in text


def test_incomplete_run_is_flagged():
    text = render_stakeholder_summary(make_metrics([image_run(0)], complete=False, reason="stopped after 1 failure"))
    assert "**Run incomplete** (stopped after 1 failure)" in text


def test_empty_run_renders_without_numbers():
    text = render_stakeholder_summary(make_metrics([]))
    assert "No page was measured: no inference stage ran in this session. It produced no stage results." in text
    assert "## Aggregates" not in text and "n/a" not in text and "(0 runs)" not in text


def test_report_has_per_sample_rows():
    metrics = golden_metrics()
    text = render_report(metrics)
    assert "## Per-Sample Rows" in text
    for sample in metrics["samples"]:
        assert f"| {sample['sample_id']} |" in text


def test_terminal_summary():
    text = render_terminal_summary(golden_metrics())
    assert "| prefill |" in text and "The largest stage is decode" in text
    assert "| Stage | Mean (ms) | Std (ms) | p50 (ms) | p90 (ms) |" in text  # the terminal table has units


def test_plots_written_and_linked(tmp_path: Path):
    pytest.importorskip("matplotlib")
    metrics = golden_metrics()
    plots = write_plots(metrics, tmp_path)
    assert plots["note"] is None
    assert set(plots["files"]) == {"stage_times", "latency_distribution"}
    for relative in plots["files"].values():
        assert (tmp_path / relative).read_bytes().startswith(PNG_SIGNATURE)
    metrics["plots"] = plots
    assert "![Per-stage timings](plots/stage_times.png)" in render_stakeholder_summary(metrics)


def test_plots_skipped_with_a_note_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    metrics = golden_metrics()
    plots = write_plots(metrics, tmp_path)
    assert plots == {"files": {}, "note": MATPLOTLIB_MISSING_NOTE}
    assert not (tmp_path / "plots").exists()
    metrics["plots"] = plots
    assert MATPLOTLIB_MISSING_NOTE in render_stakeholder_summary(metrics)


# --- what the summary says about spread, runs without pages, and stage-neutral sections ---------


def spread_line(metrics) -> str:
    return next(line for line in render_stakeholder_summary(metrics).splitlines() if "vary widely" in line)


def test_spread_with_constant_output_on_a_loaded_machine_blames_neither_pages_nor_length():
    # one run per page, same crop grid and output length, yet decode and prefill spread widely
    runs = [image_run(i, prefill_ms=p, decode_ms=d, tokens=4) for i, (p, d) in
            enumerate([(100.0, 300.0), (180.0, 650.0), (95.0, 280.0), (210.0, 700.0)])]
    metrics = make_metrics(runs)
    metrics["env"].update(load_average_1m=9.68, cpu_count=2)
    line = spread_line(metrics)
    assert "between pages (one run each; std as % of the mean: prefill" in line
    assert "Output length was 4 tokens in every run, so it does not explain decode's spread" in line
    assert "Every page had crop grid 1x1, so it does not explain the spread of prefill" in line
    assert "its load or clocks likely varied" in line
    assert "The 1-minute load average was 9.68 on 2 CPU cores when the run started" in line
    assert "pages differ in crop grid" not in line


def test_spread_across_rounds_of_one_page_is_the_machine():
    runs = [image_run(i, round=r, decode_ms=d, tokens=31) for i in range(2)
            for r, d in enumerate((300.0, 900.0, 310.0))]
    line = spread_line(make_metrics(runs))
    assert "across the repeated runs of one page decode" in line and "(median over 2 pages)" in line
    assert "The same page took different times, so the machine's speed varied" in line


def test_spread_that_the_pages_explain():
    runs = [dataclasses.replace(image_run(i, decode_ms=10.0 * tokens, tokens=tokens), crop_grid=grid)
            for i, (tokens, grid) in enumerate([(10, (1, 1)), (40, (2, 3)), (12, (1, 1)), (60, (3, 2))])]
    line = spread_line(make_metrics(runs))
    assert "Output length varied from 10 to 60 tokens, which decode time follows" in line
    assert "likely varied" not in line


def test_a_sweep_only_run_says_what_it_produced():
    sweep = {"model_family": "deepseek_ocr", "model_size": "tiny", "dtype": "float32", "attention": "flash",
             "hardware": None, "hardware_choice": "CPU run", "evaluate_ms": 1.5,
             "points": {"vision_crops": 23, "decode": 762},
             "files": ["/runs/r/sweeps/vision_crops.csv", "/runs/r/sweeps/decode.csv", "/runs/r/sweeps/decode.png"],
             "notes": ["floor-time columns omitted: CPU run"]}
    metrics = make_metrics([], sections={"sweep": sweep})
    text = render_stakeholder_summary(metrics)
    assert "No page was measured: no inference stage ran in this session. It produced analytic sweeps " \
           "(`sweeps/*.csv`; see Sweeps)." in text
    assert "## Sweeps" in text and "| decode | 762 | [sweeps/decode.csv](sweeps/decode.csv), " \
                                   "[sweeps/decode.png](sweeps/decode.png) |" in text
    assert "## Aggregates" not in text and "(0 runs)" not in text
    assert render_terminal_summary(metrics).startswith("Run complete. No page was measured")


def test_dataset_and_notes_sections():
    dataset = {"name": "folder", "image_dir": "/data/pages", "selection": "patterns", "discovered": 2,
               "skipped_count": 2, "skipped_by_reason": {"matches no dataset.patterns": 1, "hidden file": 1},
               "skipped": [{"path": ".DS_Store", "reason": "hidden file"},
                           {"path": "clip.mp4", "reason": "matches no dataset.patterns"}]}
    notes = {"skipped": [{"stage": "nsys", "reason": "nsys not on PATH: install Nsight Systems", "tests": 2}],
             "warnings": [{"message": "DeepSeek-OCR: none of the 2 outputs holds a box", "count": 1}]}
    text = render_stakeholder_summary(make_metrics([image_run(0)], sections={"dataset": dataset, "notes": notes}))
    assert "2 images found in `/data/pages` (selected by patterns); 2 entries under it were skipped" in text
    assert "| clip.mp4 | matches no dataset.patterns |" in text
    assert "- Skipped nsys (2 test(s)): nsys not on PATH: install Nsight Systems" in text
    assert "- Warning: DeepSeek-OCR: none of the 2 outputs holds a box" in text


def test_report_links_the_config_and_gives_the_failure_chain():
    failure = SampleFailure("page_009", "/data/page_009.png", 0, "direct_inference", "RuntimeError: kernel exploded",
                            "RuntimeError", chain=("CudaError: launch failed (kernel.py:12 in launch)",
                                                   "RuntimeError: kernel exploded (engine.py:40 in run)"))
    text = render_report(make_metrics([image_run(0)], [failure]))
    assert "[`resolved_config.yaml`](resolved_config.yaml)" in text and '"model": {' not in text
    assert "- `page_009` (epoch 0, direct_inference): RuntimeError: kernel exploded\n" \
           "   1. CudaError: launch failed (kernel.py:12 in launch)\n" \
           "   2. RuntimeError: kernel exploded (engine.py:40 in run)" in text
    assert "CudaError" not in render_stakeholder_summary(make_metrics([image_run(0)], [failure]))


def test_report_lists_at_most_max_sample_rows_and_says_where_the_rest_are(monkeypatch):
    monkeypatch.setattr(summary, "MAX_SAMPLE_ROWS", 3)
    metrics = typed(make_metrics([image_run(i) for i in range(5)]))
    report = summary.render_report(metrics)
    rows = [line for line in report.splitlines() if line.startswith("| direct_inference |")]
    assert [row.split("|")[4].strip() for row in rows] == ["page_000", "page_001", "page_002"]
    assert "5 runs, 5 of them in the aggregated stage. The first 3 are shown; every run is in metrics.json `samples`" in report
