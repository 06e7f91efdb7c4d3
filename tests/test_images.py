"""load_image: every bad-input case of the module docstring, processed or rejected clearly."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pytest_dsocr.data.images import load_image
from pytest_dsocr.errors import DsocrError

RED = (255, 0, 0)
WHITE = (255, 255, 255)


def save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_rgb_png_loads_as_rgb(tmp_path):
    path = save(Image.new("RGB", (30, 20), RED), tmp_path / "page.png")
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (30, 20)
    assert image.getpixel((0, 0)) == RED


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(DsocrError, match=r"nope\.png.*not found"):
        load_image(path)


def test_directory_is_rejected(tmp_path):
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(DsocrError, match=r"dir\.png.*not a regular file"):
        load_image(tmp_path / "dir.png")


def test_zero_bytes_is_rejected(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(DsocrError, match=r"empty\.png.*0 bytes"):
        load_image(path)


def test_non_image_is_rejected(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n" * 10)
    with pytest.raises(DsocrError, match=r"notes\.png.*not a recognised image"):
        load_image(path)


@pytest.mark.parametrize("fmt,suffix", [("PNG", "png"), ("JPEG", "jpg")])
def test_truncated_file_fails_at_load(tmp_path, fmt, suffix):
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    noisy.save(buffer, format=fmt)
    path = tmp_path / f"cut.{suffix}"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(DsocrError, match=rf"cut\.{suffix}.*truncated or corrupt"):
        load_image(path)


def test_wrong_extension_is_read_by_content(tmp_path):
    path = tmp_path / "really_a_png.jpg"
    path.write_bytes(png_bytes(Image.new("RGB", (8, 8), RED)))
    assert load_image(path).getpixel((4, 4)) == RED


@pytest.mark.parametrize("size", [(15, 10), (40, 40)], ids=["above-limit-warning", "above-twice-limit-error"])
def test_decompression_bomb_is_rejected(tmp_path, monkeypatch, size):
    path = save(Image.new("L", size, 255), tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DsocrError, match=r"huge\.png.*decompression-bomb limit \(100 pixels\)"):
        load_image(path)


def test_cmyk_is_converted(tmp_path):
    path = save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", quality=100)
    image = load_image(path)
    assert image.mode == "RGB"
    r, g, b = image.getpixel((4, 4))
    assert r > 240 and g < 15 and b < 15


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 1000, 32896, 65535]], dtype=np.uint16)
    path = save(Image.fromarray(values), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")
    image = load_image(path)
    assert [image.getpixel((x, 0))[0] for x in range(4)] == [0, 3, 128, 255]


def test_palette_keeps_colours(tmp_path):
    palette = Image.new("RGB", (8, 8), RED).convert("P")
    path = save(palette, tmp_path / "palette.png")
    assert load_image(path).getpixel((1, 1)) == RED


def test_palette_transparency_becomes_white(tmp_path):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 0, 0] + [0, 0, 255] * 255)
    image.putpixel((0, 0), 1)
    path = save(image, tmp_path / "palette_alpha.png", transparency=1)
    loaded = load_image(path)
    assert loaded.getpixel((0, 0)) == WHITE
    assert loaded.getpixel((1, 1)) == RED


def test_alpha_is_composited_on_white(tmp_path):
    image = Image.new("RGBA", (4, 1), (0, 0, 0, 0))
    image.putpixel((1, 0), (255, 0, 0, 255))
    image.putpixel((2, 0), (255, 0, 0, 128))
    loaded = load_image(save(image, tmp_path / "alpha.png"))
    assert loaded.getpixel((0, 0)) == WHITE  # transparent is paper, not black
    assert loaded.getpixel((1, 0)) == RED
    r, g, b = loaded.getpixel((2, 0))
    assert r == 255 and 120 <= g <= 135 and g == b


def test_grey_with_alpha_is_composited_on_white(tmp_path):
    image = Image.new("LA", (2, 1), (0, 0))
    image.putpixel((1, 0), (50, 255))
    loaded = load_image(save(image, tmp_path / "la.png"))
    assert loaded.getpixel((0, 0)) == WHITE
    assert loaded.getpixel((1, 0)) == (50, 50, 50)


@pytest.mark.parametrize("mode,value,expected", [("L", 77, (77, 77, 77)), ("1", 1, WHITE)])
def test_grey_and_bilevel(tmp_path, mode, value, expected):
    loaded = load_image(save(Image.new(mode, (3, 3), value), tmp_path / f"{mode}.png"))
    assert loaded.mode == "RGB" and loaded.getpixel((1, 1)) == expected


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), WHITE)
    image.paste(RED, (0, 0, 10, 10))  # marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = save(image, tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=100)
    loaded = load_image(path)
    assert loaded.size == (20, 40)
    r, g, b = loaded.getpixel((15, 4))  # the marker is now top-right
    assert r > 200 and g < 60 and b < 60


def test_float_mode_is_unsupported(tmp_path):
    path = save(Image.new("F", (4, 4), 0.5), tmp_path / "float.tif")
    with pytest.raises(DsocrError, match=r"float\.tif.*unsupported colour mode 'F'"):
        load_image(path)


def test_first_frame_of_animation(tmp_path):
    frames = [Image.new("RGB", (6, 6), colour) for colour in (RED, (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert load_image(path).getpixel((2, 2)) == RED


@pytest.mark.parametrize("name", ["with space.png", "página ü.png", "a..b.png"])
def test_unusual_file_names(tmp_path, name):
    path = save(Image.new("RGB", (5, 5), RED), tmp_path / name)
    assert load_image(path).size == (5, 5)
    assert load_image(str(path)).size == (5, 5)
