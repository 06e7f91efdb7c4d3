"""Input preparation for DeepSeek-OCR v1, equivalent to the vendor's image processor.

Reproduces what the vendor does before the model runs (``process/image_process.py`` of the vLLM
code and ``infer()`` of the Hugging Face code): the tile grid choice, the dynamic crops, the
padded global view, the ToTensor + Normalize(0.5, 0.5) transform, and the token layout
``BOS, text, image tokens, text`` with ``images_seq_mask`` marking the image tokens. Built on
torch, Pillow and numpy only (the vendor's torchvision transforms are reproduced op for op).

Where the vendor's two paths differ, we follow the vLLM processor and say so:

- crops: the vLLM processor tiles at ``image_size``; the HF ``infer()`` always tiles at 640.
  They agree for every documented mode (crops exist only in Gundam mode, image_size 640).
- global view without crop_mode: the vLLM processor pads to ``base_size`` and counts tokens from
  ``base_size``; HF ``infer()`` pads to ``image_size`` and counts from ``image_size``. They agree
  for every documented mode (Tiny/Small/Base/Large have base_size == image_size).
- the "no crops" placeholder: zeros ``[1, 3, image_size, image_size]`` (vLLM; HF uses
  ``base_size``). The model recognises it by its zero sum, never by its shape.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from pytest_dsocr.errors import DsocrError
from pytest_dsocr.models.deepseek_ocr.prompt import DEFAULT_PROMPT, IMAGE_TOKEN, build_dsocr_prompt
from pytest_dsocr.models.deepseek_ocr.spec import DOWNSAMPLE_RATIO, PATCH_SIZE, DeepseekOCRSpec

IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)
# The vendor pads with the mean colour in 8-bit: int(0.5 * 255) = 127 on each channel.
PAD_COLOR = tuple(int(m * 255) for m in IMAGE_MEAN)

MIN_CROPS = 2  # the vendor's MIN_CROPS: a cropped page always gets at least two tiles
MAX_CROPS = 9  # HF infer() default; the vendor's vLLM config suggests 6 to save GPU memory
# An image no larger than this on both sides gets no crops, whatever image_size is: both vendor
# paths compare with the literal 640 (the Gundam tile size), not with image_size.
NO_CROP_MAX_SIDE = 640
# The vendor resizes (squashes) the image to image_size x image_size before padding when not
# cropping and image_size is at most this (its Tiny and Small modes); larger views keep the aspect.
RESIZE_WITHOUT_CROP_MAX_SIZE = 640
# Pillow's default for RGB resizes, which the vendor relies on by calling resize() and pad()
# without a method; named here so our calls do the same whatever the image mode was.
RESAMPLE = Image.Resampling.BICUBIC
# A view side must be a whole number of feature cells: SAM patches of 16 px, then 4x downsampling.
VIEW_SIZE_STEP = PATCH_SIZE * DOWNSAMPLE_RATIO


def candidate_grids(min_num: int = MIN_CROPS, max_num: int = MAX_CROPS) -> list[tuple[int, int]]:
    """Tile grids ``(w, h)`` with ``min_num <= w*h <= max_num``, in the vendor's order.

    The vendor sorts a Python ``set`` by area, so grids of equal area keep the set's
    iteration order; we build the same set and sort it the same (stable) way. That order
    decides a choice only with ``max_num`` 2 or 3, where 1x2 and 2x1 tie for aspect 1.25.
    """
    grids = {
        (w, h)
        for n in range(min_num, max_num + 1)
        for w in range(1, n + 1)
        for h in range(1, n + 1)
        if min_num <= w * h <= max_num
    }
    return sorted(grids, key=lambda grid: grid[0] * grid[1])


def choose_crop_grid(
    width: int, height: int, image_size: int = 640, min_num: int = MIN_CROPS, max_num: int = MAX_CROPS
) -> tuple[int, int]:
    """The grid whose aspect ratio is closest to the image's (vendor ``find_closest_aspect_ratio``).

    Candidates are visited by increasing area; a strictly closer ratio wins; an equally close
    later grid replaces the best only when the image has more than half the grid's pixel area
    (``width*height > 0.5 * image_size**2 * w*h``), so large images take the bigger grid.
    """
    aspect = width / height
    area = width * height
    best, best_diff = (1, 1), float("inf")
    for w, h in candidate_grids(min_num, max_num):
        diff = abs(aspect - w / h)
        if diff < best_diff:
            best, best_diff = (w, h), diff
        elif diff == best_diff and area > 0.5 * image_size * image_size * w * h:
            best = (w, h)
    return best


def _check_view_size(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % VIEW_SIZE_STEP:
        raise DsocrError(
            f"{name}={value!r} is not a positive multiple of {VIEW_SIZE_STEP} (patch {PATCH_SIZE} "
            f"x downsample {DOWNSAMPLE_RATIO}); use e.g. 512, 640, 1024 or 1280"
        )
    return value


def _check_max_crops(max_crops: object) -> int:
    if isinstance(max_crops, bool) or not isinstance(max_crops, int) or max_crops < MIN_CROPS:
        raise DsocrError(f"max_crops={max_crops!r} must be an integer >= {MIN_CROPS}")
    return max_crops


def crop_grid_for(
    image_size_wh: tuple[int, int],
    base_size: int,
    image_size: int,
    crop_mode: bool,
    max_crops: int = MAX_CROPS,
) -> tuple[int, int]:
    """Tiles ``(w, h)`` the vendor cuts a ``(width, height)`` image into; ``(1, 1)`` = no crops."""
    _check_view_size("base_size", base_size)
    _check_view_size("image_size", image_size)
    _check_max_crops(max_crops)
    width, height = image_size_wh
    if not crop_mode or (width <= NO_CROP_MAX_SIDE and height <= NO_CROP_MAX_SIDE):
        return (1, 1)
    return choose_crop_grid(width, height, image_size, MIN_CROPS, max_crops)


def image_token_count(
    spec: DeepseekOCRSpec, base_size: int, image_size: int, crop_grid: tuple[int, int]
) -> int:
    """Image tokens in the prompt: global view rows + newlines + separator, then the crops.

    Global: ``(q + 1) * q + 1`` with ``q`` features per side of ``base_size`` (a newline per
    row, one view separator). Crops, tiled as one big grid: ``(q2*w + 1) * (q2*h)``.
    """
    q = spec.queries_per_side(base_size)
    count = (q + 1) * q + 1
    w, h = crop_grid
    if (w, h) != (1, 1):
        q2 = spec.queries_per_side(image_size)
        count += (q2 * w + 1) * (q2 * h)
    return count


def normalize(pil: Image.Image) -> torch.Tensor:
    """``[3, H, W]`` float32 in [-1, 1]: torchvision ToTensor then Normalize(0.5, 0.5), op for op."""
    if pil.mode != "RGB":
        pil = pil.convert("RGB")
    pixels = torch.from_numpy(np.array(pil, dtype=np.uint8, copy=True))
    x = pixels.permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    mean = torch.tensor(IMAGE_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(IMAGE_STD, dtype=torch.float32)[:, None, None]
    return x.sub(mean).div(std)


def pad_global_view(
    pil: Image.Image, base_size: int, image_size: int | None = None, crop_mode: bool = True
) -> Image.Image:
    """The global view: the page fitted into ``base_size`` squared, padded with the mean colour.

    Without crop_mode and with ``image_size`` at most 640 the vendor first squashes the page to
    ``image_size`` squared (its Tiny and Small modes); pass ``image_size`` to apply that rule.
    """
    if image_size is not None and not crop_mode and image_size <= RESIZE_WITHOUT_CROP_MAX_SIZE:
        pil = pil.resize((image_size, image_size), RESAMPLE)
    return ImageOps.pad(pil, (base_size, base_size), method=RESAMPLE, color=PAD_COLOR)


def dynamic_crops(pil: Image.Image, grid: tuple[int, int], image_size: int) -> list[Image.Image]:
    """The page resized to ``grid * image_size`` and cut into tiles, row by row."""
    w, h = grid
    resized = pil.resize((w * image_size, h * image_size), RESAMPLE)
    return [
        resized.crop((col * image_size, row * image_size, (col + 1) * image_size, (row + 1) * image_size))
        for row in range(h)
        for col in range(w)
    ]


@dataclass(frozen=True)
class PreparedInputs:
    """Everything the model's forward / generate takes for one page (batch of one).

    ``images`` is the vendor's list of ``(crops [n, 3, s, s], global [1, 3, B, B])`` pairs;
    ``crops`` is a zero tensor ``[1, 3, s, s]`` when the page gets no crops.
    ``prompt_len`` is the prefill length: ``input_ids.shape[1]``, image tokens included.
    """

    input_ids: torch.Tensor  # long [1, L]
    images: list[tuple[torch.Tensor, torch.Tensor]]
    images_seq_mask: torch.Tensor  # bool [1, L]
    images_spatial_crop: torch.Tensor  # long [1, 2]: width tiles, height tiles
    crop_grid: tuple[int, int]
    num_image_tokens: int
    prompt_len: int

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "PreparedInputs":
        """A copy on ``device``; pixel tensors cast to ``dtype`` (ids and masks keep theirs)."""
        return dataclasses.replace(
            self,
            input_ids=self.input_ids.to(device),
            images=[(crops.to(device, dtype), glob.to(device, dtype)) for crops, glob in self.images],
            images_seq_mask=self.images_seq_mask.to(device),
            images_spatial_crop=self.images_spatial_crop.to(device),
        )


def _encode_text(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def check_prompt(prompt: str) -> str:
    """The formatted prompt text; DsocrError unless it holds exactly one ``<image>``."""
    text = build_dsocr_prompt(prompt)
    if text.count(IMAGE_TOKEN) != 1:
        raise DsocrError(
            f"prompt {prompt!r} must contain exactly one {IMAGE_TOKEN} (it has "
            f"{text.count(IMAGE_TOKEN)}); e.g. {DEFAULT_PROMPT!r}"
        )
    return text


def prompt_layout(
    tokenizer, spec: DeepseekOCRSpec, text: str, base_size: int, image_size: int, grid: tuple[int, int]
) -> tuple[list[int], list[bool], int]:
    """Token ids ``BOS, text, image tokens, text`` (no EOS), the image-token mask and the image-token count."""
    before, after = text.split(IMAGE_TOKEN)
    before_ids, after_ids = _encode_text(tokenizer, before), _encode_text(tokenizer, after)
    num_image_tokens = image_token_count(spec, base_size, image_size, grid)
    ids = [spec.bos_token_id, *before_ids, *[spec.image_token_id] * num_image_tokens, *after_ids]
    mask = [False] * (1 + len(before_ids)) + [True] * num_image_tokens + [False] * len(after_ids)
    return ids, mask, num_image_tokens


def assemble_inputs(
    ids: list[int], mask: list[bool], crops: torch.Tensor, global_view: torch.Tensor,
    grid: tuple[int, int], num_image_tokens: int, device: torch.device | str,
) -> PreparedInputs:
    """PreparedInputs from a prompt layout and the pixel tensors (already on their device and dtype)."""
    return PreparedInputs(
        input_ids=torch.tensor([ids], dtype=torch.long, device=device),
        images=[(crops, global_view)],
        images_seq_mask=torch.tensor([mask], dtype=torch.bool, device=device),
        images_spatial_crop=torch.tensor([list(grid)], dtype=torch.long, device=device),
        crop_grid=grid,
        num_image_tokens=num_image_tokens,
        prompt_len=len(ids),
    )


def prepare_inputs(
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
    """The vendor's inputs for one page: ``BOS, text, image tokens, text`` (no EOS), and pixels.

    The image should be loaded as the vendor loads it (EXIF-transposed); it is converted to RGB
    here. The prompt is formatted with :func:`build_dsocr_prompt` and must hold one ``<image>``.
    """
    if not isinstance(image, Image.Image) or image.width <= 0 or image.height <= 0:
        raise DsocrError(f"image {image!r} is not a non-empty PIL image")
    _check_view_size("base_size", base_size)
    _check_view_size("image_size", image_size)
    text = check_prompt(prompt)
    if image.mode != "RGB":
        image = image.convert("RGB")

    grid = crop_grid_for(image.size, base_size, image_size, crop_mode, max_crops)
    global_view = normalize(pad_global_view(image, base_size, image_size, crop_mode))[None]
    if grid != (1, 1):
        crops = torch.stack([normalize(tile) for tile in dynamic_crops(image, grid, image_size)])
    else:
        crops = torch.zeros(1, 3, image_size, image_size)

    ids, mask, num_image_tokens = prompt_layout(tokenizer, spec, text, base_size, image_size, grid)
    prepared = assemble_inputs(ids, mask, crops, global_view, grid, num_image_tokens, "cpu")
    return prepared.to(device, dtype)
