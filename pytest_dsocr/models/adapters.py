"""One builder for the engine adapter of a run configuration, every ``infer`` option applied.

``build_adapter(cfg, device, dtype)`` passes the model section and the inference options that
shape the adapter (prompt, decode backend, preprocessing device, vision and prefill backends)
to the family's adapter. The session and the perf scripts build adapters through it, so a new
``infer`` key reaches every path at once.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from pytest_dsocr.errors import DsocrError


def adapter_options(infer: DictConfig) -> dict:
    """The keyword options of an adapter from the ``infer`` section."""
    return {
        "preprocess_device": infer.preprocess_device,
        "vision_backend": infer.vision_backend,
        "prefill_backend": infer.prefill_backend,
    }


def build_adapter(cfg: DictConfig, device: torch.device, dtype: torch.dtype):
    """The engine adapter of ``model.family``, built with every ``infer`` option of ``cfg``."""
    options = adapter_options(cfg.infer)
    if cfg.model.family == "deepseek_ocr":
        from pytest_dsocr.models.deepseek_ocr.adapter import DeepseekOCRAdapter

        return DeepseekOCRAdapter(cfg.model, device, dtype, cfg.infer.prompt, cfg.infer.decode_backend, **options)
    if cfg.model.family == "deepseek_ocr2":
        from pytest_dsocr.models.deepseek_ocr2.adapter import DeepseekOCR2Adapter

        return DeepseekOCR2Adapter(cfg.model, device, dtype, cfg.infer.prompt, cfg.infer.decode_backend, **options)
    raise DsocrError(f"model.family={cfg.model.family!r}: not supported (supported: deepseek_ocr, deepseek_ocr2)")
