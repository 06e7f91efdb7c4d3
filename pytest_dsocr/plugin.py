"""pytest hooks of pytest-dsocr: options, ini keys, markers, fixtures, stage order, final report."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

import pytest

from pytest_dsocr.errors import DsocrError
from pytest_dsocr.stages import BENCHMARK_STAGES, STAGE_HELP

log = logging.getLogger("pytest_dsocr")

PROFILERS = ("none", "torch", "nsys", "ncu")

STATE_KEY = pytest.StashKey["DsocrState"]()
SESSION_STARTED_KEY = pytest.StashKey[bool]()


def pytest_addhooks(pluginmanager) -> None:
    from pytest_dsocr import hookspec

    pluginmanager.add_hookspecs(hookspec)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dsocr", "DeepSeek-OCR profiling (pytest-dsocr)")
    group.addoption("--dsocr-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key (model.size=full) or pick a preset (infer=default); repeatable")
    group.addoption("--dsocr-config", metavar="FILE", help="YAML file merged over conf/config.yaml")
    group.addoption("--dsocr-run-dir", metavar="DIR", help="run directory (default runs/<timestamp>)")
    group.addoption("--dsocr-profiler", metavar="NAME", help=f"profiler stage to enable: {', '.join(PROFILERS)}")
    group.addoption("--dsocr-baseline", metavar="PATH",
                    help="metrics.json (or run dir) of a previous run: fail on a significant regression")
    group.addoption("--dsocr-max-regression", metavar="PCT",
                    help="largest tolerated slowdown of a stage median, e.g. 10%% (default from gate.max_regression)")
    group.addoption("--dsocr-baseline-force", action="store_true", default=None,
                    help="compare against a baseline of another model, config or device anyway")
    parser.addini("dsocr_set", "config overrides, one KEY=VALUE per line", type="linelist", default=[])
    parser.addini("dsocr_config", "YAML file merged over conf/config.yaml", default=None)
    parser.addini("dsocr_run_dir", "run directory", default=None)
    parser.addini("dsocr_profiler", "profiler stage to enable", default=None)
    parser.addini("dsocr_baseline", "baseline metrics.json or run dir", default=None)
    parser.addini("dsocr_max_regression", "largest tolerated slowdown of a stage median", default=None)


# Options and ini keys that ask for pytest-dsocr up front (the plugin is otherwise inert).
OPTION_NAMES = ("set", "config", "run_dir", "profiler", "baseline", "max_regression", "baseline_force")
INI_NAMES = ("set", "config", "run_dir", "profiler", "baseline", "max_regression")
# Fixtures that make a test a pytest-dsocr test (besides the stage markers).
FIXTURES = ("dsocr_sample", "dsocr_config", "dsocr_profiler", "dsocr_run_dir", "dsocr_collector",
            "dsocr_session", "dsocr_measure")


def _option(config: pytest.Config, name: str):
    """Command line first, then the ini key of the same name."""
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


class Terminated(KeyboardInterrupt):
    """SIGTERM turned into a clean stop: pytest ends the session as it does for Ctrl-C."""


class DsocrState:
    """Everything pytest-dsocr keeps for one pytest session (or one xdist worker)."""

    def __init__(self, config: pytest.Config) -> None:
        from pytest_dsocr.config import load_config, to_container
        from pytest_dsocr.xdist_setup import RUN_DIR_KEY, is_controller, worker_id, worker_input

        self.pytest_config = config
        self.worker = worker_id(config)  # "gw0", ... in an xdist worker
        self.worker_run_dir = worker_input(config, RUN_DIR_KEY)
        self.xdist = None  # the XdistController in an xdist controller
        self.is_controller = is_controller(config)
        overrides = list(config.getini("dsocr_set") or []) + list(config.getoption("--dsocr-set") or [])
        self.cfg = load_config(_option(config, "config"), overrides)
        self.profiler = parse_profiler(_option(config, "profiler"))
        self.explicit_run_dir = _option(config, "run_dir") or self.cfg.run.dir
        self.baseline = _option(config, "baseline")
        self.max_regression = _option(config, "max_regression") or self.cfg.gate.max_regression
        self.baseline_force = bool(config.getoption("--dsocr-baseline-force"))
        self.config_dict = to_container(self.cfg)
        self._run_dir: Path | None = None
        self._samples = None
        self._session = None
        self._collector = None
        self.interrupted: str | None = None  # why the session was interrupted, if it was
        self.current_test: str | None = None
        self.created_run_dir = False
        self._previous_sigterm = None
        self._sigterm_installed = False
        if self.explicit_run_dir is not None and self.worker is None:
            self.run_dir  # refuse an existing run dir before anything runs

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
            from pytest_dsocr.rundir import new_run_dir

            root = Path(self.cfg.run.root)
            if not root.is_absolute():
                root = Path(self.pytest_config.rootpath) / root
            self._run_dir = new_run_dir(root, self.explicit_run_dir,
                                        base_dir=Path(self.pytest_config.invocation_params.dir))
            self.created_run_dir = True
        return self._run_dir

    @property
    def samples(self):
        if self._samples is None:
            from pytest_dsocr.data.datasets import discover_images
            from pytest_dsocr.data.sampling import sample_images

            images = discover_images(self.cfg.dataset, base_dir=Path(self.pytest_config.invocation_params.dir))
            self._samples = sample_images(images, self.cfg.dataset.sampling)
        return self._samples

    @property
    def collector(self):
        if self._collector is None:
            from pytest_dsocr.collector import Collector
            from pytest_dsocr.env import collect_env, peak_memory

            def env():
                device = self._session.device if self._session is not None else None
                env = collect_env(device, Path(self.pytest_config.rootpath))
                env["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
                if self.worker is not None:
                    env["xdist_worker"] = self.worker
                return env

            def memory():
                return peak_memory(self._session.device if self._session is not None else None)

            counts = {"warmup_rounds": self.cfg.infer.warmup_rounds, "rounds": self.cfg.infer.rounds,
                      "samples": len(self.samples)}
            self._collector = Collector(lambda: self.run_dir, self.config_dict, env, memory, counts,
                                        worker=self.worker)
            hook = self.pytest_config.hook.pytest_dsocr_update_metrics
            self._collector.hooks_for_metrics.append(lambda metrics: hook(config=self.pytest_config, metrics=metrics))
        return self._collector

    @property
    def session(self):
        if self._session is None:
            from pytest_dsocr.session import DsocrSession

            self._session = DsocrSession(self.cfg, self.collector)
        return self._session

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


def _state(config: pytest.Config) -> DsocrState:
    return activate(config)


def requested(config: pytest.Config) -> bool:
    """Whether this session asked for pytest-dsocr before collecting anything: a ``--dsocr-*``
    option or ``dsocr_*`` ini key, a stage marker in ``-m``, or (in an xdist worker) a
    controller that already made the run."""
    from pytest_dsocr.xdist_setup import RUN_DIR_KEY, worker_input

    if any(config.getoption(f"--dsocr-{name.replace('_', '-')}") not in (None, [], False) for name in OPTION_NAMES):
        return True
    if any(config.getini(f"dsocr_{name}") for name in INI_NAMES):
        return True
    markexpr = config.option.markexpr or ""
    return any(stage in markexpr for stage in BENCHMARK_STAGES) or bool(worker_input(config, RUN_DIR_KEY))


def activate(config: pytest.Config) -> DsocrState:
    """This session's state, made on first need: the config is loaded and validated here.

    Until then the plugin is inert: no config, no run dir, no signal handler, no output.
    """
    state = config.stash.get(STATE_KEY, None)
    if state is not None:
        return state
    try:
        state = DsocrState(config)
    except DsocrError as exc:
        raise pytest.UsageError(f"pytest-dsocr: {exc}") from None
    config.stash[STATE_KEY] = state
    config.pluginmanager.register(StopWatch(state), "dsocr-stop-watch")
    if state.is_controller:
        from pytest_dsocr.xdist import XdistController

        state.xdist = XdistController(state)
        config.pluginmanager.register(state.xdist, "dsocr-xdist-controller")
    elif state.worker is not None:
        from pytest_dsocr.xdist_setup import share_run_dir

        share_run_dir(config, state)
    if config.stash.get(SESSION_STARTED_KEY, False):
        state.install_sigterm()  # activated during collection, after sessionstart
    return state


def is_dsocr_item(item: pytest.Item) -> bool:
    """A test with a stage marker or a pytest-dsocr fixture."""
    return (any(item.get_closest_marker(stage) is not None for stage in BENCHMARK_STAGES)
            or any(name in FIXTURES for name in getattr(item, "fixturenames", ())))


def pytest_configure(config: pytest.Config) -> None:
    for stage in BENCHMARK_STAGES:
        config.addinivalue_line("markers", f"{stage}: pytest-dsocr stage: {STAGE_HELP[stage]}")
    if hasattr(config, "workerinput"):
        from pytest_dsocr.xdist_setup import apply_worker_gpu

        apply_worker_gpu(config)  # before anything here can initialise CUDA
    elif config.pluginmanager.hasplugin("xdist"):
        from pytest_dsocr.xdist_setup import LazyXdistController

        config.pluginmanager.register(LazyXdistController(config, activate), "dsocr-xdist-lazy")
    if not requested(config):
        return  # inert until a pytest-dsocr test is collected
    state = activate(config)
    if any(stage in (config.option.markexpr or "") for stage in BENCHMARK_STAGES):
        try:
            state.samples  # a bad dataset is a usage error before any model is built
        except DsocrError as exc:
            raise pytest.UsageError(f"pytest-dsocr: {exc}") from None


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(STATE_KEY, None)
    if state is not None:
        state.restore_sigterm()


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[SESSION_STARTED_KEY] = True
    state = session.config.stash.get(STATE_KEY, None)
    if state is not None:
        state.install_sigterm()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "dsocr_sample" not in metafunc.fixturenames:
        return
    try:
        samples = _state(metafunc.config).samples
    except DsocrError as exc:
        raise pytest.UsageError(f"pytest-dsocr: {exc}") from None
    metafunc.parametrize("dsocr_sample", samples, ids=[s.test_id for s in samples])


def _stage_rank(item: pytest.Item) -> int:
    for index, stage in enumerate(BENCHMARK_STAGES):
        if item.get_closest_marker(stage) is not None:
            return index
    return -1  # plain tests first


@pytest.hookimpl(tryfirst=True)  # before xdist's worker reads the xdist_group marks
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.stash.get(STATE_KEY, None) is None and not any(is_dsocr_item(item) for item in items):
        return  # not a pytest-dsocr session: leave the order and marks alone
    activate(config)
    items.sort(key=_stage_rank)  # stable: keeps file order within a stage
    if hasattr(config, "workerinput"):
        from pytest_dsocr.xdist import add_group_marks

        add_group_marks(config, items)


@pytest.fixture(scope="session")
def dsocr_config(request: pytest.FixtureRequest):
    """The resolved, validated config (OmegaConf DictConfig)."""
    return _state(request.config).cfg


@pytest.fixture(scope="session")
def dsocr_profiler(request: pytest.FixtureRequest) -> str:
    """The profiler chosen with --dsocr-profiler: none, torch, nsys or ncu."""
    return _state(request.config).profiler


@pytest.fixture(scope="session")
def dsocr_run_dir(request: pytest.FixtureRequest) -> Path:
    """This session's run directory; stages write under <run>/<stage>/."""
    return _state(request.config).run_dir


