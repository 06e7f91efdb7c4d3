"""The exact map between DeepSeek-OCR v1 checkpoint tensors and our module's parameters.

The public checkpoint stores the vendor's names (``model.sam_model.blocks.N...``,
``model.sam_model.neck.0..3``, ``net_2``/``net_3``, one tensor per routed expert). Our module
reuses transformers' SAM encoder and decoder, whose names differ and whose experts are fused
3D tensors (``gate_up_proj`` [E, 2I, H] = gate rows then up rows, ``down_proj`` [E, H, I]).
:func:`checkpoint_key_map` names, for every checkpoint tensor, the parameter (and expert,
and rows) it fills; :func:`load_checkpoint` consumes each tensor exactly once with its shape
checked; :func:`export_state_dict` is the inverse, for writing small checkpoints in tests.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pytest_dsocr.errors import DsocrError
from pytest_dsocr.models.deepseek_ocr.spec import DeepseekOCRSpec

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_GLOB = "*.safetensors"
MAX_NAMES_IN_ERROR = 5

# Vendor SAM names -> transformers' DeepseekOcr2SamVisionEncoder names (prefix model.sam_model.).
SAM_STEM = {
    "patch_embed.proj.weight": "patch_embed.projection.weight",
    "patch_embed.proj.bias": "patch_embed.projection.bias",
    "pos_embed": "pos_embed",
    "neck.0.weight": "neck.conv1.weight",
    "neck.1.weight": "neck.layer_norm1.weight",
    "neck.1.bias": "neck.layer_norm1.bias",
    "neck.2.weight": "neck.conv2.weight",
    "neck.3.weight": "neck.layer_norm2.weight",
    "neck.3.bias": "neck.layer_norm2.bias",
    "net_2.weight": "proj.conv1.weight",
    "net_3.weight": "proj.conv2.weight",
}
SAM_BLOCK = {
    "norm1.weight": "layer_norm1.weight",
    "norm1.bias": "layer_norm1.bias",
    "attn.qkv.weight": "attn.qkv.weight",
    "attn.qkv.bias": "attn.qkv.bias",
    "attn.proj.weight": "attn.proj.weight",
    "attn.proj.bias": "attn.proj.bias",
    "attn.rel_pos_h": "attn.rel_pos_h",
    "attn.rel_pos_w": "attn.rel_pos_w",
    "norm2.weight": "layer_norm2.weight",
    "norm2.bias": "layer_norm2.bias",
    "mlp.lin1.weight": "mlp.lin1.weight",
    "mlp.lin1.bias": "mlp.lin1.bias",
    "mlp.lin2.weight": "mlp.lin2.weight",
    "mlp.lin2.bias": "mlp.lin2.bias",
}
CLIP_STEM = (
    "embeddings.class_embedding",
    "embeddings.patch_embedding.weight",
    "embeddings.position_embedding.weight",
    "pre_layrnorm.weight",
    "pre_layrnorm.bias",
)
CLIP_LAYER = (
    "layer_norm1.weight",
    "layer_norm1.bias",
    "self_attn.qkv_proj.weight",
    "self_attn.qkv_proj.bias",
    "self_attn.out_proj.weight",
    "self_attn.out_proj.bias",
    "layer_norm2.weight",
    "layer_norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
)
DECODER_LAYER = (
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
)
DENSE_MLP = ("mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")
MOE_SHARED = (
    "mlp.gate.weight",  # router
    "mlp.shared_experts.gate_proj.weight",
    "mlp.shared_experts.up_proj.weight",
    "mlp.shared_experts.down_proj.weight",
)


@dataclass(frozen=True)
class KeyTarget:
    """Where one checkpoint tensor lives in the module.

    ``param``: the parameter's name in ``model.named_parameters()``; ``expert``: index along
    dim 0 of a fused experts tensor (None: the whole parameter); ``rows``: (start, stop) along
    the first remaining dim (gate -> first half of gate_up_proj, up -> second half).
    """

    param: str
    expert: int | None = None
    rows: tuple[int, int] | None = None

    def view(self, param: torch.Tensor) -> torch.Tensor:
        """The part of ``param`` this tensor fills (a view, so copy_ writes through)."""
        part = param if self.expert is None else param[self.expert]
        return part if self.rows is None else part[self.rows[0]:self.rows[1]]


def checkpoint_key_map(spec: DeepseekOCRSpec) -> dict[str, KeyTarget]:
    """Every checkpoint tensor name of ``spec`` -> the parameter part it fills.

    The map is a partition: each parameter element is covered by exactly one tensor.
    """
    key_map: dict[str, KeyTarget] = {}

    def same(name: str) -> None:
        key_map[name] = KeyTarget(name)

    # Decoder and head.
    key_map["lm_head.weight"] = KeyTarget("lm_head.weight")
    key_map["model.embed_tokens.weight"] = KeyTarget("model.language_model.embed_tokens.weight")
    key_map["model.norm.weight"] = KeyTarget("model.language_model.norm.weight")
    text = spec.text
    inter = text.moe_intermediate_size
    for i, kind in enumerate(text.mlp_layer_types):
        src, dst = f"model.layers.{i}.", f"model.language_model.layers.{i}."
        names = DECODER_LAYER + (DENSE_MLP if kind == "dense" else MOE_SHARED)
        for name in names:
            key_map[src + name] = KeyTarget(dst + name)
        if kind == "dense":
            continue
        gate_up, down = dst + "mlp.experts.gate_up_proj", dst + "mlp.experts.down_proj"
        for e in range(text.n_routed_experts):
            expert = f"{src}mlp.experts.{e}."
            key_map[expert + "gate_proj.weight"] = KeyTarget(gate_up, e, (0, inter))
            key_map[expert + "up_proj.weight"] = KeyTarget(gate_up, e, (inter, 2 * inter))
            key_map[expert + "down_proj.weight"] = KeyTarget(down, e)

    # Image-token layout and projector: our names are the checkpoint's.
    for name in ("model.image_newline", "model.view_seperator",
                 "model.projector.layers.weight", "model.projector.layers.bias"):
        same(name)

    # SAM: vendor names -> transformers' encoder names.
    for src, dst in SAM_STEM.items():
        key_map["model.sam_model." + src] = KeyTarget("model.sam_model." + dst)
    for i in range(spec.sam.layers):
        for src, dst in SAM_BLOCK.items():
            key_map[f"model.sam_model.blocks.{i}.{src}"] = KeyTarget(f"model.sam_model.layers.{i}.{dst}")

    # CLIP: ours, named as the checkpoint.
    for name in CLIP_STEM:
        same("model.vision_model." + name)
    for i in range(spec.clip.layers):
        for name in CLIP_LAYER:
            same(f"model.vision_model.transformer.layers.{i}.{name}")
    return key_map


def target_shape(target: KeyTarget, param_shape: torch.Size | tuple[int, ...]) -> tuple[int, ...]:
    """Shape the checkpoint tensor must have to fill ``target`` of a parameter of ``param_shape``."""
    shape = tuple(param_shape)
    if target.expert is not None:
        shape = shape[1:]
    if target.rows is not None:
        shape = (target.rows[1] - target.rows[0],) + shape[1:]
    return shape


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------


def checkpoint_files(path: str | Path) -> list[Path]:
    """The safetensors files of a local checkpoint folder; DsocrError naming what is missing."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DsocrError(f"model.path={str(path)!r}: no such folder (expected config.json and *.safetensors)")
    if not (folder / CONFIG_FILE).is_file():
        raise DsocrError(f"model.path={str(path)!r}: {CONFIG_FILE} is missing in {folder}")
    files = sorted(folder.glob(WEIGHTS_GLOB))
    if not files:
        raise DsocrError(f"model.path={str(path)!r}: no {WEIGHTS_GLOB} files in {folder}")
    return files


