"""Nsight Systems: capture only the measured rounds, re-launch under nsys, fold `nsys stats` output.

Three parts:

- :class:`NsysHooks` (the nsys stage's hooks): ``torch.cuda.profiler.start/stop``
  (cudaProfilerStart/Stop) open the capture of ``nsys profile --capture-range=cudaProfilerApi``
  around measured rounds only: never around warmup rounds or the model load. How the capture
  ranges are laid out depends on who started nsys, told by :data:`CAPTURE_ENV`:

  ``measured`` (the plugin's re-launch with ``profiling.nsys.capture=measured``): one range per
  sample, from its first measured round to its last; nsys runs with
  ``--capture-range-end=repeat`` and writes one report per range. ``stage``: one range from the
  first measured round to the end of the stage (``--capture-range-end=stop``). Unset (a bare
  ``nsys profile --capture-range=cudaProfilerApi pytest benchmarks -m nsys``, whose default
  ``--capture-range-end=stop-shutdown`` would end pytest at the first stop): one range from the
  first measured round, never closed by us, so it lasts until pytest exits; later samples'
  warmup rounds are then inside it. Set ``DSOCR_NSYS_CAPTURE=measured`` and
  ``--capture-range-end=repeat`` on such a command line for measured rounds only.

- :func:`build_nsys_command` and :func:`relaunch_under_nsys`: with ``--dsocr-profiler=nsys``,
  ``nsys`` on PATH and not already under it, the plugin runs the same pytest command line
  again under ``nsys profile`` with the preset's flags, then post-processes the report(s).

- :func:`nsys_report`: runs ``nsys stats`` (NVTX summary, GPU kernel summary, NVTX kernel
  summary, as CSV, ``--force-export=true`` so a stale SQLite export is never reused) on each
  report, merges them and writes ``<run>/nsys/summary.md``, ``<run>/nsys/summary.json`` and the
  ``nsys`` section of ``<run>/metrics.json``. Also ``python -m pytest_dsocr nsys-report FILE``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pytest_dsocr.engine import ProfilingHooks
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.profilers.config import NsysConfig
from pytest_dsocr.profilers.nsys_stats import (
    NsysTables,
    parse_gpu_kern_sum,
    parse_nvtx_kern_sum,
    parse_nvtx_sum,
    summarize,
    summary_markdown,
)
from pytest_dsocr.profilers.tools import CHILD_ENV, NSYS_URL, under_nsys, which
from pytest_dsocr.records import ImageRun, Sample
from pytest_dsocr.report.rebuild import add_section
from pytest_dsocr.atomic import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

STAGE = "nsys"
CAPTURE_ENV = "DSOCR_NSYS_CAPTURE"
CAPTURE_OPEN = "open"  # no CAPTURE_ENV: start once, never stop
REPORT_SUFFIXES = (".nsys-rep", ".qdrep")  # .qdrep: releases before 2021.4
RUN_DIR_OPTION = "--dsocr-run-dir"

# The three stats reports by their current names, then the names of older releases.
STATS_REPORTS: dict[str, tuple[str, ...]] = {
    "nvtx_sum": ("nvtx_sum", "nvtxsum", "nvtxppsum"),
    "cuda_gpu_kern_sum": ("cuda_gpu_kern_sum", "gpukernsum"),
    "nvtx_kern_sum": ("nvtx_kern_sum", "nvtxkernsum"),
}
LEGACY_NAMES = {canonical: names[1] for canonical, names in STATS_REPORTS.items()}
_HELP_REPORT_RE = re.compile(r"^\s*([a-z][a-z0-9_]*)(?:\[[^\]]*\])*\s+--\s")


# --- hooks ------------------------------------------------------------------------------------

def capture_mode(env: Mapping[str, str] | None = None) -> str:
    """measured | stage (set by the re-launch) or open (a bare nsys command line)."""
    env = os.environ if env is None else env
    value = (env.get(CAPTURE_ENV) or "").strip().lower()
    return value if value in ("measured", "stage") else CAPTURE_OPEN


def _cuda_profiler_start() -> None:
    import torch

    torch.cuda.synchronize()  # queued warmup work must not land inside the capture
    torch.cuda.profiler.start()


def _cuda_profiler_stop() -> None:
    import torch

    torch.cuda.synchronize()  # the measured kernels finish inside the capture
    torch.cuda.profiler.stop()


class NsysHooks(ProfilingHooks):
    """Opens and closes the cudaProfilerApi capture range around measured rounds.

    ``rounds`` is ``infer.rounds``: the capture of a sample closes right after its last
    measured round, before its outputs are written.
    """

    name = "nsys"

    def __init__(self, rounds: int, mode: str | None = None,
                 start: Callable[[], None] = _cuda_profiler_start, stop: Callable[[], None] = _cuda_profiler_stop) -> None:
        self.rounds = rounds
        self.mode = mode or capture_mode()
        self._start, self._stop = start, stop
        self.capturing = False
        self.ranges = 0  # capture ranges opened
        self.captured: list[tuple[str, int]] = []  # (sample id, round) of measured rounds inside a capture

    def _open(self) -> None:
        if not self.capturing:
            self._start()
            self.capturing = True
            self.ranges += 1

    def _close(self) -> None:
        if self.capturing:
            self._stop()
            self.capturing = False

    def on_iter_start(self, sample: Sample, round_index: int, measured: bool) -> None:
        if measured:
            if self.mode == "measured" or self.ranges == 0:
                self._open()
        elif self.mode == "measured":
            self._close()

    def on_iter_end(self, sample: Sample, round_index: int, measured: bool, run: ImageRun | None) -> None:
        if measured and self.capturing:
            self.captured.append((sample.sample_id, round_index))
        if self.mode == "measured" and measured and round_index >= self.rounds - 1:
            self._close()

    def end_sample(self) -> None:
        """After a sample's measure(): a failed round must not leave its capture open."""
        if self.mode == "measured":
            self._close()

    def finish(self) -> None:
        """End of the stage: close a stage-long capture (an open one lasts until exit)."""
        if self.mode != CAPTURE_OPEN:
            self._close()


