"""Typed config of the static_analysis and sweep stages (``static_analysis.*``, ``sweep.*``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

# Decode sweep defaults: every power of two of generated tokens up to 4096, against contexts at
# every multiple of CONTEXT_STEP up to the decoder's position limit.
DEFAULT_DECODE_STEPS = [2**i for i in range(13)]
CONTEXT_STEP = 128


@dataclass
class StaticAnalysisConfig:
    attention: str = "flash"  # eager (materialised scores) | flash (IO-aware): changes bytes, not FLOPs
    metrics: Optional[str] = None  # a metrics.json with measured stage times (default: this session's runs)
    crop_grid: Optional[List[int]] = None  # [w, h] tiles; None = the measured runs' grid, else a reference page's
    text_tokens: Optional[int] = None  # prompt tokens besides image tokens; None = measured, else 10
    decode_steps: Optional[int] = None  # decode forward passes; None = measured, else infer.max_new_tokens - 1
    batch_size: int = 1  # sequences per forward
    flop_counter: bool = True  # count the module's FLOPs with torch's FlopCounterMode beside the analytic ones


@dataclass
class SweepConfig:
    attention: str = "flash"  # eager | flash
    max_crops: Optional[int] = None  # largest tile count of the crop-grid sweeps; None = model.max_crops
    text_tokens: int = 10  # prompt tokens besides image tokens in the vision+prefill sweep
    # decode sweep: context lengths (tokens already in the KV cache) x decode step counts, pairs
    # past the decoder's max_position_embeddings dropped; None = every multiple of CONTEXT_STEP
    context_lengths: Optional[List[int]] = None
    decode_steps: List[int] = field(default_factory=lambda: list(DEFAULT_DECODE_STEPS))
    batch_size: int = 1
    plots: bool = True  # PNG per sweep when matplotlib is installed (the CSV is always written)
