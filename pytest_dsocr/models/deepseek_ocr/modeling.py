"""DeepSeek-OCR (v1) as a torch module on current transformers, without remote code.

Reads top to bottom as the architecture:

    SAM ViT-B (transformers' ``DeepseekOcr2SamVisionEncoder``: windowed + global rel-pos
    blocks, neck, two stride-2 convs)
      -> CLIP-L/14 fed with SAM's features as its patch embeddings (this file)
      -> linear projector over concat(CLIP without class token, SAM flattened) (this file)
      -> image-token layout: image_newline per feature row, local crops as one big grid,
         then the global view, then view_seperator (vendor spelling)
      -> DeepSeek-V2 MoE decoder (transformers' ``DeepseekOcr2TextModel``) -> lm_head

Every size comes from a :class:`~pytest_dsocr.models.deepseek_ocr.spec.DeepseekOCRSpec`
through :class:`DeepseekOCRConfig`; parameter names follow the public checkpoint wherever
the module is ours (``checkpoint.py`` holds the exact map for the reused transformers parts).
Facts were checked against the vendor's vLLM code (deepencoder/sam_vary_sdpa.py,
deepencoder/clip_sdpa.py, deepseek_ocr.py), never copied from it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.deepseek_ocr2.configuration_deepseek_ocr2 import (
    DeepseekOcr2SamVisionConfig,
    DeepseekOcr2TextConfig,
)
from transformers.models.deepseek_ocr2.modeling_deepseek_ocr2 import (
    DeepseekOcr2SamVisionAttention,
    DeepseekOcr2SamVisionEncoder,
    DeepseekOcr2SamVisionSdpaAttention,
    DeepseekOcr2TextModel,
)

try:  # transformers >= 5.x names it PreTrainedConfig; PretrainedConfig stays as an alias
    from transformers import PreTrainedConfig
except ImportError:  # pragma: no cover - older spelling
    from transformers import PretrainedConfig as PreTrainedConfig

from pytest_dsocr.compat import cache_kwargs, output_cache, take_cache
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.models.deepseek_ocr import checkpoint
from pytest_dsocr.models.deepseek_ocr.spec import (
    FULL,
    SPECS,
    ClipSpec,
    DeepseekOCRSpec,
    ProjectorSpec,
    SamSpec,
    TextSpec,
)

log = logging.getLogger(__name__)

INIT_STD = 0.02  # std of every random weight: logits stay O(1) in fp32 and bf16
SAM_LAYER_NORM_EPS = 1e-6  # vendor: partial(nn.LayerNorm, eps=1e-6) in blocks, LayerNorm2d(eps=1e-6) in the neck
CLIP_LAYER_NORM_EPS = 1e-5  # vendor: layernorm_epsilon = pre_layernorm_epsilon = 1e-5
QUICK_GELU_ALPHA = 1.702  # CLIP's quick_gelu: x * sigmoid(1.702 x)
CPU_EXPERTS_IMPLEMENTATION = "eager"  # transformers' loop over hit experts; no grouped GEMM kernel on CPU


# ---------------------------------------------------------------------------------------
# Configuration: the spec stays the single source of truth
# ---------------------------------------------------------------------------------------


def _sam_config(spec: DeepseekOCRSpec) -> DeepseekOcr2SamVisionConfig:
    sam = spec.sam
    return DeepseekOcr2SamVisionConfig(
        hidden_size=sam.width,
        num_hidden_layers=sam.layers,
        num_attention_heads=sam.heads,
        mlp_dim=sam.mlp_dim,
        patch_size=sam.patch_size,
        image_size=sam.image_size,
        window_size=sam.window_size,
        global_attn_indexes=list(sam.global_attn_indexes),
        output_channels=sam.out_chans,
        downsample_channels=list(sam.downsample_channels),
        layer_norm_eps=SAM_LAYER_NORM_EPS,
        hidden_act="gelu",  # exact erf GELU, as the vendor's nn.GELU
        qkv_bias=True,
        use_abs_pos=True,
        use_rel_pos=True,
        initializer_range=INIT_STD,  # transformers' SAM default (1e-10) would give an all-zero encoder
    )


def _text_config(spec: DeepseekOCRSpec) -> DeepseekOcr2TextConfig:
    text = spec.text
    config = DeepseekOcr2TextConfig(
        vocab_size=text.vocab_size,
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        moe_intermediate_size=text.moe_intermediate_size,
        num_hidden_layers=text.num_hidden_layers,
        num_attention_heads=text.num_attention_heads,
        num_key_value_heads=text.num_key_value_heads,
        n_routed_experts=text.n_routed_experts,
        n_shared_experts=text.n_shared_experts,
        num_experts_per_tok=text.num_experts_per_tok,
        mlp_layer_types=text.mlp_layer_types,
        max_position_embeddings=text.max_position_embeddings,
        rms_norm_eps=text.rms_norm_eps,
        # The vendor's MHA path is LlamaAttention with default (rotate-half) RoPE.
        rope_parameters={"rope_type": "default", "rope_theta": text.rope_theta},
        topk_method="greedy",  # softmax scores, top-k, no renormalisation (norm_topk_prob unset)
        n_group=1,
        topk_group=1,
        routed_scaling_factor=1.0,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=spec.bos_token_id,
        eos_token_id=spec.eos_token_id,
        pad_token_id=None,
        initializer_range=INIT_STD,
        tie_word_embeddings=False,
        use_cache=True,
    )
    if config.head_dim != text.head_dim:  # transformers derives it; the spec must agree
        raise DsocrError(f"text head_dim {config.head_dim} != spec head_dim {text.head_dim}")
    return config


class DeepseekOCRConfig(PreTrainedConfig):
    """Configuration of :class:`DeepseekOCRForCausalLM`, made from a spec and able to rebuild it.

    ``sam``/``clip``/``projector``/``text`` hold the spec's records as plain dicts (so the
    config serialises); ``text_config`` and ``sam_config`` are the transformers configs of the
    reused decoder and SAM encoder, always derived from the spec in ``__post_init__``.
    The MoE kernel is chosen with the standard ``experts_implementation`` keyword
    ("eager", "batched_mm", "grouped_mm", ...); it reaches ``text_config``.
    """

    model_type = "dsocr_deepseek_ocr"
    # A plain dict works on both sides of transformers' rename (5.17 ``sub_configs`` ClassVar,
    # 5.23 ``sub_configs_defaults`` + read-only ``sub_configs``): we build the sub-configs ourselves.
    sub_configs = {"text_config": DeepseekOcr2TextConfig, "sam_config": DeepseekOcr2SamVisionConfig}

    spec_name: str = FULL.name
    sam: dict | None = None
    clip: dict | None = None
    projector: dict | None = None
    text: dict | None = None
    image_token_id: int = FULL.image_token_id
    bos_token_id: int | None = FULL.bos_token_id
    eos_token_id: int | None = FULL.eos_token_id
    pad_token_id: int | None = None
    patch_size: int = FULL.patch_size
    downsample_ratio: int = FULL.downsample_ratio
    initializer_range: float = INIT_STD
    tie_word_embeddings: bool = False
    use_cache: bool = True
    text_config: dict | PreTrainedConfig | None = None
    sam_config: dict | PreTrainedConfig | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        self.sam = {**asdict(FULL.sam), **(self.sam or {})}
        self.clip = {**asdict(FULL.clip), **(self.clip or {})}
        self.projector = {**asdict(FULL.projector), **(self.projector or {})}
        self.text = {**asdict(FULL.text), **(self.text or {})}
        spec = self.spec
        # Derived, never read back: a stale dict from a saved config cannot disagree with the spec.
        self.text_config = _text_config(spec)
        self.sam_config = _sam_config(spec)
        super().__post_init__(**kwargs)

    @classmethod
    def from_spec(cls, spec: DeepseekOCRSpec, **kwargs: Any) -> DeepseekOCRConfig:
        """The config of one spec; ``kwargs`` are transformers config options (experts_implementation, ...)."""
        return cls(
            spec_name=spec.name,
            sam=asdict(spec.sam),
            clip=asdict(spec.clip),
            projector=asdict(spec.projector),
            text=asdict(spec.text),
            image_token_id=spec.image_token_id,
            bos_token_id=spec.bos_token_id,
            eos_token_id=spec.eos_token_id,
            patch_size=spec.patch_size,
            downsample_ratio=spec.downsample_ratio,
            **kwargs,
        )

    @property
    def spec(self) -> DeepseekOCRSpec:
        """The spec this config was made from (tuples restored after a JSON round trip)."""
        sam = dict(self.sam)
        sam["global_attn_indexes"] = tuple(sam["global_attn_indexes"])
        sam["downsample_channels"] = tuple(sam["downsample_channels"])
        return DeepseekOCRSpec(
            name=self.spec_name,
            sam=SamSpec(**sam),
            clip=ClipSpec(**self.clip),
            projector=ProjectorSpec(**self.projector),
            text=TextSpec(**self.text),
            image_token_id=self.image_token_id,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            patch_size=self.patch_size,
            downsample_ratio=self.downsample_ratio,
        )


# ---------------------------------------------------------------------------------------
# SAM ViT-B: transformers' encoder, with the vendor's relative-position bias
# ---------------------------------------------------------------------------------------


class _VendorRelPos:
    """The vendor's decomposed rel-pos bias, for transformers' SAM attention classes.

    Two differences from transformers' helpers, both towards the vendor: the table is
    resized (global blocks on 640-px crops: 127 -> 79 entries) in float32 and only when its
    length differs, so bf16 results equal the vendor's bit for bit; and the bias is built
    contiguous ([B*heads, q_h*q_w, k_h, k_w]) with the index on the table's device, where
    transformers' broadcast leaves a strided tensor that the attention then copies (10x
    slower on CPU for a 64 x 64 grid) and indexes with a host tensor.
    """

    def get_rel_pos(self, q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
        max_rel_dist = 2 * max(q_size, k_size) - 1
        if rel_pos.shape[0] != max_rel_dist:
            resized = F.interpolate(
                rel_pos.to(torch.float32).reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1),
                size=max_rel_dist,
                mode="linear",
            ).to(rel_pos.dtype)
            rel_pos = resized.reshape(-1, max_rel_dist).permute(1, 0)
        # Scale the coordinates of the shorter side when query and key sizes differ.
        q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
        k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
        relative_coords = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
        return rel_pos[relative_coords.long()]

    def get_decomposed_rel_pos(self, query: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                               q_size: tuple[int, int], k_size: tuple[int, int]) -> torch.Tensor:
        q_h, q_w = q_size
        k_h, k_w = k_size
        table_h = self.get_rel_pos(q_h, k_h, rel_pos_h)
        table_w = self.get_rel_pos(q_w, k_w, rel_pos_w)
        batch, _, dim = query.shape
        grid = query.reshape(batch, q_h, q_w, dim)
        rel_h = torch.einsum("bhwc,hkc->bhwk", grid, table_h).reshape(batch, q_h * q_w, k_h, 1)
        rel_w = torch.einsum("bhwc,wkc->bhwk", grid, table_w).reshape(batch, q_h * q_w, 1, k_w)
        return rel_h + rel_w


class SamSdpaAttention(_VendorRelPos, DeepseekOcr2SamVisionSdpaAttention):
    """transformers' SDPA SAM attention with the vendor's rel-pos bias."""


class SamEagerAttention(_VendorRelPos, DeepseekOcr2SamVisionAttention):
    """transformers' eager SAM attention with the vendor's rel-pos bias."""


SAM_ATTENTION_CLASSES = {
    DeepseekOcr2SamVisionSdpaAttention: SamSdpaAttention,
    DeepseekOcr2SamVisionAttention: SamEagerAttention,
}


def use_vendor_rel_pos(encoder: DeepseekOcr2SamVisionEncoder) -> None:
    """Switch each block's attention to its vendor rel-pos subclass (same parameters, same state)."""
    for index, layer in enumerate(encoder.layers):
        replacement = SAM_ATTENTION_CLASSES.get(type(layer.attn))
        if replacement is None:
            log.warning("SAM block %d: attention %s kept with transformers' rel-pos helpers",
                        index, type(layer.attn).__name__)
            continue
        layer.attn.__class__ = replacement


