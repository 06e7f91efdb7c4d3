"""The one inference path every stage runs: preprocess -> vision -> prefill -> decode.

Stages differ only in the :class:`ProfilingHooks` they hand to :meth:`Engine.run` (a torch
profiler, cudaProfilerStart/Stop for Nsight Systems, ...). The engine always emits NVTX
ranges and stage timers; ``instrument=False`` switches both off to measure their cost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from transformers import LogitsProcessorList, MinNewTokensLengthLogitsProcessor

from pytest_dsocr import nvtx
from pytest_dsocr.decoding import DecodePolicy, token_budget
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.records import ImageRun, Sample
from pytest_dsocr.stages import DECODE, HOST_STAGES, PREFILL, PREPROCESS, VISION
from pytest_dsocr.timing import ModuleTimers, StageTimer

log = logging.getLogger(__name__)

# HOST_STAGES (pytest_dsocr.stages) are measured on the host clock even on a GPU: pure CPU work.
# Not when the adapter preprocesses on the device (Engine.stage_clock): then its kernels must be
# inside the measured interval, so it is timed with device events like the model stages.


class ProfilingHooks:
    """What a stage may add around the engine's work; every method is a no-op by default."""

    name = "none"

    def on_epoch_start(self, epoch: int) -> None:
        """Called before the first sample of an epoch."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called after the last sample of an epoch (and at session end for an open epoch)."""

    def on_iter_start(self, sample: Sample, round_index: int, measured: bool) -> None:
        """Called before one inference of one sample (warmup rounds have measured=False)."""

    def on_iter_end(self, sample: Sample, round_index: int, measured: bool, run: ImageRun | None) -> None:
        """Called after one inference; run is None when it failed."""

    def context_provider(self, sample: Sample, measured: bool) -> AbstractContextManager:
        """A context wrapped around one whole inference."""
        return nullcontext()

    def stage_range(self, name: str) -> AbstractContextManager:
        """A context wrapped around one named stage (preprocess, prefill, vision, sam, ...)."""
        return nullcontext()


NO_HOOKS = ProfilingHooks()


class DecodeObserver(Protocol):
    """Told how far a decode is (e.g. :class:`pytest_dsocr.progress.DecodeProgress`, lines of long
    decodes in the terminal). A protocol, so an observer need not import the engine (and torch).

    :meth:`on_decode_step` runs once per decode step inside the timed loop, so an observer must
    keep it to a clock comparison: the token count it gets is the loop's own host-side count,
    and it must never read device tensors (that would add a GPU sync per step).
    """

    def on_decode_start(self, label: str) -> None:
        """A decode begins: ``label`` names the page (``page_003``) or the batch (``page_003+3``)."""

    def on_decode_step(self, tokens: int) -> None:
        """``tokens`` generated so far by this decode (every row of a batch together)."""

    def on_decode_end(self, tokens: int) -> None:
        """The decode ended (EOS, budget or an error) after ``tokens`` tokens."""


class SilentObserver(DecodeObserver):
    """Observes nothing: the engine's default."""


NO_OBSERVER = SilentObserver()


class ModelAdapter(Protocol):
    """What the engine needs from a model family (see pytest_dsocr.models.*.adapter)."""

    family: str
    device: torch.device
    substages: tuple[str, ...]
    max_positions: int | None

    def substage_modules(self) -> list[tuple[str, torch.nn.Module]]: ...
    def load(self, image_path) -> Any: ...
    def prepare(self, image: Any) -> Any: ...
    def encode_images(self, prepared: Any) -> Any: ...
    def prefill(self, prepared: Any, image_embeds: Any) -> tuple[torch.Tensor, Any]: ...
    def decode_step(self, token: torch.Tensor, cache: Any) -> torch.Tensor: ...
    # Optional: ``begin_decode(cache, prompt_len, budget) -> cache`` between prefill and decode
    # (the static backend moves the prefill's keys/values into its static buffers there), and
    # ``decode_context()``, a context around the decode loop (kernel choices for one-token steps).
    # ``preprocess_on_device`` (bool): preprocessing runs kernels on the model's device, so the
    # engine times it with device events. ``load_pixels(path)``: the decoded page for ``prepare``
    # (default ``load``). ``selects_in_graph`` (bool) with ``begin_selection`` / ``next_tokens``:
    # greedy selection on the device (see pytest_dsocr.static_decode). Batches (run_batch) use
    # ``encode_images_batch``, ``prompt_embeds``, ``prefill_batch`` and ``decode_step_batch``
    # (pytest_dsocr.models.decode_steps.DecodeSteps has them for both families).
    def decode_text(self, token_ids: list[int]) -> str: ...


