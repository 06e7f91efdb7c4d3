"""The fast decode path (``infer.decode_backend=static``): a static KV cache and, on a GPU,
the one-token decode step captured once in a CUDA graph and replayed for every token.

At batch 1 a DeepSeek-OCR decode step is a few hundred small kernels: launched one by one
from Python it is bound by the host, not by the ~1 GB of weights it must read. Replaying a
captured graph removes the per-kernel launch cost. What makes the step capturable:

- transformers' StaticCache: fixed buffers written in place at a device-side position
  (no host value of the sequence length anywhere in the step);
- the MoE routed through transformers' ``batched_mm`` experts kernel while decoding: the
  ``eager`` kernel loops over the experts that were hit, which needs their ids on the host
  (a sync per layer per token);
- the prefill still runs on a DynamicCache exactly as the eager path does (same kernels, same
  first token), and its keys/values are copied into the static buffers.

- on CUDA the step goes through torch.compile first (one graph for the whole step: RMSNorm,
  RoPE, router and the elementwise work fuse into far fewer kernels), then into the CUDA graph;
  the first decode pays the compilation (about 25 s for the full model on an H100).

The step's logits are the same computation as the eager path's up to floating-point
reduction order (the attention spans the whole static buffer, masked; fused kernels).

``select_in_graph=True`` (``infer.decode_backend=graph``) moves token selection into the graph
too: the no-repeat-n-gram ban (:func:`pytest_dsocr.ngram.ban_repeated_ngrams`), the EOS ban
before ``min_new_tokens``, the argmax, and the write of the chosen id into a device-side copy
of the sequence. One replay then runs ``steps_per_replay`` steps back to back, and the host
reads their ids once per replay (the EOS check), instead of sitting between every two steps.
The MoE runs on :mod:`pytest_dsocr.kernels.moe_gemv` (the selected experts read in place)
where Triton can run. Greedy only: sampling keeps the host-side selection.
"""

from __future__ import annotations

import logging

import torch
from transformers import DynamicCache, StaticCache

from pytest_dsocr.compat import cache_kwargs
from pytest_dsocr.ngram import ban_repeated_ngrams

log = logging.getLogger(__name__)

CACHE_BUCKET = 1024  # static cache lengths are rounded up to this, so a few graphs serve all pages
GRAPH_WARMUP_STEPS = 3  # eager steps on a side stream before capture (allocator and lazy init settle)
DECODE_EXPERTS = "batched_mm"  # graph-safe MoE kernel (no host sync); eager needs the hit experts on the host
# Decode steps per graph replay when selection runs in the graph: the host reads the chosen ids
# (and stops at EOS) once per replay; a replay that passes EOS or the budget wastes at most
# this many steps minus one.
STEPS_PER_REPLAY = 16


def graph_experts_kernel(device: torch.device) -> str:
    """The MoE kernel of the in-graph backend: the in-place Triton GEMV where it runs, else batched_mm."""
    from pytest_dsocr.kernels import moe_gemv

    if moe_gemv.triton_usable(device):
        return moe_gemv.register()
    log.info("Triton cannot run on %s: the graph decode step uses the %s MoE kernel", device, DECODE_EXPERTS)
    return DECODE_EXPERTS


