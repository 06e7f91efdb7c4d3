"""The stages, defined once, in two kinds named apart.

- **Benchmark stages** are what a pytest-dsocr test measures or writes (pytest markers, run in
  :data:`BENCHMARK_STAGES` order): direct_inference, static_analysis, the profilers, ...
  Static analysis runs after direct_inference because it reads the times just measured.
- **Model stages** are what the engine times inside one inference: preprocess, prefill
  (which contains vision, which contains the family's vision parts), decode. A family names
  its vision parts in a :class:`StageTree` (sam, clip, projector for DeepSeek-OCR v1).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# -- benchmark stages -------------------------------------------------------------------------

BENCHMARK_STAGES = ("direct_inference", "static_analysis", "torch_profiler", "nsys", "ncu", "vendor_parity",
                    "sweep")
PRIMARY_STAGE = "direct_inference"  # the stage whose runs make the headline numbers when it ran

STAGE_HELP = {
    "direct_inference": "inference through the engine, no profiler",
    "static_analysis": "analytic cost model and FLOP-count cross-check; MFU/MBU against the hardware",
    "torch_profiler": "torch.profiler around sampled runs (--dsocr-profiler=torch)",
    "nsys": "Nsight Systems capture of measured rounds (--dsocr-profiler=nsys)",
    "ncu": "Nsight Compute kernel metrics of NVTX-selected ranges (--dsocr-profiler=ncu)",
    "vendor_parity": "our instrumented path vs the model's own generate",
    "sweep": "analytic sweeps over crop grids and context lengths",
}


def benchmark_stage_rank(stage: str) -> tuple[int, str]:
    """Sort key: benchmark stages in run order, unknown names after them by name."""
    return (BENCHMARK_STAGES.index(stage) if stage in BENCHMARK_STAGES else len(BENCHMARK_STAGES), stage)


# -- model stages -----------------------------------------------------------------------------

PREPROCESS, PREFILL, VISION, DECODE = "preprocess", "prefill", "vision", "decode"
# Timed on the host clock even on a GPU: pure CPU work (image decode, resize, tokenize).
HOST_STAGES = frozenset({PREPROCESS})
# Per-run quantities derived from the stage times: time to first token, time per output token
# after the first, end to end.
LATENCY_METRICS = ("ttft", "tpot", "e2e")


@dataclass(frozen=True)
class StageTree:
    """How one family's model stages nest: preprocess | prefill > vision > parts | decode."""

    vision_parts: tuple[str, ...]

    @property
    def order(self) -> tuple[str, ...]:
        """Every model stage, outermost first, in the order the engine runs them."""
        return (PREPROCESS, PREFILL, VISION, *self.vision_parts, DECODE)

    @property
    def parent(self) -> dict[str, str | None]:
        """Stage -> the stage it nests in (None: top level of an inference)."""
        parents: dict[str, str | None] = {PREPROCESS: None, PREFILL: None, VISION: PREFILL, DECODE: None}
        parents.update(dict.fromkeys(self.vision_parts, VISION))
        return parents

    def nesting(self, measured: Iterable[str]) -> dict[str, list[str]]:
        """Which measured stage contains which (only stages in ``measured``)."""
        measured = set(measured)
        children: dict[str, list[str]] = {}
        for stage in self.order:
            parent = self.parent.get(stage)
            while parent is not None and parent not in measured:
                parent = self.parent.get(parent)
            if stage in measured and parent is not None:
                children.setdefault(parent, []).append(stage)
        return children


def merge_trees(trees: Iterable[StageTree]) -> StageTree:
    """One tree holding every family's vision parts (profiler tables, cross-family tables).

    A part new to the merge goes before the first part that follows it in its own tree and is
    already there, so each family's run order is kept: sam, clip + sam, encoder, projector ->
    sam, clip, encoder, projector.
    """
    merged: list[str] = []
    for tree in trees:
        parts = tree.vision_parts
        for index, part in enumerate(parts):
            if part in merged:
                continue
            later = [p for p in parts[index + 1:] if p in merged]
            merged.insert(merged.index(later[0]) if later else len(merged), part)
    return StageTree(tuple(merged))


def vision_parts_in(measured: Mapping[str, object] | Iterable[str], declared: Iterable[str] = ()) -> list[str]:
    """The vision parts among ``measured`` stage names: ``declared`` order first, then the rest."""
    names = [name for name in measured if name not in (PREPROCESS, PREFILL, VISION, DECODE)]
    declared = [name for name in declared if name in names]
    return declared + [name for name in names if name not in declared]