def _param_table(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters())


def _check_config(folder: Path, spec: DeepseekOCRSpec) -> None:
    """The folder's config.json (vendor format) must describe the model's architecture."""
    config_path = folder / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        raise DsocrError(f"{config_path}: not readable JSON ({err})") from err
    language = config.get("language_config") or {}
    expected = vendor_config(spec)["language_config"]
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "n_routed_experts", "moe_intermediate_size"):
        if key in language and language[key] != expected[key]:
            raise DsocrError(
                f"{config_path}: language_config.{key}={language[key]} but the {spec.name!r} model "
                f"has {expected[key]}: choose the model size that matches the checkpoint"
            )


@torch.no_grad()
def load_checkpoint(model: nn.Module, path: str | Path) -> list[str]:
    """Fill every parameter of ``model`` from the checkpoint folder ``path``; returns tensor names.

    Each tensor is consumed exactly once and must have the shape its target expects; a
    missing, unexpected, duplicated or mis-shaped tensor raises DsocrError naming it and its
    file. Tensors are cast to each parameter's dtype and device.
    """
    from safetensors import safe_open

    files = checkpoint_files(path)
    spec = model.config.spec
    _check_config(files[0].parent, spec)
    params = _param_table(model)
    if any(p.is_meta for p in params.values()):
        raise DsocrError("cannot load a checkpoint into a model on the meta device")
    key_map = checkpoint_key_map(spec)
    source: dict[str, Path] = {}
    for file in files:
        try:
            handle = safe_open(str(file), framework="pt", device="cpu")
        except Exception as err:  # safetensors raises its own error types
            raise DsocrError(f"{file}: not a readable safetensors file ({err})") from err
        with handle:
            for name in handle.keys():
                target = key_map.get(name)
                if target is None:
                    raise DsocrError(f"unexpected tensor {name!r} in {file}: the model has no place for it")
                if name in source:
                    raise DsocrError(f"tensor {name!r} appears twice: in {source[name]} and in {file}")
                param = params[target.param]
                tensor = handle.get_tensor(name)
                expected = target_shape(target, param.shape)
                if tuple(tensor.shape) != expected:
                    raise DsocrError(
                        f"tensor {name!r} in {file} has shape {list(tensor.shape)}, "
                        f"the model expects {list(expected)} (for {target.param})"
                    )
                target.view(param).copy_(tensor)
                source[name] = file
    missing = [name for name in key_map if name not in source]
    if missing:
        shown = ", ".join(repr(n) for n in missing[:MAX_NAMES_IN_ERROR])
        more = f" and {len(missing) - MAX_NAMES_IN_ERROR} more" if len(missing) > MAX_NAMES_IN_ERROR else ""
        raise DsocrError(f"checkpoint {files[0].parent} lacks tensor {shown}{more}")
    log.info("loaded %d tensors from %d file(s) in %s", len(source), len(files), files[0].parent)
    return list(source)


