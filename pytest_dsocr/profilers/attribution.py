"""Which DeepSeek-OCR stage a profiled operator or kernel belongs to.

The engine wraps its work in ranges named after the stages (NVTX domain "dsocr", and
``record_function("dsocr::<stage>")`` under the torch profiler), nested as

    sample:<id>
      preprocess
      prefill
        vision
          sam | clip | projector   (the model's sub-stages)
      decode

An operator or kernel belongs to the *innermost* stage range that encloses it, so the stage
tables are exclusive: a SAM kernel counts for ``sam`` only, ``vision`` keeps what runs between
the sub-stages, ``prefill`` keeps the decoder's prefill. Inclusive times (vision inside
prefill) are the sums of the exclusive ones, as in :data:`STAGE_PARENT`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from pytest_dsocr.families import ALL_STAGES

DOMAIN = "dsocr"
TORCH_PREFIX = "dsocr::"  # record_function names: dsocr::prefill, dsocr::sample:page_001
SAMPLE_PREFIX = "sample:"
OTHER = "other"  # inside a sample but outside every stage range (engine bookkeeping)
OUTSIDE = "outside"  # outside every dsocr range (e.g. between inferences)

# Every family's model stages (pytest_dsocr.families): stage -> the stage it nests in (None:
# top level inside a sample), and the order of the stage tables.
STAGE_PARENT: dict[str, str | None] = ALL_STAGES.parent
KNOWN_STAGES = ALL_STAGES.order
# A range name we do not know (another model family's sub-stage) nests inside vision.
UNKNOWN_DEPTH = 3

_SAMPLE_RE = re.compile(r"sample:([^:\"\s|]+)")


def stage_depth(stage: str) -> int:
    """1 for top-level stages, 2 for vision, 3 for its sub-stages."""
    if stage not in STAGE_PARENT:
        return UNKNOWN_DEPTH
    depth, parent = 1, STAGE_PARENT[stage]
    while parent is not None:
        depth, parent = depth + 1, STAGE_PARENT[parent]
    return depth


def stage_sort_key(stage: str) -> tuple[int, str]:
    """Engine order first, then unknown stages by name, then other/outside."""
    if stage in KNOWN_STAGES:
        return (KNOWN_STAGES.index(stage), stage)
    if stage in (OTHER, OUTSIDE):
        return (len(KNOWN_STAGES) + 1 + (stage == OUTSIDE), stage)
    return (len(KNOWN_STAGES), stage)


def ancestors(stage: str) -> list[str]:
    """The stages that contain ``stage``, innermost first (vision -> [prefill])."""
    chain, parent = [], STAGE_PARENT.get(stage)
    while parent is not None:
        chain.append(parent)
        parent = STAGE_PARENT.get(parent)
    return chain


def inclusive_totals(exclusive: dict[str, float]) -> dict[str, float]:
    """Exclusive per-stage totals rolled up into their parents (vision includes sam, ...)."""
    totals = dict(exclusive)
    for stage, value in exclusive.items():
        for parent in ancestors(stage):
            totals[parent] = totals.get(parent, 0.0) + value
    return totals


# --- range names -----------------------------------------------------------------------------

def torch_range_stage(name: str) -> str | None:
    """``dsocr::prefill`` -> ``prefill``; ``dsocr::sample:x`` -> ``sample:x``; else None."""
    if not name.startswith(TORCH_PREFIX):
        return None
    return name[len(TORCH_PREFIX):]


def nvtx_range_stage(name: str) -> str | None:
    """An nsys range name as a stage: ``dsocr:prefill``, ``:prefill`` or ``prefill`` -> ``prefill``.

    nsys writes push/pop ranges of a named domain as ``<domain>:<message>`` (current releases
    write the default domain as ``:<message>``, older ones as the bare message). Returns None
    for a range of another domain.
    """
    text = name.strip()
    if text.startswith(DOMAIN + ":"):
        return text[len(DOMAIN) + 1:]
    if text.startswith(":"):
        text = text[1:]
    if text.startswith(SAMPLE_PREFIX) or text in STAGE_PARENT:
        return text
    return None


def is_sample_range(stage: str | None) -> bool:
    return stage is not None and stage.startswith(SAMPLE_PREFIX)


def innermost(stages: Iterable[str]) -> str | None:
    """The deepest stage of an enclosing set (sample ranges are not stages)."""
    best: str | None = None
    for stage in stages:
        if is_sample_range(stage):
            continue
        if best is None or stage_depth(stage) >= stage_depth(best):
            best = stage
    return best


def stages_in_text(text: str, known: Iterable[str] = KNOWN_STAGES) -> tuple[str | None, list[str]]:
    """(sample id, stage names) found in a free-form NVTX description such as ncu's NVTX column.

    ncu prints the push/pop stack of the launching thread as one cell whose exact layout
    depends on the release; stage names are looked up as whole words (sample ids are taken out
    first, so a page called ``decode.png`` is not the decode stage).
    """
    match = _SAMPLE_RE.search(text)
    sample = match.group(1) if match else None
    rest = _SAMPLE_RE.sub(" ", text)
    names = [name for name in known
             if re.search(rf"(?<![A-Za-z0-9_.\-]){re.escape(name)}(?![A-Za-z0-9_\-])", rest)]
    return sample, names


def stage_of_nvtx_text(text: str, known: Iterable[str] = KNOWN_STAGES) -> tuple[str | None, str]:
    """(sample id, innermost stage) of ncu's NVTX cell; stage ``outside`` when none is named."""
    sample, names = stages_in_text(text, known)
    stage = innermost(names)
    if stage is None:
        return sample, OTHER if sample else OUTSIDE
    return sample, stage
