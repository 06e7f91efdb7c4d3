"""What one inference asks of the model: views, crop count, tokens, decode steps, batch, dtype.

Image-token arithmetic and crop-grid candidates are the preprocessing module's
(:mod:`pytest_dsocr.models.deepseek_ocr.processing`), imported here in one place so the cost
model counts exactly the tokens the session feeds the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pytest_dsocr.analytic.ops import ATTENTION_MODES, Number
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.models.deepseek_ocr import processing
from pytest_dsocr.models.deepseek_ocr.spec import DeepseekOCRSpec

# Prompt tokens around the image tokens: BOS plus the tokens of "\n<|grounding|>Convert the
# document to markdown." with the vendor tokenizer. The seed's sweeps use the same count
# (context = image tokens + 10). Measured runs replace it with prefill_len - image_tokens.
DEFAULT_TEXT_TOKENS = 10

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def image_token_count(spec: DeepseekOCRSpec, base_size: int, image_size: int, grid: tuple[int, int]) -> int:
    return processing.image_token_count(spec, base_size, image_size, tuple(grid))


def candidate_grids(max_crops: int) -> list[tuple[int, int]]:
    """Every tile grid the vendor may choose with at most ``max_crops`` tiles, in its order."""
    return processing.candidate_grids(processing.MIN_CROPS, max_crops)


def crop_grid_for(
    image_wh: tuple[int, int], base_size: int, image_size: int, crop_mode: bool, max_crops: int
) -> tuple[int, int]:
    return processing.crop_grid_for(tuple(image_wh), base_size, image_size, crop_mode, max_crops)


def resolve_dtype_name(dtype: str, on_gpu: bool) -> str:
    """``model.dtype`` as the session resolves it: ``auto`` is bfloat16 on a GPU, float32 on CPU."""
    if dtype == "auto":
        return "bfloat16" if on_gpu else "float32"
    return dtype


def dtype_bytes(dtype: str) -> int:
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise DsocrError(f"dtype {dtype!r} has no byte size; use one of {sorted(DTYPE_BYTES)}") from None


@dataclass(frozen=True)
class Workload:
    """Sizes of one inference (or of many at once: any ``Number`` field may be a numpy array).

    ``crops`` is the number of ``image_size`` tiles (``w*h``; 0 = global view only);
    ``image_tokens`` includes the newline and view-separator tokens; ``decode_steps`` is the
    number of decode forward passes (generated tokens - 1: the first token comes from prefill).
    """

    base_size: int = 1024
    image_size: int = 640
    crops: Number = 0
    image_tokens: Number = 273
    text_tokens: Number = DEFAULT_TEXT_TOKENS
    decode_steps: Number = 0
    batch: Number = 1
    dtype_bytes: int = 2
    attention: str = "flash"

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_MODES:
            raise DsocrError(
                f"static_analysis.attention={self.attention!r} is not one of {list(ATTENTION_MODES)}"
            )

    @property
    def prefill_tokens(self) -> Number:
        return self.image_tokens + self.text_tokens


def crop_count(grid: Sequence[int]) -> int:
    """Tiles the vendor encodes for a crop grid: none for ``(1, 1)`` (global view only)."""
    w, h = grid
    return 0 if (w, h) == (1, 1) else w * h


def workload_for_grid(spec: DeepseekOCRSpec, base_size: int, image_size: int, crop_grid: tuple[int, int],
                      **sizes) -> Workload:
    """One inference of a page cut into ``crop_grid`` tiles; ``sizes`` are the other
    :class:`Workload` fields (text_tokens, decode_steps, batch, dtype_bytes, attention)."""
    return Workload(base_size=base_size, image_size=image_size, crops=crop_count(crop_grid),
                    image_tokens=image_token_count(spec, base_size, image_size, crop_grid), **sizes)


def workload_for_grids(spec: DeepseekOCRSpec, base_size: int, image_size: int,
                       grids: Sequence[tuple[int, int]], **sizes) -> Workload:
    """The workloads of many grids as one :class:`Workload` of arrays (one sweep evaluation)."""
    return Workload(
        base_size=base_size, image_size=image_size,
        crops=np.array([crop_count(g) for g in grids], dtype=np.int64),
        image_tokens=np.array([image_token_count(spec, base_size, image_size, g) for g in grids], dtype=np.int64),
        **sizes,
    )
