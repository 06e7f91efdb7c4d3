"""The one inference path every stage runs: preprocess -> vision -> prefill -> decode.

Stages differ only in the :class:`ProfilingHooks` they hand to :meth:`Engine.run` (a torch
profiler, cudaProfilerStart/Stop for Nsight Systems, ...). The engine always emits NVTX
ranges and stage timers; ``instrument=False`` switches both off to measure their cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import Any, Protocol

import torch

from pytest_dsocr import nvtx
from pytest_dsocr.decoding import DecodePolicy, token_budget
from pytest_dsocr.records import ImageRun, Sample
from pytest_dsocr.stages import DECODE, HOST_STAGES, PREFILL, PREPROCESS, VISION
from pytest_dsocr.timing import ModuleTimers, StageTimer



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
    def decode_text(self, token_ids: list[int]) -> str: ...


class Engine:
    """Runs one sample through the adapter with timers, NVTX ranges and hooks."""

    def __init__(self, adapter: ModelAdapter, policy: DecodePolicy, max_new_tokens: int | None,
                 extra_processors: Callable[[int], list] | None = None) -> None:
        """``extra_processors(prompt_len)`` adds logits processors after the policy's own (benchmarks
        use it to fix the generated length, e.g. MinNewTokensLengthLogitsProcessor)."""
        self.adapter = adapter
        self.policy = policy
        self.max_new_tokens = max_new_tokens
        self.extra_processors = extra_processors
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

    @contextmanager
    def _stage(self, name: str, timer: StageTimer | None) -> Iterator[None]:
        if timer is None:
            yield
            return
        with ExitStack() as stack:
            stack.enter_context(nvtx.nvtx_range(name))
            stack.enter_context(self._hooks.stage_range(name))
            if name in HOST_STAGES:
                start = time.perf_counter()
                yield
                timer.host_ms[name] = timer.host_ms.get(name, 0.0) + (time.perf_counter() - start) * 1e3
            else:
                stack.enter_context(timer.stage(name))
                yield

    def run(self, sample: Sample, *, stage: str = "direct_inference", hooks: ProfilingHooks = NO_HOOKS,
            round_index: int = 0, measured: bool = True, instrument: bool = True) -> ImageRun:
        """One inference of one sample; raises on failure (the caller records it)."""
        self._hooks = hooks
        timer = StageTimer(self.adapter.device) if instrument else None
        hooks.on_iter_start(sample, round_index, measured)
        run: ImageRun | None = None
        try:
            outer = nvtx.nvtx_range(f"sample:{sample.sample_id}") if instrument else nullcontext()
            timers = self.module_timers.active(timer) if timer is not None else nullcontext()
            with outer, hooks.context_provider(sample, measured), torch.inference_mode(), timers:
                run = self._infer(sample, stage, timer, round_index)
            return run
        finally:
            hooks.on_iter_end(sample, round_index, measured, run)
            self._hooks = NO_HOOKS

    def _infer(self, sample: Sample, stage: str, timer: StageTimer | None, round_index: int) -> ImageRun:
        adapter, policy = self.adapter, self.policy
        wall_start = time.perf_counter()
        with self._stage(PREPROCESS, timer):
            image = adapter.load(sample.image_path)
            prepared = adapter.prepare(image)
        with self._stage(PREFILL, timer):
            with self._stage(VISION, timer):
                image_embeds = adapter.encode_images(prepared)
            logits, cache = adapter.prefill(prepared, image_embeds)
            prompt_ids = prepared.input_ids
            budget = token_budget(self.max_new_tokens, prompt_ids.shape[1], adapter.max_positions)
            # Ids seen so far (prompt + generated) in one preallocated buffer for the processors.
            seen = torch.empty((1, prompt_ids.shape[1] + budget), dtype=torch.long, device=prompt_ids.device)
            seen[:, : prompt_ids.shape[1]] = prompt_ids
            length = prompt_ids.shape[1]
            processors = policy.logits_processors()
            if self.extra_processors is not None:
                processors.extend(self.extra_processors(length))
            generator = torch.Generator(device=prompt_ids.device).manual_seed(policy.seed) if policy.do_sample else None
            token = policy.select(seen[:, :length], logits, processors, generator)
            begin_decode = getattr(adapter, "begin_decode", None)
            if begin_decode is not None:
                cache = begin_decode(cache, length, budget)
        generated: list[int] = []
        finish_reason = "length"
        decode_context = getattr(adapter, "decode_context", nullcontext)
        with self._stage(DECODE, timer), decode_context():
            while True:
                seen[:, length] = token
                length += 1
                token_id = int(token.item())  # one host sync per token, as generate's stop check
                generated.append(token_id)
                if token_id == policy.eos_token_id:
                    finish_reason = "eos"
                    break
                if len(generated) >= budget:
                    break
                logits = adapter.decode_step(token, cache)
                token = policy.select(seen[:, :length], logits, processors, generator)
        wall_ms = (time.perf_counter() - wall_start) * 1e3
        times = timer.elapsed_ms() if timer is not None else {PREFILL: wall_ms, DECODE: 0.0}
        preprocess_ms = times.get(PREPROCESS, 0.0)
        prefill_ms = times.get(PREFILL, 0.0)
        return ImageRun(
            sample_id=sample.sample_id,
            image_path=str(sample.image_path),
            epoch=sample.epoch,
            round=round_index,
            stage=stage,
            preprocess_ms=preprocess_ms,
            prefill_ms=prefill_ms,
            decode_ms=times.get(DECODE, 0.0),
            vision_ms=times.get(VISION, 0.0),
            ttft_ms=preprocess_ms + prefill_ms,
            tokens=len(generated),
            prefill_len=int(prompt_ids.shape[1]),
            image_tokens=int(prepared.num_image_tokens),
            crop_grid=tuple(prepared.crop_grid),
            text_raw=adapter.decode_text(generated),
            substage_ms={name: times[name] for name in adapter.substages if name in times},
            finish_reason=finish_reason,
            device=str(adapter.device),
            token_ids=tuple(generated),
        )
