"""DeepSeek-OCR v1 behind the engine's ModelAdapter protocol.

The engine calls these steps one by one so each can be timed: ``prepare`` (vendor
preprocessing), ``encode_images`` (SAM -> CLIP -> projector), ``prefill`` (decoder over the
whole prompt), ``decode_step`` (one token with the KV cache). ``generate_reference`` is the
model's own monolithic ``generate`` on the same prepared inputs, for parity checks.
"""

from __future__ import annotations


import torch
from transformers import DynamicCache

from pytest_dsocr.decoding import DecodePolicy
from pytest_dsocr.families import FAMILIES
from pytest_dsocr.models import build_model
from pytest_dsocr.models.decode_steps import DecodeSteps
from pytest_dsocr.models.fast_paths import VisionFastPath
from pytest_dsocr.models.deepseek_ocr.device_processing import prepare_inputs_on_device
from pytest_dsocr.models.deepseek_ocr.processing import PreparedInputs, prepare_inputs
from pytest_dsocr.models.deepseek_ocr.spec import SPECS
from pytest_dsocr.models.deepseek_ocr.tokenizer import load_tokenizer
from pytest_dsocr.models.weights import resolve_weights


FAMILY = "deepseek_ocr"


class DeepseekOCRAdapter(DecodeSteps):
    family = FAMILY
    substages = FAMILIES[FAMILY].stages.vision_parts  # sam, clip, projector

    def __init__(self, model_cfg, device: torch.device, dtype: torch.dtype, prompt: str,
                 decode_backend: str = "eager", *, preprocess_device: str = "cpu",
                 vision_backend: str = "eager", prefill_backend: str = "eager") -> None:
        self.spec = SPECS[model_cfg.size]
        self.device = device
        self.dtype = dtype
        self.prompt = prompt
        self.base_size = model_cfg.base_size
        self.image_size = model_cfg.image_size
        self.crop_mode = model_cfg.crop_mode
        self.max_crops = model_cfg.max_crops
        self.weights = resolve_weights(model_cfg)  # bundled, random or a checkpoint folder
        self.model = build_model("deepseek_ocr", model_cfg.size, device=str(device), dtype=dtype,
                                 path=self.weights.path, seed=model_cfg.seed)
        self.tokenizer = load_tokenizer(self.weights.path, self.spec)
        self.max_positions = self.spec.text.max_position_embeddings
        self.eos_token_id = self.spec.eos_token_id
        self.init_decode_backend(decode_backend)
        self.init_preprocess_device(preprocess_device)
        self.init_fast_paths(vision_backend, prefill_backend)

    def vision_fast_path_factory(self):
        return VisionFastPath

    def substage_modules(self) -> list[tuple[str, torch.nn.Module]]:
        inner = self.model.model
        return [("sam", inner.sam_model), ("clip", inner.vision_model), ("projector", inner.projector)]

    def prepare(self, image) -> PreparedInputs:
        """The vendor's inputs: Pillow on the host (``preprocess_device=cpu``) or tensor ops on the GPU."""
        prepare = prepare_inputs_on_device if self.preprocess_on_device else prepare_inputs
        return prepare(
            image, self.tokenizer, self.spec, base_size=self.base_size, image_size=self.image_size,
            crop_mode=self.crop_mode, prompt=self.prompt, max_crops=self.max_crops,
            dtype=self.dtype, device=self.device,
        )

    def encode_images(self, prepared: PreparedInputs) -> list[torch.Tensor]:
        # The crop grid from the host copy: no device sync to read it back.
        return self.model.model.encode_images(prepared.images, [prepared.crop_grid])

    def encode_images_batch(self, prepared: list[PreparedInputs]) -> list[list[torch.Tensor]]:
        """All pages' crops through the encoders together, then all global views (one call each);
        per page what :meth:`encode_images` gives for it alone."""
        images = [item for p in prepared for item in p.images]
        return [[embeds] for embeds in self.model.model.encode_images(images, [p.crop_grid for p in prepared])]

    def prompt_embeds(self, prepared: PreparedInputs, image_embeds) -> torch.Tensor:
        """The prompt's token embeddings with the image rows in place: [1, L, D]."""
        return self.model.model.merge_image_embeddings(prepared.input_ids, image_embeds, prepared.images_seq_mask)

    def prompt_embeds(self, prepared: PreparedInputs, image_embeds) -> torch.Tensor:
        """The prompt's input embeddings [1, L, D]: token embeddings with the image features in place."""
        return self.model.model.merge_image_embeddings(prepared.input_ids, image_embeds, prepared.images_seq_mask)

    def prefill(self, prepared: PreparedInputs, image_embeds) -> tuple[torch.Tensor, DynamicCache]:
        return self.prefill_embeds(self.prompt_embeds(prepared, image_embeds))

    def generate_reference(self, prepared: PreparedInputs, policy: DecodePolicy, max_new_tokens: int) -> list[int]:
        """The model's own ``generate`` on the same inputs: the reference path for parity."""
        return self.generate_tokens(
            prepared.input_ids, policy, max_new_tokens, images=prepared.images,
            images_seq_mask=prepared.images_seq_mask, images_spatial_crop=prepared.images_spatial_crop,
            attention_mask=torch.ones_like(prepared.input_ids),
        )
