"""Typed presets of the three profilers (OmegaConf structured dataclasses).

The integrator composes :class:`ProfilingConfig` under the top-level key ``profiling``; the
YAML presets in ``conf/profiling/torch/``, ``conf/profiling/nsys/`` and ``conf/profiling/ncu/``
only choose values (``--dsocr-set profiling/ncu=roofline`` picks one, ``--dsocr-set
profiling.ncu.launch_count=50`` changes one key). :func:`validate_profiling_config` checks
what the types cannot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from pytest_dsocr.data.config import require_int
from pytest_dsocr.errors import DsocrError

TORCH_ACTIVITIES = ("cpu", "cuda")
NSYS_CAPTURE_MODES = ("measured", "stage")
NCU_CLOCK_CONTROL = ("none", "base")
NCU_REPLAY_MODES = ("kernel", "application", "range", "app-range")
NCU_CACHE_CONTROL = ("all", "none")

# Nsight Compute metrics behind the columns of ncu/kernels.md, collected on top of the preset's
# section set. Names as documented in the Nsight Compute Profiling Guide (metrics reference).
NCU_DEFAULT_METRICS = [
    "gpu__time_duration.sum",  # kernel duration
    "sm__throughput.avg.pct_of_peak_sustained_elapsed",  # SM (compute) throughput, % of peak
    "gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed",  # memory throughput, % of peak
    "dram__throughput.avg.pct_of_peak_sustained_elapsed",  # DRAM throughput, % of peak
    "sm__warps_active.avg.pct_of_peak_sustained_active",  # achieved occupancy
    "dram__bytes.sum",  # DRAM bytes read + written
    # CUDA-core floating point instructions (per thread): FLOPs = add + mul + 2 * fma.
    "sm__sass_thread_inst_executed_op_fadd_pred_on.sum",
    "sm__sass_thread_inst_executed_op_fmul_pred_on.sum",
    "sm__sass_thread_inst_executed_op_ffma_pred_on.sum",
    "sm__sass_thread_inst_executed_op_hadd_pred_on.sum",
    "sm__sass_thread_inst_executed_op_hmul_pred_on.sum",
    "sm__sass_thread_inst_executed_op_hfma_pred_on.sum",
    "sm__sass_thread_inst_executed_op_dadd_pred_on.sum",
    "sm__sass_thread_inst_executed_op_dmul_pred_on.sum",
    "sm__sass_thread_inst_executed_op_dfma_pred_on.sum",
]


@dataclass
class TorchProfilerConfig:
    """torch.profiler around the torch_profiler stage: one profile per sample.

    The schedule counts that sample's inferences (benchmark warmup rounds, then measured
    rounds): with the defaults the benchmark's warmup round is the profiler's warmup and every
    measured round is recorded.
    """

    activities: List[str] = field(default_factory=lambda: list(TORCH_ACTIVITIES))  # cpu | cuda (cuda only on a CUDA device)
    skip_first: int = 0  # inferences ignored before the schedule starts
    wait: int = 0  # inferences not traced after skip_first
    warmup: int = 1  # inferences traced and discarded (the profiler's own start-up cost)
    active: Optional[int] = None  # inferences recorded per cycle; null = every remaining inference of the sample
    repeat: int = 1  # wait/warmup/active cycles per sample when active is set (0 = as many as fit)
    record_shapes: bool = False  # input shapes per operator (operators.json lists the most frequent)
    profile_memory: bool = False  # tensor memory allocated/freed per operator
    with_flops: bool = False  # FLOP estimates of matmul/conv operators
    with_stack: bool = False  # Python/C++ stacks in the trace (slow)
    with_modules: bool = False  # nn.Module hierarchy in the trace
    top_k: int = 25  # operators per table in operators.md and stage_operators.md
    trace: bool = True  # write trace.json.gz (Chrome trace format, opens in Perfetto)
    trace_max_samples: Optional[int] = 4  # samples whose profiles go into the trace (null = all); tables cover all


@dataclass
class NsysConfig:
    """`nsys profile` flags for the re-launch under Nsight Systems, and the capture policy.

    capture=measured opens the capture (cudaProfilerStart) at each sample's first measured round
    and closes it after its last, so warmup rounds and the model load are never captured; nsys
    then needs --capture-range-end=repeat and writes one report per capture range (nsys-report
    merges them). capture=stage opens it once at the first measured round and closes it at the
    end of the stage.
    """

    trace: List[str] = field(default_factory=lambda: ["cuda", "nvtx"])  # --trace
    capture: str = "measured"  # measured | stage (see above)
    capture_range_end: str = "repeat"  # --capture-range-end; repeat[:N] for capture=measured
    sample: str = "none"  # --sample: CPU IP/backtrace sampling (none keeps overhead low)
    cpuctxsw: str = "none"  # --cpuctxsw: CPU context-switch trace
    cuda_graph_trace: Optional[str] = None  # --cuda-graph-trace: graph | node; null = nsys default
    extra_args: List[str] = field(default_factory=list)  # more `nsys profile` flags, passed as given
    output: str = "nsys/report"  # report path without extension, relative to the run dir
    top_k: int = 10  # kernels per stage in nsys/summary.md
    timeout_s: Optional[int] = None  # kill the re-launched session after this many seconds; null = no limit


@dataclass
class NcuRange:
    """One pass of ncu over one sample: the kernels launched inside these NVTX ranges.

    Filters use ncu's push/pop syntax, ``<domain>@<range>/`` (``dsocr@decode/``: any kernel
    launched while ``decode`` is on the stack); several includes are OR'ed, an exclude drops
    kernels whose stack also holds that range (``dsocr@vision/`` keeps prefill to the decoder).
    """

    name: str = "decode"  # the pass's name in file names and kernels.csv
    include: List[str] = field(default_factory=lambda: ["dsocr@decode/"])  # --nvtx-include
    exclude: List[str] = field(default_factory=list)  # --nvtx-exclude


def _default_ncu_ranges() -> list:
    return [
        NcuRange("sam", ["dsocr@sam/"]),
        NcuRange("clip", ["dsocr@clip/"]),
        NcuRange("projector", ["dsocr@projector/"]),
        NcuRange("prefill", ["dsocr@prefill/"], ["dsocr@vision/"]),
        NcuRange("decode", ["dsocr@decode/"]),
    ]


@dataclass
class NcuConfig:
    """`ncu` flags for the ncu stage's child processes: per sample, one child per range, each
    profiling up to launch_count kernels of that range (so every stage gets kernels, not just
    the first one to launch)."""

    set: str = "basic"  # --set: section set (`ncu --list-sets`): basic | detailed | full | roofline ...
    sections: List[str] = field(default_factory=list)  # extra --section identifiers
    metrics: List[str] = field(default_factory=lambda: list(NCU_DEFAULT_METRICS))  # --metrics on top of the set
    ranges: List[NcuRange] = field(default_factory=_default_ncu_ranges)  # one ncu pass per entry
    kernel_regex: Optional[str] = None  # -k regex:<pattern>; null = every kernel in the NVTX filter
    launch_skip: int = 0  # --launch-skip: matching kernel launches left unprofiled first, per range
    launch_count: int = 20  # --launch-count: matching kernel launches profiled per range and sample
    max_samples: Optional[int] = 2  # samples profiled (kernels repeat across pages); null = every sample
    clock_control: str = "none"  # --clock-control: none keeps the boost clocks production runs at; base locks them
    replay_mode: str = "kernel"  # --replay-mode
    cache_control: str = "all"  # --cache-control: all flushes caches before each replay pass
    export: bool = True  # keep ncu/reports/<sample>.<range>.ncu-rep for the Nsight Compute GUI
    child_overrides: List[str] = field(default_factory=lambda: ["infer.warmup_rounds=0", "infer.rounds=1"])  # --dsocr-set for the child
    timeout_s: int = 1800  # limit of one child process
    top_k: int = 30  # kernels in ncu/kernels.md
    latency_bound_pct: float = 60.0  # SM and memory throughput both below this: latency-bound


@dataclass
class ProfilingConfig:
    """The profiler presets; which profiler runs is chosen with --dsocr-profiler."""

    torch: TorchProfilerConfig = field(default_factory=TorchProfilerConfig)
    nsys: NsysConfig = field(default_factory=NsysConfig)
    ncu: NcuConfig = field(default_factory=NcuConfig)


def _check_choice(key: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise DsocrError(f"{key}={value!r}: expected one of {', '.join(choices)}")


def validate_torch_config(cfg: TorchProfilerConfig, prefix: str = "profiling.torch") -> None:
    for name in cfg.activities:
        _check_choice(f"{prefix}.activities", name, TORCH_ACTIVITIES)
    if "cpu" not in cfg.activities:
        raise DsocrError(f"{prefix}.activities={list(cfg.activities)}: must include cpu "
                         "(operators and stage ranges are CPU events)")
    for name in ("skip_first", "wait", "warmup", "repeat"):
        require_int(getattr(cfg, name), f"{prefix}.{name}", 0)
    if cfg.active is not None:
        require_int(cfg.active, f"{prefix}.active", 1)
    require_int(cfg.top_k, f"{prefix}.top_k", 1)
    if cfg.trace_max_samples is not None:
        require_int(cfg.trace_max_samples, f"{prefix}.trace_max_samples", 1)


def validate_nsys_config(cfg: NsysConfig, prefix: str = "profiling.nsys") -> None:
    _check_choice(f"{prefix}.capture", cfg.capture, NSYS_CAPTURE_MODES)
    if cfg.capture == "measured" and not str(cfg.capture_range_end).startswith("repeat"):
        raise DsocrError(
            f"{prefix}.capture_range_end={cfg.capture_range_end!r}: capture=measured opens one capture "
            "range per sample and needs repeat (or repeat:N); use capture=stage for stop or stop-shutdown")
    if cfg.capture == "stage" and str(cfg.capture_range_end).endswith("shutdown"):
        raise DsocrError(
            f"{prefix}.capture_range_end={cfg.capture_range_end!r}: nsys would end pytest when the stage closes "
            "its capture, before metrics.json is written; use stop with capture=stage")
    if not cfg.trace:
        raise DsocrError(f"{prefix}.trace: empty; expected e.g. [cuda, nvtx]")
    if not str(cfg.output).strip():
        raise DsocrError(f"{prefix}.output: expected a report path, got {cfg.output!r}")
    require_int(cfg.top_k, f"{prefix}.top_k", 1)
    if cfg.timeout_s is not None:
        require_int(cfg.timeout_s, f"{prefix}.timeout_s", 1)


def validate_ncu_config(cfg: NcuConfig, prefix: str = "profiling.ncu") -> None:
    if not str(cfg.set).strip():
        raise DsocrError(f"{prefix}.set: expected a section set name (ncu --list-sets)")
    _check_choice(f"{prefix}.clock_control", cfg.clock_control, NCU_CLOCK_CONTROL)
    _check_choice(f"{prefix}.replay_mode", cfg.replay_mode, NCU_REPLAY_MODES)
    _check_choice(f"{prefix}.cache_control", cfg.cache_control, NCU_CACHE_CONTROL)
    require_int(cfg.launch_skip, f"{prefix}.launch_skip", 0)
    require_int(cfg.launch_count, f"{prefix}.launch_count", 1)
    if cfg.max_samples is not None:
        require_int(cfg.max_samples, f"{prefix}.max_samples", 1)
    if not cfg.ranges:
        raise DsocrError(f"{prefix}.ranges: empty; give at least one {{name, include}} entry")
    names = [r.name for r in cfg.ranges]
    for index, entry in enumerate(cfg.ranges):
        if not str(entry.name).strip() or not str(entry.name).replace("_", "").replace("-", "").isalnum():
            raise DsocrError(f"{prefix}.ranges[{index}].name={entry.name!r}: letters, digits, - and _ only")
        if not entry.include:
            raise DsocrError(f"{prefix}.ranges[{index}].include: empty; e.g. [dsocr@decode/]")
    if len(set(names)) != len(names):
        raise DsocrError(f"{prefix}.ranges: names repeat ({names})")
    require_int(cfg.timeout_s, f"{prefix}.timeout_s", 1)
    require_int(cfg.top_k, f"{prefix}.top_k", 1)
    if not 0.0 <= float(cfg.latency_bound_pct) <= 100.0:
        raise DsocrError(f"{prefix}.latency_bound_pct={cfg.latency_bound_pct}: must be between 0 and 100")
    for item in cfg.child_overrides:
        if "=" not in str(item):
            raise DsocrError(f"{prefix}.child_overrides: {item!r} is not KEY=VALUE")


def validate_profiling_config(cfg: ProfilingConfig, prefix: str = "profiling") -> None:
    """Fail fast, naming the key, on values the type system lets through."""
    validate_torch_config(cfg.torch, f"{prefix}.torch")
    validate_nsys_config(cfg.nsys, f"{prefix}.nsys")
    validate_ncu_config(cfg.ncu, f"{prefix}.ncu")
