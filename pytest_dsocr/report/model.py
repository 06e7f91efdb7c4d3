"""The typed model of metrics.json: one dataclass tree with ``to_json`` / ``from_json``.

Every reader of a run (the summary and report, the regression gate, ``compare``, the nsys
merge, static analysis) takes a :class:`RunMetrics`, never a raw dict; the json form is what
metrics.json holds (see :mod:`pytest_dsocr.report.metrics` for what each number means).
``from_json`` accepts every schema version this project has written: fields added later are
optional and read as absent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_dsocr.errors import DsocrError
from pytest_dsocr.records import ImageRun, SampleFailure
from pytest_dsocr.report.accuracy import AccuracySummary
from pytest_dsocr.report.stats import Stats
from pytest_dsocr.stages import BENCHMARK_STAGES

SCHEMA_VERSION = 3  # 3: identity of the run, records file; 2: percentiles, throughput, by_stage/by_worker
READABLE_SCHEMAS = (1, 2, 3)


@dataclass(frozen=True)
class Throughput:
    """Sums over runs divided by their summed end-to-end time, per worker, added across workers."""

    unit: str = "per second of measured end-to-end time"
    pages_per_s: float | None = None
    output_tokens_per_s: float | None = None
    image_tokens_per_s: float | None = None
    prompt_tokens_per_s: float | None = None
    input_tokens_per_s: float | None = None
    total_tokens_per_s: float | None = None
    workers: int = 0
    busy_s: float = 0.0
    pages: int = 0
    output_tokens: int = 0
    image_tokens: int = 0
    prompt_tokens: int = 0
    input_tokens: int = 0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Throughput:
        return _from_fields(cls, data or {})


@dataclass(frozen=True)
class Aggregates:
    """Statistics of the runs of one benchmark stage (see report/metrics.py for the meanings)."""

    prefill_ms: Stats
    decode_ms: Stats
    tokens: Stats
    tokens_per_s: Stats
    stage_ms: dict[str, Stats]
    preprocess_ms: Stats
    ttft_ms: Stats
    tpot_ms: Stats
    e2e_ms: Stats
    sequence_lengths: dict[str, Stats]
    throughput: Throughput

    STATS_FIELDS = ("prefill_ms", "decode_ms", "tokens", "tokens_per_s", "preprocess_ms", "ttft_ms", "tpot_ms",
                    "e2e_ms")

    @property
    def runs(self) -> int:
        return self.prefill_ms.count

    def stat(self, name: str) -> Stats | None:
        """A stage time (``stage_ms``) or a latency metric (ttft, tpot, e2e) by name."""
        if name in self.stage_ms:
            return self.stage_ms[name]
        value = getattr(self, f"{name}_ms", None)
        return value if isinstance(value, Stats) else None

    def to_json(self) -> dict[str, Any]:
        return {
            "prefill_ms": self.prefill_ms.to_json(),
            "decode_ms": self.decode_ms.to_json(),
            "tokens": self.tokens.to_json(),
            "tokens_per_s": self.tokens_per_s.to_json(),
            "stage_ms": {name: stats.to_json() for name, stats in self.stage_ms.items()},
            "preprocess_ms": self.preprocess_ms.to_json(),
            "ttft_ms": self.ttft_ms.to_json(),
            "tpot_ms": self.tpot_ms.to_json(),
            "e2e_ms": self.e2e_ms.to_json(),
            "sequence_lengths": {name: stats.to_json() for name, stats in self.sequence_lengths.items()},
            "throughput": self.throughput.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Aggregates:
        data = data or {}
        stats = {name: Stats.from_json(data.get(name), unit=_unit(name)) for name in cls.STATS_FIELDS}
        return cls(
            **stats,
            stage_ms={name: Stats.from_json(value) for name, value in (data.get("stage_ms") or {}).items()},
            sequence_lengths={name: Stats.from_json(value, unit="tokens")
                              for name, value in (data.get("sequence_lengths") or {}).items()},
            throughput=Throughput.from_json(data.get("throughput")),
        )


def _unit(name: str) -> str:
    return {"tokens": "tokens", "tokens_per_s": "tokens/s"}.get(name, "ms")


@dataclass(frozen=True)
class Counts:
    warmup_rounds: int | None = None
    rounds: int | None = None
    samples: int = 0  # distinct (epoch, sample) pairs measured or failed
    measured_runs: int = 0
    failed: int = 0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Counts:
        return _from_fields(cls, data or {})


@dataclass(frozen=True)
class WorkerRow:
    worker: str
    device: str
    measured_runs: int
    pages_per_s: float | None
    output_tokens_per_s: float | None
    e2e_ms: Stats

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["e2e_ms"] = self.e2e_ms.to_json()
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WorkerRow:
        values = _field_values(cls, data)
        values["e2e_ms"] = Stats.from_json(data.get("e2e_ms"))
        return cls(**values)


@dataclass(frozen=True)
class ByWorker:
    """Per-worker (per-GPU) rows and totals of a run that several xdist workers measured."""

    rows: tuple[WorkerRow, ...]
    totals: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"rows": [row.to_json() for row in self.rows], "totals": dict(self.totals)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> ByWorker | None:
        if not data:
            return None
        return cls(tuple(WorkerRow.from_json(row) for row in data.get("rows") or ()), dict(data.get("totals") or {}))


# A json object with none of these is not a metrics.json (every version wrote them all).
IDENTIFYING_KEYS = frozenset({"aggregates", "samples", "complete"})
# Keys of metrics.json that RunMetrics models as fields; everything else is a stage's section.
CORE_KEYS = frozenset({
    "schema_version", "generated_at", "complete", "reason", "aggregates_stage", "aggregates", "stage_nesting",
    "counts", "error_rate", "memory", "env", "config", "identity", "records", "samples", "failures", "by_stage",
    "by_worker", "accuracy",
})


@dataclass(frozen=True)
class RunMetrics:
    """One run's metrics.json.

    ``samples`` are the measured runs (one record per round), ``failures`` the sample attempts
    that failed; ``aggregates`` summarise the runs of benchmark stage ``aggregates_stage`` and
    ``by_stage`` every stage's when several ran. ``sections`` holds what stages add under their
    own key (static_analysis, efficiency, vendor_parity, torch_profiler, nsys, ncu, sweep, ...).
    ``records`` names the append-only records file the run was built from (None: built in
    memory). ``accuracy`` summarises the aggregated stage's reads against ground truth (absent
    when the dataset has none); the weights that ran are ``identity.weights`` (:attr:`weights`). An interim file (``complete`` false while the run goes on) may carry cheap
    aggregates and no samples; the records file has them all.
    """

    complete: bool
    reason: str | None
    aggregates_stage: str | None
    aggregates: Aggregates
    stage_nesting: dict[str, list[str]]
    counts: Counts
    error_rate: float | None
    memory: dict[str, Any] | None
    env: dict[str, Any]
    config: dict[str, Any]
    samples: Sequence[ImageRun] = ()  # a tuple, or the collector's RunRows
    failures: tuple[SampleFailure, ...] = ()
    by_stage: dict[str, Aggregates] = field(default_factory=dict)
    by_worker: ByWorker | None = None
    identity: dict[str, Any] | None = None
    accuracy: AccuracySummary | None = None  # None: no measured page had ground truth
    records: str | None = None
    generated_at: str | None = None
    schema_version: int = SCHEMA_VERSION
    sections: dict[str, Any] = field(default_factory=dict)

    # -- reading ---------------------------------------------------------------------------

    @property
    def model(self) -> dict[str, Any]:
        """The ``model`` block of the resolved config (family, size, dtype, ...)."""
        return dict(self.config.get("model") or {})

    @property
    def family(self) -> str | None:
        return self.model.get("family")

    @property
    def weights(self) -> dict[str, Any] | None:
        """Which weights ran (``pytest_dsocr.models.weights.weights_identity``): the identity's
        ``weights``, their one home in metrics.json."""
        weights = (self.identity or {}).get("weights")
        return dict(weights) if isinstance(weights, Mapping) else None

    def primary_samples(self) -> Iterator[ImageRun]:
        """The runs the top-level aggregates are made of (those of ``aggregates_stage``), one at a
        time: ``samples`` may hold 100,000 runs that are read back as they are asked for."""
        return (run for run in self.samples if run.stage == self.aggregates_stage)

    def section(self, name: str) -> Any:
        return self.sections.get(name)

    def with_sections(self, **sections: Any) -> RunMetrics:
        return dataclasses.replace(self, sections={**self.sections, **sections})

    # -- json ------------------------------------------------------------------------------

    def to_json(self, samples: bool = True) -> dict[str, Any]:
        """The json form of metrics.json; ``samples=False`` leaves the per-sample records out (a
        writer that streams them, one at a time, adds them itself)."""
        data: dict[str, Any] = {
            "schema_version": self.schema_version,
            "generated_at": self.generated_at,
            "complete": self.complete,
            "reason": self.reason,
            "aggregates_stage": self.aggregates_stage,
            "aggregates": self.aggregates.to_json(),
            "stage_nesting": {k: list(v) for k, v in self.stage_nesting.items()},
            "counts": self.counts.to_json(),
            "error_rate": self.error_rate,
            "memory": self.memory,
            "env": self.env,
            "config": self.config,
            "identity": self.identity,
            "records": self.records,
            "samples": [run.to_json() for run in self.samples] if samples else [],
            "failures": [failure.to_json() for failure in self.failures],
        }
        if self.by_stage:
            data["by_stage"] = {stage: agg.to_json() for stage, agg in self.by_stage.items()}
        if self.by_worker is not None:
            data["by_worker"] = self.by_worker.to_json()
        if self.accuracy is not None:
            data["accuracy"] = self.accuracy.to_json()
        for key, value in self.sections.items():
            if key in CORE_KEYS:
                raise ValueError(f"metrics section {key!r} would replace a core metrics.json key")
            data[key] = value
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "metrics.json") -> RunMetrics:
        """A RunMetrics from a metrics.json dict; DsocrError naming ``source`` if it is not one."""
        if not isinstance(data, Mapping) or not IDENTIFYING_KEYS & data.keys():
            raise DsocrError(f"{source}: not a pytest-dsocr metrics.json (none of {', '.join(sorted(IDENTIFYING_KEYS))})")
        version = data.get("schema_version", 1)
        if version not in READABLE_SCHEMAS:
            raise DsocrError(f"{source}: schema_version {version} is newer than this pytest-dsocr reads "
                             f"({max(READABLE_SCHEMAS)}); upgrade pytest-dsocr")
        try:
            samples = tuple(ImageRun.from_json(s) for s in data.get("samples") or ())
            failures = tuple(SampleFailure.from_json(f) for f in data.get("failures") or ())
        except (KeyError, TypeError, ValueError) as exc:
            raise DsocrError(f"{source}: a sample record is malformed ({type(exc).__name__}: {exc})") from None
        stage = data.get("aggregates_stage")
        if stage is None and samples:
            stage = primary_stage(run.stage for run in samples)
        return cls(
            complete=bool(data.get("complete")),
            reason=data.get("reason"),
            aggregates_stage=stage,
            aggregates=Aggregates.from_json(data.get("aggregates")),
            stage_nesting={k: list(v) for k, v in (data.get("stage_nesting") or {}).items()},
            counts=Counts.from_json(data.get("counts")),
            error_rate=data.get("error_rate"),
            memory=data.get("memory"),
            env=dict(data.get("env") or {}),
            config=dict(data.get("config") or {}),
            samples=samples,
            failures=failures,
            by_stage={name: Aggregates.from_json(agg) for name, agg in (data.get("by_stage") or {}).items()},
            by_worker=ByWorker.from_json(data.get("by_worker")),
            identity=data.get("identity"),
            accuracy=AccuracySummary.from_json(data.get("accuracy")),
            records=data.get("records"),
            generated_at=data.get("generated_at"),
            schema_version=SCHEMA_VERSION,
            sections={k: v for k, v in data.items() if k not in CORE_KEYS},
        )


def primary_stage(stages) -> str | None:
    """The benchmark stage whose runs make the top-level aggregates: direct_inference when it
    ran, else the first in run order that did (profiler overhead never makes the headline)."""
    present = list(dict.fromkeys(stages))
    for stage in BENCHMARK_STAGES:
        if stage in present:
            return stage
    return present[0] if present else None


def _field_values(cls, data: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {key: value for key, value in data.items() if key in names}


def _from_fields(cls, data: Mapping[str, Any]):
    return cls(**_field_values(cls, data))
