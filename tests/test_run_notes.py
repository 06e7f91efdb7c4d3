"""What a run tells its user besides the numbers, through real sessions (pytester).

One small direct_inference run over a folder a user might have (an animated GIF, a folder named
like an image, a text file, a broken page) with the nsys stage collected beside it, and one
sweep-only run: skipped dataset entries are counted and named, a failed sample is one line in
the terminal and its chain is in report.md, skip reasons and warnings show in the pytest-dsocr
section, the config goes to resolved_config.yaml, the viz folders get an index, and a run that
measured no page says what it produced.
"""

import json
from pathlib import Path

import yaml
from PIL import Image

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
QUICK = [
    "-p", "no:cacheprovider",
    "--dsocr-set", "infer.max_new_tokens=2", "--dsocr-set", "infer.warmup_rounds=0",
    "--dsocr-set", "model.crop_mode=false", "--dsocr-set", "model.base_size=512",
]


def user_folder(folder: Path) -> None:
    folder.mkdir()
    Image.new("RGB", (200, 150), "white").save(folder / "page.png")
    frames = [Image.new("P", (200, 150), colour) for colour in (1, 2)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    (folder / "broken.png").write_text("not an image")
    (folder / "notes.txt").write_text("meeting notes")
    (folder / "scan.png").mkdir()  # a folder named like an image


def test_a_folder_run_names_what_it_skipped_and_failed(pytester, tmp_path, inference_modules_loaded):
    images, run_dir = tmp_path / "images", tmp_path / "run"
    user_folder(images)
    for stage in ("direct_inference", "nsys"):
        pytester.makepyfile(**{f"test_{stage}": (BENCHMARKS / f"test_{stage}.py").read_text()})
    result = pytester.runpytest(
        "-m", "direct_inference or nsys", "--dsocr-run-dir", str(run_dir), *QUICK,
        "--dsocr-set", "dataset=folder", "--dsocr-set", f"dataset.root={images}")
    result.assert_outcomes(passed=2, failed=1, skipped=3)
    out = result.stdout.str()

    # the failed page: one line in the failure report, no chain of exceptions
    failure = out[out.index("= FAILURES ="):out.index("pytest-dsocr ===")]
    assert [line for line in failure.splitlines() if "broken.png" in line] == [
        f"e0-broken: image {images / 'broken.png'}: not a recognised image file"]
    assert "The above exception" not in failure and "During handling" not in failure

    # skip reasons and warnings in the pytest-dsocr section, without -rs or log options
    section = out[out.index("pytest-dsocr ==="):]
    result.stdout.fnmatch_lines([
        "*| Stage | Mean (ms) | Std (ms) | p50 (ms) | p90 (ms) |*",
        "skipped nsys (3 tests): nsys stage not selected: run with --dsocr-profiler=nsys*",
        f"warning: dataset: 2 entries under {images} skipped: notes.txt (matches no dataset.patterns), "
        "scan.png/ (a folder, not an image file, although its name matches dataset.patterns)*",
        "warning: DeepSeek-OCR: none of the 2 outputs holds a <|ref|>/<|det|> box*",
        f"run dir: {run_dir}",
    ])
    assert section.index("skipped nsys") < section.index("run dir:")

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert sorted(s["sample_id"] for s in metrics["samples"]) == ["animated", "page"]
    dataset = metrics["dataset"]
    assert dataset["discovered"] == 3 and dataset["skipped_count"] == 2
    assert [entry["path"] for entry in dataset["skipped"]] == ["notes.txt", "scan.png/"]
    assert metrics["notes"]["skipped"][0]["stage"] == "nsys" and metrics["notes"]["skipped"][0]["tests"] == 3
    summary = (run_dir / "stakeholder_summary.md").read_text()
    assert "## Dataset" in summary and "| scan.png/ |" in summary and "## Notes" in summary

    report = (run_dir / "report.md").read_text()
    assert "## Failure Details" in report and "UnidentifiedImageError: cannot identify image file" in report
    assert "DsocrError: image" in report  # the chain, root cause first
    config = yaml.safe_load((run_dir / "resolved_config.yaml").read_text())
    assert config == metrics["config"] and config["profiling"]["ncu"]["launch_count"] > 0
    assert "launch_count" not in report and "[`resolved_config.yaml`](resolved_config.yaml)" in report
    records = [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]
    assert {"kind": "section", "name": "dataset", "data": dataset} in records  # rebuildable from the records

    viz = run_dir / "direct_inference" / "viz"
    index = json.loads((viz / "index.json").read_text())
    assert sorted(Path(entry["image"]).name for entry in index["folders"]) == ["animated.gif", "page.png"]
    assert all((viz / entry["result_image"]).is_file() for entry in index["folders"])
    assert "| Image | Folder | Boxes | Thumbnail |" in (viz / "index.md").read_text()


def test_a_sweep_only_run_summarises_its_sweeps(pytester, tmp_path):
    run_dir = tmp_path / "run"
    pytester.makepyfile(test_sweeps=(BENCHMARKS / "test_sweeps.py").read_text())
    result = pytester.runpytest("-m", "sweep", "--dsocr-run-dir", str(run_dir), "-p", "no:cacheprovider",
                                "--dsocr-set", "sweep.plots=false")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*No page was measured: no inference stage ran in this session. "
                                 "It produced analytic sweeps (`sweeps/*.csv`; see Sweeps).*"])
    summary = (run_dir / "stakeholder_summary.md").read_text()
    assert "## Sweeps" in summary and "[sweeps/decode.csv](sweeps/decode.csv)" in summary
    assert "(0 runs)" not in summary and "n/a" not in summary.split("## Environment")[0]
    assert (run_dir / "sweeps" / "decode.csv").is_file() and "dataset" not in json.loads(
        (run_dir / "metrics.json").read_text())