# ---------------------------------------------------------------------------------------
# CLIP-L/14 whose patch embeddings are SAM's features
# ---------------------------------------------------------------------------------------


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(QUICK_GELU_ALPHA * x)


class ClipVisionEmbeddings(nn.Module):
    """Class token + patch tokens + absolute positions (257 = 16 x 16 + 1 at 224 px).

    ``patch_embedding`` is in the checkpoint but bypassed when SAM features are given, as in
    the vendor model. Other grids get the position table resized bicubically (antialiased,
    in float32), the class position left as is.
    """

    def __init__(self, spec: ClipSpec) -> None:
        super().__init__()
        self.embed_dim = spec.width
        self.grid_size = spec.image_size // spec.patch_size
        self.class_embedding = nn.Parameter(torch.empty(spec.width))
        self.patch_embedding = nn.Conv2d(3, spec.width, kernel_size=spec.patch_size, stride=spec.patch_size, bias=False)
        self.position_embedding = nn.Embedding(spec.num_positions, spec.width)

    def interpolate_pos_encoding(self, height: int, width: int) -> torch.Tensor:
        """Position table [1, 1 + height * width, C] for a height x width grid of patches."""
        table = self.position_embedding.weight
        if height == self.grid_size and width == self.grid_size:
            return table.unsqueeze(0)
        class_pos, grid = table[:1], table[1:]
        grid = grid.reshape(1, self.grid_size, self.grid_size, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(
            grid.to(torch.float32), size=(height, width), mode="bicubic", antialias=True, align_corners=False
        ).to(table.dtype)
        grid = grid.permute(0, 2, 3, 1).reshape(height * width, -1)
        return torch.cat([class_pos, grid], dim=0).unsqueeze(0)

    def forward(self, pixel_values: torch.Tensor | None, patch_embeds: torch.Tensor | None = None) -> torch.Tensor:
        if patch_embeds is None:
            patch_embeds = self.patch_embedding(pixel_values)  # [B, C, h, w]
        batch, _, height, width = patch_embeds.shape
        tokens = patch_embeds.flatten(2).transpose(1, 2)
        class_token = self.class_embedding.to(tokens.dtype).expand(batch, 1, -1)
        embeddings = torch.cat([class_token, tokens], dim=1)
        return embeddings + self.interpolate_pos_encoding(height, width).to(tokens.dtype)


class ClipAttention(nn.Module):
    """Bidirectional multi-head attention with one fused qkv projection (torch SDPA)."""

    def __init__(self, spec: ClipSpec) -> None:
        super().__init__()
        self.num_heads = spec.heads
        self.head_dim = spec.width // spec.heads
        self.qkv_proj = nn.Linear(spec.width, 3 * spec.width, bias=True)
        self.out_proj = nn.Linear(spec.width, spec.width, bias=True)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, length, width = hidden_states.shape
        # qkv_proj rows are [q | k | v], each [heads, head_dim], as the vendor's view(B, L, 3, H, D).
        qkv = self.qkv_proj(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = F.scaled_dot_product_attention(query, key, value)
        return self.out_proj(attn.transpose(1, 2).reshape(batch, length, width))


class ClipMLP(nn.Module):
    def __init__(self, spec: ClipSpec) -> None:
        super().__init__()
        self.fc1 = nn.Linear(spec.width, spec.mlp_dim, bias=True)
        self.fc2 = nn.Linear(spec.mlp_dim, spec.width, bias=True)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(quick_gelu(self.fc1(hidden_states)))


class ClipEncoderLayer(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, spec: ClipSpec) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(spec.width, eps=CLIP_LAYER_NORM_EPS)
        self.self_attn = ClipAttention(spec)
        self.layer_norm2 = nn.LayerNorm(spec.width, eps=CLIP_LAYER_NORM_EPS)
        self.mlp = ClipMLP(spec)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attn(self.layer_norm1(hidden_states))
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


class ClipTransformer(nn.Module):
    def __init__(self, spec: ClipSpec) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ClipEncoderLayer(spec) for _ in range(spec.layers))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return hidden_states


class ClipVisionModel(nn.Module):
    """CLIP-L/14 vision tower (no final norm, no pooling): returns [B, 1 + h*w, width]."""

    def __init__(self, spec: ClipSpec) -> None:
        super().__init__()
        self.embeddings = ClipVisionEmbeddings(spec)
        self.pre_layrnorm = nn.LayerNorm(spec.width, eps=CLIP_LAYER_NORM_EPS)  # vendor spelling
        self.transformer = ClipTransformer(spec)

    def forward(self, pixel_values: torch.Tensor | None, patch_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """``patch_embeds`` = SAM output [B, C, h, w]; ``pixel_values`` only used without it."""
        hidden_states = self.pre_layrnorm(self.embeddings(pixel_values, patch_embeds))
        return self.transformer(hidden_states)


# ---------------------------------------------------------------------------------------
# Projector
# ---------------------------------------------------------------------------------------


class LinearProjector(nn.Module):
    """The vendor's MlpProjector with projector_type "linear": one Linear named ``layers``."""

    def __init__(self, spec: ProjectorSpec) -> None:
        super().__init__()
        self.layers = nn.Linear(spec.input_dim, spec.n_embed, bias=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


# ---------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------


class DeepseekOCRPreTrainedModel(PreTrainedModel):
    config_class = DeepseekOCRConfig
    config: DeepseekOCRConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _no_split_modules = ["DeepseekOcr2SamVisionLayer", "ClipEncoderLayer", "DeepseekOcr2TextDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_flash_attn = False  # SAM's rel-pos bias needs an additive mask
    _supports_flex_attn = False
    _can_compile_fullgraph = False  # encode_images reads crop grids on the host

    @classmethod
    def _can_set_experts_implementation(cls) -> bool:
        # transformers decides by looking for @use_experts_implementation in this file's source;
        # the experts live in the reused decoder, which has it.
        return True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)  # Linear/Conv/Embedding: normal(INIT_STD); LayerNorm: ones/zeros
        if isinstance(module, ClipVisionEmbeddings):
            init.normal_(module.class_embedding, mean=0.0, std=self.config.initializer_range)
        elif isinstance(module, DeepseekOCRModel):
            # The vendor initialises both with randn / sqrt(n_embed).
            embed_std = module.image_newline.shape[0] ** -0.5
            init.normal_(module.image_newline, mean=0.0, std=embed_std)
            init.normal_(module.view_seperator, mean=0.0, std=embed_std)
            # SAM's own init leaves absolute and relative positions at zero (as the vendor's
            # training init); random values make a random model exercise their interpolation.
            sam = module.sam_model
            positions = [sam.pos_embed] + [
                table for layer in sam.layers for table in (layer.attn.rel_pos_h, layer.attn.rel_pos_w)
            ]
            for table in positions:
                init.normal_(table, mean=0.0, std=self.config.initializer_range)


def _crop_grids(images_spatial_crop: Any, batch: int) -> list[tuple[int, int]]:
    """(width tiles, height tiles) per batch item from a [B, 2] / [B, 1, 2] tensor or a list.

    The grid decides the token layout on the host; pass a CPU tensor or a list to keep this
    free of a device sync (the vendor instead tests the crops' pixel sum on the device).
    """
    if images_spatial_crop is None:
        return [(1, 1)] * batch
    grids = torch.as_tensor(images_spatial_crop).reshape(-1, 2).tolist()
    if len(grids) != batch:
        raise DsocrError(f"images_spatial_crop has {len(grids)} entries for {batch} images")
    return [(int(w), int(h)) for w, h in grids]


class DeepseekOCRModel(DeepseekOCRPreTrainedModel):
    """Vision encoders, projector, layout parameters and the decoder (no LM head)."""

    def __init__(self, config: DeepseekOCRConfig) -> None:
        super().__init__(config)
        spec = config.spec
        self.sam_model = DeepseekOcr2SamVisionEncoder(config.sam_config)
        use_vendor_rel_pos(self.sam_model)
        self.vision_model = ClipVisionModel(spec.clip)
        self.projector = LinearProjector(spec.projector)
        # Learned tokens of the 2D tile layout: one after every feature row, one after all views.
        self.image_newline = nn.Parameter(torch.empty(spec.projector.n_embed))
        self.view_seperator = nn.Parameter(torch.empty(spec.projector.n_embed))
        self.language_model = DeepseekOcr2TextModel(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.embed_tokens = value

    # -- vision -----------------------------------------------------------------------

    def _view_features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Projected features [N, h*w, n_embed] of N same-sized views, and the grid (h, w).

        Calls sam_model, vision_model and projector as submodules, once each: the engine's
        forward hooks on those three modules time the sam / clip / projector sub-stages.
        """
        sam_features = self.sam_model(pixel_values).last_hidden_state  # [N, C, h, w]
        clip_features = self.vision_model(pixel_values, sam_features)  # [N, 1 + h*w, width]
        _, _, height, width = sam_features.shape
        features = torch.cat([clip_features[:, 1:], sam_features.flatten(2).transpose(1, 2)], dim=-1)
        return self.projector(features), height, width

    def _with_newlines(self, grid: torch.Tensor) -> torch.Tensor:
        """[rows, cols, D] -> [rows * (cols + 1), D] with image_newline closing every row."""
        rows, _, dim = grid.shape
        newline = self.image_newline.to(grid.dtype).expand(rows, 1, dim)
        return torch.cat([grid, newline], dim=1).reshape(-1, dim)

    def _encode_views(self, views: list[torch.Tensor]) -> list[tuple[torch.Tensor, int, int]]:
        """Features of each [n_i, 3, S, S] view batch; one encoder call when all sizes agree."""
        if len({tuple(v.shape[1:]) for v in views}) == 1:
            features, height, width = self._view_features(torch.cat(views) if len(views) > 1 else views[0])
            return [(part, height, width) for part in features.split([v.shape[0] for v in views])]
        return [self._view_features(view) for view in views]

    def encode_images(self, images: Sequence[tuple[torch.Tensor, torch.Tensor]],
                      images_spatial_crop: Any) -> list[torch.Tensor]:
        """Image-token embeddings [n_image_tokens, n_embed] of each batch item.

        ``images`` has one (crops, global) pair per item: crops [n_crops, 3, s, s] (ignored,
        e.g. zeros [1, 3, s, s], when the crop grid is 1 x 1) and global [1, 3, base, base].
        ``images_spatial_crop`` gives (width tiles, height tiles) per item. Token order, as
        the vendor: local crops tiled as one (h_tiles*q) x (w_tiles*q) grid with a newline per
        row, then the global q x q grid with a newline per row, then view_seperator.
        All crops of the batch go through the encoders together, then all global views.
        """
        grids = _crop_grids(images_spatial_crop, len(images))
        param = self.projector.layers.weight
        local_items: list[int] = []
        crops: list[torch.Tensor] = []
        for index, ((item_crops, _), (w_tiles, h_tiles)) in enumerate(zip(images, grids)):
            if w_tiles * h_tiles > 1:  # the vendor's "no crops" is a 1 x 1 grid with zero crops
                if item_crops.shape[0] != w_tiles * h_tiles:
                    raise DsocrError(
                        f"image {index}: {item_crops.shape[0]} crops for a {w_tiles}x{h_tiles} crop grid"
                    )
                local_items.append(index)
                crops.append(item_crops.to(device=param.device, dtype=param.dtype))

        local: dict[int, torch.Tensor] = {}
        if crops:
            for index, (features, q_h, q_w) in zip(local_items, self._encode_views(crops)):
                w_tiles, h_tiles = grids[index]
                tiled = (
                    features.view(h_tiles, w_tiles, q_h, q_w, -1)
                    .permute(0, 2, 1, 3, 4)
                    .reshape(h_tiles * q_h, w_tiles * q_w, -1)
                )
                local[index] = self._with_newlines(tiled)

        global_views = [item_global.to(device=param.device, dtype=param.dtype) for _, item_global in images]
        embeds = []
        for index, (features, q_h, q_w) in enumerate(self._encode_views(global_views)):
            parts = [local[index]] if index in local else []
            parts.append(self._with_newlines(features.reshape(q_h, q_w, -1)))
            parts.append(self.view_seperator.to(features.dtype).unsqueeze(0))
            embeds.append(torch.cat(parts, dim=0))
        return embeds

    def merge_image_embeddings(self, input_ids: torch.Tensor, image_embeds: Sequence[torch.Tensor],
                               images_seq_mask: torch.Tensor) -> torch.Tensor:
        """Token embeddings of ``input_ids`` with image rows scattered where images_seq_mask is True."""
        inputs_embeds = self.get_input_embeddings()(input_ids)
        if not image_embeds:
            return inputs_embeds
        if images_seq_mask.device.type == "cpu":  # a count check that costs no device sync
            counts = images_seq_mask.reshape(images_seq_mask.shape[0], -1).sum(dim=1).tolist()
            expected = [int(e.shape[0]) for e in image_embeds]
            if len(counts) != len(expected) or counts != expected:
                raise DsocrError(f"images_seq_mask marks {counts} image tokens per item, the images give {expected}")
        features = torch.cat(list(image_embeds), dim=0).to(device=inputs_embeds.device, dtype=inputs_embeds.dtype)
        mask = images_seq_mask.to(device=inputs_embeds.device, dtype=torch.bool).unsqueeze(-1)
        return inputs_embeds.masked_scatter(mask, features)

    # -- full pass ----------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        images: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
        images_seq_mask: torch.Tensor | None = None,
        images_spatial_crop: Any = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        """The KV cache comes in ``kwargs`` under the installed transformers' name (``cache``, or
        ``past_key_values`` before 5.24; see :mod:`pytest_dsocr.compat`)."""
        cache = take_cache(kwargs)
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids or inputs_embeds")
            prefill = cache is None or cache.get_seq_length() == 0
            if images is not None and prefill:
                if images_seq_mask is None:
                    raise DsocrError("images were given without images_seq_mask")
                image_embeds = self.encode_images(images, images_spatial_crop)
                inputs_embeds = self.merge_image_embeddings(input_ids, image_embeds, images_seq_mask)
            else:
                inputs_embeds = self.get_input_embeddings()(input_ids)
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            **cache_kwargs(cache),
            **kwargs,
        )


class DeepseekOCRForCausalLM(DeepseekOCRPreTrainedModel, GenerationMixin):
    """DeepSeek-OCR v1: :class:`DeepseekOCRModel` plus the LM head; ``generate`` works greedily."""

    _tied_weights_keys = None

    def __init__(self, config: DeepseekOCRConfig) -> None:
        super().__init__(config)
        self.model = DeepseekOCRModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def from_spec(cls, spec: DeepseekOCRSpec, **config_kwargs: Any) -> DeepseekOCRForCausalLM:
        return cls(DeepseekOCRConfig.from_spec(spec, **config_kwargs))

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        images: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
        images_seq_mask: torch.Tensor | None = None,
        images_spatial_crop: Any = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        cache_position: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Image embeddings are computed only with ``images`` and an empty cache (prefill).

        The KV cache comes in ``kwargs`` under the installed transformers' name (``cache``, or
        ``past_key_values`` before 5.24). ``cache_position`` is accepted for callers that still
        pass it; the decoder derives positions from the cache length.
        """
        cache = take_cache(kwargs)
        outputs = self.model(
            input_ids=input_ids,
            images=images,
            images_seq_mask=images_seq_mask,
            images_spatial_crop=images_spatial_crop,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **cache_kwargs(cache),
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int):
            hidden_states = hidden_states[:, -logits_to_keep:] if logits_to_keep > 0 else hidden_states
        else:
            hidden_states = hidden_states[:, logits_to_keep]
        logits = self.lm_head(hidden_states)
        return CausalLMOutputWithPast(
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **cache_kwargs(output_cache(outputs)),
        )

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        images: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
        images_seq_mask: torch.Tensor | None = None,
        images_spatial_crop: Any = None,
        is_first_iteration: bool | None = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """transformers' preparation, plus the image inputs on the first step only.

        ``generate`` passes the cache under its own version's name; it goes on under that name.
        """
        model_inputs = super().prepare_inputs_for_generation(
            input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )
        if is_first_iteration or not kwargs.get("use_cache", True):
            model_inputs.update(
                images=images, images_seq_mask=images_seq_mask, images_spatial_crop=images_spatial_crop
            )
        return model_inputs


# ---------------------------------------------------------------------------------------
# Builder
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly in ``dtype``; buffers made with an explicit dtype (RoPE) stay float32."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_deepseek_ocr(spec: DeepseekOCRSpec, device: torch.device, dtype: torch.dtype, seed: int = 0,
                       experts_implementation: str | None = None) -> DeepseekOCRForCausalLM:
    """A randomly initialised model (fixed seed) on ``device`` in ``dtype``, in eval mode.

    On the meta device nothing is allocated or initialised (parameter counts, key maps).
    ``experts_implementation`` None means eager on CPU/meta and transformers' default elsewhere.
    """
    if experts_implementation is None and device.type in ("cpu", "meta"):
        experts_implementation = CPU_EXPERTS_IMPLEMENTATION
    config_kwargs: dict[str, Any] = {"attn_implementation": "sdpa"}
    if experts_implementation is not None:
        config_kwargs["experts_implementation"] = experts_implementation
    config = DeepseekOCRConfig.from_spec(spec, **config_kwargs)
    torch.manual_seed(seed)
    with torch.device(device), _default_dtype(dtype):
        model = DeepseekOCRForCausalLM(config)
    return model.eval()


def build(size: str, device: torch.device, dtype: torch.dtype, *, path: str | None = None, seed: int = 0,
          experts_implementation: str | None = None) -> DeepseekOCRForCausalLM:
    """The family's builder (see :func:`pytest_dsocr.models.build_model`): ``size``'s spec, random
    from ``seed`` or loaded from the local checkpoint folder ``path`` through the exact key map."""
    if path is not None:
        checkpoint.checkpoint_files(path)  # fail on a bad path before building anything
    model = build_deepseek_ocr(SPECS[size], device, dtype, seed=seed, experts_implementation=experts_implementation)
    if path is not None:
        checkpoint.load_checkpoint(model, path)
    return model
