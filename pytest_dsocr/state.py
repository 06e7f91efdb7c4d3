"""The state of one pytest-dsocr session (or one xdist worker), and how the run ends.

:class:`DsocrState` declares everything the plugin keeps between hooks: the resolved config,
the options, the run dir, the sampled pages, the collector, the model session, and what the
end of the run produced (final metrics, the gate's verdict, an nsys relaunch). It is made the
first time the session needs pytest-dsocr (see ``plugin.activate``) and read by the hooks;
nothing else adds attributes to it.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_dsocr.collector import Collector
from pytest_dsocr.config import load_config, to_container
from pytest_dsocr.data.datasets import DatasetScan, scan_dataset
from pytest_dsocr.data.groundtruth import PageTruth, truth_for_dataset
from pytest_dsocr.data.sampling import sample_images
from pytest_dsocr.env import collect_env, peak_memory, resolve_device
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.families import stage_tree
from pytest_dsocr.models.weights import weights_identity
from pytest_dsocr.notes import SessionNotes
from pytest_dsocr.parity import warn_if_no_boxes
from pytest_dsocr.profilers import PROFILERS
from pytest_dsocr.records import Sample
from pytest_dsocr.report.compatibility import Difference, check_compatibility, identity_from_metrics, run_identity
from pytest_dsocr.report.gate import GateResult, load_baseline, parse_inconclusive, run_gate
from pytest_dsocr.report.model import RunMetrics
from pytest_dsocr.rundir import check_writable, new_run_dir, remove_if_empty
from pytest_dsocr.xdist_setup import RUN_DIR_KEY, is_controller, worker_id, worker_input

if TYPE_CHECKING:  # annotations only: the session module loads torch and the model code
    from pytest_dsocr.profilers.nsys import NsysRelaunch
    from pytest_dsocr.session import DsocrSession
    from pytest_dsocr.xdist import XdistController



class Terminated(KeyboardInterrupt):
    """SIGTERM turned into a clean stop: pytest ends the session as it does for Ctrl-C."""


def option_value(config: pytest.Config, name: str) -> Any:
    """``--dsocr-<name>`` from the command line first, then the ini key ``dsocr_<name>``."""
    value = config.getoption(f"--dsocr-{name.replace('_', '-')}")
    if value in (None, []):
        value = config.getini(f"dsocr_{name}") or None
    return value


def parse_profiler(value: str | None) -> str:
    if value is None:
        return "none"
    name = str(value).strip().lower()
    if name not in PROFILERS:
        raise DsocrError(f"--dsocr-profiler={value}: expected one of {', '.join(PROFILERS)}")
    return name


class DsocrState:
    """Everything pytest-dsocr keeps for one pytest session (or one xdist worker)."""

    def __init__(self, config: pytest.Config, notes: SessionNotes | None = None) -> None:
        self.pytest_config = config
        self.notes = notes if notes is not None else SessionNotes()  # skip reasons and warnings to report
        self.worker: str | None = worker_id(config)  # "gw0", ... in an xdist worker
        self.worker_run_dir: str | None = worker_input(config, RUN_DIR_KEY)
        self.is_controller = is_controller(config)
        overrides = list(config.getini("dsocr_set") or []) + list(config.getoption("--dsocr-set") or [])
        self.cfg = load_config(option_value(config, "config"), overrides)
        self.config_dict = to_container(self.cfg)
        self.profiler = parse_profiler(option_value(config, "profiler"))
        self.explicit_run_dir = option_value(config, "run_dir") or self.cfg.run.dir
        self.baseline = option_value(config, "baseline")
        self.max_regression = option_value(config, "max_regression") or self.cfg.gate.max_regression
        self.baseline_force = bool(config.getoption("--dsocr-baseline-force"))
        self.gate_inconclusive = parse_inconclusive(option_value(config, "gate_inconclusive")
                                                    or self.cfg.gate.inconclusive)
        self._identity: dict | None = None
        # Compared before any model is built: a baseline that measured something else is refused
        # now, not after the run (forced differences go to regression.md).
        self.baseline_data: RunMetrics | None = None
        self.baseline_differences: list[Difference] = []
        if self.baseline and self.worker is None:
            self.baseline_data = RunMetrics.from_json(load_baseline(self.baseline), source=f"--dsocr-baseline={self.baseline}")
            self.baseline_differences = check_compatibility(identity_from_metrics(self.baseline_data), self.identity,
                                                            force=self.baseline_force)
        # set by the hooks as the session goes on
        self.xdist: XdistController | None = None  # in an xdist controller
        self.interrupted: str | None = None  # why the session was interrupted, if it was
        self.signalled = False  # interrupted by SIGTERM or SIGINT (from outside, not by pytest.exit)
        self.current_test: str | None = None
        self.created_run_dir = False
        self.final_metrics: RunMetrics | None = None
        self.gate_result: GateResult | None = None
        self.gate_error: str | None = None
        self.nsys_relaunch: NsysRelaunch | None = None
        self._run_dir: Path | None = None
        self._samples: list[Sample] | None = None
        self._dataset: DatasetScan | None = None
        self._session: DsocrSession | None = None
        self._collector: Collector | None = None
        self._previous_sigterm: Any = None
        self._sigterm_installed = False
        if self.explicit_run_dir is not None and self.worker is None:
            self.run_dir  # refuse an existing or unwritable run dir before anything runs
        elif self.worker_run_dir is None:
            check_writable(self.run_root, f"run.root={self.cfg.run.root}")  # made at the first sample

    @property
    def identity(self) -> dict:
        """What decides this run's timings (see :mod:`pytest_dsocr.report.compatibility`): the
        resolved config, torch/transformers, the device and the weights; stored in metrics.json."""
        if self._identity is None:
            env = collect_env(resolve_device(self.cfg.model.device))
            self._identity = run_identity(self.config_dict, env, weights_identity(self.cfg.model))
        return self._identity

    # -- the run dir ----------------------------------------------------------------------

    @property
    def has_run_dir(self) -> bool:
        """Whether the run dir exists yet (reading :attr:`run_dir` creates it)."""
        return self._run_dir is not None

    def adopt_run_dir(self, path: str | Path) -> None:
        """Use ``path``, made by another process of this run (xdist workers), as the run dir."""
        self._run_dir = Path(path)

    @property
    def run_dir(self) -> Path:
        if self._run_dir is None:
            if self.worker_run_dir:  # an xdist worker writes into the controller's run
                self._run_dir = Path(self.worker_run_dir)
                return self._run_dir
            self._run_dir = new_run_dir(self.run_root, self.explicit_run_dir,
                                        base_dir=Path(self.pytest_config.invocation_params.dir))
            self.created_run_dir = True
        return self._run_dir

    @property
    def run_root(self) -> Path:
        """``run.root`` as a path: relative to the pytest rootdir."""
        root = Path(self.cfg.run.root)
        return root if root.is_absolute() else Path(self.pytest_config.rootpath) / root

    # -- what the session measures ------------------------------------------------------

    @property
    def samples(self) -> list[Sample]:
        if self._samples is None:
            self._dataset = scan_dataset(self.cfg.dataset, base_dir=Path(self.pytest_config.invocation_params.dir))
            self._samples = sample_images(list(self._dataset.images), self.cfg.dataset.sampling)
        return self._samples

    def truths(self) -> dict[Path, PageTruth]:
        """The dataset's ground truth by image path, looked up once, for the model session: the
        pages that have one get their accuracy recorded beside their timings."""
        return truth_for_dataset(self.cfg.dataset, base_dir=Path(self.pytest_config.invocation_params.dir))

    @property
    def has_data(self) -> bool:
        """Whether anything was measured or recorded (a collector exists and holds data)."""
        return self._collector is not None and self._collector.has_data

    @property
    def stopped_while_measuring(self) -> bool:
        """A signal stopped the run after a stage test asked for the model, before anything was
        recorded (a CI timeout while the first page decodes): the run still gets its files, so
        its run dir says the run is incomplete and why, not nothing at all. Not under xdist,
        whose controller merges what its workers recorded."""
        return (self.signalled and self._session is not None and not self.has_data
                and self.worker is None and self.xdist is None)

    @property
    def has_run_files(self) -> bool:
        """Whether this run writes (or wrote) its run files: it recorded something, or was stopped while measuring."""
        return self.has_data or self.stopped_while_measuring

    @property
    def collector(self) -> Collector:
        if self._collector is None:
            def env() -> dict:
                device = self._session.device if self._session is not None else None
                env = collect_env(device, Path(self.pytest_config.rootpath))
                env["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
                if self.worker is not None:
                    env["xdist_worker"] = self.worker
                return env

            def memory() -> dict:
                return peak_memory(self._session.device if self._session is not None else None)

            counts = {"warmup_rounds": self.cfg.infer.warmup_rounds, "rounds": self.cfg.infer.rounds,
                      "samples": len(self.samples)}
            self._collector = Collector(lambda: self.run_dir, self.config_dict, env, memory, counts,
                                        worker=self.worker, tree=stage_tree(self.cfg.model.family),
                                        identity=self.identity)
            self._collector.sample_sections["dataset"] = self._dataset.section()
            hook = self.pytest_config.hook.pytest_dsocr_update_metrics
            if hook.get_hookimpls():  # only when a conftest or plugin implements it: else samples stream
                self._collector.json_hooks.append(lambda metrics: hook(config=self.pytest_config, metrics=metrics))
        return self._collector

    @property
    def session(self) -> DsocrSession:
        if self._session is None:
            from pytest_dsocr.session import DsocrSession  # loads torch and the model code

            self._session = DsocrSession(self.cfg, self.collector, self.samples, self.truths())
        return self._session

    # -- SIGTERM ------------------------------------------------------------------------
    # SIGTERM (a CI timeout, `kill`, a batch scheduler) would end the process on the spot and
    # skip the final write; as a KeyboardInterrupt pytest finishes the session cleanly.

    def install_sigterm(self) -> None:
        """Turn SIGTERM into :class:`Terminated` until the session ends.

        Only in the main thread and only over the default action: a handler someone else
        installed (or SIG_IGN inherited from the parent) is left as it is.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)
        if previous is not signal.SIG_DFL and not getattr(previous, "dsocr_handler", False):
            return

        def on_sigterm(signum, frame):
            self.restore_sigterm()  # a second SIGTERM acts as it did before: ends the process
            raise Terminated("SIGTERM")

        on_sigterm.dsocr_handler = True
        self._previous_sigterm = previous
        signal.signal(signal.SIGTERM, on_sigterm)
        self._sigterm_installed = True

    def restore_sigterm(self) -> None:
        if self._sigterm_installed and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous_sigterm if self._previous_sigterm is not None
                          else signal.SIG_DFL)
            self._sigterm_installed = False


