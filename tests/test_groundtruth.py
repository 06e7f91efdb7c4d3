"""Ground truth of the bundled pages: drawn blocks, the vendor markup, n-gram safety, lookup."""

from __future__ import annotations

import json
import math

import pytest
from PIL import Image

from pytest_dsocr.data import groundtruth, pages
from pytest_dsocr.data.config import DatasetConfig
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.models.deepseek_ocr.processing import prepare_inputs
from pytest_dsocr.models.deepseek_ocr.spec import TINY
from pytest_dsocr.models.deepseek_ocr.tokenizer import build_offline_tokenizer
from pytest_dsocr.ngram import first_repeated_ngram
from pytest_dsocr.outputs.markup import GRID_MAX, parse_markup
from pytest_dsocr.outputs.writers import postprocess_vendor_markup

NGRAM_SIZE = 20  # the vendor's no_repeat_ngram_size
LABELS = {"title", "sub_title", "text", "table", "table_caption", "image", "image_caption"}


@pytest.fixture(scope="module")
def drawn() -> list[pages.DrawnPage]:
    return pages.drawn_pages()


def same_pillow(spec: pages.PageSpec) -> bool:
    with Image.open(pages.PAGES_DIR / f"{spec.name}.png") as shipped:
        return shipped.text.get("Software") == pages.SOFTWARE_TAG


def grid_cell(side: int) -> int:
    """Pixels one grid step covers: how far a decoded grid box may lie from the drawn one."""
    return math.ceil(side / GRID_MAX)


def test_every_page_ships_its_ground_truth_as_drawn(drawn):
    for spec, page in zip(pages.PAGE_SPECS, drawn):
        shipped = groundtruth.read_truth_markup(pages.PAGES_DIR / f"{spec.name}.png")
        if same_pillow(spec):  # the text layout (line wraps, boxes) depends on Pillow's font
            assert shipped == page.markup, spec.name


def test_blocks_cover_the_page_in_reading_order(drawn):
    for spec, page in zip(pages.PAGE_SPECS, drawn):
        labels = [block.label for block in page.blocks]
        assert labels[0] == "title" and set(labels) <= LABELS
        assert {"text", "table", "table_caption"} <= set(labels), spec.name
        tops = [block.box[1] for block in page.blocks]
        assert tops == sorted(tops)  # drawn top to bottom
        for block in page.blocks:
            x1, y1, x2, y2 = block.box
            assert 0 <= x1 < x2 <= spec.width and 0 <= y1 < y2 <= spec.height
        if "image" in labels:  # an image is followed by its caption
            assert labels[labels.index("image") + 1] == "image_caption"


def test_ground_truth_parses_into_the_drawn_blocks(drawn):
    for spec, page in zip(pages.PAGE_SPECS, drawn):
        parsed = parse_markup(page.markup, spec.width, spec.height)
        assert parsed.skipped == 0
        assert [span.label for span in parsed.spans] == [block.label for block in page.blocks]
        for span, block in zip(parsed.spans, page.blocks):
            (box,) = span.boxes
            tolerance = (grid_cell(spec.width), grid_cell(spec.height)) * 2
            assert all(abs(a - b) <= t for a, b, t in zip(box, block.box, tolerance)), (spec.name, box, block.box)
            assert span.text == block.content


def test_block_contents_follow_the_vendor(drawn):
    page = drawn[0]
    by_label = {}
    for block in page.blocks:
        by_label.setdefault(block.label, block.content)
    assert by_label["title"] == "# Quarterly Throughput Report"
    assert by_label["sub_title"] == "## 1. Method"
    assert by_label["table"].startswith("<table><tr><td>Item</td><td>Col 1</td>")
    assert by_label["table"].endswith("</td></tr></table>")
    assert by_label["table_caption"].startswith("Table ")
    assert by_label["image"] == ""
    assert by_label["image_caption"].startswith("<center>Figure 1: ") and by_label["image_caption"].endswith("</center>")
    assert "\n" not in by_label["text"]  # a wrapped paragraph is one line
    # an image span is followed by its caption's span on the next line, other blocks by a blank line
    assert "<|/det|>\n<|ref|>image_caption" in page.markup
    assert page.markup.count("\n\n<|ref|>") == len(page.blocks) - 2


def test_postprocess_reads_the_ground_truth_boxes(tmp_path, drawn):
    spec, page = pages.PAGE_SPECS[0], drawn[0]
    path = pages.PAGES_DIR / f"{spec.name}.png"
    info = postprocess_vendor_markup(page.markup, path, tmp_path)
    assert [box["label"] for box in info["boxes"]] == [block.label for block in page.blocks]
    for box, block in zip(info["boxes"], page.blocks):
        x1, y1, x2, y2 = block.box
        assert abs(box["x"] - x1) <= 1 and abs(box["y"] - y1) <= 2
        assert abs(box["x"] + box["w"] - x2) <= 1 and abs(box["y"] + box["h"] - y2) <= 2
    assert (tmp_path / "images" / "0.jpg").is_file()  # the figure is cropped
    assert "<|ref|>" not in info["text_clean"] and "Quarterly Throughput Report" in info["text_clean"]


