"""DeepSeek-OCR v1 preprocessing on the model's device (``infer.preprocess_device=cuda``).

The host decodes the file (Pillow: PNG/JPEG decode, EXIF, colour mode, as
:func:`pytest_dsocr.data.images.load_image` does) and uploads the 8-bit RGB pixels once; the
vendor's resize, mean-colour padding, crop tiling and ToTensor + Normalize(0.5, 0.5) then run as
tensor ops on that device. The same code runs on CPU tensors (tests, ``device=cpu``).

Against the vendor path (:func:`~pytest_dsocr.models.deepseek_ocr.processing.prepare_inputs`):
the crop grid, the padded geometry, the token layout and the normalisation are identical; the
resampling is Pillow's filter (bicubic, a = -0.5, support widened by the scale on a downscale:
torch's ``antialias=True`` filter) applied as Pillow applies it, horizontal pass then vertical
pass, each rounded to 8 bits as Pillow stores its intermediate image. Pillow computes the
filter in fixed point and torch in float, so a pixel may land one 8-bit level apart (2/255 after
normalisation); :func:`pixel_difference` measures it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pytest_dsocr.data.images import GREY_MODE
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.models.deepseek_ocr.processing import (
    IMAGE_MEAN,
    IMAGE_STD,
    MAX_CROPS,
    PAD_COLOR,
    RESIZE_WITHOUT_CROP_MAX_SIZE,
    PreparedInputs,
    _check_view_size,
    assemble_inputs,
    check_prompt,
    crop_grid_for,
    prompt_layout,
)
from pytest_dsocr.models.deepseek_ocr.prompt import DEFAULT_PROMPT
from pytest_dsocr.models.deepseek_ocr.spec import DeepseekOCRSpec

PIXEL_LEVELS = 255.0  # ToTensor divides 8-bit values by this
RESAMPLE_MODE = "bicubic"  # with antialias=True: Pillow's BICUBIC filter (a = -0.5, scaled support)
CHANNELS = 3


def upload_pixels(image: Image.Image, device: torch.device | str) -> torch.Tensor:
    """The page's 8-bit RGB pixels as float ``[1, 3, H, W]`` in 0..255 on ``device`` (one host copy).

    An 8-bit grey page (mode ``L``) travels as one channel and is repeated on the device, which is
    exactly Pillow's L -> RGB conversion.
    """
    if image.mode not in ("RGB", GREY_MODE):
        image = image.convert("RGB")
    # Upload the 8-bit values (a quarter of the float bytes), widen on the device.
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).to(device)  # [H, W, 3] or [H, W]
    if pixels.dim() == 2:
        return pixels.to(torch.float32).expand(1, CHANNELS, *pixels.shape)
    return pixels.permute(2, 0, 1).unsqueeze(0).to(torch.float32)


def _round_to_levels(x: torch.Tensor) -> torch.Tensor:
    """Pillow keeps every resampled image in 8 bits: round half away from zero, clip to 0..255."""
    return torch.floor(x + 0.5).clamp_(0.0, PIXEL_LEVELS)


def resize_like_pillow(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """``[N, 3, H, W]`` 8-bit-valued floats resized to ``height x width`` as ``Image.resize(BICUBIC)``.

    Two one-dimensional passes, horizontal first, each rounded to 8 bits (Pillow's order and
    storage); a side that keeps its size is not resampled (Pillow skips that pass).
    """
    _, _, in_height, in_width = x.shape
    if width != in_width:
        x = _round_to_levels(F.interpolate(x, size=(in_height, width), mode=RESAMPLE_MODE,
                                           antialias=True, align_corners=False))
    if height != in_height:
        x = _round_to_levels(F.interpolate(x, size=(height, width), mode=RESAMPLE_MODE,
                                           antialias=True, align_corners=False))
    return x


def contain_size(width: int, height: int, box: int) -> tuple[int, int]:
    """The size ``ImageOps.contain`` gives a ``width x height`` image fitted into ``box`` squared."""
    image_ratio = width / height
    if image_ratio > 1.0:
        return box, round(height / width * box)
    if image_ratio < 1.0:
        return round(width / height * box), box
    return box, box


def pad_to_square(x: torch.Tensor, side: int) -> torch.Tensor:
    """``ImageOps.pad``'s canvas: the mean colour, the fitted image centred (Pillow's rounding)."""
    _, _, height, width = x.shape
    if (height, width) == (side, side):
        return x
    canvas = torch.tensor(PAD_COLOR, dtype=x.dtype, device=x.device).view(1, CHANNELS, 1, 1)
    canvas = canvas.expand(x.shape[0], CHANNELS, side, side).clone()
    left = round((side - width) * 0.5) if width != side else 0
    top = round((side - height) * 0.5) if width == side else 0
    canvas[:, :, top:top + height, left:left + width] = x
    return canvas


def global_view(x: torch.Tensor, base_size: int, image_size: int, crop_mode: bool) -> torch.Tensor:
    """The padded global view, as :func:`~pytest_dsocr.models.deepseek_ocr.processing.pad_global_view`."""
    if not crop_mode and image_size <= RESIZE_WITHOUT_CROP_MAX_SIZE:
        x = resize_like_pillow(x, image_size, image_size)
    _, _, height, width = x.shape
    fit_width, fit_height = contain_size(width, height, base_size)
    return pad_to_square(resize_like_pillow(x, fit_width, fit_height), base_size)


def tiles(x: torch.Tensor, grid: tuple[int, int], image_size: int) -> torch.Tensor:
    """The page resized to ``grid * image_size`` and cut into ``[w*h, 3, s, s]`` tiles, row by row."""
    w, h = grid
    resized = resize_like_pillow(x, w * image_size, h * image_size)[0]  # [3, h*s, w*s]
    return (resized.reshape(CHANNELS, h, image_size, w, image_size)
            .permute(1, 3, 0, 2, 4).reshape(w * h, CHANNELS, image_size, image_size))


def normalize_levels(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """ToTensor (x / 255) then Normalize(0.5, 0.5) in float32, as the vendor, then cast to ``dtype``."""
    mean = torch.tensor(IMAGE_MEAN, dtype=torch.float32, device=x.device).view(1, CHANNELS, 1, 1)
    std = torch.tensor(IMAGE_STD, dtype=torch.float32, device=x.device).view(1, CHANNELS, 1, 1)
    return x.div(PIXEL_LEVELS).sub_(mean).div_(std).to(dtype)


def prepare_inputs_on_device(
    image: Image.Image,
    tokenizer,
    spec: DeepseekOCRSpec,
    base_size: int = 1024,
    image_size: int = 640,
    crop_mode: bool = True,
    prompt: str = DEFAULT_PROMPT,
    max_crops: int = MAX_CROPS,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> PreparedInputs:
    """The vendor's inputs for one decoded page, with the pixel work done on ``device``.

    Same arguments and result as :func:`~pytest_dsocr.models.deepseek_ocr.processing.prepare_inputs`.
    """
    if not isinstance(image, Image.Image) or image.width <= 0 or image.height <= 0:
        raise DsocrError(f"image {image!r} is not a non-empty PIL image")
    _check_view_size("base_size", base_size)
    _check_view_size("image_size", image_size)
    text = check_prompt(prompt)
    grid = crop_grid_for(image.size, base_size, image_size, crop_mode, max_crops)
    pixels = upload_pixels(image, device)
    view = normalize_levels(global_view(pixels, base_size, image_size, crop_mode), dtype)
    if grid != (1, 1):
        crops = normalize_levels(tiles(pixels, grid, image_size), dtype)
    else:
        crops = torch.zeros(1, CHANNELS, image_size, image_size, dtype=dtype, device=device)
    ids, mask, num_image_tokens = prompt_layout(tokenizer, spec, text, base_size, image_size, grid)
    return assemble_inputs(ids, mask, crops, view, grid, num_image_tokens, device)


def pixel_difference(a: PreparedInputs, b: PreparedInputs) -> dict[str, float]:
    """Max and mean absolute difference of the normalised pixels of two preparations of one page."""
    diffs = []
    for (crops_a, view_a), (crops_b, view_b) in zip(a.images, b.images):
        for x, y in ((crops_a, crops_b), (view_a, view_b)):
            if x.shape != y.shape:
                raise DsocrError(f"pixel tensors differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
            diffs.append((x.float().cpu() - y.float().cpu()).abs().flatten())
    flat = torch.cat(diffs)
    return {"max_abs": float(flat.max()), "mean_abs": float(flat.mean()),
            "share_differing": float((flat > 0).float().mean())}
