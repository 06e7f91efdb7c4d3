"""Model families behind one builder: ``build_model(family, size, ...)`` returns the torch module.

``deepseek_ocr`` (v1, our own module) and ``deepseek_ocr2`` (v2, transformers' native model);
each family keeps its sizes in its own ``spec.py``. No code path reaches a model hub: weights
come from a local folder or from a seeded random init; :mod:`pytest_dsocr.models.weights` decides
which for a run's ``model`` config (``model.path``, the bundled tiny checkpoints, or random).
"""

from __future__ import annotations

import logging

import torch

from pytest_dsocr.errors import DsocrError
from pytest_dsocr.models.weights import resolve_weights, weights_identity

__all__ = ["build_model", "resolve_device", "resolve_dtype", "resolve_weights", "weights_identity"]

log = logging.getLogger(__name__)

FAMILIES = ("deepseek_ocr", "deepseek_ocr2")
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
    *.safetensors) the weights are loaded through the exact key map; without it they are
    random from ``seed``. ``experts_implementation`` picks transformers' MoE kernel
    (None: eager on CPU, transformers' default elsewhere).
    """
    if family == "deepseek_ocr2":
        return _build_deepseek_ocr2(size, device, dtype, path, seed, experts_implementation)
    if family != "deepseek_ocr":
        raise DsocrError(f"model.family={family!r}: unknown model family; choose one of {', '.join(FAMILIES)}")
    from pytest_dsocr.models.deepseek_ocr import checkpoint
    from pytest_dsocr.models.deepseek_ocr.spec import SPECS

    if size not in SPECS:
        raise DsocrError(f"model.size={size!r}: unknown size of {family}; choose one of {', '.join(SPECS)}")
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    if path is not None:
        checkpoint.checkpoint_files(path)  # fail on a bad path before building anything
        if torch_device.type == "meta":
            raise DsocrError(f"model.path={path!r}: a checkpoint cannot be loaded on the meta device")
    from pytest_dsocr.models.deepseek_ocr.modeling import build_deepseek_ocr

    model = build_deepseek_ocr(SPECS[size], torch_device, torch_dtype, seed=seed,
                               experts_implementation=experts_implementation)
    if path is not None:
        checkpoint.load_checkpoint(model, path)
    return model.eval()


def _build_deepseek_ocr2(size, device, dtype, path, seed, experts_implementation) -> torch.nn.Module:
    """transformers' DeepseekOcr2ForConditionalGeneration: seeded random init, or a local checkpoint."""
    from pytest_dsocr.models.deepseek_ocr2 import modeling
    from pytest_dsocr.models.deepseek_ocr2.spec import SPECS

    if size not in SPECS:
        raise DsocrError(f"model.size={size!r}: unknown size of deepseek_ocr2; choose one of {', '.join(SPECS)}")
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    if path is not None:
        return modeling.load_deepseek_ocr2(path, SPECS[size], torch_device, torch_dtype, experts_implementation)
    return modeling.build_deepseek_ocr2(SPECS[size], torch_device, torch_dtype, seed=seed,
                                        experts_implementation=experts_implementation)
