"""Nsight Compute: the ncu stage runs each selected sample in a child process under ``ncu``.

Per sample there is one child per ``profiling.ncu.ranges`` entry (sam, clip, projector, the
decoder's prefill, decode by default), each profiling up to ``launch_count`` kernels launched
inside that entry's NVTX ranges, so every stage gets kernels rather than only the first to
launch; ``max_samples`` bounds the samples (kernels repeat across pages). The child is the
direct_inference test of that sample (``--dsocr-profiler=none``, the
environment variable :data:`~pytest_dsocr.profilers.tools.CHILD_ENV` set so it never starts a
profiler itself), with ``profiling.ncu.child_overrides`` on top of the session's own config
(one unwarmed inference by default: ncu replays every kernel in isolation, so warm-up buys
nothing). ncu profiles the kernels launched inside the preset's NVTX ranges and writes its raw
page as CSV, which :mod:`pytest_dsocr.profilers.ncu_csv` turns into ``ncu/kernels.csv``,
``ncu/kernels.md`` and the ``ncu`` section of metrics.json.

Files under ``<run>/ncu/``: ``raw/<test id>.<range>.csv`` (ncu's own CSV),
``reports/<test id>.<range>.ncu-rep`` (with ``export``), ``logs/<test id>.<range>.log`` (ncu's
and the child's output), ``kernels.csv``, ``kernels.md``.

``python -m pytest_dsocr.profilers.ncu command ... -- TARGET...`` prints the argv the stage
would run around TARGET; ``python -m pytest_dsocr.profilers.ncu parse FILE`` prints the kernel
table of a raw CSV.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from pytest_dsocr.errors import DsocrError
from pytest_dsocr.profilers.config import NcuConfig, NcuRange
from pytest_dsocr.profilers.ncu_csv import (
    NcuKernel,
    kernels_csv,
    kernels_markdown,
    ncu_section,
    parse_raw_csv,
    per_stage,
)
from pytest_dsocr.profilers.tools import CHILD_ENV
from pytest_dsocr.atomic import atomic_write_text
from pytest_dsocr.report.markdown import fmt, table

STAGE = "ncu"
DIRECT_TEST = "benchmarks/test_direct_inference.py::test_direct_inference"
PERMISSION_ERROR = "ERR_NVGPUCTRPERM"  # ncu's message when the driver keeps counters for admins only
PERMISSION_HELP = ("ncu may not read the GPU performance counters (ERR_NVGPUCTRPERM): run as root or allow "
                   "non-admin access (NVreg_RestrictProfilingToAdminUsers=0), "
                   "see https://developer.nvidia.com/ERR_NVGPUCTRPERM")
LOG_TAIL_CHARS = 2000


def build_ncu_command(preset: NcuConfig, nvtx_range: NcuRange, *, log_file: str | Path, target: Sequence[str],
                      export: str | Path | None = None, ncu: str = "ncu") -> list[str]:
    """The ncu argv of one pass around ``target`` (the child command), in the documented CLI
    spelling.

    ``--csv --page raw --print-units base --log-file`` puts one CSV row per kernel, in base
    units (nanoseconds, bytes), into ``log_file``; ``--export`` also keeps the report for the
    Nsight Compute GUI.
    """
    cmd = [ncu, "--nvtx"]
    for expression in nvtx_range.include:
        cmd += ["--nvtx-include", str(expression)]
    for expression in nvtx_range.exclude:
        cmd += ["--nvtx-exclude", str(expression)]
    cmd += ["--set", str(preset.set)]
    for section in preset.sections:
        cmd += ["--section", str(section)]
    if preset.metrics:
        cmd += ["--metrics", ",".join(str(m) for m in preset.metrics)]
    if preset.kernel_regex:
        cmd += ["-k", f"regex:{preset.kernel_regex}"]
    cmd += [
        "--launch-skip", str(preset.launch_skip),
        "--launch-count", str(preset.launch_count),
        "--clock-control", str(preset.clock_control),
        "--replay-mode", str(preset.replay_mode),
        "--cache-control", str(preset.cache_control),
        "--target-processes", "all",
        "--csv", "--page", "raw", "--print-units", "base",
        "--log-file", str(log_file),
    ]
    if export is not None:
        cmd += ["--export", str(export), "--force-overwrite"]
    return cmd + [str(part) for part in target]


def build_import_command(report: str | Path, ncu: str = "ncu") -> list[str]:
    """Raw CSV of an exported report (when ncu printed nothing to the log file)."""
    return [ncu, "--import", str(report), "--csv", "--page", "raw", "--print-units", "base"]


def child_pytest_args(test_ids: Sequence[str], *, run_dir: str | Path, config_file: str | None = None,
                      overrides: Sequence[str] = (), child_overrides: Sequence[str] = (),
                      direct_test: str = DIRECT_TEST) -> list[str]:
    """``-m pytest`` arguments of the child: the direct_inference test of each sample, the
    session's config (``--dsocr-config``, ``--dsocr-set``), then the preset's child overrides."""
    args = ["-m", "pytest", *[f"{direct_test}[{test_id}]" for test_id in test_ids],
            "-p", "no:cacheprovider", "-q", "--dsocr-profiler=none", f"--dsocr-run-dir={run_dir}"]
    if config_file:
        args.append(f"--dsocr-config={config_file}")
    args += [f"--dsocr-set={item}" for item in [*overrides, *child_overrides]]
    return args


@dataclass
class NcuSampleResult:
    """What one child run produced."""

    test_id: str
    command: list[str]
    returncode: int
    kernels: list[NcuKernel] = field(default_factory=list)
    log: str = ""
    error: str | None = None  # why the run failed (the stage fails the test with it)
    skip: str | None = None  # why the run could not measure (the stage skips with it)


class NcuRunner:
    """Runs the ncu children of one session and keeps the tables under ``<run>/ncu/`` current."""

    def __init__(self, preset: NcuConfig, run_dir: Path, cwd: Path, *, ncu: str = "ncu",
                 python: str = sys.executable, config_file: str | None = None, overrides: Sequence[str] = (),
                 direct_test: str = DIRECT_TEST,
                 runner: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> None:
        self.preset = preset
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / STAGE
        self.cwd = Path(cwd)  # the session's invocation dir: relative config paths mean the same there
        self.direct_test = direct_test
        self.ncu = ncu
        self.python = python
        self.config_file = config_file
        self.overrides = list(overrides)
        self.runner = runner
        self.kernels: list[NcuKernel] = []
        self.samples: list[str] = []
        self.commands: dict[str, list[str]] = {}

    def command_for(self, test_id: str, nvtx_range: NcuRange) -> tuple[list[str], Path, Path | None]:
        stem = f"{test_id}.{nvtx_range.name}"
        raw = self.dir / "raw" / f"{stem}.csv"
        export = self.dir / "reports" / stem if self.preset.export else None
        target = [self.python, *child_pytest_args(
            [test_id], run_dir=self.run_dir / "tmp" / STAGE / stem, config_file=self.config_file,
            overrides=self.overrides, child_overrides=list(self.preset.child_overrides),
            direct_test=self.direct_test)]
        command = build_ncu_command(self.preset, nvtx_range, log_file=raw, target=target, export=export, ncu=self.ncu)
        return command, raw, export

    def limit_reached(self) -> bool:
        """True once ``max_samples`` samples were profiled."""
        limit = self.preset.max_samples
        return limit is not None and len(self.samples) >= limit

    def run_sample(self, test_id: str) -> NcuSampleResult:
        """Every range's pass over one sample; the first failure stops the sample."""
        result = NcuSampleResult(test_id=test_id, command=[], returncode=0)
        kernels: list[NcuKernel] = []
        for nvtx_range in self.preset.ranges:
            one = self._run_range(test_id, nvtx_range)
            result.command, result.returncode, result.log = one.command, one.returncode, one.log
            if one.skip or one.error:
                result.skip, result.error = one.skip, one.error
                return result
            kernels.extend(one.kernels)
        result.kernels = kernels
        if not kernels:
            names = [r.name for r in self.preset.ranges]
            result.error = (f"ncu profiled no kernel of {test_id} in the ranges {names}: check "
                            "profiling.ncu.ranges and kernel_regex")
            return result
        self.samples.append(test_id)
        self.kernels.extend(kernels)
        self.write_tables()
        return result

    def _run_range(self, test_id: str, nvtx_range: NcuRange) -> NcuSampleResult:
        command, raw, export = self.command_for(test_id, nvtx_range)
        for folder in {raw.parent, self.dir / "logs"} | ({export.parent} if export else set()):
            folder.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, CHILD_ENV: STAGE}
        try:
            proc = self.runner(command, cwd=self.cwd, env=env, capture_output=True, text=True,
                               timeout=self.preset.timeout_s)
            returncode, log = proc.returncode, (proc.stdout or "") + (proc.stderr or "")
        except subprocess.TimeoutExpired as exc:
            returncode, log = -1, f"timed out after {self.preset.timeout_s} s (profiling.ncu.timeout_s)\n{exc}"
        log_path = self.dir / "logs" / f"{raw.stem}.log"
        atomic_write_text(log_path, " ".join(command) + "\n\n" + log)
        self.commands[f"{test_id}.{nvtx_range.name}"] = command
        result = NcuSampleResult(test_id=test_id, command=command, returncode=returncode, log=log)
        text = raw.read_text(encoding="utf-8", errors="replace") if raw.is_file() else ""
        if PERMISSION_ERROR in log or PERMISSION_ERROR in text:
            result.skip = PERMISSION_HELP
            return result
        if '"ID"' not in text and export is not None:
            text = self._import(export, raw) or text
        if returncode != 0:
            result.error = f"ncu exited with {returncode}; log {log_path}:\n" + log[-LOG_TAIL_CHARS:]
            return result
        if '"ID"' not in text:
            return result  # no kernel of this range was launched (e.g. a page without crops)
        try:
            result.kernels = parse_raw_csv(text, range_name=nvtx_range.name)
        except DsocrError as exc:
            result.error = f"{exc}\n" + log[-LOG_TAIL_CHARS:]
        return result

    def _import(self, export: Path, raw: Path) -> str | None:
        report = export.with_name(export.name + ".ncu-rep")
        if not report.is_file():
            return None
        proc = self.runner(build_import_command(report, self.ncu), capture_output=True, text=True,
                           timeout=self.preset.timeout_s)
        if proc.returncode != 0 or '"ID"' not in (proc.stdout or ""):
            return None
        atomic_write_text(raw, proc.stdout)
        return proc.stdout

    def write_tables(self) -> None:
        latency = float(self.preset.latency_bound_pct)
        passes = "; ".join(f"{r.name}: {' '.join(r.include)}" + (f" minus {' '.join(r.exclude)}" if r.exclude else "")
                           for r in self.preset.ranges)
        header = (f"Preset: set `{self.preset.set}`, one ncu pass per range ({passes}), launch skip "
                  f"{self.preset.launch_skip} and launch count {self.preset.launch_count} per pass and sample, "
                  f"clock control `{self.preset.clock_control}`, samples: {', '.join(self.samples)}. "
                  "Raw CSV per pass in `raw/`.")
        atomic_write_text(self.dir / "kernels.csv", kernels_csv(self.kernels, latency))
        atomic_write_text(self.dir / "kernels.md", kernels_markdown(self.kernels, latency, self.preset.top_k, header))

    def summary_markdown(self) -> str:
        """A short block for the stakeholder summary: time and limiter per stage."""
        stages = per_stage(self.kernels, float(self.preset.latency_bound_pct))
        rows = [[stage, s["launches"], s["duration_ms"], fmt(s["sm_throughput_pct"], 1),
                 fmt(s["dram_throughput_pct"], 1), s["bound"] or "n/a"] for stage, s in stages.items()]
        return (f"{len(self.kernels)} kernel launches profiled (set `{self.preset.set}`); "
                f"per kernel in `{STAGE}/kernels.md`.\n\n"
                + table(["Stage", "Launches", "Time (ms)", "SM %", "DRAM %", "Bound"], rows))

    def section(self) -> dict:
        data = ncu_section(self.kernels, float(self.preset.latency_bound_pct), self.preset.top_k)
        data["preset"] = OmegaConf.to_container(self.preset) if OmegaConf.is_config(self.preset) else dict(vars(self.preset))
        data["samples"] = list(self.samples)
        data["files"] = {"kernels_csv": "ncu/kernels.csv", "kernels_md": "ncu/kernels.md", "raw": "ncu/raw/"}
        return data


