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
"""

from __future__ import annotations

import logging

import torch
from transformers import DynamicCache, StaticCache

from pytest_dsocr.compat import cache_kwargs

log = logging.getLogger(__name__)

CACHE_BUCKET = 1024  # static cache lengths are rounded up to this, so a few graphs serve all pages
GRAPH_WARMUP_STEPS = 3  # eager steps on a side stream before capture (allocator and lazy init settle)
DECODE_EXPERTS = "batched_mm"  # graph-safe MoE kernel (no host sync); eager needs the hit experts on the host


class StaticDecoder:
    """Decode steps of one causal-LM module over a static KV cache, graph-captured on CUDA."""

    def __init__(self, model: torch.nn.Module, text_config, max_positions: int, device: torch.device,
                 use_graph: bool | None = None, experts_kernel: str = DECODE_EXPERTS,
                 compile_step: bool | None = None) -> None:
        """``experts_kernel``: transformers' MoE kernel for the step; ``compile_step``: run the step
        through torch.compile (kernel fusion) before capturing it (None: on CUDA only, where it
        fuses hundreds of small kernels; on a CPU compiling costs more than it saves)."""
        self.model = model
        self.experts_kernel = experts_kernel
        self.compile_step = device.type == "cuda" if compile_step is None else compile_step
        self.text_config = text_config
        self.max_positions = max_positions
        self.device = device
        self.use_graph = device.type == "cuda" if use_graph is None else use_graph
        self._buckets: dict[int, _Bucket] = {}
        self.active: _Bucket | None = None

    def bucket_len(self, needed: int) -> int:
        rounded = -(-needed // CACHE_BUCKET) * CACHE_BUCKET
        return min(rounded, self.max_positions) if self.max_positions else rounded

    def start(self, prefill_cache: DynamicCache, prompt_len: int, budget: int) -> None:
        """Take over the prefill's keys/values for a decode of up to ``budget`` tokens."""
        length = self.bucket_len(prompt_len + budget)
        bucket = self._buckets.get(length)
        if bucket is None:
            bucket = self._buckets[length] = _Bucket(self, length)
        bucket.load(prefill_cache, prompt_len)
        self.active = bucket

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """float32 logits [batch, vocab] of the next position after ``token``."""
        return self.active.step(token)


class _Bucket:
    """One static cache length: its buffers, and its captured graph once one exists."""

    def __init__(self, owner: StaticDecoder, length: int) -> None:
        self.owner = owner
        self.length = length
        self.cache = StaticCache(config=owner.text_config, max_cache_len=length)
        self.token = torch.zeros((1, 1), dtype=torch.long, device=owner.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None
        self.graph_failed = False
        self._step = torch.compile(self._forward, dynamic=False) if owner.compile_step else self._forward

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

    def _run(self) -> torch.Tensor:
        model, kernel = self.owner.model, self.owner.experts_kernel
        previous = getattr(model.config, "_experts_implementation", None)
        switch = previous != kernel and self.owner.device.type == "cuda"
        if switch:
            model.set_experts_implementation(kernel)
        try:
            return self._step(self.token)
        finally:
            if switch and previous is not None:
                model.set_experts_implementation(previous)

    def _capture(self) -> None:
        positions = [layer.cumulative_length.clone() for layer in self.cache.layers]
        try:
            stream = torch.cuda.Stream(self.owner.device)
            stream.wait_stream(torch.cuda.current_stream(self.owner.device))
            with torch.cuda.stream(stream):
                for _ in range(GRAPH_WARMUP_STEPS):
                    self._run()
            torch.cuda.current_stream(self.owner.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.logits = self._run()
            self.graph = graph
        finally:
            # Warmup steps advanced the cache; their keys/values past the real position are masked
            # and overwritten by the real steps, so restoring the position is enough.
            for layer, position in zip(self.cache.layers, positions):
                layer.cumulative_length.copy_(position)

    def step(self, token: torch.Tensor) -> torch.Tensor:
        self.token.copy_(token.view(1, 1))
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
