"""Analytic cost model of DeepSeek-OCR: FLOPs, bytes, parameters and KV cache per layer and stage.

Plain Python + numpy: no formula calls torch. (Importing the spec still loads torch today, through
``pytest_dsocr.models.__init__``'s module-level import.) The stage runners live in submodules:
``static`` (the static_analysis stage), ``sweeps`` (the sweep stage), ``crosscheck``
(FlopCounterMode on the torch module), ``efficiency`` (floor times, MFU/MBU).
"""

from pytest_dsocr.analytic.model import STAGES, DeepseekOCRCostModel, LayerCost, StageCost
from pytest_dsocr.analytic.ops import ATTENTION_MODES, Cost
from pytest_dsocr.analytic.workload import Workload, workload_for_grid, workload_for_grids

__all__ = [
    "ATTENTION_MODES", "STAGES", "Cost", "DeepseekOCRCostModel", "LayerCost", "StageCost", "Workload",
    "workload_for_grid", "workload_for_grids",
]
