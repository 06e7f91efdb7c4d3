"""State of one pytest session: the model adapter (loaded once), the engine and stage outputs.

``DsocrSession.measure`` is the one way a stage runs a sample: warmup rounds, measured rounds
(through pytest-benchmark's pedantic mode when the benchmark fixture is active, else a plain
loop), outputs for the stage, and records or a failure in the collector.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import logging
import os
import statistics
import traceback
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path

import torch
from omegaconf import DictConfig

from pytest_dsocr.collector import Collector
from pytest_dsocr.data.groundtruth import PageTruth
from pytest_dsocr.decoding import DecodePolicy, parse_max_new_tokens
from pytest_dsocr.engine import NO_HOOKS, DecodeObserver, Engine, ProfilingHooks
from pytest_dsocr.env import resolve_device
from pytest_dsocr.models import resolve_dtype
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.families import family
from pytest_dsocr.outputs.accuracy import sample_accuracy
from pytest_dsocr.outputs.writers import StageOutputs
from pytest_dsocr.parity import ENGAGED_MESSAGE
from pytest_dsocr.records import ImageRun, Sample, SampleAccuracy, SampleFailure
from pytest_dsocr.xdist import LockedPredictionWriter

log = logging.getLogger(__name__)


class SampleFailed(Exception):
    """A sample could not run; the failure is recorded and the session goes on."""

    def __init__(self, failure: SampleFailure) -> None:
        super().__init__(failure.error)
        self.failure = failure


def adapter_options(infer: DictConfig) -> dict:
    """The keyword options of an adapter from the ``infer`` section (every family takes them)."""
    return {
        "preprocess_device": infer.preprocess_device,
        "vision_backend": infer.vision_backend,
        "prefill_backend": infer.prefill_backend,
    }


def build_adapter(cfg: DictConfig, device: torch.device, dtype: torch.dtype):
    """The engine adapter of ``model.family`` (named by its registry entry), built with every
    ``infer`` option that shapes it. The session and the perf scripts build adapters here, so a
    new ``infer`` key reaches every path at once."""
    entry = family(cfg.model.family)
    entry.check_size(cfg.model.size)
    return entry.load("adapter")(cfg.model, device, dtype, cfg.infer.prompt, cfg.infer.decode_backend,
                                 **adapter_options(cfg.infer))


def describe_error(exc: BaseException) -> str:
    """One line for metrics.json and the test report."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, DsocrError) else f"{type(exc).__name__}: {text}"


