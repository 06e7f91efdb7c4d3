"""The README's examples finish on the default model (bundled trained weights): decoding until
EOS ends at EOS, the vendor preset too, and vendor parity compares real boxes.

Each run is one pytester session over one bundled page with no warmup round, a few seconds
on a CPU; nothing here asserts a wall-clock time.
"""

import json
from pathlib import Path

import pytest

from pytest_dsocr.outputs.markup import parse_markup

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
# The bundled page with the shortest transcription (about 180 tokens): the quickest to reach EOS.
SHORTEST_PAGE = "page_005.png"
ONE_PAGE = [
    "-p", "no:cacheprovider",
    "--dsocr-set", f"dataset.patterns=['{SHORTEST_PAGE}']",
    "--dsocr-set", "dataset.sampling.num_samples_per_epoch=1",
]
NO_WARMUP = ("infer.warmup_rounds=0", "infer.rounds=1")
PARITY_TOKENS = 40
NO_BOXES = "holds a <|ref|>/<|det|> box"  # the words of parity.warn_if_no_boxes


@pytest.fixture
def benchmarks_dir(pytester, inference_modules_loaded):
    """A pytester dir holding the direct_inference and vendor_parity benchmark files."""
    for name in ("test_direct_inference.py", "test_vendor_parity.py"):
        pytester.makepyfile(**{name[:-3]: (BENCHMARKS / name).read_text()})
    return pytester


def run(pytester, run_dir: Path, marks: str, *sets: str):
    args = [arg for key in sets for arg in ("--dsocr-set", key)]
    return pytester.runpytest("-m", marks, "--dsocr-run-dir", str(run_dir), *ONE_PAGE, *args)


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.parametrize("example", [
    "infer.max_new_tokens=inf",  # README: decode until EOS
    "infer=vendor",  # README: choose a preset (greedy, up to 8192 new tokens)
])
def test_readme_examples_stop_at_eos(benchmarks_dir, tmp_path, example):
    run_dir = tmp_path / "run"
    # the example first: the keys after it take out the preset's warmup round and extra rounds
    result = run(benchmarks_dir, run_dir, "direct_inference", example, *NO_WARMUP)
    result.assert_outcomes(passed=1)
    metrics = metrics_of(run_dir)
    assert metrics["complete"] is True
    assert [s["finish_reason"] for s in metrics["samples"]] == ["eos"]
    assert metrics["samples"][0]["tokens"] > 1


def test_vendor_parity_compares_boxes_on_the_default_model(benchmarks_dir, tmp_path):
    run_dir = tmp_path / "run"
    # enough tokens for the page's first spans (title, text), few enough to keep generate() quick
    result = run(benchmarks_dir, run_dir, "direct_inference or vendor_parity", *NO_WARMUP,
                 f"infer.max_new_tokens={PARITY_TOKENS}")
    result.assert_outcomes(passed=2)
    assert NO_BOXES not in result.stdout.str()  # the default model's output has boxes: no warning

    metrics = metrics_of(run_dir)
    parity = metrics["vendor_parity"]
    assert parity["all_ok"] is True
    [page] = parity["samples"]
    assert page["boxes_equal"] is True
    assert page["boxes_ours"] == page["boxes_reference"] > 0  # equal boxes that exist, not two empty lists
    # the boxes compared have coordinates: the direct run decodes the same page to the same tokens
    [sample] = metrics["samples"]
    boxes = [box for span in parse_markup(sample["text_raw"], 1, 1).spans for box in span.grid_boxes]
    assert boxes and all(len(box) == 4 and box[2] > box[0] and box[3] > box[1] for box in boxes)


def test_no_boxes_warning_fires_on_random_weights(benchmarks_dir, tmp_path):
    result = run(benchmarks_dir, tmp_path / "run", "direct_inference", *NO_WARMUP,
                 "model.weights=random", "infer.max_new_tokens=4")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"warning: DeepSeek-OCR: none of the 1 outputs {NO_BOXES}*"])
