"""Load, merge and validate the run configuration.

Sources, later wins: the typed schema's defaults, the presets chosen in conf/config.yaml's
``defaults`` (or by ``--dsocr-set GROUP=PRESET``), the rest of conf/config.yaml, a
``--dsocr-config`` file, then ``--dsocr-set key=value`` overrides. Every section's typed
dataclass lives beside the code it configures; this module only composes them. An unknown
key, a wrong type or a bad value is a :class:`DsocrError` naming the key, raised before any
model is built.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pytest_dsocr.analytic.config import StaticAnalysisConfig, SweepConfig
from pytest_dsocr.data.config import DatasetConfig, validate_dataset_config, validate_sampling_config
from pytest_dsocr.decoding import parse_max_new_tokens
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.families import DEFAULT_FAMILY, FAMILY_NAMES, family
from pytest_dsocr.hardware import hardware_names
from pytest_dsocr.models.deepseek_ocr.prompt import DEFAULT_PROMPT
from pytest_dsocr.models.weights import check_weights_choice
from pytest_dsocr.outputs.config import StageOutputConfig, validate_stage_output_config
from pytest_dsocr.profilers.config import ProfilingConfig, validate_profiling_config
from pytest_dsocr.report.gate import parse_inconclusive, parse_min_pages, parse_stage_thresholds, parse_threshold

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).parent / "conf"
MAIN_CONFIG = "config.yaml"

SIZES = ("tiny", "full")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DECODE_BACKENDS = ("eager", "static", "graph")
PREPROCESS_DEVICES = ("cpu", "cuda")
FAST_PATH_BACKENDS = ("eager", "compiled")
ATTENTION_MODES = ("eager", "flash")
# Multiples of SAM's 16-pixel patch times the 4x downsampling: the vendor's views are 512..1280.
VIEW_SIZE_MULTIPLE = 64

# Preset groups: folder under conf/ -> where the preset's content lands in the config.
GROUP_TARGETS: dict[str, str] = {
    "model": "model",
    "dataset": "dataset",
    "sampling": "dataset.sampling",
    "infer": "infer",
    "output/direct": "pipeline.direct_inference.output",
    "output/torch": "pipeline.torch_profiler.output",
    "profiling/torch": "profiling.torch",
    "profiling/nsys": "profiling.nsys",
    "profiling/ncu": "profiling.ncu",
}
# `hardware=NAME` chooses a table in conf/hardware/ by name rather than merging a preset.
HARDWARE_GROUP = "hardware"
# How to quote a --dsocr-set value that YAML cannot read as it stands (``*`` starts an alias,
# ``&`` an anchor, ``!`` a tag, ``%`` a directive, ``@`` and a backquote are reserved).
QUOTING_HELP = ("quote the value for YAML inside the shell's quotes, e.g. "
                "--dsocr-set \"dataset.patterns=['*.gif', '*.png']\" or --dsocr-set \"key='*text'\"")


@dataclass
class ModelConfig:
    family: str = DEFAULT_FAMILY  # deepseek_ocr (v1) | deepseek_ocr2 (v2): see pytest_dsocr.families
    size: str = "tiny"  # tiny (small widths, built offline in seconds) | full (published architecture)
    path: Optional[str] = None  # local checkpoint folder (config.json, *.safetensors, tokenizer); set: model.weights is not used
    weights: str = "bundled"  # without model.path: bundled (tiny only: trained on the bundled pages) | random (seeded init)
    base_size: int = 1024  # global view side in pixels
    image_size: int = 640  # crop side in pixels
    crop_mode: bool = True  # dynamic crops for pages larger than one crop
    max_crops: int = 9  # most tiles of a crop grid (the vendor's vLLM script uses 6 to save memory)
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0  # random init seed (model.weights=random)


@dataclass
class InferConfig:
    max_new_tokens: Any = 64  # integer >= 1, or "inf": decode until EOS (bounded by the context)
    temperature: float = 0.0  # 0 = greedy, as the vendor decodes
    top_p: Optional[float] = None  # nucleus sampling, 0 < top_p <= 1; only with temperature > 0
    top_k: Optional[int] = None  # keep the k most likely tokens, k >= 1; only with temperature > 0
    no_repeat_ngram_size: int = 20  # the vendor's default
    prompt: str = DEFAULT_PROMPT
    warmup_rounds: int = 1  # unmeasured inferences per sample before the measured rounds
    rounds: int = 1  # measured inferences per sample
    # eager | static (static KV cache + compiled decode step) | graph (static + token selection in the graph)
    decode_backend: str = "eager"
    # cpu (the vendor's Pillow path) | cuda (decode on the host; resize, crops, normalisation on the GPU)
    preprocess_device: str = "cpu"
    batch_size: int = 1  # pages inferred together (Engine.run_batch); 1 = one page at a time
    vision_backend: str = "eager"  # eager | compiled (v1: flex-attention SAM + torch.compile of SAM and CLIP)
    prefill_backend: str = "eager"  # eager | compiled (torch.compile of the decoder for the prefill)


@dataclass
class StageConfig:
    enable: bool = True
    output: StageOutputConfig = field(default_factory=StageOutputConfig)


@dataclass
class PipelineConfig:
    direct_inference: StageConfig = field(default_factory=StageConfig)
    torch_profiler: StageConfig = field(default_factory=StageConfig)
    vendor_parity: StageConfig = field(default_factory=StageConfig)


@dataclass
class VendorParityConfig:
    reference: Optional[str] = None  # JSONL of reference outputs recorded elsewhere (image_path, text_raw)
    box_count_tolerance: int = 1  # reference comparison: box count may differ by this much
    box_tolerance: float = 0.02  # reference comparison: first K boxes within this share of the page size
    compare_first_boxes: int = 5  # K


@dataclass
class HardwareConfig:
    name: Optional[str] = None  # a table in conf/hardware/ (e.g. h100_sxm); None = detect from the device


@dataclass
class GateConfig:
    max_regression: str = "10%"  # largest tolerated slowdown of a stage (geometric mean over pages)
    per_stage: Dict[str, str] = field(default_factory=dict)  # per-stage thresholds, e.g. {decode: "5%"}
    inconclusive: str = "fail"  # fail | warn: what a stage without a confident verdict does to the exit status
    min_pages: int = 6  # fewest pages (paired, or in each run) for a verdict on a stage


@dataclass
class RunConfig:
    root: str = "runs"  # parent of timestamped run dirs, relative to the pytest rootdir
    dir: Optional[str] = None  # explicit run dir (must not hold a previous run)


@dataclass
class DsocrConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    profiling: ProfilingConfig = field(default_factory=ProfilingConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    static_analysis: StaticAnalysisConfig = field(default_factory=StaticAnalysisConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    vendor_parity: VendorParityConfig = field(default_factory=VendorParityConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _read_yaml(path: Path, what: str) -> dict:
    if not path.is_file():
        raise DsocrError(f"{what}: file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DsocrError(f"{what}: {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DsocrError(f"{what}: {path} must hold a mapping of config keys, not {type(data).__name__}")
    return data


def available_presets(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    folder = conf_dir / group
    return sorted(str(p.relative_to(folder).with_suffix("")) for p in folder.rglob("*.yaml"))


def _preset(group: str, name: str, conf_dir: Path) -> dict:
    path = conf_dir / group / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(available_presets(group, conf_dir)) or "none"
        raise DsocrError(f"preset {group}={name}: no file {path} (known: {known})")
    return _read_yaml(path, f"preset {group}={name}")


def _nest(target: str, content: dict) -> dict:
    for part in reversed(target.split(".")):
        content = {part: content}
    return content


def _split_defaults(data: dict, source: str) -> tuple[dict[str, str], dict]:
    """Separate a YAML file's ``defaults`` (preset choices) from its values."""
    data = dict(data)
    raw = data.pop("defaults", None) or []
    if isinstance(raw, dict):
        raw = [{k: v} for k, v in raw.items()]
    if not isinstance(raw, list):
        raise DsocrError(f"{source}: 'defaults' must be a list of GROUP: PRESET entries")
    choices: dict[str, str] = {}
    for entry in raw:
        if not isinstance(entry, dict) or len(entry) != 1:
            raise DsocrError(f"{source}: bad defaults entry {entry!r}; expected GROUP: PRESET")
        (group, name), = entry.items()
        choices[str(group)] = str(name)
    return choices, data


