"""Input preparation for DeepSeek-OCR-2 through transformers' own processor.

The pixels and the prompt ids come from ``DeepseekOcr2Processor`` with the PIL backend of
``DeepseekOcr2ImageProcessor`` (``DeepseekOcr2ImageProcessorPil``): it needs no torchvision, so
CPU CI and a GPU machine preprocess alike. Nothing here re-does the processor's work; this module
maps the run's ``model.*`` keys onto the processor's settings, checks that the model can take
them, and reads back what the engine reports (crop grid, image-token count).

How ``model.*`` maps (v1's keys, v2's processor):

- ``base_size`` -> ``size`` (the global view, fitted and padded to a square) and
  ``image_size`` -> ``tile_size`` (the crops). Only 768 and 1024 work: the model holds
  causal-flow queries for those two view sides only (12x12 and 16x16). Another value (v1's
  512/640/1280 modes, e.g. v1's default image_size 640 left in place by
  ``--dsocr-set model.family=deepseek_ocr2``) falls back to the published setting, 1024 / 768,
  with a warning.
- ``crop_mode`` -> ``crop_to_patches``. Crops are cut when the page's longer side exceeds the
  tile size (v1: either side above 640). Without crops transformers fits the global view into
  ``tile_size`` but counts its tokens from ``size``; so we pass ``tile_size = base_size`` then,
  which makes ``crop_mode=false`` mean "the global view at base_size, nothing else" as in v1.
  v1's squashing of small views to image_size (its Tiny/Small modes) has no v2 equivalent.
- ``max_crops`` -> ``max_patches`` (published: 6); ``min_patches`` stays 2, as in v1.
- The tile grid is chosen by transformers' ``get_optimal_tiled_canvas`` (closest aspect ratio,
  ties to the larger grid while the page covers more than half of it), the same rule as v1's.

Token layout (processor): BOS, text, ``<image>`` x (local tiles' queries, then the global view's,
then one view separator), text; no newline tokens (v1 has one per feature row).
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import DeepseekOcr2ImageProcessorPil, DeepseekOcr2Processor
from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import (
    get_all_supported_aspect_ratios,
    get_optimal_tiled_canvas,
)

from pytest_dsocr.errors import DsocrError
from pytest_dsocr.models.deepseek_ocr.prompt import (
    DEFAULT_PROMPT,
    IMAGE_TOKEN,
    build_dsocr_prompt,
)
from pytest_dsocr.models.deepseek_ocr2.spec import (
    GLOBAL_VIEW_SIZE,
    MIN_CROPS,
    QUERY_VIEW_SIZES,
    TILE_SIZE,
    DeepseekOCR2Spec,
)

log = logging.getLogger(__name__)

NO_CROPS = (1, 1)


@dataclass(frozen=True)
class ViewSettings:
    """The image processor's settings for a run (see the module doc for the mapping)."""

    base_size: int  # global view side
    tile_size: int  # crop side (= base_size without crops)
    crop_to_patches: bool
    max_patches: int
    min_patches: int = MIN_CROPS

    @classmethod
    def from_model_config(cls, base_size: int, image_size: int, crop_mode: bool, max_crops: int) -> ViewSettings:
        """From ``model.*`` values; view sides the model has no queries for fall back (logged)."""
        base_size = _supported("model.base_size", base_size, GLOBAL_VIEW_SIZE)
        image_size = _supported("model.image_size", image_size, TILE_SIZE)
        if isinstance(max_crops, bool) or not isinstance(max_crops, int) or max_crops < MIN_CROPS:
            raise DsocrError(f"model.max_crops={max_crops!r}: must be an integer >= {MIN_CROPS}")
        return cls(base_size=base_size, tile_size=image_size if crop_mode else base_size,
                   crop_to_patches=bool(crop_mode), max_patches=max_crops)

    def call_kwargs(self) -> dict:
        """Keyword arguments for the processor call (they override the processor's defaults)."""
        return {
            "size": {"height": self.base_size, "width": self.base_size},
            "tile_size": self.tile_size,
            "crop_to_patches": self.crop_to_patches,
            "min_patches": self.min_patches,
            "max_patches": self.max_patches,
        }


def _supported(key: str, value: int, published: int) -> int:
    if value in QUERY_VIEW_SIZES:
        return value
    message = (f"{key}={value}: DeepSeek-OCR-2 has causal-flow queries for "
               f"{' and '.join(map(str, QUERY_VIEW_SIZES))} px views only; using the published {published}")
    log.warning(message)
    warnings.warn(message, UserWarning, stacklevel=3)  # pytest lists it in the run's warnings summary
    return published


def build_processor(tokenizer, spec: DeepseekOCR2Spec, settings: ViewSettings) -> DeepseekOcr2Processor:
    """transformers' processor with the run's view settings and ``tokenizer``."""
    kwargs = settings.call_kwargs()
    image_processor = DeepseekOcr2ImageProcessorPil(**kwargs)
    return DeepseekOcr2Processor(image_processor=image_processor, tokenizer=tokenizer,
                                 patch_size=spec.patch_size, downsample_ratio=spec.downsample_ratio)