@dataclass
class _Rows:
    """The decode state of the pages of one inference (one page, or a batch), on the host."""

    prompt_lens: list[int]
    budgets: list[int]
    processors: list[list]
    seen: torch.Tensor  # ids so far, [rows, capacity]; on the host for batches, on the device for one page
    lengths: list[int]
    generator: torch.Generator | None = None  # sampling only: one per inference, seeded by the policy
    next: torch.Tensor | None = None  # device [rows]: each row's newest id, not yet recorded
    generated: list[list[int]] = field(default_factory=list)
    finish: list[str | None] = field(default_factory=list)
    track_seen: bool = True  # False once selection runs on the device: the host copy is not read


class Engine:
    """Runs one sample, or a batch of samples, through the adapter with timers, NVTX ranges and hooks."""

    def __init__(self, adapter: ModelAdapter, policy: DecodePolicy, max_new_tokens: int | None,
                 extra_processors: Callable[[int], list] | None = None, min_new_tokens: int = 0) -> None:
        """``extra_processors(prompt_len)`` adds logits processors after the policy's own (benchmarks
        use it to force EOS at a given length); host-side, so it keeps selection off the graph.
        ``min_new_tokens`` bans EOS until that many tokens are out (benchmarks fix the generated
        length with it); it is honoured in the graph too."""
        self.adapter = adapter
        self.policy = policy
        self.max_new_tokens = max_new_tokens
        self.extra_processors = extra_processors
        self.min_new_tokens = min_new_tokens
        self.observer: DecodeObserver = NO_OBSERVER  # the plugin installs terminal progress here
        self._hooks: ProfilingHooks = NO_HOOKS
        self._stage_stack: list[AbstractContextManager] = []
        self.module_timers = ModuleTimers(
            adapter.substage_modules(), on_enter=self._enter_substage, on_exit=self._exit_substage
        )

    # Sub-stage modules report through forward hooks; they get the same NVTX and hook ranges.
    def _enter_substage(self, name: str) -> None:
        nvtx.push(name)
        ctx = self._hooks.stage_range(name)
        ctx.__enter__()
        self._stage_stack.append(ctx)

    def _exit_substage(self, name: str) -> None:
        self._stage_stack.pop().__exit__(None, None, None)
        nvtx.pop()

    @property
    def preprocess_on_device(self) -> bool:
        """Whether the adapter's preprocessing launches device work (``infer.preprocess_device=cuda``)."""
        return bool(getattr(self.adapter, "preprocess_on_device", False))

    def stage_clock(self, name: str) -> str:
        """"host" for a stage timed with perf_counter, "device" for one timed like the model stages
        (CUDA events on a GPU): preprocessing that launches kernels must be, or its GPU work would
        be counted in the next stage."""
        return "host" if name in HOST_STAGES and not self.preprocess_on_device else "device"

    @contextmanager
    def _stage(self, name: str, timer: StageTimer | None) -> Iterator[None]:
        if timer is None:
            yield
            return
        with ExitStack() as stack:
            stack.enter_context(nvtx.nvtx_range(name))
            stack.enter_context(self._hooks.stage_range(name))
            if self.stage_clock(name) == "host":
                start = time.perf_counter()
                yield
                timer.host_ms[name] = timer.host_ms.get(name, 0.0) + (time.perf_counter() - start) * 1e3
            else:
                stack.enter_context(timer.stage(name))
                yield

    def _new_timer(self, instrument: bool) -> StageTimer | None:
        if not instrument:
            return None
        if self.preprocess_on_device and self.adapter.device.type == "cuda":
            # The preprocess start event marks the host's start only if the stream is idle then
            # (the host decodes the file before the first kernel); drain what a caller left queued.
            torch.cuda.current_stream(self.adapter.device).synchronize()
        return StageTimer(self.adapter.device)

    def run(self, sample: Sample, *, stage: str = "direct_inference", hooks: ProfilingHooks = NO_HOOKS,
            round_index: int = 0, measured: bool = True, instrument: bool = True) -> ImageRun:
        """One inference of one sample; raises on failure (the caller records it)."""
        return self._run([sample], stage, hooks, round_index, measured, instrument, batch=False)[0]

    def run_batch(self, samples: Sequence[Sample], *, stage: str = "direct_inference",
                  hooks: ProfilingHooks = NO_HOOKS, round_index: int = 0, measured: bool = True,
                  instrument: bool = True) -> list[ImageRun]:
        """One inference of several samples together: one ImageRun per sample, in order.

        Preprocessing, vision and the prefill run for the whole batch (every page waits for all of
        them: each record's TTFT is the batch's), prompts of different lengths are left-padded with
        an attention mask, and decoding runs all pages per step until each has met EOS or its
        budget; a page's ``decode_ms`` ends at the step that finished it. ``batch_wall_ms`` is the
        whole batch's wall time (pages/s = batch_size / batch_wall_ms * 1000). Hooks get every
        sample's iter start/end; the context provider is entered once, for the first sample.
        Raises on failure (the caller records it for every sample of the batch).
        """
        if not samples:
            raise DsocrError("run_batch: no samples given")
        return self._run(list(samples), stage, hooks, round_index, measured, instrument, batch=True)

    def _run(self, samples: list[Sample], stage: str, hooks: ProfilingHooks, round_index: int, measured: bool,
             instrument: bool, batch: bool) -> list[ImageRun]:
        self._hooks = hooks
        timer = self._new_timer(instrument)
        for sample in samples:
            hooks.on_iter_start(sample, round_index, measured)
        runs: list[ImageRun] | None = None
        try:
            first = samples[0].sample_id
            label = f"batch:{first}+{len(samples) - 1}" if batch else f"sample:{first}"
            outer = nvtx.nvtx_range(label) if instrument else nullcontext()
            timers = self.module_timers.active(timer) if timer is not None else nullcontext()
            with outer, hooks.context_provider(samples[0], measured), torch.inference_mode(), timers:
                runs = self._infer(samples, stage, timer, round_index, batch)
            return runs
        finally:
            for index, sample in enumerate(samples):
                hooks.on_iter_end(sample, round_index, measured, runs[index] if runs is not None else None)
            self._hooks = NO_HOOKS

    # -- one inference -----------------------------------------------------------------------------

    def _load(self, sample: Sample) -> Any:
        load = getattr(self.adapter, "load_pixels", None) or self.adapter.load
        return load(sample.image_path)

    def _processors(self, prompt_len: int) -> list:
        processors = self.policy.logits_processors()
        if self.min_new_tokens > 0:
            processors.append(MinNewTokensLengthLogitsProcessor(prompt_len, self.min_new_tokens,
                                                                self.policy.eos_token_id,
                                                                device=str(self.adapter.device)))
        if self.extra_processors is not None:
            processors.extend(self.extra_processors(prompt_len))
        return processors

    def _selects_in_graph(self) -> bool:
        return (bool(getattr(self.adapter, "selects_in_graph", False)) and not self.policy.do_sample
                and self.extra_processors is None)

    def _infer(self, samples: list[Sample], stage: str, timer: StageTimer | None, round_index: int,
               batch: bool) -> list[ImageRun]:
        adapter = self.adapter
        wall_start = time.perf_counter()
        with self._stage(PREPROCESS, timer):
            prepared = [adapter.prepare(self._load(sample)) for sample in samples]
        with self._stage(PREFILL, timer):
            if batch:
                with self._stage(VISION, timer):
                    image_embeds = adapter.encode_images_batch(prepared)
                logits, cache, layout = adapter.prefill_batch(
                    [adapter.prompt_embeds(p, e) for p, e in zip(prepared, image_embeds)])
            else:
                with self._stage(VISION, timer):
                    image_embeds = adapter.encode_images(prepared[0])
                logits, cache = adapter.prefill(prepared[0], image_embeds)
                layout = None
            rows = self._first_tokens(prepared, logits, on_device=not batch)
            in_graph = self._selects_in_graph()
            begin_decode = getattr(adapter, "begin_decode", None)
            if begin_decode is not None:
                if layout is None:
                    cache = begin_decode(cache, rows.prompt_lens[0], max(rows.budgets))
                else:
                    in_graph = False
                    if getattr(adapter, "static", None) is not None:
                        log.warning("decode_backend=%s decodes pages of one prompt length per batch; this batch "
                                    "(prompt lengths %s) decodes on the dynamic cache", adapter.decode_backend,
                                    sorted(set(rows.prompt_lens)))
        decode_context = getattr(adapter, "decode_context", nullcontext)
        with self._stage(DECODE, timer), decode_context(), self._observed(samples, rows):
            if timer is not None and batch:
                for index in range(len(samples)):
                    timer.start(f"decode#{index}")
            if in_graph:
                self._decode_in_graph(rows, cache, timer, batch)
            else:
                self._decode_on_host(rows, cache, layout, timer, batch)
        wall_ms = (time.perf_counter() - wall_start) * 1e3
        times = timer.elapsed_ms() if timer is not None else {PREFILL: wall_ms, DECODE: 0.0}
        return [self._record(sample, stage, round_index, p, rows, index, times, wall_ms, len(samples), batch)
                for index, (sample, p) in enumerate(zip(samples, prepared))]

    @contextmanager
    def _observed(self, samples: list[Sample], rows: _Rows) -> Iterator[None]:
        """The observer's start and end of one decode (the end also when the decode raised)."""
        first = samples[0].sample_id
        self.observer.on_decode_start(first if len(samples) == 1 else f"{first}+{len(samples) - 1}")
        try:
            yield
        finally:
            self.observer.on_decode_end(sum(len(ids) for ids in rows.generated))

    def _first_tokens(self, prepared: list, logits: torch.Tensor, on_device: bool) -> _Rows:
        """Each row's budget, processors and first token (selected on the host, as generate does)."""
        adapter = self.adapter
        prompt_lens = [int(p.input_ids.shape[1]) for p in prepared]
        budgets = [token_budget(self.max_new_tokens, n, adapter.max_positions) for n in prompt_lens]
        capacity = max(n + b for n, b in zip(prompt_lens, budgets))
        # Ids seen so far (prompt + generated) in one preallocated buffer for the processors: on the
        # device for one page (as before), on the host for a batch (each row's processors read their
        # own row without a device sync).
        device = prepared[0].input_ids.device if on_device else torch.device("cpu")
        seen = torch.zeros((len(prepared), capacity), dtype=torch.long, device=device)
        for row, p in enumerate(prepared):
            seen[row, : prompt_lens[row]] = p.input_ids[0].to(device)
        generator = None
        if self.policy.do_sample:
            generator = torch.Generator(device=logits.device).manual_seed(self.policy.seed)
        rows = _Rows(prompt_lens=prompt_lens, budgets=budgets, processors=[self._processors(n) for n in prompt_lens],
                     seen=seen, lengths=list(prompt_lens), generator=generator,
                     generated=[[] for _ in prepared], finish=[None] * len(prepared))
        rows.next = self._select(rows, logits)
        return rows

    def _select(self, rows: _Rows, logits: torch.Tensor) -> torch.Tensor:
        """Next ids [rows] from float32 logits [rows, vocab], each row through its own processors."""
        policy = self.policy
        if len(rows.prompt_lens) == 1:
            return policy.select(rows.seen[:, : rows.lengths[0]], logits, rows.processors[0], rows.generator)
        scores = torch.cat([processors(rows.seen[row: row + 1, : rows.lengths[row]], logits[row: row + 1])
                            for row, processors in enumerate(rows.processors)])
        return policy.select(rows.seen[:, :0], scores, LogitsProcessorList(), rows.generator)

    def _append(self, rows: _Rows, ids: list[int], timer: StageTimer | None, batch: bool) -> bool:
        """Record one id per row (rows already finished ignore theirs); True when every row is done."""
        for row, token_id in enumerate(ids):
            if rows.finish[row] is not None:
                continue
            rows.generated[row].append(token_id)
            if rows.track_seen:
                rows.seen[row, rows.lengths[row]] = token_id
            rows.lengths[row] += 1
            if token_id == self.policy.eos_token_id:
                rows.finish[row] = "eos"
            elif len(rows.generated[row]) >= rows.budgets[row]:
                rows.finish[row] = "length"
            if rows.finish[row] is not None and timer is not None and batch:
                timer.stop(f"decode#{row}")  # this page's decode ends at the step that finished it
        self.observer.on_decode_step(sum(len(generated) for generated in rows.generated))
        return all(f is not None for f in rows.finish)

    def _decode_on_host(self, rows: _Rows, cache: Any, layout: Any, timer: StageTimer | None, batch: bool) -> None:
        adapter = self.adapter
        token = rows.next
        if not batch:
            # One page: the loop as generate runs it, one host sync per token for the stop check.
            seen = rows.seen
            while True:
                length = rows.lengths[0]
                seen[:, length] = token
                rows.lengths[0] = length + 1
                token_id = int(token.item())
                rows.generated[0].append(token_id)
                self.observer.on_decode_step(len(rows.generated[0]))
                if token_id == self.policy.eos_token_id:
                    rows.finish[0] = "eos"
                    break
                if len(rows.generated[0]) >= rows.budgets[0]:
                    rows.finish[0] = "length"
                    break
                logits = adapter.decode_step(token, cache)
                token = self._select(rows, logits)
            return
        while not self._append(rows, token.tolist(), timer, batch):  # one host sync per step
            # A finished row keeps decoding its last id (its new ids are dropped): the batch keeps its shape.
            feed = [ids[-1] for ids in rows.generated]
            token = torch.tensor(feed, dtype=torch.long, device=adapter.device)
            logits = adapter.decode_step_batch(token, cache, layout)
            token = self._select(rows, logits)

    def _decode_in_graph(self, rows: _Rows, cache: Any, timer: StageTimer | None, batch: bool) -> None:
        """Greedy decode with selection inside the captured graph; the host reads ids once per replay."""
        adapter, policy = self.adapter, self.policy
        ids = rows.next.tolist()
        length = rows.lengths[0]  # one prompt length in a batch that decodes on the graph
        seen = torch.zeros((len(ids), length + 1), dtype=torch.long, device=adapter.device)
        seen[:, :length] = rows.seen[:, :length].to(adapter.device)
        seen[:, length] = rows.next
        adapter.begin_selection(cache, seen, length + 1, rows.prompt_lens[0], rows.next,
                                policy.no_repeat_ngram_size or 0, policy.eos_token_id, self.min_new_tokens)
        rows.track_seen = False
        pending: list[list[int]] = [ids]
        while not self._append(rows, pending.pop(0), timer, batch):
            if not pending:
                chunk = adapter.next_tokens(cache).tolist()  # [rows, steps]: one host sync per replay
                pending = [list(column) for column in zip(*chunk)]

    def _record(self, sample: Sample, stage: str, round_index: int, prepared: Any, rows: _Rows, row: int,
                times: dict[str, float], wall_ms: float, batch_size: int, batch: bool) -> ImageRun:
        adapter = self.adapter
        preprocess_ms = times.get(PREPROCESS, 0.0)
        prefill_ms = times.get(PREFILL, 0.0)
        decode_ms = times.get(f"decode#{row}", times.get(DECODE, 0.0)) if batch else times.get(DECODE, 0.0)
        generated = rows.generated[row]
        return ImageRun(
            sample_id=sample.sample_id,
            image_path=str(sample.image_path),
            epoch=sample.epoch,
            round=round_index,
            stage=stage,
            preprocess_ms=preprocess_ms,
            prefill_ms=prefill_ms,
            decode_ms=decode_ms,
            vision_ms=times.get(VISION, 0.0),
            ttft_ms=preprocess_ms + prefill_ms,
            tokens=len(generated),
            prefill_len=int(prepared.input_ids.shape[1]),
            image_tokens=int(prepared.num_image_tokens),
            crop_grid=tuple(prepared.crop_grid),
            text_raw=adapter.decode_text(generated),
            substage_ms={name: times[name] for name in adapter.substages if name in times},
            finish_reason=rows.finish[row] or "length",
            device=str(adapter.device),
            token_ids=tuple(generated),
            batch_size=batch_size,
            batch_wall_ms=wall_ms if batch else None,
        )
