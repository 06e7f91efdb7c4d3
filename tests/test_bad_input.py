"""Bad input everywhere: images, dataset lists, config files, run dirs and odd file names.

Each case is processed correctly or rejected with one error naming the input; a bad image
fails its own test only. The image decisions themselves are unit-tested in test_images.py;
here every kind goes through a real session at once.
"""

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pytest_dsocr.data.config import DatasetConfig
from pytest_dsocr.data.datasets import discover_images
from pytest_dsocr.data.images import load_image
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.rundir import check_writable, new_run_dir

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
RED = (255, 0, 0)
WHITE = (255, 255, 255)
PAGE = (200, 150)
BOMB_LIMIT = 100_000  # pixels; a stand-in for Pillow's 89 million, set by the pytester conftest
BROKEN_EXIF = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12"  # an IFD cut off after its entry count


def png16(path: Path, values: np.ndarray) -> Path:
    """A 16-bit-per-channel colour PNG (Pillow can read these but not write them)."""
    height, width, channels = values.shape
    colour_type = {3: 2, 4: 6}[channels]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


def rotated_jpeg(path: Path) -> Path:
    image = Image.new("RGB", (40, 20), WHITE)
    image.paste(RED, (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(path, exif=exif.tobytes(), quality=100)
    return path


def truncated(path: Path) -> Path:
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 120, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    noisy.save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def make_images(folder: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Every kind of page: {file: sample id} processed, {file: expected error} rejected."""
    folder.mkdir()
    Image.new("RGB", PAGE, WHITE).save(folder / "rgb.png")
    Image.new("RGB", PAGE, RED).save(folder / "really_png.jpg", format="PNG")
    Image.new("CMYK", PAGE, (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    Image.fromarray(np.full(PAGE[::-1], 40000, dtype=np.uint16)).save(folder / "grey16.png")
    png16(folder / "rgb16.png", np.full((*PAGE[::-1], 3), 30000, dtype=np.uint16))
    Image.new("RGB", PAGE, RED).convert("P").save(folder / "palette.png")
    Image.new("RGBA", PAGE, (0, 0, 0, 0)).save(folder / "alpha.png")
    rotated_jpeg(folder / "rotated.jpg")
    Image.new("RGB", PAGE, WHITE).save(folder / "broken_exif.jpg", exif=BROKEN_EXIF)
    for name in ("with space.png", "página ü.png", "a..b.png"):
        Image.new("RGB", PAGE, WHITE).save(folder / name)
    good = {
        "rgb.png": "rgb", "really_png.jpg": "really_png", "cmyk.jpg": "cmyk", "grey16.png": "grey16",
        "rgb16.png": "rgb16", "palette.png": "palette", "alpha.png": "alpha", "rotated.jpg": "rotated",
        "broken_exif.jpg": "broken_exif", "with space.png": "with_space", "página ü.png": "p_gina",
        "a..b.png": "a..b",
    }
    (folder / "empty.png").write_bytes(b"")
    truncated(folder / "truncated.png")
    (folder / "notes.png").write_text("meeting notes, not a page\n" * 20)
    Image.new("L", (400, 300), 255).save(folder / "bomb.png")  # 120,000 pixels > BOMB_LIMIT
    Image.new("F", (8, 8), 0.5).save(folder / "float.tif")
    bad = {
        "empty.png": "file is empty (0 bytes)",
        "truncated.png": "truncated or corrupt image data",
        "notes.png": "not a recognised image file",
        "bomb.png": f"dimensions beyond Pillow's decompression-bomb limit ({BOMB_LIMIT} pixels)",
        "float.tif": "unsupported colour mode 'F'",
    }
    return good, bad


def test_every_kind_of_page_is_processed_or_fails_alone(pytester, tmp_path, inference_modules_loaded):
    good, bad = make_images(tmp_path / "pages")
    pytester.makepyfile(test_direct_inference=(BENCHMARKS / "test_direct_inference.py").read_text())
    pytester.makeconftest(f"""
        import pytest
        from PIL import Image

        @pytest.fixture(autouse=True)
        def small_bomb_limit(monkeypatch):
            monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", {BOMB_LIMIT})
    """)
    requested = tmp_path / "nested" / ".." / "run dir ü"  # spaces, non-ASCII and ".." in the run dir
    result = pytester.runpytest(
        "-m", "direct_inference", "-p", "no:cacheprovider", "--dsocr-run-dir", str(requested),
        "--dsocr-set", "dataset=folder", "--dsocr-set", f"dataset.root={tmp_path / 'pages'}",
        "--dsocr-set", "infer.max_new_tokens=2", "--dsocr-set", "infer.warmup_rounds=0",
        "--dsocr-set", "model.crop_mode=false", "--dsocr-set", "model.base_size=512",
        "--dsocr-set", "pipeline.direct_inference.output.prediction.enable=true",
        "--dsocr-set", "pipeline.direct_inference.output.extra.deepseek_ocr.visualization.max_images=null",
    )
    result.assert_outcomes(passed=len(good), failed=len(bad))
    pages = tmp_path / "pages"
    result.stdout.fnmatch_lines_random([f"*image {pages / name}: {error}*" for name, error in bad.items()])
    run_dir = tmp_path / "run dir ü"
    assert run_dir.is_dir() and not (tmp_path / "nested").exists()
    result.stdout.fnmatch_lines([f"*run dir: {run_dir}"])

    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["complete"] is True
    assert sorted(s["sample_id"] for s in metrics["samples"]) == sorted(good.values())
    assert {Path(f["image_path"]).name for f in metrics["failures"]} == set(bad)
    for failure in metrics["failures"]:
        assert Path(failure["image_path"]).name in failure["error"]

    lines = (run_dir / "direct_inference" / "pred" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert sorted(Path(json.loads(line)["image_path"]).name for line in lines) == sorted(good)
    infos = [json.loads((folder / "info.json").read_text(encoding="utf-8"))
             for folder in (run_dir / "direct_inference" / "viz").iterdir() if folder.is_dir()]
    by_name = {Path(info["source_image"]).name: info for info in infos}
    assert set(by_name) == set(good)
    assert by_name["rotated.jpg"]["image_size"] == {"width": 20, "height": 40}  # EXIF applied
    assert by_name["página ü.png"]["source_image"] == str(pages / "página ü.png")


# --- images: the cases test_images.py does not cover ---------------------------------------------


def test_sixteen_bit_colour_png_is_reduced_to_eight_bits(tmp_path):
    values = np.zeros((1, 3, 3), dtype=np.uint16)
    values[0, 0] = (65535, 0, 0)
    values[0, 1] = (32896, 32896, 32896)
    image = load_image(png16(tmp_path / "deep.png", values))
    assert [image.getpixel((x, 0)) for x in range(3)] == [RED, (128, 128, 128), (0, 0, 0)]


def test_sixteen_bit_colour_with_alpha_is_composited_on_white(tmp_path):
    values = np.zeros((1, 2, 4), dtype=np.uint16)
    values[0, 1] = (65535, 0, 0, 65535)
    image = load_image(png16(tmp_path / "deep_alpha.png", values))
    assert [image.getpixel((x, 0)) for x in range(2)] == [WHITE, RED]


def test_broken_exif_keeps_the_image_as_stored(tmp_path):
    path = tmp_path / "broken.jpg"
    Image.new("RGB", (8, 4), WHITE).save(path, exif=BROKEN_EXIF)
    with pytest.warns(UserWarning, match="Corrupt EXIF"):
        assert load_image(path).size == (8, 4)


def test_jpeg_named_png_is_read_by_content(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (8, 8), RED).save(path, format="JPEG", quality=100)
    r, g, b = load_image(path).getpixel((4, 4))
    assert r > 240 and g < 15 and b < 15


# --- dataset lists -----------------------------------------------------------------------------


def test_subset_names_with_spaces_unicode_and_inner_dots(tmp_path):
    for name in ("with space.png", "página ü.png", "sub/a..b.png"):
        (tmp_path / "imgs" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / "imgs" / name)
    (tmp_path / "subset.txt").write_text("página ü.png\nwith space.png\nsub/../sub/a..b.png\n", encoding="utf-8")
    cfg = DatasetConfig(name="folder", root="imgs", subset_file="subset.txt")
    images = discover_images(cfg, base_dir=tmp_path)
    assert images == [tmp_path / "imgs" / "página ü.png", tmp_path / "imgs" / "with space.png",
                      tmp_path / "imgs" / "sub" / "a..b.png"]


@pytest.mark.parametrize("name", ["../outside.png", "sub/../../outside.png", "/etc/passwd"])
def test_subset_names_leaving_the_image_folder_are_rejected(tmp_path, name):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "outside.png")
    (tmp_path / "subset.txt").write_text(f"{name}\n")
    cfg = DatasetConfig(name="folder", root="imgs", subset_file="subset.txt")
    with pytest.raises(DsocrError, match=r"subset\.txt names 1 path\(s\) outside the image folder .*imgs: "
                                         + repr(name).replace(".", r"\.")):
        discover_images(cfg, base_dir=tmp_path)


# --- usage errors through the plugin: one line naming the input, no model built -----------------------


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def folder_subset(tmp: Path, lines: str) -> list[str]:
    subset = write(tmp / "subset.txt", lines)
    return ["--dsocr-set", "dataset=folder", "--dsocr-set", f"dataset.root={tmp / 'imgs'}",
            "--dsocr-set", f"dataset.subset_file={subset}"]


USAGE_CASES = {
    "config-not-yaml": (lambda t: ["--dsocr-config", str(write(t / "bad.yaml", "model: [unclosed"))],
                        "bad.yaml is not valid YAML"),
    "config-not-utf8": (lambda t: ["--dsocr-config", str(write(t / "bin.yaml", b"\xff\xfe\x00model"))],
                        "bin.yaml is not valid YAML"),
    "config-a-list": (lambda t: ["--dsocr-config", str(write(t / "list.yaml", "- model\n- infer\n"))],
                      "list.yaml must hold a mapping of config keys, not list"),
    "config-a-string": (lambda t: ["--dsocr-config", str(write(t / "text.yaml", "just some words\n"))],
                        "text.yaml must hold a mapping of config keys, not str"),
    "config-missing": (lambda t: ["--dsocr-config", str(t / "nope.yaml")], "--dsocr-config: file not found"),
    "subset-missing-files": (lambda t: folder_subset(t, "a.png\ngone.png\n"), "names 1 file(s) not found in"),
    "subset-leaves-folder": (lambda t: folder_subset(t, "../a.png\n"), "outside the image folder"),
    "run-dir-is-a-file": (lambda t: ["--dsocr-run-dir", str(write(t / "taken", "x"))], "exists and is not a directory"),
    "run-dir-hidden-file": (lambda t: ["--dsocr-run-dir", str(write(t / "old" / ".keep", "x").parent)],
                            "runs are never overwritten"),
    "root-without-folder-dataset": (lambda t: ["--dsocr-set", "dataset.root=/nonexistent/pages"],
                                    "dataset.root=/nonexistent/pages: not used by dataset=samples"),
    "pattern-list-unquoted": (lambda t: ["--dsocr-set", "dataset=folder", "--dsocr-set", f"dataset.root={t / 'imgs'}",
                                         "--dsocr-set", "dataset.patterns=[*.gif]"],
                              "'dataset.patterns=[*.gif]': the value of dataset.patterns is not valid YAML"),
    "temperature-nan": (lambda t: ["--dsocr-set", "infer.temperature=nan"], "infer.temperature=nan: must be a finite"),
    "top-k-negative": (lambda t: ["--dsocr-set", "infer.temperature=0.7", "--dsocr-set", "infer.top_k=-3"],
                       "infer.top_k=-3: must be an integer >= 1"),
    "run-root-unwritable": (lambda t: ["--dsocr-set", f"run.root={write(t / 'afile', 'x')}/runs"],
                            "afile/runs: cannot create"),
}


@pytest.mark.parametrize("case", list(USAGE_CASES))
def test_bad_input_is_one_usage_error(pytester, tmp_path, case, inference_modules_loaded):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "imgs" / "a.png")
    arguments, message = USAGE_CASES[case]
    args = arguments(tmp_path)
    contents = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    pytester.makepyfile(test_direct_inference=(BENCHMARKS / "test_direct_inference.py").read_text())
    result = pytester.runpytest("-m", "direct_inference", "-p", "no:cacheprovider", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()
    assert "Traceback" not in result.stderr.str()
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == contents  # nothing written


# --- run directories -------------------------------------------------------------------------------


def test_default_run_dirs_of_the_same_second_are_distinct(tmp_path, monkeypatch):
    monkeypatch.setattr("time.strftime", lambda fmt: "20250102-030405")
    made = [new_run_dir(tmp_path / "runs") for _ in range(3)]
    assert [p.name for p in made] == ["20250102-030405", "20250102-030405-1", "20250102-030405-2"]
    assert all(p.is_dir() and not any(p.iterdir()) for p in made)


@pytest.mark.parametrize("name, expected", [
    ("runs/../my run ü", "my run ü"),
    ("./a/b/../c", "a/c"),
])
def test_explicit_run_dir_is_taken_from_the_start_dir_and_normalised(tmp_path, name, expected):
    path = new_run_dir(tmp_path / "runs", name, base_dir=tmp_path)
    assert path == tmp_path / expected and path.is_dir()


def test_explicit_empty_run_dir_is_used(tmp_path):
    (tmp_path / "empty").mkdir()
    assert new_run_dir(tmp_path / "runs", tmp_path / "empty") == tmp_path / "empty"


def test_run_dir_that_cannot_be_created_is_named(tmp_path):
    write(tmp_path / "file", "x")
    with pytest.raises(DsocrError, match=r"--dsocr-run-dir=.*file/run: cannot create"):
        new_run_dir(tmp_path / "runs", tmp_path / "file" / "run")


def test_a_folder_that_cannot_be_written_is_found_before_anything_runs(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    check_writable(tmp_path / "runs" / "deeper", "run.root=runs")  # made later: its parent is probed
    assert not (tmp_path / "runs").exists() and list(tmp_path.iterdir()) == [tmp_path / "empty"]

    def refused(*args, **kwargs):  # what a read-only mount or a folder of another user does
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.mkdtemp", refused)
    with pytest.raises(DsocrError, match=r"run\.root=runs: cannot write in .*tmp.* \(Permission denied\)"):
        check_writable(tmp_path / "runs", "run.root=runs")
    with pytest.raises(DsocrError, match=r"--dsocr-run-dir=.*empty: cannot write in .*empty \(Permission denied\)"):
        new_run_dir(tmp_path / "runs", tmp_path / "empty")
