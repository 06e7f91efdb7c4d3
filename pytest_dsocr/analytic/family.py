"""What the static_analysis and sweep stages ask of one model family's cost model.

Each family implements :class:`AnalyticFamily` once (``pytest_dsocr.analytic.deepseek_ocr``,
``pytest_dsocr.analytic.deepseek_ocr2``) and its registry entry (:mod:`pytest_dsocr.families`)
names that object; the stages run the same code for every family.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pytest_dsocr.analytic.workload import Workload
from pytest_dsocr.families import FAMILIES, family
from pytest_dsocr.stages import DECODE, PREFILL, VISION

DECODE_STEP, LM_HEAD = "decode_step", "lm_head"  # analytic stages beyond the timed ones


def analytic_stages(family_name: str) -> tuple[str, ...]:
    """The stages a family's cost model reports: its vision parts, vision, prefill, one decode
    step, the whole decode, and the lm_head (one position)."""
    return (*FAMILIES[family_name].stages.vision_parts, VISION, PREFILL, DECODE_STEP, DECODE, LM_HEAD)


def crosscheck_stages(family_name: str) -> tuple[str, ...]:
    """The stages whose matmul FLOPs are counted on the module: the vision parts, prefill, a step."""
    return (*FAMILIES[family_name].stages.vision_parts, PREFILL, DECODE_STEP)


@dataclass(frozen=True)
class Views:
    """The image views one inference reads: the global view side, the tile side, and the crop rule."""

    base_size: int
    tile_size: int
    crop_mode: bool
    max_crops: int


class AnalyticFamily(Protocol):
    """One family's cost model and token layout, as the analytic stages use them."""

    def cost_model(self, size: str) -> Any:
        """The cost model of ``size`` (a :class:`~pytest_dsocr.analytic.model.DeepseekOCRCostModel`)."""

    def views(self, model_cfg: Any) -> Views:
        """The views ``model.*`` asks for, as the family's preprocessing reads them."""

    def candidate_grids(self, max_crops: int) -> list[tuple[int, int]]:
        """Every crop grid ``(w, h)`` the preprocessing may choose with up to ``max_crops`` tiles."""

    def crop_grid_for(self, page_wh: tuple[int, int], views: Views) -> tuple[int, int]:
        """The crop grid of a ``(width, height)`` page; ``(1, 1)`` = global view only."""

    def workload_for_grids(self, spec: Any, base_size: int, tile_size: int, grids: Sequence[tuple[int, int]],
                           **sizes) -> Workload:
        """Pages cut into ``grids`` as one array workload, with a global view of ``base_size`` and
        tiles of ``tile_size`` px (``sizes``: the other Workload fields)."""

    def crosscheck(self, module: Any, cost_model: Any, wl: Workload) -> list:
        """Analytic vs FlopCounterMode matmul FLOPs per stage (CrossCheckRow list) for one workload."""


def analytic_for(model_cfg: Any) -> AnalyticFamily:
    """The analytic side of ``model.family`` at a valid ``model.size``."""
    entry = family(model_cfg.family)
    entry.check_size(model_cfg.size)
    return entry.load("analytic")


def workload_for_grid(analytic: AnalyticFamily, spec: Any, views: Views, grid: tuple[int, int], **sizes) -> Workload:
    """One page cut into ``grid``, as a scalar workload."""
    wl = analytic.workload_for_grids(spec, views.base_size, views.tile_size, [tuple(grid)], **sizes)
    return dataclasses.replace(wl, crops=int(wl.crops[0]), image_tokens=int(wl.image_tokens[0]))
