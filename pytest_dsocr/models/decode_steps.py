"""The engine-facing decode steps both DeepSeek-OCR families share.

An adapter that mixes in :class:`DecodeSteps` only says how to prepare an image, encode it and
merge its features into the prompt embeddings; the prefill over those embeddings, the decode
backends (eager DynamicCache, or the static cache with its CUDA graph) and the detokenizing are
the same for v1 and v2, whose decoder is the same DeepSeek-V2 MoE.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
from transformers import DynamicCache

from pytest_dsocr.compat import cache_kwargs, output_cache
from pytest_dsocr.data.images import load_image
from pytest_dsocr.static_decode import StaticDecoder


class DecodeSteps:
    """Needs ``self.model`` (a causal LM with ``model.language_model``), ``self.tokenizer``,
    ``self.device`` and ``self.max_positions``; call :meth:`init_decode_backend` once."""

    static = None

    def init_decode_backend(self, decode_backend: str) -> None:
        self.decode_backend = decode_backend
        self.static = None
        if decode_backend == "static":
            self.static = StaticDecoder(self.model, self.model.model.language_model.config,
                                        self.max_positions, self.device)

    def load(self, image_path: Path):
        return load_image(image_path)

    def prefill_embeds(self, inputs_embeds: torch.Tensor) -> tuple[torch.Tensor, DynamicCache]:
        """The decoder over the whole prompt; float32 last-position logits, as generate() takes them."""
        cache = DynamicCache()
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
        if self.static is not None:
            return self.static.step(token)
        out = self.model(input_ids=token.view(-1, 1), use_cache=True, logits_to_keep=1, **cache_kwargs(cache))
        return out.logits[:, -1].float()

    def generate_tokens(self, input_ids: torch.Tensor, policy, max_new_tokens: int, **model_inputs) -> list[int]:
        """The model's own ``generate`` under ``policy`` (the reference path for parity): new ids."""
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, max_new_tokens=max_new_tokens,
                                      pad_token_id=policy.eos_token_id, **model_inputs, **policy.generate_kwargs())
        return out[0, input_ids.shape[1]:].tolist()

    def decode_text(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=False)
