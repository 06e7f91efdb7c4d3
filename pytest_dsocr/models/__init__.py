"""Model families behind one builder: ``build_model(family, size, ...)`` returns the torch module.

``deepseek_ocr`` (v1, our own module) and ``deepseek_ocr2`` (v2, transformers' native model);
each family keeps its sizes in its own ``spec.py`` and its builder in its ``modeling.py``, named
by its entry in :mod:`pytest_dsocr.families`. No code path reaches a model hub: weights come
from a local folder or from a seeded random init; :mod:`pytest_dsocr.models.weights` decides
which for a run's ``model`` config (``model.path``, the bundled tiny checkpoints, or random).
"""

from __future__ import annotations

import logging

import torch

from pytest_dsocr import families
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.models.weights import resolve_weights, weights_identity

__all__ = ["build_model", "resolve_device", "resolve_dtype", "resolve_weights", "weights_identity"]

log = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}
AUTO_DTYPE = "auto"


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device from a name; DsocrError when it cannot be used here."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise DsocrError(f"model.device={device!r}: not a torch device ({err})") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DsocrError(f"model.device={device!r}: CUDA is not available on this machine; use cpu")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None/"auto": float32 on CPU and meta, bfloat16 on an accelerator."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or str(dtype).lower() == AUTO_DTYPE:
        return torch.float32 if device.type in ("cpu", "meta") else torch.bfloat16
    name = str(dtype).lower().removeprefix("torch.")
    if name not in DTYPES:
        raise DsocrError(f"model.dtype={dtype!r}: choose one of {', '.join(sorted(DTYPES))} or auto")
    return DTYPES[name]


def build_model(family: str, size: str, device: str | torch.device = "cpu",
                dtype: str | torch.dtype | None = None, path: str | None = None, seed: int = 0,
                experts_implementation: str | None = None) -> torch.nn.Module:
    """The model of ``family`` at ``size`` on ``device``, in eval mode.

    ``dtype`` None = float32 on CPU/meta, bfloat16 on CUDA. ``device="meta"`` allocates
    nothing (parameter counts, key maps). With ``path`` (a local folder with config.json and
    *.safetensors) the weights are loaded by the family's checkpoint loader; without it they
    are random from ``seed``. ``experts_implementation`` picks transformers' MoE kernel
    (None: eager on CPU, transformers' default elsewhere). The family's registry entry
    (:mod:`pytest_dsocr.families`) names its builder.
    """
    entry = families.family(family)
    entry.check_size(size)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    if path is not None and torch_device.type == "meta":
        raise DsocrError(f"model.path={path!r}: a checkpoint cannot be loaded on the meta device")
    build = entry.load("builder")
    return build(size, torch_device, torch_dtype, path=path, seed=seed,
                 experts_implementation=experts_implementation).eval()