# --- re-launch under nsys ---------------------------------------------------------------------

def build_nsys_command(preset: NsysConfig, output: str | Path, pytest_args: Sequence[str], *,
                       nsys: str = "nsys", python: str = sys.executable) -> list[str]:
    """``nsys profile <preset flags> --output=<output> <python> -m pytest <pytest_args>``."""
    cmd = [
        nsys, "profile",
        f"--trace={','.join(str(t) for t in preset.trace)}",
        "--capture-range=cudaProfilerApi",
        f"--capture-range-end={preset.capture_range_end}",
        f"--sample={preset.sample}",
        f"--cpuctxsw={preset.cpuctxsw}",
    ]
    if preset.cuda_graph_trace:
        cmd.append(f"--cuda-graph-trace={preset.cuda_graph_trace}")
    cmd += ["--force-overwrite=true", f"--output={output}", *[str(a) for a in preset.extra_args]]
    return cmd + [python, "-m", "pytest", *[str(a) for a in pytest_args]]


def child_pytest_args(pytest_args: Sequence[str], run_dir: str | Path) -> list[str]:
    """The session's own arguments with its run directory pinned (the child writes there)."""
    args, skip = [], False
    for arg in pytest_args:
        if skip:
            skip = False
            continue
        if arg == RUN_DIR_OPTION:
            skip = True
            continue
        if arg.startswith(RUN_DIR_OPTION + "="):
            continue
        args.append(str(arg))
    return args + [f"{RUN_DIR_OPTION}={run_dir}"]


def should_relaunch_under_nsys(profiler: str, env: Mapping[str, str] | None = None,
                               nsys_path: str | None | bool = False) -> bool:
    """--dsocr-profiler=nsys, nsys on PATH, and not already under nsys or in a profiler child."""
    env = os.environ if env is None else env
    if profiler != "nsys" or under_nsys(env) or env.get(CHILD_ENV):
        return False
    return bool(which("nsys") if nsys_path is False else nsys_path)


