"""DeepSeek-OCR-2 behind the engine's ModelAdapter protocol.

The same steps as v1's adapter, on transformers' native model: ``prepare`` (transformers'
processor), ``encode_images`` (SAM -> Qwen2 encoder with causal-flow queries -> projector, the
model's own ``get_image_features``), ``prefill`` (image features scattered into the prompt
embeddings as the model's forward does, then the decoder), ``decode_step`` (one token with the KV
cache; with ``decode_backend="static"`` v1's static-cache decoder, graph-captured on CUDA, takes
over after prefill). ``generate_reference`` is the model's own ``generate`` on the processor's inputs, for
parity checks. Sub-stages: ``sam`` (``vision_tower.sam_encoder``), ``encoder``
(``vision_tower.vision_encoder``), ``projector`` (``multi_modal_projector``); each runs once for
the tiles and once for the global view.
"""

from __future__ import annotations


import torch
from transformers import DynamicCache

from pytest_dsocr.decoding import DecodePolicy
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.models import build_model
from pytest_dsocr.models.decode_steps import DecodeSteps
from pytest_dsocr.models.deepseek_ocr2.processing import (
    PreparedInputs,
    ViewSettings,
    build_processor,
    prepare_inputs,
)
from pytest_dsocr.families import FAMILIES
from pytest_dsocr.models.deepseek_ocr2.spec import SPECS
from pytest_dsocr.models.deepseek_ocr2.tokenizer import load_tokenizer
from pytest_dsocr.models.weights import resolve_weights

FAMILY = "deepseek_ocr2"
SUBSTAGES = FAMILIES[FAMILY].stages.vision_parts  # sam, encoder, projector


class DeepseekOCR2Adapter(DecodeSteps):
    family = FAMILY
    substages = SUBSTAGES

    def __init__(self, model_cfg, device: torch.device, dtype: torch.dtype, prompt: str,
                 decode_backend: str = "eager", *, preprocess_device: str = "cpu",
                 vision_backend: str = "eager", prefill_backend: str = "eager") -> None:
        self.spec = SPECS[model_cfg.size]
        self.device = device
        self.dtype = dtype
        self.prompt = prompt
        self.views = ViewSettings.from_model_config(model_cfg.base_size, model_cfg.image_size,
                                                    model_cfg.crop_mode, model_cfg.max_crops)
        self.weights = resolve_weights(model_cfg)  # bundled, random or a checkpoint folder
        self.model = build_model(FAMILY, model_cfg.size, device=str(device), dtype=dtype,
                                 path=self.weights.path, seed=model_cfg.seed)
        self.tokenizer = load_tokenizer(self.weights.path, self.spec)
        self.processor = build_processor(self.tokenizer, self.spec, self.views)
        self.max_positions = self.spec.text.max_position_embeddings
        self.eos_token_id = self.spec.eos_token_id
        self.init_decode_backend(decode_backend)
        if preprocess_device != "cpu":
            raise DsocrError(f"infer.preprocess_device={preprocess_device}: DeepSeek-OCR-2 preprocesses with "
                             "transformers' processor on the host; use infer.preprocess_device=cpu")
        if vision_backend != "eager":
            raise DsocrError(f"infer.vision_backend={vision_backend}: only DeepSeek-OCR v1 has a compiled vision "
                             "path; use infer.vision_backend=eager")
        self.init_fast_paths("eager", prefill_backend)

    def substage_modules(self) -> list[tuple[str, torch.nn.Module]]:
        inner = self.model.model
        tower = inner.vision_tower
        return [("sam", tower.sam_encoder), ("encoder", tower.vision_encoder),
                ("projector", inner.multi_modal_projector)]

    def prepare(self, image) -> PreparedInputs:
        return prepare_inputs(image, self.processor, self.spec, self.views, prompt=self.prompt,
                              dtype=self.dtype, device=self.device)

    def encode_images(self, prepared: PreparedInputs) -> torch.Tensor:
        """Image features in prompt order: tiles, global view, view separator."""
        features = self.model.model.get_image_features(**prepared.model_kwargs(), return_dict=True)
        return torch.cat(features.pooler_output, dim=0)

    def prompt_embeds(self, prepared: PreparedInputs, image_embeds: torch.Tensor) -> torch.Tensor:
        """The prompt's token embeddings with the image features scattered in: [1, L, D]."""
        inner = self.model.model
        inputs_embeds = inner.get_input_embeddings()(prepared.input_ids)
        image_embeds = image_embeds.to(inputs_embeds.device, inputs_embeds.dtype)
        mask = inner.get_placeholder_mask(prepared.input_ids, inputs_embeds, image_embeds)
        return inputs_embeds.masked_scatter(mask, image_embeds)

    def prefill(self, prepared: PreparedInputs, image_embeds: torch.Tensor) -> tuple[torch.Tensor, DynamicCache]:
        return self.prefill_embeds(self.prompt_embeds(prepared, image_embeds))

    def generate_reference(self, prepared: PreparedInputs, policy: DecodePolicy, max_new_tokens: int) -> list[int]:
        """The model's own ``generate`` on the processor's inputs: the reference path for parity."""
        return self.generate_tokens(prepared.input_ids, policy, max_new_tokens,
                                    attention_mask=prepared.attention_mask, **prepared.model_kwargs())
