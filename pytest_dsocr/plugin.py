"""pytest hooks of pytest-dsocr: options, ini keys, markers, fixtures, stage order, final report."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from pytest_dsocr.errors import DsocrError
from pytest_dsocr.stages import STAGE_HELP, STAGES

log = logging.getLogger("pytest_dsocr")

PROFILERS = ("none", "torch", "nsys", "ncu")

STATE_KEY = pytest.StashKey["DsocrState"]()


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


class DsocrState:
    """Everything pytest-dsocr keeps for one pytest session."""

    def __init__(self, config: pytest.Config) -> None:
        from pytest_dsocr.config import load_config, to_container

        self.pytest_config = config
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
        self.interrupted: str | None = None
        if self.explicit_run_dir is not None:
            self.run_dir  # refuse an existing run dir before anything runs

    @property
    def run_dir(self) -> Path:
        if self._run_dir is None:
            from pytest_dsocr.rundir import new_run_dir

            root = Path(self.cfg.run.root)
            if not root.is_absolute():
                root = Path(self.pytest_config.rootpath) / root
            self._run_dir = new_run_dir(root, self.explicit_run_dir)
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
                return collect_env(device, Path(self.pytest_config.rootpath))

            def memory():
                return peak_memory(self._session.device if self._session is not None else None)

            counts = {"warmup_rounds": self.cfg.infer.warmup_rounds, "rounds": self.cfg.infer.rounds,
                      "samples": len(self.samples)}
            self._collector = Collector(lambda: self.run_dir, self.config_dict, env, memory, counts)
            hook = self.pytest_config.hook.pytest_dsocr_update_metrics
            self._collector.hooks_for_metrics.append(lambda metrics: hook(config=self.pytest_config, metrics=metrics))
        return self._collector

    @property
    def session(self):
        if self._session is None:
            from pytest_dsocr.session import DsocrSession

            self._session = DsocrSession(self.cfg, self.collector)
        return self._session


def _state(config: pytest.Config) -> DsocrState:
    return config.stash[STATE_KEY]


def pytest_configure(config: pytest.Config) -> None:
    for stage in STAGES:
        config.addinivalue_line("markers", f"{stage}: pytest-dsocr stage: {STAGE_HELP[stage]}")
    try:
        state = DsocrState(config)
        if any(stage in (config.option.markexpr or "") for stage in STAGES):
            state.samples  # a bad dataset is a usage error before any model is built
    except DsocrError as exc:
        raise pytest.UsageError(f"pytest-dsocr: {exc}") from None
    config.stash[STATE_KEY] = state


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "dsocr_sample" not in metafunc.fixturenames:
        return
    try:
        samples = _state(metafunc.config).samples
    except DsocrError as exc:
        raise pytest.UsageError(f"pytest-dsocr: {exc}") from None
    metafunc.parametrize("dsocr_sample", samples, ids=[s.test_id for s in samples])


def _stage_rank(item: pytest.Item) -> int:
    for index, stage in enumerate(STAGES):
        if item.get_closest_marker(stage) is not None:
            return index
    return -1  # plain tests first


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=_stage_rank)  # stable: keeps file order within a stage


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


def pytest_keyboard_interrupt(excinfo) -> None:
    # The session-finish hook still runs; it records why the run is incomplete.
    pass


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(STATE_KEY, None)
    if state is None or state._collector is None or not state._collector.has_data:
        return
    complete = exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED) and not session.shouldstop
    reason = None if complete else f"session ended early (exit status {int(exitstatus)}" + (
        f": {session.shouldstop}" if session.shouldstop else "") + ")"
    metrics = state.collector.finish(complete=complete, reason=reason)
    state.final_metrics = metrics
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
    if state is None or state._collector is None or not state._collector.has_data:
        return
    from pytest_dsocr.report.summary import render_terminal_summary

    terminalreporter.section("pytest-dsocr")
    metrics = getattr(state, "final_metrics", None)
    if metrics is not None:
        terminalreporter.write_line(render_terminal_summary(metrics))
    terminalreporter.write_line(f"run dir: {state.run_dir}")
    if getattr(state, "gate_error", None):
        terminalreporter.write_line(f"regression gate: {state.gate_error}", red=True)
    result = getattr(state, "gate_result", None)
    if result is not None:
        terminalreporter.write_line(result.markdown())
        summary_file = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary_file:
            with open(summary_file, "a", encoding="utf-8") as handle:
                handle.write(result.markdown() + "\n")