def find_reports(output: str | Path) -> list[Path]:
    """The report files of ``output`` (one, or one per capture range with repeat)."""
    output = Path(output)
    if output.is_file():
        return [output]
    if output.is_dir():
        return sorted(p for p in output.iterdir() if p.suffix in REPORT_SUFFIXES or p.name.endswith(REPORT_SUFFIXES))
    parent = output.parent if output.parent.is_dir() else None
    if parent is None:
        return []
    return sorted(p for p in parent.iterdir()
                  if p.name.startswith(output.name) and p.name.endswith(REPORT_SUFFIXES))


@dataclass
class NsysRelaunch:
    """What the re-launch did."""

    command: list[str]
    returncode: int
    reports: list[Path] = field(default_factory=list)
    summary: dict | None = None
    error: str | None = None


def relaunch_under_nsys(preset: NsysConfig, *, run_dir: str | Path, pytest_args: Sequence[str],
                        rootdir: str | Path, nsys: str | None = None, python: str = sys.executable,
                        runner: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> NsysRelaunch:
    """Run the session's tests again under nsys, then :func:`nsys_report` on what it wrote.

    The child gets ``run_dir`` (which must still be empty: nothing is written there before the
    child starts) and inherits the terminal, so its pytest output is the user's. nsys writes into
    a staging folder beside the run dir; the reports are moved to ``<run>/nsys/`` afterwards.
    """
    nsys = nsys or which("nsys")
    if not nsys:
        raise DsocrError(f"nsys not on PATH: install Nsight Systems ({NSYS_URL})")
    run_dir = Path(run_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.nsys-", dir=run_dir.parent))
    output = staging / Path(preset.output).name
    command = build_nsys_command(preset, output, child_pytest_args(pytest_args, run_dir), nsys=nsys, python=python)
    env = {**os.environ, CHILD_ENV: STAGE, CAPTURE_ENV: str(preset.capture)}
    log.info("re-launching under Nsight Systems: %s", " ".join(command))
    try:
        proc = runner(command, cwd=str(rootdir), env=env, timeout=preset.timeout_s)
        returncode = proc.returncode
    except subprocess.TimeoutExpired:
        returncode = -1
    target = run_dir / Path(preset.output).parent
    target.mkdir(parents=True, exist_ok=True)
    reports = []
    for report in find_reports(output):
        destination = target / report.name
        shutil.move(str(report), destination)
        reports.append(destination)
    shutil.rmtree(staging, ignore_errors=True)
    result = NsysRelaunch(command=command, returncode=returncode, reports=reports)
    if not reports:
        result.error = (f"nsys wrote no report (exit status {returncode}): did any nsys test run a measured "
                        "round on a CUDA device?")
        return result
    try:
        result.summary = nsys_report(reports, run_dir, nsys=nsys, runner=runner, top_k=preset.top_k)
    except DsocrError as exc:
        result.error = str(exc)
    return result


# --- nsys stats -------------------------------------------------------------------------------

def parse_help_reports(text: str) -> set[str]:
    """Report names listed by ``nsys stats --help-reports`` (``name[:args] -- Title`` lines)."""
    return {match.group(1) for line in text.splitlines() if (match := _HELP_REPORT_RE.match(line))}


def resolve_report_names(available: set[str] | None) -> dict[str, str]:
    """canonical -> the name this nsys knows (current names when the list is unknown)."""
    names = {}
    for canonical, spellings in STATS_REPORTS.items():
        if available is None:
            names[canonical] = canonical
            continue
        found = next((name for name in spellings if name in available), None)
        if found is None:
            raise DsocrError(f"nsys stats knows none of the report names {list(spellings)} "
                             "(see `nsys stats --help-reports`)")
        names[canonical] = found
    return names


def build_stats_command(report: str | Path, output_prefix: str | Path, reports: Sequence[str],
                        nsys: str = "nsys") -> list[str]:
    """``nsys stats`` writing one CSV per report to ``<output_prefix>_<report>.csv``."""
    return [nsys, "stats", "--force-export=true", "--force-overwrite=true", "--format", "csv",
            "--output", str(output_prefix), "--report", ",".join(reports), str(report)]


def _csv_for(prefix: Path, name: str) -> Path | None:
    exact = prefix.parent / f"{prefix.name}_{name}.csv"
    if exact.is_file():
        return exact
    matches = sorted(prefix.parent.glob(f"{prefix.name}_{name}*.csv"))
    return matches[0] if matches else None


def report_stem(report: Path) -> str:
    """``report.1.nsys-rep`` -> ``report.1``."""
    for suffix in REPORT_SUFFIXES:
        if report.name.endswith(suffix):
            return report.name[: -len(suffix)]
    return report.stem


def available_reports(nsys: str, runner: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> set[str] | None:
    try:
        proc = runner([nsys, "stats", "--help-reports"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    names = parse_help_reports((proc.stdout or "") + (proc.stderr or ""))
    return names or None


def export_stats(report: Path, stats_dir: Path, names: dict[str, str], nsys: str,
                 runner: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> dict[str, Path]:
    """Run nsys stats on one report; {canonical name: CSV path}."""
    stats_dir.mkdir(parents=True, exist_ok=True)
    prefix = stats_dir / report_stem(report).replace(".", "_")
    proc = runner(build_stats_command(report, prefix, list(names.values()), nsys),
                  capture_output=True, text=True, timeout=3600)
    found = {canonical: _csv_for(prefix, name) for canonical, name in names.items()}
    if proc.returncode != 0 or any(path is None for path in found.values()):
        missing = [names[c] for c, p in found.items() if p is None]
        raise DsocrError(f"nsys stats on {report} failed (exit {proc.returncode}; missing {missing}): "
                         + ((proc.stderr or "") + (proc.stdout or ""))[-1500:])
    return found  # type: ignore[return-value]


def read_tables(csvs: Mapping[str, Path]) -> NsysTables:
    def text(name: str) -> str:
        return csvs[name].read_text(encoding="utf-8", errors="replace")

    return NsysTables(parse_nvtx_sum(text("nvtx_sum")), parse_gpu_kern_sum(text("cuda_gpu_kern_sum")),
                      parse_nvtx_kern_sum(text("nvtx_kern_sum")))


def merge_into_metrics(run_dir: Path, section: dict) -> bool:
    """Add ``nsys`` to an existing run (its records and metrics.json, written by the profiled session)."""
    try:
        return add_section(run_dir, STAGE, section)
    except DsocrError as exc:
        log.warning("not adding the nsys section to %s: %s", run_dir, exc)
        return False


def nsys_report(report_file: str | Path | Sequence[str | Path], run_dir: str | Path, *, nsys: str | None = None,
                top_k: int = 10, runner: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> dict:
    """Fold one or more .nsys-rep files into ``<run>/nsys/summary.md`` and metrics.json ``nsys``.

    ``report_file`` is a report, a list of them, or a path prefix / folder naming several (one per
    capture range). Returns the section.
    """
    if isinstance(report_file, (str, Path)):
        reports = find_reports(report_file)
    else:
        reports = [Path(p) for p in report_file]
    if not reports:
        raise DsocrError(f"no .nsys-rep file at {report_file}")
    nsys = nsys or which("nsys")
    if not nsys:
        raise DsocrError(f"nsys not on PATH: install Nsight Systems ({NSYS_URL}) to read {reports[0]}")
    run_dir = Path(run_dir)
    stats_dir = run_dir / STAGE / "stats"
    available = available_reports(nsys, runner)
    names = resolve_report_names(available)
    parts = []
    for report in reports:
        try:
            csvs = export_stats(report, stats_dir, names, nsys, runner)
        except DsocrError:
            if available is not None:
                raise
            names = dict(LEGACY_NAMES)  # --help-reports said nothing: an older nsys?
            csvs = export_stats(report, stats_dir, names, nsys, runner)
        parts.append(read_tables(csvs))
    section = summarize(NsysTables.merge(parts), top_k=top_k)
    section["reports"] = [str(r) for r in reports]
    section["report_names"] = names
    atomic_write_text(run_dir / STAGE / "summary.md", summary_markdown(section, [r.name for r in reports]))
    atomic_write_json(run_dir / STAGE / "summary.json", section)
    merge_into_metrics(run_dir, section)
    return section