# ---------------------------------------------------------------------------------------
# Export (the inverse), for small test checkpoints
# ---------------------------------------------------------------------------------------


@torch.no_grad()
def export_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Checkpoint name -> contiguous CPU tensor, the inverse of :func:`load_checkpoint`."""
    params = _param_table(model)
    return {
        name: target.view(params[target.param]).detach().to("cpu").contiguous().clone()
        for name, target in checkpoint_key_map(model.config.spec).items()
    }


def vendor_config(spec: DeepseekOCRSpec) -> dict[str, Any]:
    """A config.json in the vendor's format (the fields the published one carries)."""
    text, sam, clip = spec.text, spec.sam, spec.clip
    return {
        "architectures": ["DeepseekOCRForCausalLM"],
        "model_type": "deepseek_vl_v2",
        "tile_tag": "2D",
        "global_view_pos": "head",
        "projector_config": {
            "input_dim": spec.projector.input_dim,
            "model_type": "mlp_projector",
            "n_embed": spec.projector.n_embed,
            "projector_type": "linear",
        },
        "vision_config": {
            "image_size": sam.image_size,
            "model_name": "deeplip_b_l",
            "model_type": "vision",
            "width": {
                "clip-l-14-224": {"heads": clip.heads, "image_size": clip.image_size, "layers": clip.layers,
                                  "patch_size": clip.patch_size, "width": clip.width},
                "sam_vit_b": {"downsample_channels": list(sam.downsample_channels),
                              "global_attn_indexes": list(sam.global_attn_indexes),
                              "heads": sam.heads, "layers": sam.layers, "width": sam.width},
            },
        },
        "language_config": {
            "architectures": ["DeepseekV2ForCausalLM"],
            "bos_token_id": spec.bos_token_id,
            "eos_token_id": spec.eos_token_id,
            "first_k_dense_replace": text.first_k_dense_replace,
            "hidden_size": text.hidden_size,
            "intermediate_size": text.intermediate_size,
            "max_position_embeddings": text.max_position_embeddings,
            "moe_intermediate_size": text.moe_intermediate_size,
            "n_routed_experts": text.n_routed_experts,
            "n_shared_experts": text.n_shared_experts,
            "num_attention_heads": text.num_attention_heads,
            "num_experts_per_tok": text.num_experts_per_tok,
            "num_hidden_layers": text.num_hidden_layers,
            "num_key_value_heads": text.num_key_value_heads,
            "topk_method": "greedy",
            "use_mla": False,
            "vocab_size": text.vocab_size,
        },
    }


def save_checkpoint(model: nn.Module, path: str | Path, shards: int = 1,
                    dtype: torch.dtype | None = None) -> list[Path]:
    """Write ``model`` as a vendor-style checkpoint folder (config.json + safetensors shards).

    ``dtype`` casts every tensor on the way out (the published checkpoint is bfloat16); None
    keeps the parameters' own dtype.
    """
    from safetensors.torch import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    config = vendor_config(model.config.spec)
    if dtype is not None:
        config["torch_dtype"] = str(dtype).removeprefix("torch.")
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=1))
    tensors = export_state_dict(model)
    if dtype is not None:
        tensors = {name: tensor.to(dtype) for name, tensor in tensors.items()}
    names = list(tensors)
    per_shard = -(-len(names) // shards)
    files = []
    for index in range(shards):
        chunk = names[index * per_shard:(index + 1) * per_shard]
        file = folder / f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        save_file({name: tensors[name] for name in chunk}, str(file))
        files.append(file)
    return files


def write_checkpoint(model: nn.Module, folder: Path, dtype: torch.dtype) -> None:
    """The family registry's checkpoint writer: one vendor-format shard in ``dtype``."""
    save_checkpoint(model, folder, shards=1, dtype=dtype)
