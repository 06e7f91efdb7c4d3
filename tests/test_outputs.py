"""Stage outputs: atomic writes, viz folders (info.json, result.mmd, boxes, crops), predictions.jsonl."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from pytest_dsocr.data.pages import bundled_pages
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.outputs.config import StageOutputConfig
from pytest_dsocr.outputs.markup import SPECIAL_TOKENS, parse_markup
from pytest_dsocr.atomic import atomic_save_image, atomic_write_bytes, atomic_write_json, atomic_write_text
from pytest_dsocr.outputs.writers import (
    PredictionWriter,
    StageOutputs,
    postprocess_vendor_markup,
    viz_dir_for,
    viz_roots,
    write_viz_index,
)
from pytest_dsocr.records import ImageRun

MARKUP = Path(__file__).parent / "data" / "markup"
EOS = SPECIAL_TOKENS[0]
PAGE = bundled_pages()[0]  # 900 x 1273


def fixture_text(name: str) -> str:
    return (MARKUP / f"{name}.txt").read_text(encoding="utf-8")


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def make_run(image_path, text_raw="", sample_id="page_001", epoch=0, round=0) -> ImageRun:
    return ImageRun(
        sample_id=sample_id, image_path=str(image_path), epoch=epoch, round=round, stage="direct_inference",
        preprocess_ms=1.5, prefill_ms=20.0, decode_ms=30.0, vision_ms=12.0, ttft_ms=21.5, tokens=7,
        prefill_len=300, image_tokens=273, crop_grid=(1, 1), text_raw=text_raw,
        substage_ms={"sam": 6.0, "clip": 5.0, "projector": 1.0}, finish_reason="eos",
    )


def output_config(**changes) -> StageOutputConfig:
    cfg = OmegaConf.structured(StageOutputConfig)
    return OmegaConf.merge(cfg, changes) if changes else cfg


# --- atomic writes ---------------------------------------------------------------------


def test_atomic_writes_create_files_and_leave_no_temp(tmp_path):
    atomic_write_text(tmp_path / "a" / "t.txt", "héllo")
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    atomic_write_json(tmp_path / "c.json", {"path": Path("/x"), "n": 1, "s": "ü"})
    atomic_save_image(tmp_path / "d.png", Image.new("RGB", (3, 3)))
    assert (tmp_path / "a" / "t.txt").read_text(encoding="utf-8") == "héllo"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert json.loads((tmp_path / "c.json").read_text(encoding="utf-8")) == {"path": "/x", "n": 1, "s": "ü"}
    assert Image.open(tmp_path / "d.png").size == (3, 3)
    assert leftovers(tmp_path) == []


def test_atomic_write_respects_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "m.txt", "x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    class Unencodable:
        def tolist(self):
            raise TypeError("cannot encode")

    path = atomic_write_json(tmp_path / "metrics.json", {"ok": True})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": Unencodable()})
    with pytest.raises(OSError):
        atomic_save_image(tmp_path / "metrics.json", Image.new("RGBA", (2, 2)), format="JPEG")
    assert json.loads(path.read_text()) == {"ok": True}
    assert leftovers(tmp_path) == []


def test_unknown_image_extension(tmp_path):
    with pytest.raises(DsocrError, match=r"unknown image extension '\.xyz'"):
        atomic_save_image(tmp_path / "a.xyz", Image.new("RGB", (2, 2)))


# --- viz folder ------------------------------------------------------------------------


def test_viz_dir_is_md5_of_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = hashlib.md5(str(tmp_path / "img" / "p.png").encode()).hexdigest()
    assert viz_dir_for("img/p.png", "viz") == Path("viz") / expected
    assert viz_dir_for(tmp_path / "img" / "p.png", "viz") == Path("viz") / expected
    assert viz_dir_for("img/../img/p.png", "viz") == Path("viz") / expected


def test_postprocess_writes_vendor_files(tmp_path):
    text = fixture_text("portrait_report")
    out = tmp_path / "viz" / "x"
    info = postprocess_vendor_markup(text, PAGE, out, timings_ms={"prefill": 2.0})
    assert {p.name for p in out.iterdir()} == {"info.json", "result.mmd", "result_with_boxes.jpg", "images"}
    assert json.loads((out / "info.json").read_text(encoding="utf-8")) == info
    assert set(info) >= {"source_image", "result_image", "text_raw", "text_clean", "boxes", "timings_ms", "skipped_spans"}
    assert info["source_image"] == str(PAGE) and info["result_image"] == "result_with_boxes.jpg"
    assert info["text_raw"] == text and info["timings_ms"] == {"prefill": 2.0} and info["skipped_spans"] == 0
    assert (out / "result.mmd").read_text(encoding="utf-8") == info["text_clean"]
    assert "![](images/0.jpg)" in info["text_clean"] and "<|ref|>" not in info["text_clean"]

    assert len(info["boxes"]) == 11
    title = info["boxes"][0]
    # [[71, 51, 530, 82]] on a 900 x 1273 page, scaled as int(v / 999 * side)
    assert title == {"x": 63, "y": 64, "w": 477 - 63, "h": 104 - 64, "label": "title",
                     "text": "# Quarterly Throughput Report"}
    assert all(set(b) == {"x", "y", "w", "h", "label", "text"} for b in info["boxes"])

    image_box = next(b for b in info["boxes"] if b["label"] == "image")
    with Image.open(out / "images" / "0.jpg") as crop:
        assert crop.size == (image_box["w"], image_box["h"])
    with Image.open(out / "result_with_boxes.jpg") as result:
        assert result.size == (480, round(1273 * 480 / 900))
    assert leftovers(tmp_path) == []


def test_boxes_are_drawn(tmp_path):
    blank = Image.new("RGB", (400, 400), (255, 255, 255))
    text = "<|ref|>title<|/ref|><|det|>[[100, 100, 900, 900]]<|/det|>\n# T"
    postprocess_vendor_markup(text, tmp_path / "blank.png", tmp_path / "out", image=blank)
    with Image.open(tmp_path / "out" / "result_with_boxes.jpg") as result:
        assert result.size == (400, 400)  # narrower than the thumbnail width: unchanged
        r, g, b = result.getpixel((int(500 / 999 * 400), int(100 / 999 * 400) + 1))  # on the top edge
        assert min(r, g, b) < 200
        assert min(result.getpixel((5, 395))) > 245  # outside the box: paper (JPEG-noisy)


def test_multi_box_image_spans_get_one_crop_per_box(tmp_path):
    page = Image.new("RGB", (1000, 1400), (255, 255, 255))
    info = postprocess_vendor_markup(fixture_text("two_column_paper"), tmp_path / "p.png", tmp_path / "o", image=page)
    assert info["crops"] == ["images/0.jpg", "images/1.jpg", "images/2.jpg"]
    assert sorted(p.name for p in (tmp_path / "o" / "images").iterdir()) == ["0.jpg", "1.jpg", "2.jpg"]
    assert sum(1 for b in info["boxes"] if b["label"] == "text") == 4  # the abstract has two boxes


def test_page_without_spans_still_gets_info(tmp_path):
    info = postprocess_vendor_markup(fixture_text("no_spans"), PAGE, tmp_path / "o", strip_special_tokens=True)
    saved = json.loads((tmp_path / "o" / "info.json").read_text(encoding="utf-8"))
    assert saved["boxes"] == [] and saved["skipped_spans"] == 0 and saved == info
    assert saved["text_clean"] == fixture_text("no_spans").replace(EOS, "")
    assert not (tmp_path / "o" / "images").exists()
    assert (tmp_path / "o" / "result_with_boxes.jpg").is_file()


def test_malformed_markup_is_counted_not_fatal(tmp_path):
    info = postprocess_vendor_markup(fixture_text("malformed"), PAGE, tmp_path / "o")
    assert info["skipped_spans"] == 8
    assert [b["label"] for b in info["boxes"]] == ["title", "image", "text"]


@pytest.mark.parametrize("name", sorted(p.stem for p in MARKUP.glob("*.txt")))
def test_every_fixture_postprocesses_on_every_page(tmp_path, name):
    for page in bundled_pages():
        info = postprocess_vendor_markup(fixture_text(name), page, tmp_path / page.stem, thumbnail_width=200)
        with Image.open(page) as source:
            parsed = parse_markup(fixture_text(name), *source.size)
        assert len(info["boxes"]) == sum(len(s.boxes) for s in parsed.spans)
        with Image.open(tmp_path / page.stem / "result_with_boxes.jpg") as result:
            assert result.width == min(200, source.width)


def test_strip_special_tokens_flag(tmp_path):
    kept = postprocess_vendor_markup(fixture_text("receipt"), PAGE, tmp_path / "a")
    stripped = postprocess_vendor_markup(fixture_text("receipt"), PAGE, tmp_path / "b", strip_special_tokens=True)
    assert EOS in kept["text_clean"] and EOS not in stripped["text_clean"]
    assert EOS in stripped["text_raw"]
    assert EOS not in (tmp_path / "b" / "result.mmd").read_text(encoding="utf-8")


def test_unreadable_page_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    with pytest.raises(DsocrError, match=r"bad\.png"):
        postprocess_vendor_markup("x", bad, tmp_path / "o")


# --- predictions.jsonl -----------------------------------------------------------------


def test_prediction_writer_appends_and_flushes(tmp_path):
    path = tmp_path / "pred" / "predictions.jsonl"
    writer = PredictionWriter(path)
    writer.write({"a": 1})
    assert path.read_text() == '{"a": 1}\n'  # on disk before close
    writer.write({"b": "ü"})
    writer.close()
    with PredictionWriter(path) as again:  # a new writer appends, never truncates
        again.write({"c": 3})
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == [{"a": 1}, {"b": "ü"}, {"c": 3}]


def test_prediction_writer_repairs_a_line_cut_short(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"a": 1}\n{"b": ')
    with PredictionWriter(path) as writer:
        writer.write({"c": 3})
    lines = path.read_text().splitlines()
    assert lines == ['{"a": 1}', '{"b": ', '{"c": 3}']


# --- StageOutputs ----------------------------------------------------------------------


def test_defaults_write_viz_only(tmp_path):
    with StageOutputs(tmp_path / "stage", output_config()) as outputs:
        written = outputs.record(make_run(PAGE, fixture_text("receipt")))
    assert written == viz_dir_for(PAGE, tmp_path / "stage" / "viz")
    assert (written / "info.json").is_file()
    assert not (tmp_path / "stage" / "pred").exists()


def test_prediction_lines_have_the_fields(tmp_path):
    cfg = output_config(prediction={"enable": True}, visualization={"enable": False},
                        extra={"deepseek_ocr": {"prediction": {"strip_special_tokens": True}}})
    with StageOutputs(tmp_path, cfg) as outputs:
        outputs.record(make_run(PAGE, fixture_text("receipt"), round=2))
        lines = (tmp_path / "pred" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == 1  # written as the image finishes, not at close
        outputs.record(make_run(PAGE, "second", epoch=1))
    rows = [json.loads(line) for line in (tmp_path / "pred" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [set(r) for r in rows] == [{"sample_id", "image_path", "epoch", "round", "text_raw", "text_clean", "tokens", "timings_ms"}] * 2
    first = rows[0]
    assert first["sample_id"] == "page_001" and first["image_path"] == str(PAGE)
    assert (first["epoch"], first["round"], first["tokens"]) == (0, 2, 7)
    assert first["text_raw"] == fixture_text("receipt")
    assert "<|ref|>" not in first["text_clean"] and EOS not in first["text_clean"]
    assert first["timings_ms"] == {"preprocess": 1.5, "prefill": 20.0, "vision": 12.0, "sam": 6.0, "clip": 5.0,
                                   "projector": 1.0, "decode": 30.0, "ttft": 21.5}
    assert rows[1]["epoch"] == 1 and not (tmp_path / "viz").exists()


def test_max_images_counts_distinct_images(tmp_path):
    pages = bundled_pages()
    cfg = output_config(extra={"deepseek_ocr": {"visualization": {"max_images": 2}}})
    outputs = StageOutputs(tmp_path, cfg)
    written = [outputs.record(make_run(p, "x")) for p in (pages[0], pages[0], pages[1], pages[2], pages[1])]
    assert [w is not None for w in written] == [True, False, True, False, False]
    assert len(list((tmp_path / "viz").iterdir())) == 2


@pytest.mark.parametrize("max_images,expected", [(None, 6), (0, 0)])
def test_max_images_none_and_zero(tmp_path, max_images, expected):
    cfg = output_config(extra={"deepseek_ocr": {"visualization": {"max_images": max_images}}})
    outputs = StageOutputs(tmp_path, cfg)
    for page in bundled_pages():
        outputs.record(make_run(page, "x"))
    viz = tmp_path / "viz"
    assert (len(list(viz.iterdir())) if viz.exists() else 0) == expected


def test_save_dirs_relative_and_absolute(tmp_path):
    absolute = tmp_path / "elsewhere" / "pred"
    cfg = output_config(prediction={"enable": True, "save_dir": str(absolute)}, visualization={"save_dir": "pics"})
    outputs = StageOutputs(tmp_path / "run" / "direct_inference", cfg)
    assert outputs.prediction_path == absolute / "predictions.jsonl"
    assert outputs.viz_root == tmp_path / "run" / "direct_inference" / "pics"


def test_plain_dataclass_config_works(tmp_path):
    outputs = StageOutputs(tmp_path, StageOutputConfig())
    assert outputs.record(make_run(PAGE, "")) is not None
    assert outputs.prediction_path is None


def test_image_argument_is_used_instead_of_loading(tmp_path):
    page = Image.new("RGB", (100, 50), (255, 255, 255))
    outputs = StageOutputs(tmp_path, output_config())
    folder = outputs.record(make_run(tmp_path / "not-on-disk.png", "<|ref|>text<|/ref|><|det|>[[0, 0, 999, 999]]<|/det|>"), image=page)
    info = json.loads((folder / "info.json").read_text())
    assert info["boxes"][0] == {"x": 0, "y": 0, "w": 100, "h": 50, "label": "text", "text": ""}


@pytest.mark.parametrize(
    "changes,key",
    [
        ({"extra": {"deepseek_ocr": {"visualization": {"max_images": -1}}}}, "max_images"),
        ({"extra": {"deepseek_ocr": {"visualization": {"thumbnail_width": 0}}}}, "thumbnail_width"),
        ({"prediction": {"save_dir": " "}}, "prediction.save_dir"),
    ],
)
def test_bad_output_values_name_the_key(tmp_path, changes, key):
    prefix = "pipeline.direct_inference.output"
    with pytest.raises(DsocrError, match=rf"^{prefix}\..*{key}"):
        StageOutputs(tmp_path, output_config(**changes), key_prefix=prefix)


def test_image_loader_is_called_only_when_visualizing(tmp_path):
    calls = []

    def loader():
        calls.append(1)
        return Image.new("RGB", (10, 10), (255, 255, 255))

    cfg = output_config(extra={"deepseek_ocr": {"visualization": {"max_images": 1}}})
    outputs = StageOutputs(tmp_path, cfg)
    for name in ("a.png", "a.png", "b.png"):
        outputs.record(make_run(tmp_path / name, "x"), image=loader)
    assert len(calls) == 1
    disabled = StageOutputs(tmp_path / "off", output_config(visualization={"enable": False}))
    disabled.record(make_run(tmp_path / "a.png", "x"), image=loader)
    assert len(calls) == 1


# --- the viz index ------------------------------------------------------------------------


def test_viz_index_maps_each_md5_folder_to_its_image(tmp_path):
    viz = tmp_path / "viz"
    boxed, plain = bundled_pages()[:2]
    postprocess_vendor_markup(fixture_text("portrait_report"), boxed, viz_dir_for(boxed, viz))
    postprocess_vendor_markup("no markup here", plain, viz_dir_for(plain, viz))
    (viz / "0123abcd").mkdir()  # a folder cut short before its info.json: not indexed
    entries = write_viz_index(viz)
    index = json.loads((viz / "index.json").read_text(encoding="utf-8"))
    assert index["folders"] == entries and [entry["image"] for entry in entries] == [str(boxed), str(plain)]
    first = entries[0]
    assert first["folder"] == viz_dir_for(boxed, viz).name and first["boxes"] == 11
    assert first["result_image"] == f"{first['folder']}/result_with_boxes.jpg"
    assert (viz / first["result_image"]).is_file() and entries[1]["boxes"] == 0
    markdown = (viz / "index.md").read_text(encoding="utf-8")
    assert f"| {boxed} | [{first['folder']}]({first['folder']}/) | 11 | " \
           f"[result_with_boxes.jpg]({first['folder']}/result_with_boxes.jpg) |" in markdown
    assert "0123abcd" not in markdown
    assert write_viz_index(tmp_path / "absent") == [] and not (tmp_path / "absent").exists()


def test_viz_roots_are_the_enabled_visualization_folders(tmp_path):
    config = {"pipeline": {
        "direct_inference": {"output": {"visualization": {"enable": True, "save_dir": "viz"}}},
        "torch_profiler": {"output": {"visualization": {"enable": False, "save_dir": "viz"}}},
        "vendor_parity": {"output": {"visualization": {"enable": True, "save_dir": str(tmp_path / "shared")}}},
    }}
    assert viz_roots(tmp_path / "run", config) == [tmp_path / "run" / "direct_inference" / "viz", tmp_path / "shared"]
