"""Dataset discovery (samples, folder, omnidocbench), its errors, and the bundled pages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from pytest_dsocr.config import load_config
from pytest_dsocr.data import pages
from pytest_dsocr.data.config import DEFAULT_PATTERNS, DatasetConfig
from pytest_dsocr.data.datasets import (
    HIDDEN_FILE,
    HIDDEN_FOLDER,
    MATCHING_FOLDER,
    NO_PATTERN,
    NOT_RECURSIVE,
    SYMLINKED_FOLDER,
    discover_images,
    scan_dataset,
)
from pytest_dsocr.errors import DsocrError

MAX_BUNDLE_BYTES = 1_000_000


def touch_image(path: Path, size=(8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (255, 255, 255)).save(path)
    return path


def names(paths):
    return [p.name for p in paths]


# --- samples ---------------------------------------------------------------------------


def test_samples_are_the_bundled_pages(tmp_path):
    images = discover_images(DatasetConfig(name="samples"))
    assert names(images) == [f"{spec.name}.png" for spec in pages.PAGE_SPECS]
    assert all(p.is_absolute() and p.is_file() for p in images)
    assert scan_dataset(DatasetConfig(name="samples")).skipped == ()  # each page's .mmd is its ground truth


def test_ground_truth_beside_an_image_is_not_a_skipped_entry(tmp_path):
    root = tmp_path / "imgs"
    touch_image(root / "a.png")
    (root / "a.mmd").write_text("# A")
    (root / "orphan.mmd").write_text("# no image")
    scan = scan_dataset(DatasetConfig(name="folder", root=str(root)))
    assert [(entry.path, entry.reason) for entry in scan.skipped] == [("orphan.mmd", NO_PATTERN)]


def test_a_root_without_a_folder_dataset_is_an_error_not_ignored(tmp_path):
    with pytest.raises(DsocrError, match=r"dataset\.root=.*ignored: not used by dataset=samples .*dataset=folder"):
        discover_images(DatasetConfig(name="samples", root=str(tmp_path / "ignored")))
    with pytest.raises(DsocrError, match=r"dataset\.root=/nonexistent/pages: not used by dataset=samples"):
        load_config(overrides=["dataset.root=/nonexistent/pages"])
    touch_image(tmp_path / "pages" / "a.png")
    cfg = load_config(overrides=["dataset=folder", f"dataset.root={tmp_path / 'pages'}"])
    assert names(discover_images(cfg.dataset)) == ["a.png"]


# --- folder: what a pattern search passes over ------------------------------------------


def test_default_patterns_take_every_image_type_pillow_decodes(tmp_path):
    root = tmp_path / "imgs"
    touch_image(root / "scan.png")
    frames = [Image.new("P", (8, 8), colour) for colour in (1, 2)]
    frames[0].save(root / "anim.GIF", save_all=True, append_images=frames[1:])
    Image.new("RGB", (8, 8)).save(root / "page.jp2")
    Image.new("RGB", (8, 8)).save(root / "layers.tga")
    assert {"*.gif", "*.png", "*.jpg", "*.jp2", "*.tga", "*.webp", "*.tiff"} <= set(DEFAULT_PATTERNS)
    assert not {"*.mpg", "*.eps", "*.h5"} & set(DEFAULT_PATTERNS)  # video, Ghostscript, identify-only
    scan = scan_dataset(DatasetConfig(name="folder", root=str(root)))
    assert names(scan.images) == ["anim.GIF", "layers.tga", "page.jp2", "scan.png"] and scan.skipped == ()


def test_every_entry_a_search_passes_over_is_counted_and_named(tmp_path, caplog):
    root = tmp_path / "imgs"
    touch_image(root / "a.png")
    touch_image(root / "sub" / "b.png")
    touch_image(root / ".cache" / "c.png")
    (root / "notes.txt").write_text("not a page")
    (root / ".DS_Store").write_bytes(b"x")
    (root / "x.png").mkdir()  # a folder named like an image
    touch_image(root / "x.png" / "inner.png")
    (root / "linked").symlink_to(root / "sub", target_is_directory=True)
    with caplog.at_level("WARNING", logger="pytest_dsocr"):
        scan = scan_dataset(DatasetConfig(name="folder", root=str(root)))
    assert names(scan.images) == ["a.png", "b.png", "inner.png"]
    assert [(entry.path, entry.reason) for entry in scan.skipped] == [
        (".DS_Store", HIDDEN_FILE), (".cache/", HIDDEN_FOLDER), ("linked/", SYMLINKED_FOLDER),
        ("notes.txt", NO_PATTERN), ("x.png/", MATCHING_FOLDER)]
    section = scan.section()
    assert section["discovered"] == 3 and section["skipped_count"] == 5 and section["selection"] == "patterns"
    assert section["skipped_by_reason"][NO_PATTERN] == 1
    assert {"path": "x.png/", "reason": MATCHING_FOLDER} in section["skipped"]
    assert "5 entries under" in caplog.text and "notes.txt (matches no dataset.patterns)" in caplog.text

    flat = scan_dataset(DatasetConfig(name="folder", root=str(root), recursive=False))
    assert names(flat.images) == ["a.png"]
    assert ("sub/", NOT_RECURSIVE) in [(entry.path, entry.reason) for entry in flat.skipped]
    assert ("x.png/", MATCHING_FOLDER) in [(entry.path, entry.reason) for entry in flat.skipped]


def test_a_folder_of_only_skipped_entries_names_them_in_the_error(tmp_path):
    (tmp_path / "imgs" / "only.png").mkdir(parents=True)
    with pytest.raises(DsocrError, match=r"no images found .*every image type Pillow decodes.*only\.png/ \(a folder"):
        discover_images(DatasetConfig(name="folder", root=str(tmp_path / "imgs"), recursive=False))


def test_structured_config_is_accepted():
    cfg = OmegaConf.structured(DatasetConfig)
    assert len(discover_images(cfg)) == len(pages.PAGE_SPECS)
    with pytest.raises(Exception, match="num_epochs"):
        OmegaConf.merge(cfg, {"sampling": {"num_epochs": "many"}})


def test_bundled_pages_are_small_greyscale_and_sized_as_specified():
    bundled = pages.bundled_pages()
    assert names(bundled) == [f"{spec.name}.png" for spec in pages.PAGE_SPECS]
    assert sum(p.stat().st_size for p in bundled) < MAX_BUNDLE_BYTES
    sizes = set()
    for path, spec in zip(bundled, pages.PAGE_SPECS):
        with Image.open(path) as image:
            assert image.mode in ("L", "P")
            assert image.size == (spec.width, spec.height)
        sizes.add(spec.crop_grid)
    assert len(sizes) == len(pages.PAGE_SPECS)  # every page exercises a different crop grid
    assert any(max(s.width, s.height) <= 640 for s in pages.PAGE_SPECS)


def test_page_generator_is_deterministic_and_matches_bundle(tmp_path):
    first = pages.write_pages(tmp_path / "a")
    assert pages.main([str(tmp_path / "b")]) == 0
    for path in first:
        again = tmp_path / "b" / path.name
        with Image.open(path) as one, Image.open(again) as two:
            assert one.tobytes() == two.tobytes()
        with Image.open(path) as made, Image.open(pages.PAGES_DIR / path.name) as shipped:
            assert made.size == shipped.size
            if shipped.text.get("Software") == pages.SOFTWARE_TAG:  # same Pillow: same pixels
                assert made.tobytes() == shipped.tobytes()


def test_pages_have_ink_in_several_places():
    page = pages.render_page(pages.PAGE_SPECS[0], 1)
    width, height = page.size
    dark = [page.crop((0, y, width, y + height // 4)).getextrema()[0] < 100 for y in range(0, height, height // 4)]
    assert all(dark)  # title, text, table, figure and page number spread over the page


# --- folder ----------------------------------------------------------------------------


def test_folder_sorted_recursive_case_insensitive(tmp_path):
    touch_image(tmp_path / "b.png")
    touch_image(tmp_path / "A.PNG")
    touch_image(tmp_path / "sub" / "c.jpg")
    touch_image(tmp_path / ".hidden" / "d.png")
    touch_image(tmp_path / ".e.png")
    (tmp_path / "notes.txt").write_text("x")
    images = discover_images(DatasetConfig(name="folder", root=str(tmp_path)))
    assert [p.relative_to(tmp_path).as_posix() for p in images] == ["A.PNG", "b.png", "sub/c.jpg"]
    flat = discover_images(DatasetConfig(name="folder", root=str(tmp_path), recursive=False))
    assert names(flat) == ["A.PNG", "b.png"]
    only_jpg = discover_images(DatasetConfig(name="folder", root=str(tmp_path), patterns=["*.jpg"]))
    assert names(only_jpg) == ["c.jpg"]


def test_folder_relative_root_uses_base_dir(tmp_path):
    touch_image(tmp_path / "imgs" / "x.png")
    images = discover_images(DatasetConfig(name="folder", root="imgs"), base_dir=tmp_path)
    assert images == [tmp_path / "imgs" / "x.png"]


def test_folder_subset_file_keeps_order_and_skips_comments(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        touch_image(tmp_path / "imgs" / name)
    subset = tmp_path / "subset.txt"
    subset.write_text("# chosen pages\nc.png\n\n a.png \nc.png\n")
    cfg = DatasetConfig(name="folder", root=str(tmp_path / "imgs"), subset_file=str(subset))
    assert names(discover_images(cfg)) == ["c.png", "a.png"]


@pytest.mark.parametrize(
    "cfg_kwargs,message",
    [
        ({"name": "nope"}, r"dataset\.name: unknown dataset 'nope'; choose one of samples, folder, omnidocbench"),
        ({"name": "folder"}, r"dataset\.root: required for dataset 'folder'"),
        ({"name": "folder", "root": "missing"}, r"dataset\.root: .*missing does not exist"),
        ({"name": "folder", "root": "file.png"}, r"dataset\.root: .*file\.png is not a directory"),
        ({"name": "folder", "root": "empty"}, r"dataset: no images found in .*empty"),
        ({"name": "folder", "root": "imgs", "patterns": ["*.gif"]}, r"no images found .*\*\.gif"),
        ({"name": "folder", "root": "imgs", "patterns": []}, r"dataset\.patterns: empty"),
        ({"name": "folder", "root": "imgs", "subset_file": "none.txt"}, r"dataset\.subset_file: .*none\.txt does not exist"),
        ({"name": "folder", "root": "imgs", "subset_file": "bad_subset.txt"},
         r"dataset\.subset_file: .*bad_subset\.txt names 6 file\(s\) not found in .*imgs: m0\.png, m1\.png, m2\.png, m3\.png, m4\.png and 1 more"),
        ({"name": "folder", "root": "imgs", "subset_file": "empty_subset.txt"}, r"dataset: no images found in subset file"),
        ({"name": "omnidocbench", "root": "imgs"}, r"dataset\.root: .*imgs has no images/ folder"),
    ],
)
def test_dataset_errors_name_key_and_path(tmp_path, cfg_kwargs, message):
    touch_image(tmp_path / "imgs" / "a.png")
    touch_image(tmp_path / "file.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad_subset.txt").write_text("a.png\n" + "".join(f"m{i}.png\n" for i in range(6)))
    (tmp_path / "empty_subset.txt").write_text("# nothing\n")
    with pytest.raises(DsocrError, match=message):
        discover_images(DatasetConfig(**cfg_kwargs), base_dir=tmp_path)


def test_subset_file_not_text(tmp_path):
    touch_image(tmp_path / "imgs" / "a.png")
    (tmp_path / "subset.txt").write_bytes(b"\xff\xfe\x00bad")
    cfg = DatasetConfig(name="folder", root="imgs", subset_file="subset.txt")
    with pytest.raises(DsocrError, match=r"dataset\.subset_file: cannot read .*subset\.txt as UTF-8"):
        discover_images(cfg, base_dir=tmp_path)


# --- omnidocbench ----------------------------------------------------------------------


def make_omnidocbench(root: Path, files=("p2.jpg", "p1.png", "extra.png"), listed=("p1.png", "p2.jpg")) -> Path:
    for name in files:
        touch_image(root / "images" / name)
    if listed is not None:
        entries = [{"layout_dets": [], "page_info": {"image_path": name, "page_no": i}} for i, name in enumerate(listed)]
        (root / "OmniDocBench.json").write_text(json.dumps(entries))
    return root


def test_omnidocbench_lists_pages_from_json(tmp_path):
    make_omnidocbench(tmp_path)
    images = discover_images(DatasetConfig(name="omnidocbench", root=str(tmp_path)))
    assert names(images) == ["p1.png", "p2.jpg"]  # extra.png is not in the benchmark
    assert all(p.parent == tmp_path / "images" for p in images)


def test_omnidocbench_without_json_searches_images(tmp_path):
    make_omnidocbench(tmp_path, listed=None)
    images = discover_images(DatasetConfig(name="omnidocbench", root=str(tmp_path)))
    assert names(images) == ["extra.png", "p1.png", "p2.jpg"]


def test_omnidocbench_subset(tmp_path):
    make_omnidocbench(tmp_path)
    (tmp_path / "subset.txt").write_text("p2.jpg\n")
    cfg = DatasetConfig(name="omnidocbench", root=str(tmp_path), subset_file=str(tmp_path / "subset.txt"))
    assert names(discover_images(cfg)) == ["p2.jpg"]


def test_omnidocbench_json_naming_missing_images(tmp_path):
    make_omnidocbench(tmp_path, listed=("p1.png", "gone.png"))
    with pytest.raises(DsocrError, match=r"OmniDocBench\.json lists 1 file\(s\) not found in .*images: gone\.png"):
        discover_images(DatasetConfig(name="omnidocbench", root=str(tmp_path)))


@pytest.mark.parametrize("content", ["not json", '{"a": 1}', '[{"page_info": {}}]'])
def test_omnidocbench_bad_json(tmp_path, content):
    make_omnidocbench(tmp_path, listed=None)
    (tmp_path / "OmniDocBench.json").write_text(content)
    with pytest.raises(DsocrError, match=r"dataset\.root: .*OmniDocBench\.json"):
        discover_images(DatasetConfig(name="omnidocbench", root=str(tmp_path)))
