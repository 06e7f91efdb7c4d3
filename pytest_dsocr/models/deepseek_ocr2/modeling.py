"""DeepSeek-OCR-2 as transformers' native ``DeepseekOcr2ForConditionalGeneration``.

Nothing is re-implemented here: the spec becomes a ``DeepseekOcr2Config`` (SAM and decoder
configs made by v1's builders, which already target transformers' ``deepseek_ocr2`` modules),
and the model is either built from a fixed seed or loaded from a local checkpoint folder with
transformers' own ``from_pretrained(path, local_files_only=True)``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import DeepseekOcr2Config, DeepseekOcr2ForConditionalGeneration

from pytest_dsocr.errors import DsocrError
from pytest_dsocr.models.deepseek_ocr.checkpoint import checkpoint_files
from pytest_dsocr.models.deepseek_ocr.modeling import (
    CPU_EXPERTS_IMPLEMENTATION,
    INIT_STD,
    _default_dtype,
    _sam_config,
    _text_config,
)
from pytest_dsocr.models.deepseek_ocr2.spec import SPECS, DeepseekOCR2Spec
from pytest_dsocr.models.weights import write_index

log = logging.getLogger(__name__)

MODEL_TYPE = "deepseek_ocr2"  # config.json of a checkpoint in transformers' format
ATTN_IMPLEMENTATION = "sdpa"  # SAM's rel-pos bias rules out flash attention (transformers says so)


def encoder_config(spec: DeepseekOCR2Spec) -> dict:
    """The Qwen2 encoder's config as transformers' ``DeepseekOcr2VisionEncoderConfig`` keys."""
    enc = spec.encoder
    return {
        "hidden_size": enc.width,
        "num_hidden_layers": enc.layers,
        "num_attention_heads": enc.heads,
        "num_key_value_heads": enc.kv_heads,
        "intermediate_size": enc.mlp_dim,
        "rms_norm_eps": enc.rms_norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": enc.rope_theta},
        "max_position_embeddings": enc.max_position_embeddings,
        "vocab_size": 1,  # the encoder has no token table; the conversion script sets 1 too
        "hidden_act": "silu",
        "initializer_range": INIT_STD,
    }


def model_config(spec: DeepseekOCR2Spec, experts_implementation: str | None = None) -> DeepseekOcr2Config:
    """``DeepseekOcr2Config`` of ``spec``; ``experts_implementation`` picks transformers' MoE kernel."""
    kwargs = {"attn_implementation": ATTN_IMPLEMENTATION}
    if experts_implementation is not None:
        kwargs["experts_implementation"] = experts_implementation
    config = DeepseekOcr2Config(
        vision_config={"sam_config": _sam_config(spec).to_dict(), "encoder_config": encoder_config(spec)},
        text_config=_text_config(spec).to_dict(),
        image_token_id=spec.image_token_id,
        tie_word_embeddings=False,
        **kwargs,
    )
    return config


def _experts(experts_implementation: str | None, device: torch.device) -> str | None:
    if experts_implementation is None and device.type in ("cpu", "meta"):
        return CPU_EXPERTS_IMPLEMENTATION
    return experts_implementation


def build_deepseek_ocr2(spec: DeepseekOCR2Spec, device: torch.device, dtype: torch.dtype, seed: int = 0,
                        experts_implementation: str | None = None) -> DeepseekOcr2ForConditionalGeneration:
    """A randomly initialised model (fixed seed) on ``device`` in ``dtype``, in eval mode.

    On the meta device nothing is allocated (parameter counts, FLOP counting).
    """
    config = model_config(spec, _experts(experts_implementation, device))
    torch.manual_seed(seed)
    with torch.device(device), _default_dtype(dtype):
        model = DeepseekOcr2ForConditionalGeneration(config)
    return model.eval()


# Config keys checked against the spec when a checkpoint loads: a mismatch means the folder holds
# another size (or model) than model.size says.
TEXT_KEYS = {"vocab_size": "vocab_size", "hidden_size": "hidden_size",
             "num_hidden_layers": "num_hidden_layers", "n_routed_experts": "n_routed_experts",
             "moe_intermediate_size": "moe_intermediate_size"}
ENCODER_KEYS = {"hidden_size": "width", "num_hidden_layers": "layers", "num_attention_heads": "heads",
                "num_key_value_heads": "kv_heads", "intermediate_size": "mlp_dim"}


