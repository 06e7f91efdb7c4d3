"""Frozen records that flow from the engine to outputs and reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One sampled image of one epoch: what a benchmark test is parametrized with."""

    image_path: Path
    epoch: int
    index: int  # position within the epoch
    sample_id: str  # stable, readable: "page_003" (file stem, de-duplicated)

    @property
    def test_id(self) -> str:
        return f"e{self.epoch}-{self.sample_id}"


@dataclass(frozen=True)
class ImageRun:
    """Timings and output of one inference of one image (one measured round).

    Stage times are milliseconds. ``vision_ms`` and its parts (``substage_ms``: sam, clip,
    projector for v1) are nested inside ``prefill_ms`` and must never be summed with it.
    ``prefill_ms`` is vision + decoder prefill up to the first token; ``ttft_ms`` adds
    preprocessing. ``decode_ms`` covers tokens 2..n.

    In a batch (``batch_size`` > 1) preprocess, vision and prefill are the batch's (every page
    waits for all of them, so each page's TTFT is the batch's), and ``decode_ms`` runs from the
    batch's first decode step to the step that finished this page.
    """

    sample_id: str
    image_path: str
    epoch: int
    round: int
    stage: str  # the benchmark stage that produced it: direct_inference, torch_profiler, ...
    preprocess_ms: float
    prefill_ms: float
    decode_ms: float
    vision_ms: float
    ttft_ms: float
    tokens: int  # generated tokens, EOS included when emitted
    prefill_len: int  # prompt length in tokens (image tokens included)
    image_tokens: int
    crop_grid: tuple[int, int]  # (width tiles, height tiles); (1, 1) = global view only
    text_raw: str = ""
    substage_ms: dict[str, float] = field(default_factory=dict)
    finish_reason: str = "length"  # "eos" | "length"
    device: str = "cpu"
    worker: str = "main"
    token_ids: tuple[int, ...] = ()  # generated ids, for parity checks
    batch_size: int = 1  # pages inferred together (infer.batch_size); stage times are the batch's
    batch_wall_ms: float | None = None  # the whole batch's wall time (pages/s = batch_size / this)

    @property
    def sam_ms(self) -> float | None:
        return self.substage_ms.get("sam")

    @property
    def clip_ms(self) -> float | None:
        return self.substage_ms.get("clip")

    @property
    def projector_ms(self) -> float | None:
        return self.substage_ms.get("projector")

    @property
    def tpot_ms(self) -> float | None:
        """Decode time per output token after the first (None with a single token)."""
        return self.decode_ms / (self.tokens - 1) if self.tokens > 1 else None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["crop_grid"] = list(self.crop_grid)
        data["tpot_ms"] = self.tpot_ms
        data["token_ids"] = list(self.token_ids)
        return data


@dataclass(frozen=True)
class SampleFailure:
    """A sample that could not run: the run goes on without it."""

    sample_id: str
    image_path: str
    epoch: int
    stage: str
    error: str  # one line naming the input and what went wrong
    error_type: str = "DsocrError"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