# --- command line (used by benchmarks/perf/gpu_profilers.sh) -----------------------------------

def load_preset(name: str | None) -> NcuConfig:
    """``conf/profiling/ncu/<name>.yaml`` over the dataclass defaults (None: the defaults)."""
    base = OmegaConf.structured(NcuConfig)
    if name:
        path = Path(__file__).resolve().parent.parent / "conf" / "profiling" / "ncu" / f"{name}.yaml"
        if not path.is_file():
            raise DsocrError(f"ncu preset {name!r}: no file {path}")
        base = OmegaConf.merge(base, OmegaConf.load(path))
    return base  # type: ignore[return-value]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_dsocr.profilers.ncu")
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("command", help="print the ncu argv around TARGET, one argument a line")
    command.add_argument("--preset", default="default", help="conf/profiling/ncu preset")
    command.add_argument("--ncu", default="ncu")
    command.add_argument("--log-file", required=True)
    command.add_argument("--export")
    command.add_argument("--range", dest="range_name", help="the preset's range entry (default: the first)")
    command.add_argument("--include", action="append", default=[], help="NVTX include filter instead of a range entry")
    command.add_argument("--exclude", action="append", default=[], help="NVTX exclude filter (with --include)")
    command.add_argument("target", nargs=argparse.REMAINDER, help="-- TARGET [ARGS...]")
    parse = commands.add_parser("parse", help="print the kernel table of an ncu raw CSV")
    parse.add_argument("file")
    parse.add_argument("--preset", default="default")
    args = parser.parse_args(argv)
    preset = load_preset(args.preset)
    if args.command == "command":
        target = args.target[1:] if args.target[:1] == ["--"] else args.target
        if not target:
            parser.error("command: give the target after --")
        if args.include:
            nvtx_range = NcuRange("custom", list(args.include), list(args.exclude))
        else:
            matches = [r for r in preset.ranges if args.range_name in (None, r.name)]
            if not matches:
                parser.error(f"no range {args.range_name!r} in the preset ({[r.name for r in preset.ranges]})")
            nvtx_range = matches[0]
        print("\n".join(build_ncu_command(preset, nvtx_range, log_file=args.log_file, target=target,
                                          export=args.export, ncu=args.ncu)))
        return 0
    kernels = parse_raw_csv(Path(args.file).read_text(encoding="utf-8", errors="replace"))
    print(kernels_markdown(kernels, float(preset.latency_bound_pct), preset.top_k))
    return 0


if __name__ == "__main__":
    sys.exit(main())
