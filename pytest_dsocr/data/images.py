"""Load one dataset image as the RGB page the model sees, or fail with an error naming the file.

Decisions, case by case (each has a test in tests/test_images.py):

- missing file, a directory, zero bytes, not an image (whatever its extension): rejected.
- wrong extension (a PNG named ``.jpg``): processed; Pillow reads the content, not the name.
- truncated or corrupt data: rejected. The image is decoded completely here (``load()``), so a
  broken file fails before any model work; ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left as the
  user set it (default False).
- larger than Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``): rejected,
  both above the limit (Pillow warns) and above twice the limit (Pillow refuses). A page that
  large is almost certainly a mistake, and decoding it would take gigabytes.
- EXIF orientation: applied (``ImageOps.exif_transpose``) as the vendor's loader does; broken
  EXIF data keeps the image as stored, with a warning, as the vendor does.
- RGB, RGBX, YCbCr, HSV, CMYK, L, 1: converted to RGB by Pillow (CMYK with Pillow's plain formula,
  no ICC colour management).
- alpha (RGBA, RGBa, LA, PA, P with transparency): composited on white, since a document's
  transparent background is paper; the vendor's plain ``convert('RGB')`` would make it black.
- 16-bit and 32-bit integer grey (I;16*, I): scaled to 8 bits over the 16-bit range
  (value / 257), rather than clipped at 255 which would turn most of the page white.
- 16-bit-per-channel colour PNG (RGB, RGBA): Pillow keeps the high byte of each channel when
  it opens the file; then as RGB or alpha above.
- other modes (F floating point, LAB, premultiplied La, ...): rejected as unsupported, naming the mode.
- multi-frame files (GIF, multi-page TIFF): the first frame.
- file names with spaces, non-ASCII characters or ``..`` inside a name: ordinary names (paths
  stay Path objects end to end; no shell, no URL). The run keeps them as they are in
  metrics.json and predictions.jsonl (UTF-8); test ids and sample ids use a readable ASCII
  form (``pytest_dsocr.data.sampling``), viz folders the md5 of the absolute path.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pytest_dsocr.errors import DsocrError

log = logging.getLogger(__name__)

PAPER_WHITE = (255, 255, 255)
GREY_MODE = "L"  # 8-bit grey: Pillow's RGB form repeats the value in each channel
# Modes Pillow converts to RGB correctly without help.
DIRECT_RGB_MODES = frozenset({"RGB", "RGBX", "YCbCr", "HSV", "CMYK", "L", "1"})
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "PA"})
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
SIXTEEN_BIT_TO_EIGHT = 257  # 65535 / 255: maps the 16-bit range exactly onto 0..255


def load_image(path: str | Path, keep_grey: bool = False) -> Image.Image:
    """Decode ``path`` completely and return an RGB image with EXIF orientation applied.

    ``keep_grey``: an 8-bit grey page stays in mode ``L`` (a third of the bytes to move); its
    RGB form, which the caller builds, repeats the grey value in each channel, as Pillow's.
    """
    path = Path(path)
    if not path.exists():
        raise DsocrError(f"image {path}: file not found")
    if not path.is_file():
        raise DsocrError(f"image {path}: not a regular file")
    if path.stat().st_size == 0:
        raise DsocrError(f"image {path}: file is empty (0 bytes)")
    image = _decode(path)
    if keep_grey and image.mode == GREY_MODE:
        return image
    return to_rgb(image, path)


def _decode(path: Path) -> Image.Image:
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                opened.load()  # decode now, so a truncated file fails here
                # both branches return a copy detached from the file the with-block closes
                return _apply_exif_orientation(opened, path)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise DsocrError(
            f"image {path}: dimensions beyond Pillow's decompression-bomb limit "
            f"({limit} pixels): {exc}. Downscale the image, or raise PIL.Image.MAX_IMAGE_PIXELS "
            f"if it is genuine"
        ) from exc
    except UnidentifiedImageError as exc:
        raise DsocrError(f"image {path}: not a recognised image file") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow reports truncated and corrupt data as OSError (and a few plugins as SyntaxError)
        raise DsocrError(f"image {path}: truncated or corrupt image data ({exc})") from exc


def _apply_exif_orientation(image: Image.Image, path: Path) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception as exc:  # broken EXIF blocks raise a variety of errors inside Pillow
        log.warning("image %s: EXIF orientation ignored (%s)", path, exc)
        return image.copy()


def to_rgb(image: Image.Image, path: str | Path = "<image>") -> Image.Image:
    """Convert any supported Pillow mode to RGB as described in the module docstring."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
        return to_rgb(image, path)
    if mode in ALPHA_MODES:
        rgba = image.convert("RGBA")
        paper = Image.new("RGB", rgba.size, PAPER_WHITE)
        paper.paste(rgba, mask=rgba.getchannel("A"))
        return paper
    if mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.int64)
        grey = np.clip(values, 0, 65535) // SIXTEEN_BIT_TO_EIGHT
        return Image.fromarray(grey.astype(np.uint8), mode="L").convert("RGB")
    if mode in DIRECT_RGB_MODES:
        return image.convert("RGB")
    raise DsocrError(f"image {path}: unsupported colour mode {mode!r}; convert it to RGB or grey")