def _is_group(key: str) -> bool:
    return key in GROUP_TARGETS or key == HARDWARE_GROUP


def _merge(base: DictConfig, data: dict, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, data)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        msg = getattr(exc, "msg", None) or str(exc).splitlines()[0]
        if "not in" in str(exc) or type(exc).__name__ == "ConfigKeyError":
            raise DsocrError(f"{source}: unknown config key '{key}'") from None
        raise DsocrError(f"{source}: bad value for config key '{key}': {msg}") from None


@functools.lru_cache(maxsize=1)
def _schema() -> DictConfig:
    """The structured config with its defaults, made once (it is copied, never changed)."""
    return OmegaConf.structured(DsocrConfig)


def _compose(layers: list[tuple[Any, str]]) -> DictConfig:
    """The schema with every layer merged in order.

    One merge of all layers (one copy of the schema: a merge per layer copies the whole config
    each time, which made loading a config cost about 0.4 s); only when that fails are the layers
    merged one by one, so the error names the layer that holds the bad key or value.
    """
    cfg = copy.deepcopy(_schema())
    try:
        cfg.merge_with(*(values for values, _ in layers))
        return cfg
    except OmegaConfBaseException:
        pass
    cfg = copy.deepcopy(_schema())
    for values, source in layers:
        cfg = _merge(cfg, values, source)
    return cfg


