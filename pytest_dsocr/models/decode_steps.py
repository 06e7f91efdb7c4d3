"""The engine-facing decode steps both DeepSeek-OCR families share.

An adapter that mixes in :class:`DecodeSteps` only says how to prepare an image, encode it and
merge its features into the prompt embeddings; the prefill over those embeddings, the decode
backends (eager DynamicCache, or the static cache with its CUDA graph) and the detokenizing are
the same for v1 and v2, whose decoder is the same DeepSeek-V2 MoE.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import DynamicCache

from pytest_dsocr.compat import cache_kwargs, output_cache
from pytest_dsocr.data.images import load_image
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.models.fast_paths import FastPaths
from pytest_dsocr.static_decode import DECODE_EXPERTS, StaticDecoder, graph_experts_kernel

DECODE_BACKENDS = ("eager", "static", "graph")
PREPROCESS_DEVICES = ("cpu", "cuda")


@dataclass
class BatchLayout:
    """Left padding of a batch of prompts of different lengths: the mask grows by one per step."""

    attention_mask: torch.Tensor  # long [batch, length so far]: 0 on padding
    next_positions: torch.Tensor  # long [batch]: each row's position of the next token


class DecodeSteps:
    """Needs ``self.model`` (a causal LM with ``model.language_model``), ``self.tokenizer``,
    ``self.device`` and ``self.max_positions``; call :meth:`init_decode_backend` once."""

    static = None
    decode_backend = "eager"
    preprocess_on_device = False

    def init_decode_backend(self, decode_backend: str) -> None:
        """``eager`` (DynamicCache), ``static`` (static cache, graph-captured step on CUDA) or
        ``graph`` (static, with greedy token selection and the in-place MoE inside the graph)."""
        if decode_backend not in DECODE_BACKENDS:
            raise DsocrError(f"infer.decode_backend={decode_backend!r}: expected one of {', '.join(DECODE_BACKENDS)}")
        self.decode_backend = decode_backend
        self.static = None
        if decode_backend in ("static", "graph"):
            select = decode_backend == "graph"
            self.static = StaticDecoder(self.model, self.model.model.language_model.config,
                                        self.max_positions, self.device, select_in_graph=select,
                                        experts_kernel=graph_experts_kernel(self.device) if select else DECODE_EXPERTS)

    def init_preprocess_device(self, preprocess_device: str) -> None:
        """``cpu``: the vendor's Pillow path; ``cuda``: decode on the host, pixel work on the model's GPU."""
        if preprocess_device not in PREPROCESS_DEVICES:
            raise DsocrError(f"infer.preprocess_device={preprocess_device!r}: expected one of "
                             f"{', '.join(PREPROCESS_DEVICES)}")
        if preprocess_device == "cuda" and self.device.type != "cuda":
            raise DsocrError(f"infer.preprocess_device=cuda: the model runs on {self.device}; preprocessing on "
                             "the GPU needs model.device=cuda (or set infer.preprocess_device=cpu)")
        self.preprocess_on_device = preprocess_device == "cuda"

    def init_fast_paths(self, vision_backend: str, prefill_backend: str) -> None:
        """Compiled vision / decoder-prefill paths (``eager`` or ``compiled``): :mod:`pytest_dsocr.models.fast_paths`."""
        self.fast_paths = FastPaths(self.model, vision_backend, prefill_backend, self.vision_fast_path_factory())

    def vision_fast_path_factory(self):
        """The family's compiled vision path builder, or None when it has none."""
        return None

    def use_backends(self, vision_backend: str | None = None, prefill_backend: str | None = None) -> None:
        """Switch the vision / prefill backends of this adapter at run time (same weights)."""
        paths = self.fast_paths
        paths.use(vision_backend or paths.vision_backend, prefill_backend or paths.prefill_backend)

    def variant(self, decode_backend: str | None = None, preprocess_device: str | None = None):
        """A shallow copy of this adapter (same model, weights and compiled paths) with another decode
        backend and/or preprocessing device: arms of one benchmark side by side on one model."""
        twin = copy.copy(self)
        if decode_backend is not None:
            twin.init_decode_backend(decode_backend)
        if preprocess_device is not None:
            twin.init_preprocess_device(preprocess_device)
        return twin

    @property
    def selects_in_graph(self) -> bool:
        """Whether greedy token selection runs on the device (``decode_backend=graph``)."""
        return self.static is not None and self.static.select_in_graph

    def load(self, image_path: Path):
        return load_image(image_path)

    def load_pixels(self, image_path: Path):
        """The decoded page ``prepare`` takes (an 8-bit grey page stays grey for a device upload)."""
        return load_image(image_path, keep_grey=self.preprocess_on_device)

    def prefill_embeds(self, inputs_embeds: torch.Tensor) -> tuple[torch.Tensor, DynamicCache]:
        """The decoder over the whole prompt; float32 last-position logits, as generate() takes them."""
        cache = DynamicCache()
        compiled = self.fast_paths.compiled_prefill if getattr(self, "fast_paths", None) is not None else None
        if compiled is not None:
            out = compiled(inputs_embeds=inputs_embeds, use_cache=True, **cache_kwargs(cache))
            logits = self.model.lm_head(out.last_hidden_state[:, -1:])
            return logits[:, -1].float(), output_cache(out)
        out = self.model(inputs_embeds=inputs_embeds, use_cache=True, logits_to_keep=1, **cache_kwargs(cache))
        return out.logits[:, -1].float(), output_cache(out)

    def decode_context(self):
        """The kernel choices ``generate`` makes for one-token steps, so both decode alike.

        On a GPU, transformers' generate switches the MoE from ``grouped_mm`` to ``batched_mm``
        for the decode loop (much faster at one token); doing the same keeps our loop's kernels,
        speed and tokens those of the reference path.
        """
        optimize = getattr(self.model, "_optimize_model_for_decode", None)
        return optimize() if optimize is not None else nullcontext()

    def begin_decode(self, cache: DynamicCache, prompt_len: int, budget: int):
        """The static backend takes the prefill's keys/values into its buffers (eager: unchanged)."""
        if self.static is None:
            return cache
        self.static.start(cache, prompt_len, budget)
        return self.static

    def decode_step(self, token: torch.Tensor, cache) -> torch.Tensor:
        if self.static is not None and cache is self.static:
            return self.static.step(token)
        out = self.model(input_ids=token.view(-1, 1), use_cache=True, logits_to_keep=1, **cache_kwargs(cache))
        return out.logits[:, -1].float()

    def begin_selection(self, cache, seen: torch.Tensor, length: int, prompt_len: int, token: torch.Tensor,
                        ngram_size: int | None, eos_token_id: int, min_new_tokens: int) -> None:
        """Hand the sequence so far to the in-graph selection (``decode_backend=graph``)."""
        cache.begin_selection(seen, length, prompt_len, token, ngram_size, eos_token_id, min_new_tokens)

    def next_tokens(self, cache, forced: torch.Tensor | None = None) -> torch.Tensor:
        """The next ids [batch, steps] chosen in the graph (or ``forced`` ones, teacher-forced)."""
        return cache.next_tokens(forced)

    # -- batches ---------------------------------------------------------------------------------

    def encode_images_batch(self, prepared: list) -> list:
        """Image embeddings of each page (a family with batched encoders overrides this)."""
        return [self.encode_images(p) for p in prepared]

    def prefill_batch(self, embeds: list[torch.Tensor]) -> tuple[torch.Tensor, DynamicCache, BatchLayout | None]:
        """The decoder over several prompts ``[1, L_i, D]``: float32 last-position logits [batch, vocab].

        Prompts of one length run as they would alone (no mask, positions from the cache); others
        are left-padded with an attention mask and per-row positions, so each real token keeps the
        position it has alone. The layout (None without padding) goes to :meth:`decode_step_batch`.
        """
        lengths = [int(e.shape[1]) for e in embeds]
        if len(set(lengths)) == 1:
            logits, cache = self.prefill_embeds(torch.cat(embeds, dim=0))
            return logits, cache, None
        longest, first = max(lengths), embeds[0]
        padded = first.new_zeros((len(embeds), longest, first.shape[-1]))
        mask = torch.zeros((len(embeds), longest), dtype=torch.long, device=first.device)
        for row, (e, n) in enumerate(zip(embeds, lengths)):
            padded[row, longest - n:] = e[0]
            mask[row, longest - n:] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        cache = DynamicCache()
        out = self.model(inputs_embeds=padded, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1, **cache_kwargs(cache))
        layout = BatchLayout(attention_mask=mask, next_positions=positions[:, -1] + 1)
        return out.logits[:, -1].float(), output_cache(out), layout

    def decode_step_batch(self, tokens: torch.Tensor, cache, layout: BatchLayout | None) -> torch.Tensor:
        """One step for every row ([batch] ids): float32 logits [batch, vocab]."""
        if layout is None:
            return self.decode_step(tokens, cache)
        layout.attention_mask = torch.cat([layout.attention_mask, layout.attention_mask.new_ones((tokens.shape[0], 1))],
                                          dim=1)
        out = self.model(input_ids=tokens.view(-1, 1), attention_mask=layout.attention_mask,
                         position_ids=layout.next_positions.view(-1, 1), use_cache=True, logits_to_keep=1,
                         **cache_kwargs(cache))
        layout.next_positions = layout.next_positions + 1
        return out.logits[:, -1].float()

    def generate_tokens(self, input_ids: torch.Tensor, policy, max_new_tokens: int, **model_inputs) -> list[int]:
        """The model's own ``generate`` under ``policy`` (the reference path for parity): new ids."""
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, max_new_tokens=max_new_tokens,
                                      pad_token_id=policy.eos_token_id, **model_inputs, **policy.generate_kwargs())
        return out[0, input_ids.shape[1]:].tolist()

    def decode_text(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=False)