def _check_config(path: Path, config: DeepseekOcr2Config, spec: DeepseekOCR2Spec) -> None:
    pairs = [(f"text_config.{key}", getattr(config.text_config, key), getattr(spec.text, attr))
             for key, attr in TEXT_KEYS.items()]
    enc = config.vision_config.encoder_config
    pairs += [(f"vision_config.encoder_config.{key}", getattr(enc, key), getattr(spec.encoder, attr))
              for key, attr in ENCODER_KEYS.items()]
    pairs.append(("image_token_id", config.image_token_id, spec.image_token_id))
    for key, found, expected in pairs:
        if found != expected:
            raise DsocrError(f"model.path={str(path)!r}: config.json has {key}={found} but model size "
                             f"{spec.name!r} has {expected}; choose the model size that matches the checkpoint")


def _check_format(folder: Path) -> None:
    """transformers' format only: the vendor's remote-code folder (model_type deepseek_vl_v2) has
    another config layout and needs transformers' conversion script first."""
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise DsocrError(f"model.path={str(folder)!r}: config.json is not readable JSON ({exc})") from exc
    if model_type != MODEL_TYPE:
        raise DsocrError(
            f"model.path={str(folder)!r}: config.json has model_type {model_type!r}, not {MODEL_TYPE!r}; use a "
            f"checkpoint in transformers' format (e.g. deepseek-community/DeepSeek-OCR-2) or convert the "
            f"vendor's with transformers' models/deepseek_ocr2/convert_deepseek_ocr2_weights_to_hf.py"
        )


def load_deepseek_ocr2(path: str | Path, spec: DeepseekOCR2Spec, device: torch.device, dtype: torch.dtype,
                       experts_implementation: str | None = None) -> DeepseekOcr2ForConditionalGeneration:
    """A checkpoint in transformers' format (config.json + safetensors) from a local folder.

    Never reaches a hub. A checkpoint of another size, or one with missing, unexpected or
    mis-shaped tensors, is an error naming the folder and the first offending tensors.
    """
    folder = Path(path).expanduser()
    checkpoint_files(folder)
    if device.type == "meta":
        raise DsocrError(f"model.path={str(path)!r}: a checkpoint cannot be loaded on the meta device")
    _check_format(folder)
    try:
        config = DeepseekOcr2Config.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # a broken config.json surfaces as OSError, ValueError, TypeError...
        raise DsocrError(f"model.path={str(path)!r}: cannot read config.json as a deepseek_ocr2 config "
                         f"({type(exc).__name__}: {exc})") from exc
    _check_config(folder, config, spec)
    kwargs = {"attn_implementation": ATTN_IMPLEMENTATION}
    experts = _experts(experts_implementation, device)
    if experts is not None:
        kwargs["experts_implementation"] = experts
    try:
        model, info = DeepseekOcr2ForConditionalGeneration.from_pretrained(
            folder, local_files_only=True, dtype=dtype, output_loading_info=True, **kwargs)
    except Exception as exc:
        raise DsocrError(f"model.path={str(path)!r}: transformers could not load the checkpoint "
                         f"({type(exc).__name__}: {exc})") from exc
    problems = {kind: sorted(info.get(kind) or ())
                for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = {kind: names for kind, names in problems.items() if names}
    if problems:
        detail = "; ".join(f"{kind.replace('_', ' ')}: {', '.join(map(str, names[:5]))}"
                           + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
                           for kind, names in problems.items())
        raise DsocrError(f"model.path={str(path)!r}: the checkpoint does not match the model ({detail})")
    log.info("loaded DeepSeek-OCR-2 weights from %s", folder)
    return model.to(device).eval()


def build(size: str, device: torch.device, dtype: torch.dtype, *, path: str | None = None, seed: int = 0,
          experts_implementation: str | None = None) -> DeepseekOcr2ForConditionalGeneration:
    """The family's builder (see :func:`pytest_dsocr.models.build_model`): seeded random init of
    ``size``, or a local checkpoint in transformers' format through transformers' loader."""
    if path is not None:
        return load_deepseek_ocr2(path, SPECS[size], device, dtype, experts_implementation)
    return build_deepseek_ocr2(SPECS[size], device, dtype, seed=seed, experts_implementation=experts_implementation)


def write_checkpoint(model: torch.nn.Module, out: Path, dtype: torch.dtype) -> None:
    """The family registry's checkpoint writer: transformers' format (what ``from_pretrained``
    reads), one shard named like a sharded save and found through its index."""
    state = {name: tensor.detach().to(dtype).contiguous() for name, tensor in model.state_dict().items()}
    model.save_pretrained(out, state_dict=state)
    single = out / "model.safetensors"
    if single.is_file():  # name it as a one-shard checkpoint, found through the index
        single.rename(out / "model-00001-of-00001.safetensors")
    config_path = out / "config.json"  # the model ran in float32; the file holds what is stored
    config = json.loads(config_path.read_text())
    config["dtype"] = str(dtype).removeprefix("torch.")
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    write_index(out)

