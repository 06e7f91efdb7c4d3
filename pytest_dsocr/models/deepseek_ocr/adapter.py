"""DeepSeek-OCR v1 behind the engine's ModelAdapter protocol.

The engine calls these steps one by one so each can be timed: ``prepare`` (vendor
preprocessing), ``encode_images`` (SAM -> CLIP -> projector), ``prefill`` (decoder over the
whole prompt), ``decode_step`` (one token with the KV cache). ``generate_reference`` is the
model's own monolithic ``generate`` on the same prepared inputs, for parity checks.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
from transformers import DynamicCache

from pytest_dsocr.data.images import load_image
from pytest_dsocr.decoding import DecodePolicy
from pytest_dsocr.models import build_model
from pytest_dsocr.models.deepseek_ocr.processing import PreparedInputs, prepare_inputs
from pytest_dsocr.models.deepseek_ocr.spec import SPECS
from pytest_dsocr.models.deepseek_ocr.tokenizer import load_tokenizer


class DeepseekOCRAdapter:
    family = "deepseek_ocr"
    substages = ("sam", "clip", "projector")

    def __init__(self, model_cfg, device: torch.device, dtype: torch.dtype, prompt: str,
                 decode_backend: str = "eager") -> None:
        self.spec = SPECS[model_cfg.size]
        self.device = device
        self.dtype = dtype
        self.prompt = prompt
        self.base_size = model_cfg.base_size
        self.image_size = model_cfg.image_size
        self.crop_mode = model_cfg.crop_mode
        self.max_crops = model_cfg.max_crops
        self.model = build_model("deepseek_ocr", model_cfg.size, device=str(device), dtype=dtype,
                                 path=model_cfg.path, seed=model_cfg.seed)
        self.tokenizer = load_tokenizer(model_cfg.path, self.spec)
        self.max_positions = self.spec.text.max_position_embeddings
        self.eos_token_id = self.spec.eos_token_id
        self.decode_backend = decode_backend
        self.static = None
        if decode_backend == "static":
            from pytest_dsocr.static_decode import StaticDecoder

            self.static = StaticDecoder(self.model, self.model.model.language_model.config,
                                        self.max_positions, device)

    def substage_modules(self) -> list[tuple[str, torch.nn.Module]]:
        inner = self.model.model
        return [("sam", inner.sam_model), ("clip", inner.vision_model), ("projector", inner.projector)]

    def load(self, image_path: Path):
        return load_image(image_path)

    def prepare(self, image) -> PreparedInputs:
        return prepare_inputs(
            image, self.tokenizer, self.spec, base_size=self.base_size, image_size=self.image_size,
            crop_mode=self.crop_mode, prompt=self.prompt, max_crops=self.max_crops,
            dtype=self.dtype, device=self.device,
        )

    def encode_images(self, prepared: PreparedInputs) -> list[torch.Tensor]:
        return self.model.model.encode_images(prepared.images, prepared.images_spatial_crop)

    def prefill(self, prepared: PreparedInputs, image_embeds) -> tuple[torch.Tensor, DynamicCache]:
        inputs_embeds = self.model.model.merge_image_embeddings(
            prepared.input_ids, image_embeds, prepared.images_seq_mask
        )
        cache = DynamicCache()
        out = self.model(inputs_embeds=inputs_embeds, past_key_values=cache, use_cache=True, logits_to_keep=1)
        # float32 copy of the last position, as generate() takes it before the logits processors
        return out.logits[:, -1].float(), out.past_key_values

    def decode_context(self):
        """The kernel choices ``generate`` makes for one-token steps, so both decode alike.

        On a GPU, transformers' generate switches the MoE from ``grouped_mm`` to ``batched_mm``
        for the decode loop (much faster at one token); doing the same keeps our loop's kernels,
        speed and tokens those of the reference path.
        """
        optimize = getattr(self.model, "_optimize_model_for_decode", None)
        return optimize() if optimize is not None else nullcontext()

    def begin_decode(self, cache: DynamicCache, prompt_len: int, budget: int):
        if self.static is None:
            return cache
        self.static.start(cache, prompt_len, budget)
        return self.static

    def decode_step(self, token: torch.Tensor, cache) -> torch.Tensor:
        if self.static is not None:
            return self.static.step(token)
        out = self.model(input_ids=token.view(-1, 1), past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float()

    def generate_reference(self, prepared: PreparedInputs, policy: DecodePolicy, max_new_tokens: int) -> list[int]:
        """The model's own ``generate`` on the same inputs: the reference path for parity."""
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=prepared.input_ids,
                images=prepared.images,
                images_seq_mask=prepared.images_seq_mask,
                images_spatial_crop=prepared.images_spatial_crop,
                attention_mask=torch.ones_like(prepared.input_ids),
                max_new_tokens=max_new_tokens,
                pad_token_id=policy.eos_token_id,
                **policy.generate_kwargs(),
            )
        return out[0, prepared.input_ids.shape[1]:].tolist()

    def decode_text(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=False)

