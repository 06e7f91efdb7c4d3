"""The model-family registry: each family says, in one entry, everything the rest of the code
asks of it. Nothing else branches on a family's name.

An entry holds the light facts (sizes, the stage tree) and names the heavy parts by dotted
path, loaded on first use like entry points: the builder of the torch module, the engine
adapter and the analytic cost model (workloads, cross-check, sweeps). Reports and the CLI can
so read a family's stages without importing torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from pytest_dsocr.errors import DsocrError
from pytest_dsocr.stages import StageTree, merge_trees


@dataclass(frozen=True)
class Family:
    """One registered model family."""

    name: str  # the model.family config value
    title: str  # for reports
    sizes: tuple[str, ...]  # model.size values; the family's spec module has one spec per size
    stages: StageTree
    builder: str  # "module:function" -> build(size, device, dtype, path, seed, experts_implementation)
    adapter: str  # "module:class" -> Adapter(model_cfg, device, dtype, prompt, decode_backend, **infer options)
    analytic: str  # "module:object" -> an AnalyticFamily (pytest_dsocr.analytic.family)
    checkpoint_writer: str  # "module:function" -> write(model, folder, dtype) in the family's real checkpoint format
    decoder_donor: str | None = None  # a family whose trained decoder this one can start from (train_tiny)
    device_preprocessing: bool = False  # infer.preprocess_device=cuda is implemented
    compiled_vision: bool = False  # infer.vision_backend=compiled is implemented

    def load(self, what: str) -> Any:
        """The object ``what`` (builder, adapter, analytic or checkpoint_writer) names, imported now."""
        module, _, attribute = getattr(self, what).partition(":")
        return getattr(importlib.import_module(module), attribute)

    def check_size(self, size: str) -> None:
        if size not in self.sizes:
            raise DsocrError(f"model.size={size!r}: unknown size of {self.name}; choose one of {', '.join(self.sizes)}")


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            name="deepseek_ocr",
            title="DeepSeek-OCR",
            sizes=("full", "tiny"),
            stages=StageTree(vision_parts=("sam", "clip", "projector")),
            builder="pytest_dsocr.models.deepseek_ocr.modeling:build",
            adapter="pytest_dsocr.models.deepseek_ocr.adapter:DeepseekOCRAdapter",
            analytic="pytest_dsocr.analytic.deepseek_ocr:ANALYTIC",
            checkpoint_writer="pytest_dsocr.models.deepseek_ocr.checkpoint:write_checkpoint",
            device_preprocessing=True,
            compiled_vision=True,
        ),
        Family(
            name="deepseek_ocr2",
            title="DeepSeek-OCR-2",
            sizes=("full", "tiny"),
            stages=StageTree(vision_parts=("sam", "encoder", "projector")),
            builder="pytest_dsocr.models.deepseek_ocr2.modeling:build",
            adapter="pytest_dsocr.models.deepseek_ocr2.adapter:DeepseekOCR2Adapter",
            analytic="pytest_dsocr.analytic.deepseek_ocr2:ANALYTIC",
            checkpoint_writer="pytest_dsocr.models.deepseek_ocr2.modeling:write_checkpoint",
            decoder_donor="deepseek_ocr",  # the same DeepSeek-V2 decoder and tokenizer
        ),
    )
}
FAMILY_NAMES = tuple(FAMILIES)
DEFAULT_FAMILY = FAMILY_NAMES[0]  # DeepSeek-OCR v1: the published model this project profiles first
# Every family's stages in one tree: what profiler tables and cross-family comparisons order by.
ALL_STAGES = merge_trees(family.stages for family in FAMILIES.values())


def family(name: str, key: str = "model.family") -> Family:
    """The registered family ``name``; DsocrError naming ``key`` otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise DsocrError(f"{key}={name!r}: unknown model family; choose one of {', '.join(FAMILY_NAMES)}") from None


def stage_tree(name: str | None) -> StageTree:
    """The stage tree of family ``name``, or of all families together when unknown/None."""
    return FAMILIES[name].stages if name in FAMILIES else ALL_STAGES
