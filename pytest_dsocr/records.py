"""Frozen records that flow from the engine to outputs and reports."""

from __future__ import annotations

import pickle
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
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
class SampleAccuracy:
    """How one measured run read its page against the dataset's ground truth (see
    :func:`pytest_dsocr.outputs.accuracy.sample_accuracy`): the text's normalized edit distance
    (0 a perfect read, 1 nothing in common), whether the output equals the truth's markup, and
    the layout boxes: predicted, true, matched one-to-one by IoU, and the matches' mean IoU."""

    edit_distance: float
    raw_edit_distance: float  # before OmniDocBench's normalization
    exact: bool
    predicted_boxes: int
    truth_boxes: int
    matched_boxes: int
    mean_iou: float | None  # None without a matched box

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> SampleAccuracy | None:
        """The accuracy :meth:`to_json` wrote, or None for a record without one (no ground truth)."""
        if not data:
            return None
        return cls(**{key: value for key, value in data.items() if key in _ACCURACY_FIELDS})


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
    accuracy: SampleAccuracy | None = None  # against the page's ground truth; None: the dataset has none

    @property
    def busy_ms(self) -> float:
        """The wall time this page accounts for: its end-to-end time alone, or its share of the
        batch's wall time in a batch (pages of a batch run at once: their times overlap)."""
        if self.batch_size > 1 and self.batch_wall_ms is not None:
            return self.batch_wall_ms / self.batch_size
        return self.preprocess_ms + self.prefill_ms + self.decode_ms

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
        """Plain JSON types, every field plus ``tpot_ms`` (written field by field: a long run
        turns a hundred thousand records into json, where ``dataclasses.asdict`` is slow)."""
        return {
            "sample_id": self.sample_id, "image_path": self.image_path, "epoch": self.epoch, "round": self.round,
            "stage": self.stage, "preprocess_ms": self.preprocess_ms, "prefill_ms": self.prefill_ms,
            "decode_ms": self.decode_ms, "vision_ms": self.vision_ms, "ttft_ms": self.ttft_ms,
            "tokens": self.tokens, "prefill_len": self.prefill_len, "image_tokens": self.image_tokens,
            "crop_grid": list(self.crop_grid), "text_raw": self.text_raw, "substage_ms": dict(self.substage_ms),
            "finish_reason": self.finish_reason, "device": self.device, "worker": self.worker,
            "token_ids": list(self.token_ids), "batch_size": self.batch_size, "batch_wall_ms": self.batch_wall_ms,
            "tpot_ms": self.tpot_ms,
            "accuracy": None if self.accuracy is None else self.accuracy.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageRun:
        """The record :meth:`to_json` wrote (derived keys such as ``tpot_ms`` are recomputed)."""
        values = {key: value for key, value in data.items() if key in _IMAGE_RUN_FIELDS}
        values["crop_grid"] = tuple(values.get("crop_grid") or (1, 1))
        values["token_ids"] = tuple(values.get("token_ids") or ())
        values["substage_ms"] = dict(values.get("substage_ms") or {})
        values["accuracy"] = SampleAccuracy.from_json(values.get("accuracy"))
        return cls(**values)


@dataclass(frozen=True)
class SampleFailure:
    """A sample that could not run: the run goes on without it."""

    sample_id: str
    image_path: str
    epoch: int
    stage: str
    error: str  # one line naming the input and what went wrong
    error_type: str = "DsocrError"
    # The exception chain behind ``error``, root cause first, one "Type: message (file:line in
    # function)" line per exception: for report.md; the terminal shows ``error`` alone.
    chain: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["chain"] = list(self.chain)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SampleFailure:
        values = {key: value for key, value in data.items() if key in _FAILURE_FIELDS}
        values["chain"] = tuple(values.get("chain") or ())
        return cls(**values)


class RunRows(Sequence[ImageRun]):
    """ImageRuns kept by the hundred thousand without slowing the process down.

    The runs are pickled, one after another, into a single bytearray, indexed by arrays of
    offsets (one per stage and page). None of them holds objects CPython's cycle
    collector walks, so a full collection costs the same after 100,000 runs as after none: as
    dataclass instances (or even as untracked tuples in a list) the kept runs made every full
    collection pause whichever sample was being recorded for 20 to 100 ms. What remains grows
    with the pages of the dataset, not with rounds and epochs. Iterating unpickles the runs:
    ImageRuns equal to those added.
    """

    def __init__(self, runs: Iterable[ImageRun] = ()) -> None:
        self._data = bytearray()
        self._ends = array("Q")  # where each run's bytes end in _data
        self._pages: dict[tuple[str, str], array] = {}  # (stage, sample id) -> indexes of its runs
        for run in runs:
            self.append(run)

    def append(self, run: ImageRun) -> None:
        self._pages.setdefault((run.stage, run.sample_id), array("Q")).append(len(self._ends))
        self._data += pickle.dumps(run, pickle.HIGHEST_PROTOCOL)
        self._ends.append(len(self._data))

    def __len__(self) -> int:
        return len(self._ends)

    def __iter__(self) -> Iterator[ImageRun]:
        for index in range(len(self._ends)):
            yield self[index]

    def __getitem__(self, index: int | slice) -> ImageRun | list[ImageRun]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self._ends)))]
        if index < 0:
            index += len(self._ends)
        start = self._ends[index - 1] if index > 0 else 0
        return pickle.loads(self._data[start:self._ends[index]])

    def last(self, count: int) -> list[ImageRun]:
        """The ``count`` runs added last, oldest first."""
        size = len(self._ends)
        return [self[index] for index in range(max(size - count, 0), size)]

    def of_page(self, stage: str, sample_id: str) -> list[ImageRun]:
        """The runs of one sample in one benchmark stage, in order, read at their cost alone."""
        return [self[index] for index in self._pages.get((stage, sample_id), ())]


_ACCURACY_FIELDS = frozenset(f.name for f in fields(SampleAccuracy))
_IMAGE_RUN_FIELDS = frozenset(f.name for f in fields(ImageRun))
_FAILURE_FIELDS = frozenset(f.name for f in fields(SampleFailure))