def describe_chain(exc: BaseException) -> tuple[str, ...]:
    """The exceptions behind ``exc`` (causes and contexts Python would print), root cause first,
    one line each with the place it was raised: report.md shows them, the terminal only ``exc``."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    lines = []
    for error in reversed(chain):
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
        line = f"{type(error).__name__}: {text}"
        frames = traceback.extract_tb(error.__traceback__)
        if frames:
            last = frames[-1]
            line += f" ({os.path.basename(last.filename)}:{last.lineno} in {last.name})"
        lines.append(line)
    return tuple(lines)


class DsocrSession:
    """Loaded once per pytest session (fixture ``dsocr_session``)."""

    def __init__(self, cfg: DictConfig, collector: Collector, samples: Sequence[Sample] = (),
                 truths: Mapping[Path, PageTruth] | None = None) -> None:
        """``samples``: the session's sampled pages, in order; with ``infer.batch_size`` > 1 they
        run in consecutive chunks of that many pages (a test's page and its neighbours).
        ``truths``: the dataset's ground truth by image path (looked up once for the session);
        a measured page that has one gets its accuracy in its records."""
        self.config = cfg
        self.collector = collector
        self.samples = list(samples)
        self.truths = dict(truths or {})
        self.batch_size = int(cfg.infer.batch_size)
        self._batched: dict[tuple[str, Sample], list[ImageRun] | Exception] = {}
        self.device = resolve_device(cfg.model.device)  # DsocrError for cuda without CUDA
        self.dtype = resolve_dtype(cfg.model.dtype, self.device)
        self.max_new_tokens = parse_max_new_tokens(cfg.infer.max_new_tokens)
        self._outputs: dict = {}

    @cached_property
    def adapter(self):
        log.info("building %s/%s on %s (%s)", self.config.model.family, self.config.model.size,
                 self.device, self.dtype)
        return build_adapter(self.config, self.device, self.dtype)

    @cached_property
    def policy(self) -> DecodePolicy:
        infer = self.config.infer
        return DecodePolicy(
            eos_token_id=self.adapter.eos_token_id, no_repeat_ngram_size=infer.no_repeat_ngram_size,
            temperature=infer.temperature, top_p=infer.top_p, top_k=infer.top_k, seed=self.config.model.seed,
        )

    @cached_property
    def engine(self) -> Engine:
        log.info(ENGAGED_MESSAGE)
        return Engine(self.adapter, self.policy, self.max_new_tokens)

    def observe_decodes(self, observer: DecodeObserver) -> None:
        """Report every decode of this session to ``observer`` (the plugin's lines of long decodes)."""
        self.engine.observer = observer

    def outputs(self, stage: str):
        """Prediction/visualization writers of ``pipeline.<stage>.output`` under <run>/<stage>/."""
        if stage not in self._outputs:
            stage_cfg = self.config.pipeline.get(stage)
            output_cfg = stage_cfg.output if stage_cfg is not None else self.config.pipeline.direct_inference.output
            prefix = f"pipeline.{stage if stage_cfg is not None else 'direct_inference'}.output"
            writer = None
            if self.collector.worker is not None:
                # xdist workers share the stage's predictions.jsonl: append under a file lock
                writer = LockedPredictionWriter
            self._outputs[stage] = StageOutputs(self.collector.run_dir / stage, output_cfg, key_prefix=prefix,
                                                prediction_writer=writer)
        return self._outputs[stage]

    def run(self, sample: Sample, *, stage: str = "direct_inference", hooks: ProfilingHooks = NO_HOOKS,
            round_index: int = 0, measured: bool = True, instrument: bool = True) -> ImageRun:
        return self.engine.run(sample, stage=stage, hooks=hooks, round_index=round_index,
                               measured=measured, instrument=instrument)

    def chunk_of(self, sample: Sample) -> list[Sample]:
        """The ``infer.batch_size`` consecutive sampled pages ``sample`` runs with."""
        if self.batch_size <= 1 or sample not in self.samples:
            return [sample]
        start = self.samples.index(sample) // self.batch_size * self.batch_size
        return self.samples[start:start + self.batch_size]

    def _measure_batch(self, sample: Sample, stage: str, hooks: ProfilingHooks) -> list[ImageRun]:
        """This sample's measured rounds from its chunk's batched rounds (run once, at the chunk's
        first test; the other pages' tests take theirs). Raises what the batch raised."""
        key = (stage, sample)
        if key not in self._batched:
            chunk = self.chunk_of(sample)
            warmup, rounds = self.config.infer.warmup_rounds, self.config.infer.rounds
            try:
                for index in range(warmup):
                    self.engine.run_batch(chunk, stage=stage, hooks=hooks, round_index=index, measured=False)
                measured = [self.engine.run_batch(chunk, stage=stage, hooks=hooks, round_index=index)
                            for index in range(rounds)]
                for position, page in enumerate(chunk):
                    self._batched[(stage, page)] = [runs[position] for runs in measured]
            except Exception as exc:  # every page of the batch fails with it
                for page in chunk:
                    self._batched[(stage, page)] = exc
        result = self._batched.pop(key)
        if isinstance(result, Exception):
            raise result
        return result

    def measure(self, sample: Sample, *, stage: str, hooks: ProfilingHooks = NO_HOOKS,
                benchmark=None) -> list[ImageRun]:
        """Warmup + measured rounds of one sample; records runs or raises SampleFailed.

        With ``infer.batch_size`` > 1 the sample runs inside its chunk's batch; pytest-benchmark
        then times nothing (a batch is not one test's work) and the stage timers are the measurement.
        """
        if len(self.chunk_of(sample)) > 1:
            return self._record_measured(sample, stage, None, lambda: self._measure_batch(sample, stage, hooks))
        return self._record_measured(sample, stage, benchmark, lambda: self._measure_one(sample, stage, hooks, benchmark))

    def _measure_one(self, sample: Sample, stage: str, hooks: ProfilingHooks, benchmark) -> list[ImageRun]:
        warmup, rounds = self.config.infer.warmup_rounds, self.config.infer.rounds
        runs: list[ImageRun] = []
        calls = itertools.count()

        def one_round() -> None:
            index = next(calls)
            measured = index >= warmup
            run = self.run(sample, stage=stage, hooks=hooks, measured=measured,
                           round_index=index - warmup if measured else index)
            if measured:
                runs.append(run)

        if benchmark is not None:
            benchmark.pedantic(one_round, rounds=rounds, warmup_rounds=warmup, iterations=1)
        # pytest-benchmark switches itself off under xdist (and with --benchmark-disable);
        # its pedantic then calls one_round once, and this loop runs the remaining rounds.
        # Either way the stage timers are the measurement.
        while len(runs) < rounds:
            one_round()
        return runs

    def _record_measured(self, sample: Sample, stage: str, benchmark, measure) -> list[ImageRun]:
        """Run ``measure()`` for the sample's rounds, then record them and write the stage's
        outputs; a failure (bad page, OOM, a bug) is recorded and raised as SampleFailed."""

        def failed(exc: Exception, what: str = "") -> SampleFailed:
            if isinstance(exc, torch.cuda.OutOfMemoryError):
                # The traceback's frames hold the tensors of the failed round: clear them so
                # the cached blocks can really be returned, and the next sample starts clean.
                traceback.clear_frames(exc.__traceback__)
                gc.collect()
                torch.cuda.empty_cache()
            failure = SampleFailure(sample_id=sample.sample_id, image_path=str(sample.image_path),
                                    epoch=sample.epoch, stage=stage, error=what + describe_error(exc),
                                    error_type=type(exc).__name__, chain=describe_chain(exc))
            self.collector.add_failure(failure)
            return SampleFailed(failure)

        try:
            runs = measure()
        except Exception as exc:  # one bad sample must not end the session
            raise failed(exc) from exc
        runs = self.with_accuracy(sample, runs)  # after the timed rounds: scoring is never timed
        self.collector.add_runs(runs)  # measured: kept even if writing its outputs fails below
        try:
            # The page is loaded again only when a visualization folder is actually written.
            self.outputs(stage).record(runs[-1], image=lambda: self.adapter.load(sample.image_path))
        except Exception as exc:
            raise failed(exc, "writing outputs: ") from exc
        if benchmark is not None:
            benchmark.extra_info.update(stage_extra_info(runs))
        return runs


    def with_accuracy(self, sample: Sample, runs: list[ImageRun]) -> list[ImageRun]:
        """The runs with their accuracy against the page's ground truth (unchanged without one).
        Rounds that wrote the same text share one comparison."""
        truth = self.truths.get(Path(sample.image_path))
        if truth is None:
            return runs
        scored: dict[str, SampleAccuracy] = {}
        for run in runs:
            if run.text_raw not in scored:
                scored[run.text_raw] = sample_accuracy(run.text_raw, truth)
        return [dataclasses.replace(run, accuracy=scored[run.text_raw]) for run in runs]


def stage_extra_info(runs: list[ImageRun]) -> dict:
    """Median per-stage timings of the measured rounds, for pytest-benchmark's extra_info."""
    def median(values):
        return round(statistics.median(values), 3)

    info = {
        "prefill_ms": median([r.prefill_ms for r in runs]),
        "decode_ms": median([r.decode_ms for r in runs]),
        "vision_ms": median([r.vision_ms for r in runs]),
        "preprocess_ms": median([r.preprocess_ms for r in runs]),
        "ttft_ms": median([r.ttft_ms for r in runs]),
        "tokens": runs[-1].tokens,
        "prefill_len": runs[-1].prefill_len,
        "crop_grid": list(runs[-1].crop_grid),
    }
    for name in runs[-1].substage_ms:
        info[f"{name}_ms"] = median([r.substage_ms.get(name, 0.0) for r in runs])
    return info
