"""DeepSeek-OCR v1's analytic side for the static_analysis and sweep stages: its cost model
(:mod:`pytest_dsocr.analytic.model`), the vendor's crop-grid and image-token arithmetic
(:mod:`pytest_dsocr.analytic.workload`) and the FLOP-count cross-check on its module."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pytest_dsocr.analytic import workload
from pytest_dsocr.analytic.crosscheck import CrossCheckRow, crosscheck
from pytest_dsocr.analytic.family import Views
from pytest_dsocr.analytic.model import DeepseekOCRCostModel
from pytest_dsocr.analytic.workload import Workload
from pytest_dsocr.models.deepseek_ocr.spec import SPECS, DeepseekOCRSpec


class DeepseekOCRAnalytic:
    """:class:`~pytest_dsocr.analytic.family.AnalyticFamily` of DeepSeek-OCR v1."""

    def cost_model(self, size: str) -> DeepseekOCRCostModel:
        return DeepseekOCRCostModel(SPECS[size])

    def views(self, model_cfg: Any) -> Views:
        return Views(base_size=int(model_cfg.base_size), tile_size=int(model_cfg.image_size),
                     crop_mode=bool(model_cfg.crop_mode), max_crops=int(model_cfg.max_crops))

    def candidate_grids(self, max_crops: int) -> list[tuple[int, int]]:
        return workload.candidate_grids(max_crops)

    def crop_grid_for(self, page_wh: tuple[int, int], views: Views) -> tuple[int, int]:
        return workload.crop_grid_for(page_wh, views.base_size, views.tile_size, views.crop_mode, views.max_crops)

    def workload_for_grids(self, spec: DeepseekOCRSpec, base_size: int, tile_size: int,
                           grids: Sequence[tuple[int, int]], **sizes) -> Workload:
        return workload.workload_for_grids(spec, base_size, tile_size, grids, **sizes)

    def crosscheck(self, module: Any, cost_model: DeepseekOCRCostModel, wl: Workload) -> list[CrossCheckRow]:
        return crosscheck(module, cost_model, wl)


ANALYTIC = DeepseekOCRAnalytic()