def load_config(config_file: str | Path | None = None, overrides: list[str] | None = None,
                conf_dir: Path = CONF_DIR) -> DictConfig:
    """The validated run configuration; raises DsocrError naming the bad key, value or file."""
    overrides = list(overrides or [])
    main_choices, main_values = _split_defaults(_read_yaml(conf_dir / MAIN_CONFIG, "config"), str(conf_dir / MAIN_CONFIG))
    file_choices, file_values = {}, {}
    if config_file:
        file_choices, file_values = _split_defaults(_read_yaml(Path(config_file), "--dsocr-config"), str(config_file))

    choices = {**main_choices, **file_choices}
    dotted: list[str] = []
    for item in overrides:
        if "=" not in item:
            raise DsocrError(f"--dsocr-set {item!r}: expected key=value (e.g. model.size=full) or GROUP=PRESET")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key:
            raise DsocrError(f"--dsocr-set {item!r}: empty key")
        if _is_group(key):
            choices[key] = value.strip()
        else:
            dotted.append(f"{key}={value}")

    layers: list[tuple[Any, str]] = []  # (values, where they come from), merged in this order
    for group, name in choices.items():
        if group == HARDWARE_GROUP:
            continue
        if group not in GROUP_TARGETS:
            raise DsocrError(f"defaults: unknown preset group '{group}' (known: {', '.join(GROUP_TARGETS)}, hardware)")
        layers.append((_nest(GROUP_TARGETS[group], _preset(group, name, conf_dir)), f"preset {group}={name}"))
    layers.append((main_values, str(conf_dir / MAIN_CONFIG)))
    if file_values:
        layers.append((file_values, f"--dsocr-config {config_file}"))
    if HARDWARE_GROUP in choices:
        layers.append(({"hardware": {"name": choices[HARDWARE_GROUP]}}, f"--dsocr-set hardware={choices[HARDWARE_GROUP]}"))
    for item in dotted:
        try:
            parsed = OmegaConf.from_dotlist([item])
        except yaml.YAMLError as exc:  # OmegaConf parses each value as YAML and lets its errors through
            key = item.split("=", 1)[0].strip()
            problem = str(getattr(exc, "problem", None) or exc).splitlines()[0]
            raise DsocrError(f"--dsocr-set {item!r}: the value of {key} is not valid YAML ({problem}); "
                             f"{QUOTING_HELP}") from None
        except OmegaConfBaseException as exc:
            raise DsocrError(f"--dsocr-set {item!r}: cannot parse ({exc})") from None
        layers.append((parsed, f"--dsocr-set {item}"))
    cfg = _compose(layers)
    validate(cfg)
    return cfg


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise DsocrError(f"{key}={value!r}: expected one of {', '.join(choices)}")


