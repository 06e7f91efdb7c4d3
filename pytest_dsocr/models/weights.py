"""Where a model's weights come from: a checkpoint folder, the bundled tiny weights, or a seed.

One place decides it for both families (:func:`resolve_weights`):

- ``model.path`` set: that local checkpoint folder (``model.weights`` is not consulted).
- ``model.weights=bundled`` (the tiny presets' default): the checkpoint shipped in the package,
  ``pytest_dsocr/models/bundled/<family>-tiny/``, trained to transcribe the bundled pages
  (``python -m pytest_dsocr.models.train_tiny``). It is a checkpoint folder like a real one and
  loads through the same loader. Only ``tiny`` has one.
- ``model.weights=random``: the seeded random init (``model.seed``), as before there were trained
  weights; the ``full`` presets use it.

:func:`weights_identity` names the weights for provenance (metrics.json, the regression gate):
two runs with the same identity ran the same weights.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_dsocr.errors import DsocrError

BUNDLED = "bundled"
RANDOM = "random"
CHECKPOINT = "checkpoint"
WEIGHTS_CHOICES = (BUNDLED, RANDOM)  # values of model.weights
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
BUNDLED_SIZES = ("tiny",)
# What a bundled folder must hold: the files a real checkpoint folder has for our loaders.
BUNDLED_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")
WEIGHTS_GLOB = "*.safetensors"
INDEX_GLOB = "*.safetensors.index.json"
INDEX_NAME = "model.safetensors.index.json"
DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "BOOL": 1, "U8": 1, "I8": 1, "F64": 8}
HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class WeightsSource:
    """Resolved weights: ``kind`` bundled | random | checkpoint; ``path`` the folder to load
    (None for random); ``seed`` the init seed (random only)."""

    kind: str
    path: str | None = None
    seed: int | None = None


def bundled_path(family: str, size: str = "tiny") -> Path:
    """The folder of the bundled weights of ``family`` at ``size`` (it may not exist)."""
    return BUNDLED_DIR / f"{family}-{size}"


def check_weights_choice(weights: object, size: str, path: object = None) -> None:
    """model.weights must be bundled or random, and bundled exists for tiny only (unless model.path)."""
    if weights not in WEIGHTS_CHOICES:
        raise DsocrError(f"model.weights={weights!r}: expected one of {', '.join(WEIGHTS_CHOICES)} "
                         "(or set model.path to a checkpoint folder)")
    if weights == BUNDLED and path is None and size not in BUNDLED_SIZES:
        raise DsocrError(f"model.weights=bundled: bundled trained weights exist for model.size "
                         f"{' / '.join(BUNDLED_SIZES)} only, not {size!r}; set model.weights=random for a "
                         "seeded random init, or model.path to a checkpoint folder")


def resolve_weights(model_cfg: Any) -> WeightsSource:
    """Where ``model_cfg``'s weights come from (``family``, ``size``, ``path``, ``weights``, ``seed``).

    A bundled folder that is missing or lacks a file is a DsocrError naming it.
    """
    if model_cfg.path is not None:
        return WeightsSource(CHECKPOINT, path=str(model_cfg.path))
    weights = getattr(model_cfg, "weights", BUNDLED)
    check_weights_choice(weights, model_cfg.size)
    if weights == RANDOM:
        return WeightsSource(RANDOM, seed=int(model_cfg.seed))
    folder = bundled_path(model_cfg.family, model_cfg.size)
    if not folder.is_dir():
        lacking = ["the folder itself"]
    else:
        lacking = [name for name in BUNDLED_FILES if not (folder / name).is_file()]
        if not any(folder.glob(WEIGHTS_GLOB)):
            lacking.append(f"{WEIGHTS_GLOB} weights")
    if lacking:
        raise DsocrError(f"model.weights=bundled: the bundled {model_cfg.family}/{model_cfg.size} weights in "
                         f"{folder} lack {', '.join(lacking)}; reinstall pytest-dsocr, regenerate them with "
                         f"python -m pytest_dsocr.models.train_tiny --family {model_cfg.family} --out {folder}, "
                         "or set model.weights=random")
    return WeightsSource(BUNDLED, path=str(folder))


def weights_identity(model_cfg: Any) -> dict[str, Any]:
    """Which weights a run used: ``{"kind", "seed", "path", "index_sha256"}``.

    ``seed`` is set for random weights only; ``path`` and ``index_sha256`` for a folder (bundled
    or checkpoint): the sha256 of its ``*.safetensors.index.json`` when it has one, else of the
    sorted safetensors file names with their sizes (cheap: no weight is read).
    """
    source = resolve_weights(model_cfg)
    identity: dict[str, Any] = {"kind": source.kind, "seed": source.seed, "path": source.path,
                                "index_sha256": None}
    if source.path is not None:
        identity["index_sha256"] = folder_digest(Path(source.path))
    return identity


def folder_digest(folder: Path) -> str:
    """sha256 naming a checkpoint folder's weights (see :func:`weights_identity`)."""
    indexes = sorted(folder.glob(INDEX_GLOB))
    digest = hashlib.sha256()
    if indexes:
        try:
            with open(indexes[0], "rb") as handle:
                for chunk in iter(lambda: handle.read(HASH_CHUNK), b""):
                    digest.update(chunk)
        except OSError as exc:
            raise DsocrError(f"cannot read {indexes[0]} ({exc})") from exc
        return digest.hexdigest()
    files = sorted(folder.glob(WEIGHTS_GLOB))
    if not files:
        raise DsocrError(f"model.path={str(folder)!r}: no {WEIGHTS_GLOB} files in {folder}")
    listing = [[file.name, file.stat().st_size] for file in files]
    digest.update(json.dumps(listing).encode("utf-8"))
    return digest.hexdigest()


def write_index(folder: Path) -> Path:
    """Write ``model.safetensors.index.json`` for the safetensors files of ``folder``.

    The layout transformers and the vendor use (``metadata.total_size`` and ``weight_map``:
    tensor name -> file), plus ``metadata.sha256`` per file so the index, and with it
    :func:`weights_identity`, changes whenever a weight does.
    """
    from safetensors import safe_open

    files = sorted(folder.glob(WEIGHTS_GLOB))
    weight_map: dict[str, str] = {}
    total = 0
    hashes = {}
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for name in handle.keys():
                tensor = handle.get_slice(name)
                weight_map[name] = file.name
                shape = tensor.get_shape()
                count = 1
                for dim in shape:
                    count *= dim
                total += count * DTYPE_BYTES[tensor.get_dtype()]
        hashes[file.name] = hashlib.sha256(file.read_bytes()).hexdigest()
    index = {"metadata": {"total_size": total, "sha256": hashes}, "weight_map": dict(sorted(weight_map.items()))}
    path = folder / INDEX_NAME
    path.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return path