@pytest.fixture(scope="session")
def dsocr_collector(request: pytest.FixtureRequest):
    """Session-wide records and metrics.json sections."""
    return _state(request.config).collector


@pytest.fixture(scope="session")
def dsocr_session(request: pytest.FixtureRequest):
    """The model adapter and engine, built once per session."""
    state = _state(request.config)
    try:
        session = state.session
        session.adapter  # build now so the model load is not timed inside the first test
    except DsocrError as exc:
        pytest.exit(f"pytest-dsocr: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
    return session


@pytest.fixture
def dsocr_measure(dsocr_session, request: pytest.FixtureRequest):
    """``measure(sample, stage, hooks=..., benchmark=...)``: a failed sample fails this test only."""
    from pytest_dsocr.session import SampleFailed

    def measure(sample, *, stage: str, hooks=None, benchmark=None):
        from pytest_dsocr.engine import NO_HOOKS

        try:
            return dsocr_session.measure(sample, stage=stage, hooks=hooks or NO_HOOKS, benchmark=benchmark)
        except SampleFailed as exc:
            pytest.fail(f"{sample.test_id}: {exc.failure.error}", pytrace=False)

    return measure


class StopWatch:
    """Per-session hooks (registered in pytest_configure) that remember why a run stopped.

    They live on an object rather than at module level because pytest passes these hooks no
    config, and pytester may run a session inside another.
    """

    def __init__(self, state: DsocrState) -> None:
        self.state = state

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        if not self.state.is_controller:
            self.state.current_test = nodeid

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        if not self.state.is_controller:
            self.state.current_test = None

    @pytest.hookimpl(tryfirst=True)
    def pytest_keyboard_interrupt(self, excinfo) -> None:
        self.state.interrupted = interrupt_reason(excinfo.value, self.state.current_test)


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


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(STATE_KEY, None)
    if state is None:
        return
    # From here on a SIGTERM ends the process as usual; metrics.json already holds every
    # sample measured, so at worst the final rewrite is lost, never a sample.
    state.restore_sigterm()
    if state.xdist is None:
        finish_run(state, session, exitstatus)
    # else: the xdist controller finishes after xdist has stopped its workers (XdistController)


def finish_run(state: DsocrState, session: pytest.Session, exitstatus: int) -> None:
    """The final metrics.json, summary and report of the run, then the regression gate."""
    if state.xdist is not None:
        state.xdist.merge()  # the workers' records, read from disk: works after an interrupt too
    if state._collector is None or not state._collector.has_data:
        if state.xdist is not None and state.created_run_dir and state._run_dir is not None:
            from pytest_dsocr.rundir import remove_if_empty

            remove_if_empty(state._run_dir)  # created for workers that measured nothing
        return
    reason = stop_reason(state, session, exitstatus)
    if reason is None and state.xdist is not None:
        reason = state.xdist.reason()
    metrics = state.collector.finish(complete=reason is None, reason=reason)
    from pytest_dsocr.parity import warn_if_no_boxes

    warn_if_no_boxes([run.text_raw for run in state.collector.records])
    state.final_metrics = metrics
    if state.worker is not None:
        return  # the controller gates and reports the merged run
    if state.baseline:
        from pytest_dsocr.report.gate import run_gate

        try:
            result = run_gate(metrics, state.baseline, state.max_regression,
                              per_stage=dict(state.cfg.gate.per_stage), force=state.baseline_force,
                              run_dir=state.run_dir)
        except DsocrError as exc:
            state.gate_error = str(exc)
            session.exitstatus = pytest.ExitCode.USAGE_ERROR
            return
        state.gate_result = result
        state.collector.add_summary_section("Regression gate", result.markdown())
        state.collector.rewrite_summary(metrics)
        if result.failed:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session):
    """--dsocr-profiler=nsys with nsys on PATH: run the selected tests again under nsys instead."""
    state = session.config.stash.get(STATE_KEY, None)
    if state is None or state.profiler != "nsys" or session.config.option.collectonly:
        return None
    from pytest_dsocr.profilers.nsys import relaunch_under_nsys, should_relaunch_under_nsys

    if not should_relaunch_under_nsys(state.profiler):
        return None
    params = session.config.invocation_params
    result = relaunch_under_nsys(state.cfg.profiling.nsys, run_dir=state.run_dir, pytest_args=list(params.args),
                                 rootdir=params.dir)
    state.nsys_relaunch = result
    if result.returncode != 0 or result.error:
        session.testsfailed = max(session.testsfailed, 1)
    return True  # the tests ran in the child


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_json(config: pytest.Config, benchmarks, output_json: dict) -> None:
    """Put the run dir and the stage aggregates into --benchmark-json (per-test stage timings
    are already in each benchmark's extra_info), so --benchmark-compare keeps working beside
    the dsocr gate."""
    state = config.stash.get(STATE_KEY, None)
    if state is None or state._collector is None or not state._collector.has_data:
        return
    metrics = getattr(state, "final_metrics", None) or state.collector.metrics(complete=False)
    output_json["dsocr"] = {
        "run_dir": str(state.run_dir),
        "aggregates": metrics.get("aggregates", {}),
        "complete": metrics.get("complete"),
    }


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(STATE_KEY, None)
    relaunch = getattr(state, "nsys_relaunch", None)
    if relaunch is not None:
        terminalreporter.section("pytest-dsocr: Nsight Systems")
        terminalreporter.write_line(f"command: {' '.join(map(str, relaunch.command))}")
        if relaunch.error:
            terminalreporter.write_line(f"nsys: {relaunch.error}", red=True)
        else:
            terminalreporter.write_line(f"summary: {state.run_dir / 'nsys' / 'summary.md'}")
        terminalreporter.write_line(f"run dir: {state.run_dir}")
        return
    if state is None or state.worker is not None or state._collector is None or not state._collector.has_data:
        return
    from pytest_dsocr.report.summary import render_terminal_summary

    terminalreporter.section("pytest-dsocr")
    metrics = getattr(state, "final_metrics", None)
    if metrics is not None:
        terminalreporter.write_line(render_terminal_summary(metrics))
    terminalreporter.write_line(f"run dir: {state.run_dir}")
    if state.xdist is not None and state.xdist.gpus:
        terminalreporter.write_line("xdist workers: " + ", ".join(
            f"{worker} on CUDA_VISIBLE_DEVICES={gpu}" for worker, gpu in state.xdist.gpus.items()))
    if getattr(state, "gate_error", None):
        terminalreporter.write_line(f"regression gate: {state.gate_error}", red=True)
    result = getattr(state, "gate_result", None)
    if result is not None:
        terminalreporter.write_line(result.markdown())
        summary_file = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary_file:
            with open(summary_file, "a", encoding="utf-8") as handle:
                handle.write(result.markdown() + "\n")