# -- the end of a run ---------------------------------------------------------------------


def interrupt_reason(error: BaseException, current_test: str | None = None) -> str:
    """One line for metrics.json's ``reason`` of an interrupted session."""
    if isinstance(error, Terminated):
        reason = "terminated by SIGTERM"
    elif isinstance(error, pytest.exit.Exception):
        reason = f"pytest.exit: {error.msg}"
    elif type(error) is KeyboardInterrupt:
        reason = "interrupted by SIGINT (KeyboardInterrupt, Ctrl-C)"
    else:  # pytest's and xdist's Interrupted: --stepwise, -x under xdist, a worker interrupted
        reason = f"stopped early: {error}" if str(error) else f"interrupted ({type(error).__name__})"
    if current_test:
        reason += f", during {current_test}"
    return reason


def is_signal(error: BaseException) -> bool:
    """Whether an interruption came from outside the session: SIGTERM (:class:`Terminated`) or SIGINT."""
    return isinstance(error, Terminated) or type(error) is KeyboardInterrupt


def stop_reason(state: DsocrState, session: pytest.Session, exitstatus: int) -> str | None:
    """Why the run is incomplete, or None when the session ended normally."""
    if state.interrupted:
        return state.interrupted
    if session.shouldfail:  # -x / --maxfail
        return f"stopped early: {session.shouldfail} (-x/--maxfail)"
    if session.shouldstop:
        return f"stopped early: {session.shouldstop}"
    if exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        return f"session ended with exit status {int(exitstatus)}"
    return None


