"""The one place that knows how the installed transformers differs from the others we support.

Supported: the range pyproject.toml declares. What moved inside it:

- the KV-cache argument and output field: ``past_key_values`` up to 5.23, ``cache`` from 5.24
  (the old name still works there with a FutureWarning, and is removed in 5.40);
- the MoE router weights: built in the model dtype up to 5.23; from 5.24 transformers creates
  them in float32 and keeps them there for bf16/fp16 (``_keep_in_fp32_modules_strict``).

Both are detected from the installed code, not from its version number, so a backport or a
patched install is read as it behaves. Every call into transformers that passes or reads a
cache goes through :func:`cache_kwargs` / :func:`output_cache`; dtype expectations (tests, the
analytic cost model) come from :func:`kept_in_fp32` / :func:`router_weight_dtype`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, MutableMapping
from typing import Any

import torch
import transformers
from transformers.models.deepseek_ocr2.modeling_deepseek_ocr2 import (
    DeepseekOcr2TextModel,
    DeepseekOcr2TextPreTrainedModel,
)

TRANSFORMERS_VERSION = transformers.__version__
NEW_CACHE_ARG = "cache"
OLD_CACHE_ARG = "past_key_values"
# The decoder's forward names its cache argument; inspect follows the deprecation wrapper.
CACHE_ARG = (NEW_CACHE_ARG if NEW_CACHE_ARG in inspect.signature(DeepseekOcr2TextModel.forward).parameters
             else OLD_CACHE_ARG)
# Dtypes transformers upcasts the strict keep-in-fp32 parameters from (its _get_dtype_plan).
HALF_DTYPES = (torch.float16, torch.bfloat16)
ROUTER_WEIGHT = "gate.weight"  # DeepseekOcr2TextTopkRouter, the MoE layers' ``mlp.gate``


def cache_kwargs(cache: Any) -> dict[str, Any]:
    """``{name: cache}`` under the name this transformers' forward takes."""
    return {CACHE_ARG: cache}


def output_cache(output: Any) -> Any:
    """The cache a model output carries (``output.cache`` or ``output.past_key_values``)."""
    return getattr(output, CACHE_ARG)


def take_cache(kwargs: MutableMapping[str, Any]) -> Any:
    """Remove the cache from ``kwargs`` under either name (callers of every version) and return it."""
    old, new = kwargs.pop(OLD_CACHE_ARG, None), kwargs.pop(NEW_CACHE_ARG, None)
    if old is not None and new is not None and old is not new:
        raise TypeError(f"both {OLD_CACHE_ARG}= and {NEW_CACHE_ARG}= were given; pass one cache")
    return new if new is not None else old


def strict_fp32_patterns(model_class: type = DeepseekOcr2TextPreTrainedModel) -> tuple[str, ...]:
    """Parameter-name patterns transformers keeps in float32 under bf16/fp16 for ``model_class``."""
    return tuple(getattr(model_class, "_keep_in_fp32_modules_strict", None) or ())


def kept_in_fp32(name: str, patterns: Iterable[str]) -> bool:
    """Whether parameter ``name`` matches one of ``patterns`` (a whole dotted suffix)."""
    return any(name == pattern or name.endswith("." + pattern) for pattern in patterns)


def intended_dtype(name: str, model_dtype: torch.dtype, patterns: Iterable[str] | None = None) -> torch.dtype:
    """The dtype transformers gives parameter ``name`` of a model built in ``model_dtype``."""
    patterns = strict_fp32_patterns() if patterns is None else patterns
    if model_dtype in HALF_DTYPES and kept_in_fp32(name, patterns):
        return torch.float32
    return model_dtype


def router_weight_dtype(model_dtype: torch.dtype) -> torch.dtype:
    """The dtype of the MoE router weights in a model built in ``model_dtype``."""
    return intended_dtype(f"mlp.{ROUTER_WEIGHT}", model_dtype)


def router_weight_bytes(dtype_bytes: int) -> int:
    """Bytes per stored router weight in a model whose other weights take ``dtype_bytes``."""
    if dtype_bytes == torch.bfloat16.itemsize:  # bf16 or fp16: both upcast alike
        return router_weight_dtype(torch.bfloat16).itemsize
    return dtype_bytes
