"""Typed config of one stage's outputs (the seed's ``pipeline.<stage>.output`` schema).

A relative ``save_dir`` resolves under the stage's folder, ``<run>/<stage>/``; an absolute one
is kept as given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from pytest_dsocr.data.config import require_int
from pytest_dsocr.errors import DsocrError


@dataclass
class PredictionOutputConfig:
    """``pred/predictions.jsonl``: one JSON line per image, flushed as each image finishes."""

    enable: bool = False  # write predictions.jsonl
    save_dir: str = "pred"  # folder of predictions.jsonl, relative to the stage folder


@dataclass
class VisualizationOutputConfig:
    """``viz/<md5(image path)>/``: boxes drawn on the page, result.mmd, info.json, crops."""

    enable: bool = True  # write one visualization folder per image
    save_dir: str = "viz"  # folder of the per-image folders, relative to the stage folder


@dataclass
class DeepseekOcrPredictionExtra:
    """DeepSeek-OCR specifics of the predictions."""

    strip_special_tokens: bool = False  # drop <｜end▁of▁sentence｜> and the like from text_clean


@dataclass
class DeepseekOcrVisualizationExtra:
    """DeepSeek-OCR specifics of the visualizations."""

    max_images: Optional[int] = 16  # distinct images visualized per stage; null = all
    thumbnail_width: int = 480  # result_with_boxes.jpg is shrunk to this width when wider


@dataclass
class DeepseekOcrExtra:
    """Model-specific output options of DeepSeek-OCR."""

    prediction: DeepseekOcrPredictionExtra = field(default_factory=DeepseekOcrPredictionExtra)
    visualization: DeepseekOcrVisualizationExtra = field(default_factory=DeepseekOcrVisualizationExtra)


@dataclass
class ExtraOutputConfig:
    """Model-specific output options, one entry per model family."""

    deepseek_ocr: DeepseekOcrExtra = field(default_factory=DeepseekOcrExtra)


@dataclass
class StageOutputConfig:
    """What one stage writes besides its timings."""

    prediction: PredictionOutputConfig = field(default_factory=PredictionOutputConfig)
    visualization: VisualizationOutputConfig = field(default_factory=VisualizationOutputConfig)
    extra: ExtraOutputConfig = field(default_factory=ExtraOutputConfig)


def validate_stage_output_config(cfg: StageOutputConfig, prefix: str = "output") -> None:
    """Fail fast, naming the key (``prefix`` is e.g. ``pipeline.direct_inference.output``)."""
    viz = cfg.extra.deepseek_ocr.visualization
    key = f"{prefix}.extra.deepseek_ocr.visualization"
    if viz.max_images is not None:
        require_int(viz.max_images, f"{key}.max_images", 0)
    require_int(viz.thumbnail_width, f"{key}.thumbnail_width", 1)
    for name in ("prediction", "visualization"):
        save_dir = getattr(cfg, name).save_dir
        if not isinstance(save_dir, str) or not save_dir.strip():
            raise DsocrError(f"{prefix}.{name}.save_dir: expected a folder name, got {save_dir!r}")