class StaticDecoder:
    """Decode steps of one causal-LM module over a static KV cache, graph-captured on CUDA."""

    def __init__(self, model: torch.nn.Module, text_config, max_positions: int, device: torch.device,
                 use_graph: bool | None = None, experts_kernel: str = DECODE_EXPERTS,
                 compile_step: bool | None = None, select_in_graph: bool = False,
                 steps_per_replay: int = STEPS_PER_REPLAY) -> None:
        """``experts_kernel``: transformers' MoE kernel for the step; ``compile_step``: run the step
        through torch.compile (kernel fusion) before capturing it (None: on CUDA only, where it
        fuses hundreds of small kernels; on a CPU compiling costs more than it saves).
        ``select_in_graph``: choose tokens in the graph, ``steps_per_replay`` steps per replay."""
        self.model = model
        self.experts_kernel = experts_kernel
        self.compile_step = device.type == "cuda" if compile_step is None else compile_step
        self.text_config = text_config
        self.max_positions = max_positions
        self.device = device
        self.use_graph = device.type == "cuda" if use_graph is None else use_graph
        self.select_in_graph = select_in_graph
        self.steps_per_replay = steps_per_replay if select_in_graph else 1
        self._buckets: dict[tuple[int, int], _Bucket] = {}
        self.active: _Bucket | None = None

    def bucket_len(self, needed: int) -> int:
        rounded = -(-needed // CACHE_BUCKET) * CACHE_BUCKET
        if self.select_in_graph:
            # A replay may run past the budget by up to steps_per_replay - 1 steps; positions past
            # the model's nominal context are computed all the same (RoPE has no table) and dropped.
            return rounded
        return min(rounded, self.max_positions) if self.max_positions else rounded

    def start(self, prefill_cache: DynamicCache, prompt_len: int, budget: int) -> None:
        """Take over the prefill's keys/values for a decode of up to ``budget`` tokens."""
        length = self.bucket_len(prompt_len + budget + self.steps_per_replay)
        batch = prefill_cache.layers[0].keys.shape[0]
        bucket = self._buckets.get((length, batch))
        if bucket is None:
            bucket = self._buckets[(length, batch)] = _Bucket(self, length, batch)
        bucket.load(prefill_cache, prompt_len)
        self.active = bucket

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """float32 logits [batch, vocab] of the next position after ``token``."""
        return self.active.step(token)

    def begin_selection(self, seen: torch.Tensor, length: int, prompt_len: int, token: torch.Tensor,
                        ngram_size: int | None, eos_token_id: int, min_new_tokens: int = 0) -> None:
        """Hand the sequence so far (``seen[:, :length]``, ``token`` its last id) to the graph's selection.

        ``ngram_size`` None keeps the size the graph was captured with (teacher forcing ignores the
        ban, and a new size would mean a new compilation and capture)."""
        self.active.begin_selection(seen, length, prompt_len, token, ngram_size, eos_token_id, min_new_tokens)

    def next_tokens(self, forced: torch.Tensor | None = None) -> torch.Tensor:
        """The next ``steps_per_replay`` ids [batch, steps] chosen on the device (``forced``: use these
        ids instead, to teacher-force the same graph); their logits are in :attr:`chunk_logits`."""
        return self.active.next_tokens(forced)

    @property
    def chunk_logits(self) -> torch.Tensor:
        """float32 logits [steps, batch, vocab] of the last :meth:`next_tokens` call."""
        return self.active.chunk_logits


class _Bucket:
    """One static cache length and batch: its buffers, and its captured graphs once they exist."""

    def __init__(self, owner: StaticDecoder, length: int, batch: int) -> None:
        self.owner = owner
        self.length = length
        self.batch = batch
        device = owner.device
        self.cache = StaticCache(config=owner.text_config, max_cache_len=length)
        self.token = torch.zeros((batch, 1), dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None
        self.graph_failed = False
        self._step = torch.compile(self._forward, dynamic=False) if owner.compile_step else self._forward
        # In-graph selection state: the sequence on the device, each row's length, and the settings.
        self.select_graph: torch.cuda.CUDAGraph | None = None
        self.select_key: tuple[int, int] | None = None  # (ngram_size, eos id) the graph was captured for
        self._select = None
        if owner.select_in_graph:
            steps = owner.steps_per_replay
            self.seen = torch.zeros((batch, length + 1), dtype=torch.long, device=device)
            self.cur_len = torch.zeros(batch, dtype=torch.long, device=device)
            self.prompt_len = torch.zeros(batch, dtype=torch.long, device=device)
            self.min_new = torch.zeros(1, dtype=torch.long, device=device)
            self.force = torch.zeros(1, dtype=torch.bool, device=device)
            self.forced = torch.zeros((batch, steps), dtype=torch.long, device=device)
            self.forced_now = torch.zeros(batch, dtype=torch.long, device=device)
            self.out = torch.zeros((batch, steps), dtype=torch.long, device=device)
            self.chunk_logits = torch.zeros((steps, batch, owner.text_config.vocab_size),
                                            dtype=torch.float32, device=device)

    def load(self, prefill_cache: DynamicCache, prompt_len: int) -> None:
        for layer, source in zip(self.cache.layers, prefill_cache.layers):
            keys, values = source.keys, source.values
            if not layer.is_initialized:
                layer.lazy_initialization(keys, values)
            layer.keys[:, :, :prompt_len].copy_(keys)
            layer.values[:, :, :prompt_len].copy_(values)
            layer.cumulative_length.fill_(prompt_len)

    def _forward(self, token: torch.Tensor) -> torch.Tensor:
        model = self.owner.model
        out = model(input_ids=token, use_cache=True, logits_to_keep=1, **cache_kwargs(self.cache))
        return out.logits[:, -1].float()

    def _with_experts_kernel(self, fn, *args):
        model, kernel = self.owner.model, self.owner.experts_kernel
        previous = getattr(model.config, "_experts_implementation", None)
        switch = previous != kernel and (self.owner.device.type == "cuda" or kernel != DECODE_EXPERTS)
        if switch:
            model.set_experts_implementation(kernel)
        try:
            return fn(*args)
        finally:
            if switch and previous is not None:
                model.set_experts_implementation(previous)

    def _run(self) -> torch.Tensor:
        return self._with_experts_kernel(self._step, self.token)

    def _positions(self) -> list[torch.Tensor]:
        return [layer.cumulative_length.clone() for layer in self.cache.layers]

    def _restore(self, positions: list[torch.Tensor]) -> None:
        # Warmup steps advanced the cache; their keys/values past the real position are masked
        # and overwritten by the real steps, so restoring the position is enough.
        for layer, position in zip(self.cache.layers, positions):
            layer.cumulative_length.copy_(position)

    def _captured(self, body, reset) -> tuple[torch.cuda.CUDAGraph, object]:
        """``body()`` run GRAPH_WARMUP_STEPS times on a side stream, then captured.

        ``reset()`` puts the state back before every warmup run and after the last: each run advances
        the cache by the steps it takes, and the buffers only have room for one replay past the budget.
        """
        device = self.owner.device
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(GRAPH_WARMUP_STEPS):
                reset()
                body()
            reset()
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            result = body()
        return graph, result

    def _capture(self) -> None:
        positions = self._positions()
        try:
            self.graph, self.logits = self._captured(self._run, lambda: self._restore(positions))
        finally:
            self._restore(positions)

    def step(self, token: torch.Tensor) -> torch.Tensor:
        self.token.copy_(token.view(self.batch, 1))
        if self.owner.use_graph and not self.graph_failed:
            if self.graph is None:
                try:
                    self._capture()
                except Exception as exc:  # a kernel that cannot be captured: decode without the graph
                    self.graph_failed = True
                    self.graph = None
                    log.warning("CUDA graph capture of the decode step failed (%s: %s); "
                                "decoding with the static cache without a graph", type(exc).__name__, exc)
                    return self._run()
            self.graph.replay()
            return self.logits
        return self._run()

    # -- token selection in the graph ------------------------------------------------------------

    def begin_selection(self, seen: torch.Tensor, length: int, prompt_len: int, token: torch.Tensor,
                        ngram_size: int | None, eos_token_id: int, min_new_tokens: int) -> None:
        self.seen[:, :length].copy_(seen[:, :length])
        self.cur_len.fill_(length)
        self.prompt_len.fill_(prompt_len)
        self.min_new.fill_(min_new_tokens)
        self.token.copy_(token.view(self.batch, 1))
        if ngram_size is None:
            ngram_size = self.select_key[0] if self.select_key is not None else 0
        key = (ngram_size, eos_token_id)
        if key != self.select_key:  # the ban's size and the EOS id are baked into the traced step
            self.select_key = key
            self.select_graph = None
            self._select = self._make_select(ngram_size, eos_token_id)

    def _make_select(self, ngram_size: int, eos_token_id: int):
        def select(token, seen, cur_len, prompt_len, min_new, force, forced_now):
            logits = self._forward(token)
            scores = logits
            if ngram_size > 0:
                scores = ban_repeated_ngrams(scores, seen, cur_len, ngram_size)
            # EOS is banned until min_new_tokens ids are new (transformers' MinNewTokensLength).
            early = (cur_len - prompt_len) < min_new
            eos = scores[:, eos_token_id]
            scores = scores.clone()
            scores[:, eos_token_id] = torch.where(early, torch.full_like(eos, -float("inf")), eos)
            picked = torch.where(force, forced_now, scores.argmax(dim=-1))
            seen.scatter_(1, cur_len.view(-1, 1), picked.view(-1, 1))
            cur_len.add_(1)
            token.copy_(picked.view(-1, 1))
            return logits, picked

        return torch.compile(select, dynamic=False) if self.owner.compile_step else select

    def _select_steps(self) -> torch.Tensor:
        for index in range(self.owner.steps_per_replay):
            self.forced_now.copy_(self.forced[:, index])
            logits, picked = self._with_experts_kernel(
                self._select, self.token, self.seen, self.cur_len, self.prompt_len, self.min_new, self.force,
                self.forced_now)
            self.chunk_logits[index].copy_(logits)
            self.out[:, index].copy_(picked)
        return self.out

    def next_tokens(self, forced: torch.Tensor | None) -> torch.Tensor:
        self.force.fill_(forced is not None)
        if forced is not None:
            self.forced.copy_(forced.view(self.batch, -1))
        if self.owner.use_graph and not self.graph_failed:
            if self.select_graph is None:
                positions, seen, cur_len, token = (self._positions(), self.seen.clone(), self.cur_len.clone(),
                                                   self.token.clone())

                def reset() -> None:
                    self._restore(positions)
                    self.seen.copy_(seen)
                    self.cur_len.copy_(cur_len)
                    self.token.copy_(token)

                try:
                    self.select_graph, _ = self._captured(self._select_steps, reset)
                except Exception as exc:  # a kernel that cannot be captured: run the steps one by one
                    self.graph_failed = True
                    log.warning("CUDA graph capture of the decode steps failed (%s: %s); "
                                "selecting on the device without a graph", type(exc).__name__, exc)
                finally:
                    reset()
            if self.select_graph is not None:
                self.select_graph.replay()
                return self.out
        return self._select_steps()