def candidate_grids(max_crops: int, min_crops: int = MIN_CROPS) -> list[tuple[int, int]]:
    """Tile grids ``(w, h)`` the processor may choose, in its order (transformers' own list)."""
    return list(get_all_supported_aspect_ratios(min_crops, max_crops))


def crop_grid_for(image_wh: tuple[int, int], settings: ViewSettings) -> tuple[int, int]:
    """Tiles ``(w, h)`` the processor cuts a ``(width, height)`` page into; ``(1, 1)`` = no crops."""
    width, height = image_wh
    if not settings.crop_to_patches or max(width, height) <= settings.tile_size:
        return NO_CROPS
    return tuple(get_optimal_tiled_canvas((height, width), (settings.tile_size, settings.tile_size),
                                          settings.min_patches, settings.max_patches))


def image_token_count(spec: DeepseekOCR2Spec, settings: ViewSettings, grid: tuple[int, int]) -> int:
    """Image tokens in the prompt: ``qg^2`` global queries, ``qt^2`` per tile, one separator."""
    q_global = spec.queries_per_side(settings.base_size)
    count = q_global * q_global + 1
    if tuple(grid) != NO_CROPS:
        q_tile = spec.queries_per_side(settings.tile_size)
        count += q_tile * q_tile * grid[0] * grid[1]
    return count


@dataclass(frozen=True)
class PreparedInputs:
    """What the model's forward / generate takes for one page (batch of one).

    ``input_ids``, ``attention_mask``, ``pixel_values`` (global view ``[1, 3, B, B]``),
    ``pixel_values_local`` (tiles ``[n, 3, t, t]`` or None) and ``num_local_patches`` are the
    processor's output; the rest is read from it for the engine and the reports.
    """

    input_ids: torch.Tensor  # long [1, L]
    attention_mask: torch.Tensor  # long [1, L]
    pixel_values: torch.Tensor
    pixel_values_local: torch.Tensor | None
    num_local_patches: list[int]
    crop_grid: tuple[int, int]
    num_image_tokens: int
    prompt_len: int

    def model_kwargs(self) -> dict:
        """The image inputs as the model's forward and generate name them."""
        return {"pixel_values": self.pixel_values, "pixel_values_local": self.pixel_values_local,
                "num_local_patches": self.num_local_patches}

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> PreparedInputs:
        """A copy on ``device``; pixel tensors cast to ``dtype`` (ids and masks keep theirs)."""
        local = self.pixel_values_local
        return dataclasses.replace(
            self,
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            pixel_values=self.pixel_values.to(device, dtype),
            pixel_values_local=None if local is None else local.to(device, dtype),
        )


def prepare_inputs(image: Image.Image, processor: DeepseekOcr2Processor, spec: DeepseekOCR2Spec,
                   settings: ViewSettings, prompt: str = DEFAULT_PROMPT, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu") -> PreparedInputs:
    """The processor's inputs for one page; the prompt is formatted as v1 formats it (stripped)."""
    if not isinstance(image, Image.Image) or image.width <= 0 or image.height <= 0:
        raise DsocrError(f"image {image!r} is not a non-empty PIL image")
    text = build_dsocr_prompt(prompt)
    if text.count(IMAGE_TOKEN) != 1:
        raise DsocrError(f"prompt {prompt!r} must contain exactly one {IMAGE_TOKEN} (it has "
                         f"{text.count(IMAGE_TOKEN)}); e.g. {DEFAULT_PROMPT!r}")
    if image.mode != "RGB":
        image = image.convert("RGB")
    out = processor(images=image, text=text, return_tensors="pt", **settings.call_kwargs())
    input_ids = out["input_ids"]
    num_local = [int(n) for n in torch.as_tensor(out["num_local_patches"]).reshape(-1).tolist()]
    grid = crop_grid_for(image.size, settings)
    num_image_tokens = int((input_ids == spec.image_token_id).sum())
    expected = image_token_count(spec, settings, grid)
    if num_local != [grid[0] * grid[1] if grid != NO_CROPS else 0] or num_image_tokens != expected:
        # Our reading of the processor's rules disagrees with what it did: reports would lie.
        raise DsocrError(
            f"image {image.size[0]}x{image.size[1]}: the processor cut {num_local} tiles and wrote "
            f"{num_image_tokens} image tokens, expected grid {grid} and {expected} tokens"
        )
    prepared = PreparedInputs(
        input_ids=input_ids,
        attention_mask=out["attention_mask"],
        pixel_values=out["pixel_values"],
        pixel_values_local=out.get("pixel_values_local"),
        num_local_patches=num_local,
        crop_grid=grid,
        num_image_tokens=num_image_tokens,
        prompt_len=int(input_ids.shape[1]),
    )
    return prepared.to(device, dtype)
