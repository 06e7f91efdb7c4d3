"""Architecture numbers of DeepSeek-OCR-2: the one source of truth for its sizes.

DeepSeek-OCR-2 keeps v1's SAM ViT-B (with 896 output channels instead of 1024) and v1's
DeepSeek-V2 MoE decoder, and replaces CLIP-L with "DeepEncoder V2": a Qwen2-0.5B decoder used as
a vision encoder. SAM's features (``q*q`` of them per view) are followed by ``q*q`` learned
"causal flow" queries; image tokens attend to each other bidirectionally, queries attend
causally, and only the queries' outputs go on, through a linear projector, to the decoder.
The model is transformers' native ``DeepseekOcr2ForConditionalGeneration``; this module only
says which numbers to build it with. SAM, projector and decoder reuse v1's spec records, so the
cost model (``pytest_dsocr.analytic``) evaluates the parts the two families share with the same
code.

``full`` is the published configuration. Sources (read 2026-11):

- vision tower: transformers' conversion script
  ``src/transformers/models/deepseek_ocr2/convert_deepseek_ocr2_weights_to_hf.py``
  (``convert_config``): SAM width 768, 12 layers, 12 heads, global blocks 2/5/8/11, downsample
  channels [512, 896]; encoder (Qwen2-0.5B) hidden 896, 24 layers, 14 heads, 2 KV heads,
  MLP 4864, RMSNorm eps 1e-6, rope_theta 1e6.
- decoder, projector and ids: the vendor's config.json (deepseek-ai/DeepSeek-OCR-2):
  ``language_config`` vocab 129280, hidden 1280, 12 layers, 10 heads (MHA), first_k_dense_replace
  1 with 6848, 64 routed experts of 896 + 2 shared, 6 per token, greedy top-k, max positions
  8192; ``projector_config`` input_dim 896, n_embed 1280. The same decoder, converted, is the
  ``text_config`` of transformers' fixture hf-internal-testing/tiny-processor-deepseek_ocr2
  (rope_theta 1e4, ``image_token_id`` 128815, BOS 0, EOS 1).
- query embeddings: fixed in transformers' ``DeepseekOcr2VisionModel`` (144 = 12x12 for a 768 px
  view, 256 = 16x16 for 1024 px); preprocessing: ``DeepseekOcr2ImageProcessor`` defaults (global
  view 1024, tiles 768, 2..6 tiles).
- total: 3,389,119,360 parameters (BF16), the Hugging Face model API's safetensors total for
  deepseek-ai/DeepSeek-OCR-2; the ``full`` module built here has exactly that many.

``tiny`` keeps every structural feature (windowed + global SAM blocks with rel-pos, the neck and
two stride-2 convs, a GQA Qwen2 encoder with both query sets, the dense-then-MoE decoder with
shared experts) at widths that run a cropped page's prefill in well under a second on 2 CPU
cores. Its decoder and token ids are v1 tiny's, so both families share one offline tokenizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pytest_dsocr.models.deepseek_ocr import spec as v1
from pytest_dsocr.models.deepseek_ocr.spec import ProjectorSpec, SamSpec, TextSpec

PATCH_SIZE = v1.PATCH_SIZE  # SAM patch size in pixels
DOWNSAMPLE_RATIO = v1.DOWNSAMPLE_RATIO  # two stride-2 convs after the SAM neck
# View sides the model has causal-flow queries for: transformers' DeepseekOcr2VisionModel holds
# exactly two query tables, query_768_resolution (12x12) and query_1024_resolution (16x16), and
# picks one by the number of SAM features; any other view side yields a feature count the
# processor's token count does not match.
QUERY_VIEW_SIZES = (768, 1024)
GLOBAL_VIEW_SIZE = 1024  # DeepseekOcr2ImageProcessor's size
TILE_SIZE = 768  # DeepseekOcr2ImageProcessor's tile_size
MIN_CROPS = 2  # DeepseekOcr2ImageProcessor's min_patches
MAX_CROPS = 6  # DeepseekOcr2ImageProcessor's max_patches (the vendor's "(0-6) x 768" tiles)


@dataclass(frozen=True)
class EncoderSpec:
    """DeepEncoder V2: a Qwen2 decoder (GQA, RoPE, SwiGLU, biased q/k/v) run over SAM features
    followed by as many learned causal-flow queries; no token embedding table."""

    width: int = 896
    layers: int = 24
    heads: int = 14
    kv_heads: int = 2
    mlp_dim: int = 4864
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768  # transformers' default; RoPE only, no table
    query_sides: tuple[int, ...] = tuple(size // PATCH_SIZE // DOWNSAMPLE_RATIO for size in QUERY_VIEW_SIZES)

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def query_count(self) -> int:
        """Rows of all query tables together (parameters: ``query_count * width``)."""
        return sum(side * side for side in self.query_sides)


@dataclass(frozen=True)
class DeepseekOCR2Spec:
    """Every size-defining number of one DeepSeek-OCR-2 variant."""

    name: str
    sam: SamSpec = field(default_factory=lambda: SamSpec(downsample_channels=(512, 896)))
    encoder: EncoderSpec = field(default_factory=EncoderSpec)
    projector: ProjectorSpec = field(default_factory=lambda: ProjectorSpec(input_dim=896, n_embed=1280))
    text: TextSpec = field(default_factory=TextSpec)
    image_token_id: int = v1.IMAGE_TOKEN_ID
    bos_token_id: int = v1.BOS_TOKEN_ID
    eos_token_id: int = v1.EOS_TOKEN_ID
    patch_size: int = PATCH_SIZE
    downsample_ratio: int = DOWNSAMPLE_RATIO

    def __post_init__(self) -> None:
        # SAM's last conv feeds the encoder directly and the projector reads the encoder's width.
        if self.sam.downsample_channels[-1] != self.encoder.width:
            raise ValueError(f"spec {self.name!r}: SAM outputs {self.sam.downsample_channels[-1]} channels "
                             f"but the encoder is {self.encoder.width} wide")
        if (self.projector.input_dim, self.projector.n_embed) != (self.encoder.width, self.text.hidden_size):
            raise ValueError(f"spec {self.name!r}: projector {self.projector.input_dim} -> "
                             f"{self.projector.n_embed} must map the encoder width {self.encoder.width} "
                             f"to the decoder width {self.text.hidden_size}")

    def queries_per_side(self, size: int) -> int:
        """Feature rows (= columns, = causal-flow queries per side) of one view of ``size`` px."""
        return math.ceil(size / self.patch_size / self.downsample_ratio)


FULL = DeepseekOCR2Spec(name="full")

TINY = DeepseekOCR2Spec(
    name="tiny",
    sam=SamSpec(width=32, layers=2, heads=2, mlp_dim=128, global_attn_indexes=(1,), out_chans=32,
                downsample_channels=(64, 128)),
    encoder=EncoderSpec(width=128, layers=2, heads=4, kv_heads=2, mlp_dim=384),
    projector=ProjectorSpec(input_dim=128, n_embed=v1.TINY.text.hidden_size),
    text=v1.TINY.text,
    image_token_id=v1.TINY.image_token_id,
)

SPECS = {"full": FULL, "tiny": TINY}
