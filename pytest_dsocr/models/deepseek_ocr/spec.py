"""Architecture numbers of DeepSeek-OCR v1: the one source of truth for sizes.

The torch module (``modeling.py``) and the analytic cost model (``pytest_dsocr.analytic``)
are both built from these records, so a number changed here changes both.
``full`` mirrors the published checkpoint's config.json (see the reference manifest);
``tiny`` keeps the structure (windowed + global SAM blocks, CLIP fed by SAM, dense layer 0
then MoE layers with shared experts) at widths that build and run in seconds on a CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

IMAGE_TOKEN_ID = 128815
BOS_TOKEN_ID = 0
EOS_TOKEN_ID = 1
PATCH_SIZE = 16  # SAM patch size in pixels
DOWNSAMPLE_RATIO = 4  # two stride-2 convs after the SAM neck


@dataclass(frozen=True)
class SamSpec:
    """SAM ViT-B image encoder with the two extra stride-2 convs of DeepSeek-OCR."""

    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    patch_size: int = PATCH_SIZE
    image_size: int = 1024  # size the absolute position embedding was trained at
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    out_chans: int = 256  # neck output channels
    downsample_channels: tuple[int, int] = (512, 1024)


@dataclass(frozen=True)
class ClipSpec:
    """CLIP-L/14 whose patch embeddings are replaced by SAM's output features."""

    width: int = 1024
    layers: int = 24
    heads: int = 16
    mlp_dim: int = 4096
    patch_size: int = 14
    image_size: int = 224  # 16 x 16 patches + class token = 257 positions

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


@dataclass(frozen=True)
class ProjectorSpec:
    """Linear projector over concat(CLIP without class token, SAM flattened)."""

    input_dim: int = 2048
    n_embed: int = 1280


@dataclass(frozen=True)
class TextSpec:
    """DeepSeek-V2 MoE decoder as used by DeepSeek-OCR (plain MHA, no MLA)."""

    vocab_size: int = 129280
    hidden_size: int = 1280
    intermediate_size: int = 6848  # dense MLP of the first k layers
    moe_intermediate_size: int = 896
    num_hidden_layers: int = 12
    num_attention_heads: int = 10
    num_key_value_heads: int = 10
    n_routed_experts: int = 64
    n_shared_experts: int = 2
    num_experts_per_tok: int = 6
    first_k_dense_replace: int = 1
    max_position_embeddings: int = 8192
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def mlp_layer_types(self) -> list[str]:
        return [
            "dense" if i < self.first_k_dense_replace else "sparse"
            for i in range(self.num_hidden_layers)
        ]


@dataclass(frozen=True)
class DeepseekOCRSpec:
    """Every size-defining number of one DeepSeek-OCR v1 variant."""

    name: str
    sam: SamSpec = field(default_factory=SamSpec)
    clip: ClipSpec = field(default_factory=ClipSpec)
    projector: ProjectorSpec = field(default_factory=ProjectorSpec)
    text: TextSpec = field(default_factory=TextSpec)
    image_token_id: int = IMAGE_TOKEN_ID
    bos_token_id: int = BOS_TOKEN_ID
    eos_token_id: int = EOS_TOKEN_ID
    patch_size: int = PATCH_SIZE
    downsample_ratio: int = DOWNSAMPLE_RATIO

    def queries_per_side(self, size: int) -> int:
        """Feature rows (= columns) one view of ``size`` pixels yields after SAM."""
        return math.ceil(size / self.patch_size / self.downsample_ratio)


FULL = DeepseekOCRSpec(name="full")

TINY = DeepseekOCRSpec(
    name="tiny",
    sam=SamSpec(
        width=64, layers=4, heads=4, mlp_dim=256, global_attn_indexes=(1, 3),
        out_chans=32, downsample_channels=(64, 128),
    ),
    clip=ClipSpec(width=128, layers=2, heads=4, mlp_dim=512),
    projector=ProjectorSpec(input_dim=256, n_embed=128),
    text=TextSpec(
        vocab_size=1024, hidden_size=128, intermediate_size=256, moe_intermediate_size=64,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
        n_routed_experts=8, n_shared_experts=2, num_experts_per_tok=2,
    ),
    image_token_id=1000,
)

SPECS = {"full": FULL, "tiny": TINY}