def finish_run(state: DsocrState, session: pytest.Session, exitstatus: int) -> None:
    """The final metrics.json, summary and report of the run, then the regression gate."""
    if state.xdist is not None:
        state.xdist.merge()  # the workers' records, read from disk: works after an interrupt too
    if not state.has_run_files:
        if state.xdist is not None and state.created_run_dir and state.has_run_dir:
            remove_if_empty(state.run_dir)  # created for workers that measured nothing
        return
    reason = stop_reason(state, session, exitstatus)
    if reason is None and state.xdist is not None:
        reason = state.xdist.reason()
    collector = state.collector
    collector.open_records()  # a run stopped before its first sample has recorded nothing yet
    warn_if_no_boxes(run.text_raw for run in collector.iter_records())  # before the notes are written
    if not state.notes.empty:
        collector.add_section("notes", state.notes.section())
    metrics = collector.finish(complete=reason is None, reason=reason)
    state.final_metrics = metrics
    if state.worker is not None or not state.baseline:
        return  # a worker: the controller gates and reports the merged run
    try:
        result = run_gate(metrics, state.baseline_data, state.max_regression,
                          per_stage=dict(state.cfg.gate.per_stage), force=state.baseline_force,
                          run_dir=state.run_dir, inconclusive=state.gate_inconclusive,
                          min_pages=state.cfg.gate.min_pages, differences=state.baseline_differences)
    except DsocrError as exc:
        state.gate_error = str(exc)
        session.exitstatus = pytest.ExitCode.USAGE_ERROR
        return
    state.gate_result = result
    collector.add_summary_section("Regression gate", result.markdown())
    collector.rewrite_summary(metrics)
    if result.failed:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