@pytest.mark.parametrize("value, side, grid", [(0, 900, 0), (900, 900, 999), (450, 900, 500), (1, 1300, 1), (2000, 1000, 999)])
def test_to_grid_is_the_nearest_grid_point(value, side, grid):
    assert groundtruth.to_grid(value, side) == grid


def test_no_page_repeats_a_20_gram():
    tokenizer = build_offline_tokenizer(TINY)
    for path in pages.bundled_pages():
        with Image.open(path) as image:
            prompt = prepare_inputs(image, tokenizer, TINY).input_ids[0].tolist()
        target = tokenizer.encode(groundtruth.read_truth_markup(path), add_special_tokens=False)
        sequence = prompt + target + [TINY.eos_token_id]
        assert first_repeated_ngram(sequence, NGRAM_SIZE, start=len(prompt)) is None, path.name


def test_first_repeated_ngram_finds_what_the_ban_forbids():
    ids = [5, 6, 7, 8, 5, 6, 7, 9, 5, 6, 7, 8]
    assert first_repeated_ngram(ids, 4) == 11  # 5 6 7 8 again
    assert first_repeated_ngram(ids, 4, start=12) is None
    assert first_repeated_ngram(ids, 5) is None
    assert first_repeated_ngram([1] * 25, 20, start=21) == 21  # inside the prompt only: ignored before start


# --- lookup -----------------------------------------------------------------------------


def test_samples_dataset_has_ground_truth_for_every_page():
    truths = groundtruth.truth_for_dataset(DatasetConfig(name="samples"))
    assert sorted(truths) == pages.bundled_pages()
    first = truths[pages.bundled_pages()[0]]
    assert (first.width, first.height) == (900, 1273) and first.blocks[0].label == "title"
    assert first.markup == groundtruth.read_truth_markup(pages.bundled_pages()[0])


def test_missing_ground_truth_is_named(tmp_path):
    image = tmp_path / "scan.png"
    Image.new("L", (10, 10), 255).save(image)
    with pytest.raises(DsocrError, match=r"scan\.mmd is missing"):
        groundtruth.read_truth_markup(image)
    assert groundtruth.truth_for_dataset(DatasetConfig(name="folder", root=str(tmp_path))) == {}
    (tmp_path / "scan.mmd").write_text("<|ref|>text<|/ref|><|det|>[[0, 0, 999, 999]]<|/det|>\nhello")
    (truth,) = groundtruth.truth_for_dataset(DatasetConfig(name="folder", root=str(tmp_path))).values()
    assert truth.blocks == (groundtruth.TruthBlock("text", (0, 0, 10, 10), "hello"),)


def omnidocbench_entry(name: str) -> dict:
    return {
        "page_info": {"image_path": name, "width": 1000, "height": 2000, "page_no": 0},
        "layout_dets": [
            {"category_type": "text_block", "poly": [100, 400, 900, 400, 900, 500, 100, 500], "order": 2,
             "ignore": False, "text": "Body text."},
            {"category_type": "title", "poly": [100, 100, 600, 100, 600, 180, 100, 180], "order": 1,
             "ignore": False, "text": "A Title"},
            {"category_type": "table", "poly": [100, 600, 900, 600, 900, 900, 100, 900], "order": 3,
             "ignore": False, "html": "<table><tr><td>1</td></tr></table>", "latex": "\\begin{tabular}"},
            {"category_type": "page_number", "poly": [490, 1950, 510, 1950, 510, 1980, 490, 1980], "order": 4,
             "ignore": False, "text": "7"},
            {"category_type": "text_block", "poly": [0, 0, 1, 0, 1, 1, 0, 1], "order": 5, "ignore": True,
             "text": "ignored"},
        ],
    }


def test_omnidocbench_annotations_become_comparable_blocks(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("L", (10, 20), 255).save(tmp_path / "images" / "p1.png")
    (tmp_path / "OmniDocBench.json").write_text(json.dumps([omnidocbench_entry("p1.png")]))
    truths = groundtruth.truth_for_dataset(DatasetConfig(name="omnidocbench", root=str(tmp_path)))
    truth = truths[tmp_path / "images" / "p1.png"]
    assert (truth.width, truth.height, truth.markup) == (1000, 2000, None)
    assert [(b.label, b.box, b.text) for b in truth.blocks] == [
        ("title", (100, 100, 600, 180), "A Title"),
        ("text", (100, 400, 900, 500), "Body text."),
        ("table", (100, 600, 900, 900), "<table><tr><td>1</td></tr></table>"),
    ]


@pytest.mark.parametrize("content, message", [
    ("not json", "cannot read"),
    ('{"a": 1}', "not a list of pages"),
    ('[{"page_info": {"image_path": "p.png"}}]', "integer width and height"),
    ('[{"page_info": {"image_path": "p.png", "width": 1, "height": 1}, "layout_dets": '
     '[{"category_type": "title", "poly": [1, 2]}]}]', r"poly must be 8 numbers"),
])
def test_bad_omnidocbench_annotations_are_named(tmp_path, content, message):
    (tmp_path / "OmniDocBench.json").write_text(content)
    with pytest.raises(DsocrError, match=message):
        groundtruth.omnidocbench_truth(tmp_path)
