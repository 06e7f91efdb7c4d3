"""pytest hooks of pytest-dsocr: options, ini keys, markers, activation, fixtures, stage order,
the end of the session and the terminal report. The session's state lives in
:mod:`pytest_dsocr.state`; this module only wires it to pytest.

The plugin is inert until a session needs it (see :func:`activate`): its module imports
nothing heavy, and the state module (config, data, collector; torch later) is imported then.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pytest_dsocr.errors import DsocrError
from pytest_dsocr.profilers import PROFILERS
from pytest_dsocr.stages import BENCHMARK_STAGES, STAGE_HELP

if TYPE_CHECKING:
    from pytest_dsocr.state import DsocrState

log = logging.getLogger("pytest_dsocr")

STATE_KEY = pytest.StashKey["DsocrState"]()
SESSION_STARTED_KEY = pytest.StashKey[bool]()
PROGRESS_PLUGIN = "dsocr-progress"


def pytest_addhooks(pluginmanager) -> None:
    from pytest_dsocr import hookspec

    pluginmanager.add_hookspecs(hookspec)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dsocr", "DeepSeek-OCR profiling (pytest-dsocr)")
    group.addoption("--dsocr-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key (model.size=full) or pick a preset (infer=default); repeatable")
    group.addoption("--dsocr-config", metavar="FILE", help="YAML file merged over conf/config.yaml")
    group.addoption("--dsocr-run-dir", metavar="DIR", help="run directory (default runs/<timestamp>)")
    group.addoption("--dsocr-profiler", metavar="NAME",
                    help=f"profiler stage to enable: {', '.join(PROFILERS)}")
    group.addoption("--dsocr-baseline", metavar="PATH",
                    help="metrics.json (or run dir) of a previous run: fail on a significant regression")
    group.addoption("--dsocr-max-regression", metavar="PCT",
                    help="largest tolerated slowdown of a stage median, e.g. 10%% (default from gate.max_regression)")
    group.addoption("--dsocr-baseline-force", action="store_true", default=None,
                    help="compare against a baseline of another model, config or device anyway "
                         "(the differences are listed in regression.md)")
    group.addoption("--dsocr-gate-inconclusive", metavar="fail|warn",
                    help="what a stage without a verdict does to the exit code (default from gate.inconclusive: fail)")
    parser.addini("dsocr_set", "config overrides, one KEY=VALUE per line", type="linelist", default=[])
    parser.addini("dsocr_config", "YAML file merged over conf/config.yaml", default=None)
    parser.addini("dsocr_run_dir", "run directory", default=None)
    parser.addini("dsocr_profiler", "profiler stage to enable", default=None)
    parser.addini("dsocr_baseline", "baseline metrics.json or run dir", default=None)
    parser.addini("dsocr_max_regression", "largest tolerated slowdown of a stage median", default=None)
    parser.addini("dsocr_gate_inconclusive", "fail | warn: a stage without a verdict fails the session or warns",
                  default=None)


# Options and ini keys that ask for pytest-dsocr up front (the plugin is otherwise inert).
OPTION_NAMES = ("set", "config", "run_dir", "profiler", "baseline", "max_regression", "baseline_force",
                "gate_inconclusive")
INI_NAMES = ("set", "config", "run_dir", "profiler", "baseline", "max_regression", "gate_inconclusive")
# Fixtures that make a test a pytest-dsocr test (besides the stage markers).
FIXTURES = ("dsocr_sample", "dsocr_config", "dsocr_profiler", "dsocr_run_dir", "dsocr_collector",
            "dsocr_session", "dsocr_measure")


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
    # Imported here, not at the top: a session that never uses pytest-dsocr must not pay for
    # (or be changed by) the config, data and report modules behind the state.
    from pytest_dsocr.notes import SessionNotes
    from pytest_dsocr.state import DsocrState

    notes = SessionNotes()
    notes.install()  # first: warnings of loading the config and finding the images count too
    try:
        state = DsocrState(config, notes)
    except DsocrError as exc:
        notes.uninstall()
        raise pytest.UsageError(f"pytest-dsocr: {exc}") from None
    config.stash[STATE_KEY] = state
    config.pluginmanager.register(StopWatch(state), "dsocr-stop-watch")
    config.pluginmanager.register(notes, "dsocr-notes")
    if state.is_controller:
        from pytest_dsocr.xdist import XdistController

        state.xdist = XdistController(state)
        config.pluginmanager.register(state.xdist, "dsocr-xdist-controller")
        _start_progress(config, None)  # the workers collect: the total is theirs
    elif state.worker is not None:
        from pytest_dsocr.xdist_setup import share_run_dir

        share_run_dir(config, state)
    if config.stash.get(SESSION_STARTED_KEY, False):
        state.install_sigterm()  # activated during collection, after sessionstart
    return state


def _state(config: pytest.Config) -> DsocrState:
    return activate(config)


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
        state.notes.uninstall()


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


def pytest_collection_finish(session: pytest.Session) -> None:
    """A progress line per finished sample for long runs (not under -q, not in xdist workers,
    whose controller prints its own)."""
    config = session.config
    if config.stash.get(STATE_KEY, None) is None or hasattr(config, "workerinput"):
        return
    _start_progress(config, sum(1 for item in session.items if _stage_rank(item) >= 0))


def _start_progress(config: pytest.Config, total: int | None) -> None:
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if terminal is None or config.get_verbosity() < 0 or config.pluginmanager.has_plugin(PROGRESS_PLUGIN):
        return
    from pytest_dsocr.progress import ProgressReporter

    capture = config.pluginmanager.get_plugin("capturemanager")
    config.pluginmanager.register(ProgressReporter(terminal, total, capture_manager=capture), PROGRESS_PLUGIN)


# -- fixtures ---------------------------------------------------------------------------------


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
    progress = request.config.pluginmanager.get_plugin(PROGRESS_PLUGIN)
    if progress is not None:  # not under -q, nor in an xdist worker
        session.observe_decodes(progress.decodes)
    return session


@pytest.fixture
def dsocr_measure(dsocr_session, request: pytest.FixtureRequest):
    """``measure(sample, stage, hooks=..., benchmark=...)``: a failed sample fails this test only."""
    from pytest_dsocr.engine import NO_HOOKS
    from pytest_dsocr.session import SampleFailed

    def measure(sample, *, stage: str, hooks=None, benchmark=None):
        try:
            return dsocr_session.measure(sample, stage=stage, hooks=hooks or NO_HOOKS, benchmark=benchmark)
        except SampleFailed as exc:
            failure = exc.failure
        # Failed outside the except block, so pytest prints this one line and not the chain that
        # led here (the chain is in the failure record and report.md).
        pytest.fail(f"{sample.test_id}: {failure.error}", pytrace=False)

    return measure


# -- the session's course and end -------------------------------------------------------------


class StopWatch:
    """Per-session hooks (registered on activation) that remember why a run stopped.

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
        from pytest_dsocr.state import interrupt_reason, is_signal

        self.state.interrupted = interrupt_reason(excinfo.value, self.state.current_test)
        self.state.signalled = is_signal(excinfo.value)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(STATE_KEY, None)
    if state is None:
        return
    # From here on a SIGTERM ends the process as usual; the records file already holds every
    # sample measured, so at worst the final rewrite is lost, never a sample.
    state.restore_sigterm()
    if state.xdist is None:
        from pytest_dsocr.state import finish_run

        finish_run(state, session, exitstatus)
    # else: the xdist controller finishes after xdist has stopped its workers (XdistController)


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
    if state is None or not state.has_data:
        return
    metrics = state.final_metrics or state.collector.metrics(complete=False)
    output_json["dsocr"] = {
        "run_dir": str(state.run_dir),
        "aggregates": metrics.aggregates.to_json(),
        "complete": metrics.complete,
    }


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(STATE_KEY, None)
    if state is None:
        return
    relaunch = state.nsys_relaunch
    if relaunch is not None:
        terminalreporter.section("pytest-dsocr: Nsight Systems")
        terminalreporter.write_line(f"command: {' '.join(map(str, relaunch.command))}")
        if relaunch.error:
            terminalreporter.write_line(f"nsys: {relaunch.error}", red=True)
        else:
            terminalreporter.write_line(f"summary: {state.run_dir / 'nsys' / 'summary.md'}")
        terminalreporter.write_line(f"run dir: {state.run_dir}")
        return
    if state.worker is not None or (not state.has_run_files and state.notes.empty):
        return
    from pytest_dsocr.report.summary import render_terminal_summary

    terminalreporter.section("pytest-dsocr")
    if state.final_metrics is not None:
        terminalreporter.write_line(render_terminal_summary(state.final_metrics))
    for line in state.notes.lines():  # skip reasons and warnings, shown without -rs or log options
        terminalreporter.write_line(line, yellow=True)
    if not state.has_run_files:
        return  # nothing measured: no run dir was made
    terminalreporter.write_line(f"run dir: {state.run_dir}")
    if state.xdist is not None and state.xdist.gpus:
        terminalreporter.write_line("xdist workers: " + ", ".join(
            f"{worker} on CUDA_VISIBLE_DEVICES={gpu}" for worker, gpu in state.xdist.gpus.items()))
    if state.gate_error:
        terminalreporter.write_line(f"regression gate: {state.gate_error}", red=True)
    result = state.gate_result
    if result is not None:
        terminalreporter.write_line(result.markdown())
        summary_file = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary_file:
            with open(summary_file, "a", encoding="utf-8") as handle:
                handle.write(result.markdown() + "\n")