def validate(cfg: DictConfig) -> None:
    """Value checks the type system cannot express; each error names its key."""
    model, infer = cfg.model, cfg.infer
    _check_choice("model.family", model.family, FAMILY_NAMES)
    _check_choice("model.size", model.size, SIZES)
    _check_choice("model.dtype", model.dtype, DTYPES)
    check_weights_choice(model.weights, model.size, model.path)
    _check_choice("infer.decode_backend", infer.decode_backend, DECODE_BACKENDS)
    _check_choice("infer.preprocess_device", infer.preprocess_device, PREPROCESS_DEVICES)
    _check_choice("infer.vision_backend", infer.vision_backend, FAST_PATH_BACKENDS)
    _check_choice("infer.prefill_backend", infer.prefill_backend, FAST_PATH_BACKENDS)
    if infer.batch_size < 1:
        raise DsocrError(f"infer.batch_size={infer.batch_size}: must be >= 1")
    if infer.preprocess_device == "cuda" and model.device == "cpu":
        raise DsocrError("infer.preprocess_device=cuda: model.device=cpu; preprocessing on the GPU needs the "
                         "model on the GPU (model.device=auto or cuda)")
    entry = family(model.family)
    if infer.preprocess_device != "cpu" and not entry.device_preprocessing:
        raise DsocrError(f"infer.preprocess_device={infer.preprocess_device}: {entry.title} preprocesses on the "
                         "host (its processor has no device path); use cpu")
    if infer.vision_backend != "eager" and not entry.compiled_vision:
        raise DsocrError(f"infer.vision_backend={infer.vision_backend}: {entry.title} has no compiled vision "
                         "path; use eager")
    if not (model.device in ("auto", "cpu", "cuda") or str(model.device).startswith("cuda:")):
        raise DsocrError(f"model.device={model.device!r}: expected auto, cpu, cuda or cuda:N")
    for key in ("base_size", "image_size"):
        value = model[key]
        if value <= 0 or value % VIEW_SIZE_MULTIPLE:
            raise DsocrError(f"model.{key}={value}: must be a positive multiple of {VIEW_SIZE_MULTIPLE}")
    if not 2 <= model.max_crops <= 9:
        raise DsocrError(f"model.max_crops={model.max_crops}: must be between 2 and 9")
    parse_max_new_tokens(infer.max_new_tokens)
    validate_sampling_values(infer)
    if infer.no_repeat_ngram_size < 0:
        raise DsocrError(f"infer.no_repeat_ngram_size={infer.no_repeat_ngram_size}: must be >= 0")
    if infer.warmup_rounds < 0:
        raise DsocrError(f"infer.warmup_rounds={infer.warmup_rounds}: must be >= 0")
    if infer.rounds < 1:
        raise DsocrError(f"infer.rounds={infer.rounds}: must be >= 1")
    validate_dataset_config(cfg.dataset)
    validate_sampling_config(cfg.dataset.sampling)
    for stage in (f.name for f in fields(PipelineConfig)):  # the stages that write outputs
        validate_stage_output_config(cfg.pipeline[stage].output, prefix=f"pipeline.{stage}.output")
    validate_profiling_config(cfg.profiling)
    validate_gate_config(cfg.gate)
    for key in ("static_analysis", "sweep"):
        _check_choice(f"{key}.attention", cfg[key].attention, ATTENTION_MODES)
    if cfg.hardware.name:
        if cfg.hardware.name not in hardware_names():
            raise DsocrError(f"hardware.name={cfg.hardware.name!r}: no table in conf/hardware "
                             f"(known: {', '.join(hardware_names())})")
    if model.path is not None:
        check_model_path(model.path)


def validate_sampling_values(infer: InferConfig) -> None:
    """temperature, top_p and top_k as transformers' warpers accept them, checked here so a bad
    value stops the run before any model is built instead of failing every sample later.

    ``nan`` and ``inf`` are refused (``inf`` would sample uniformly, ``nan`` poisons every
    probability); top_p and top_k act only when sampling, so setting them with greedy decoding
    (temperature 0) is an error rather than a setting silently ignored.
    """
    temperature = infer.temperature
    if not math.isfinite(temperature) or temperature < 0:
        raise DsocrError(f"infer.temperature={temperature}: must be a finite number >= 0 (0 = greedy)")
    if infer.top_p is not None and not (math.isfinite(infer.top_p) and 0.0 < infer.top_p <= 1.0):
        raise DsocrError(f"infer.top_p={infer.top_p}: must lie in (0, 1] (1 keeps every token)")
    if infer.top_k is not None and infer.top_k < 1:
        raise DsocrError(f"infer.top_k={infer.top_k}: must be an integer >= 1")
    if temperature == 0:
        for key in ("top_p", "top_k"):
            value = getattr(infer, key)
            if value is not None:
                raise DsocrError(f"infer.{key}={value}: has no effect with greedy decoding "
                                 f"(infer.temperature=0); set infer.temperature > 0 to sample, or drop infer.{key}")


def validate_gate_config(gate: DictConfig) -> None:
    """The gate's options parse as the gate will parse them (errors name the key)."""
    parse_threshold(gate.max_regression, "gate.max_regression")
    parse_stage_thresholds(gate.per_stage)
    parse_inconclusive(gate.inconclusive, "gate.inconclusive")
    parse_min_pages(gate.min_pages, "gate.min_pages")


def check_model_path(path: str) -> Path:
    """A local checkpoint folder must exist and hold config.json and safetensors weights."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DsocrError(f"model.path={path}: no such directory (give a local checkpoint folder; "
                         "nothing is downloaded)")
    if not (folder / "config.json").is_file():
        raise DsocrError(f"model.path={path}: config.json missing")
    if not any(folder.glob("*.safetensors")):
        raise DsocrError(f"model.path={path}: no *.safetensors weights")
    return folder


def to_container(cfg: DictConfig) -> dict:
    """The resolved config as plain data, for metrics.json."""
    return OmegaConf.to_container(cfg, resolve=True)
