"""Compiled paths for the vision encoders and the decoder prefill (``infer.vision_backend``,
``infer.prefill_backend``), switchable at run time on one model.

- vision ``compiled`` (v1): SAM's attention through flex_attention with the rel-pos bias in the
  kernel (:mod:`pytest_dsocr.models.deepseek_ocr.flex_sam`), and torch.compile of every SAM
  block, SAM's neck and downsampling, and the CLIP tower, which fuses the layer norms, GELUs
  and residual adds into the GEMM epilogues and cuts the kernel count.
- prefill ``compiled``: torch.compile of the decoder (dynamic prompt length) for the prefill
  only; decode steps keep their own backend.

The modules the engine times (sam, clip, projector) are never compiled themselves, only their
children: their forward hooks (CUDA events, NVTX) stay outside the compiled graphs. The first
call of each shape compiles (tens of seconds on a GPU for the full model); warm up first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch

from pytest_dsocr.errors import DsocrError
from pytest_dsocr.models.deepseek_ocr.flex_sam import SamFlexAttention, use_flex_attention

log = logging.getLogger(__name__)

BACKENDS = ("eager", "compiled")
# Distinct shapes one page mix can bring (crop counts x view kinds x block kinds): more than
# dynamo's default of 8 compiled variants per function, after which it would fall back to eager.
RECOMPILE_LIMIT = 64


def check_backend(key: str, value: str) -> str:
    if value not in BACKENDS:
        raise DsocrError(f"{key}={value!r}: expected one of {', '.join(BACKENDS)}")
    return value


def _raise_recompile_limit() -> None:
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    if getattr(config, name) < RECOMPILE_LIMIT:
        log.info("raising torch._dynamo.config.%s to %d for the compiled vision/prefill paths", name, RECOMPILE_LIMIT)
        setattr(config, name, RECOMPILE_LIMIT)


class CompiledModules:
    """torch.compile'd forwards of some modules, installed on them only while enabled."""

    def __init__(self, modules: Iterable[torch.nn.Module], **compile_kwargs) -> None:
        _raise_recompile_limit()
        self.modules = list(modules)
        self.forwards = [torch.compile(module.forward, **compile_kwargs) for module in self.modules]
        self.enabled = False

    def enable(self) -> None:
        for module, forward in zip(self.modules, self.forwards):
            module.forward = forward  # an instance attribute shadows the class's forward
        self.enabled = True

    def disable(self) -> None:
        for module in self.modules:
            module.__dict__.pop("forward", None)
        self.enabled = False


class VisionFastPath:
    """v1's compiled vision: flex_attention SAM plus compiled SAM blocks and CLIP tower."""

    def __init__(self, model: torch.nn.Module) -> None:
        inner = model.model
        self.flex_class = SamFlexAttention
        self.switched = use_flex_attention(inner.sam_model)
        sam = inner.sam_model
        # Block by block: the blocks of one kind share their code, so each kind compiles once per shape.
        # Static shapes: a page mix brings a handful (crop counts x view sizes), each compiled once,
        # and flex_attention is best specialised to its sequence length.
        self.compiled = CompiledModules([*sam.layers, sam.neck, sam.proj, *inner.vision_model.transformer.layers],
                                        dynamic=False)
        self.disable()

    def enable(self) -> None:
        for attn, _ in self.switched:
            attn.__class__ = self.flex_class
        self.compiled.enable()

    def disable(self) -> None:
        for attn, original in self.switched:
            attn.__class__ = original
        self.compiled.disable()


class PrefillFastPath:
    """The decoder compiled for prefills of any length (decode steps never go through it)."""

    def __init__(self, language_model: torch.nn.Module) -> None:
        _raise_recompile_limit()
        self.forward: Callable = torch.compile(language_model.forward, dynamic=True)


class FastPaths:
    """What :class:`~pytest_dsocr.models.decode_steps.DecodeSteps` holds: the vision and prefill paths in force."""

    def __init__(self, model: torch.nn.Module, vision_backend: str, prefill_backend: str,
                 vision_factory: Callable[[torch.nn.Module], VisionFastPath] | None) -> None:
        check_backend("infer.vision_backend", vision_backend)
        check_backend("infer.prefill_backend", prefill_backend)
        self.model = model
        self.vision_factory = vision_factory
        self.vision: VisionFastPath | None = None
        self.prefill: PrefillFastPath | None = None
        self.use(vision_backend, prefill_backend)

    def use(self, vision_backend: str, prefill_backend: str) -> None:
        """Switch both paths (building the compiled ones on first use); the model's weights are shared."""
        check_backend("infer.vision_backend", vision_backend)
        check_backend("infer.prefill_backend", prefill_backend)
        if vision_backend == "compiled":
            if self.vision_factory is None:
                raise DsocrError("infer.vision_backend=compiled: this model family has no compiled vision path")
            if self.vision is None:
                self.vision = self.vision_factory(self.model)
            self.vision.enable()
        elif self.vision is not None:
            self.vision.disable()
        self.vision_backend = vision_backend
        if prefill_backend == "compiled" and self.prefill is None:
            self.prefill = PrefillFastPath(self.model.model.language_model)
        self.prefill_backend = prefill_backend

    @property
    def compiled_prefill(self) -> Callable | None:
        return self.prefill.forward if self.prefill_backend == "compiled" and self.prefill is not None else None
