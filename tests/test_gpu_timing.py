"""GPU tier: CUDA-event stage times against synchronized wall time, graph-captured decode timing,
and the nsys capture hooks around measured rounds. Skipped (with the reason) without CUDA.

Run on a GPU machine with ``pytest -m gpu`` (about a minute on one GPU; most of it is the
static backend compiling its decode step once). Like every test here, none asserts how long
anything takes: each checks that two clocks agree about the same interval.
"""

from __future__ import annotations

import time

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: run `pytest -m gpu` on a GPU machine"),
]

MS_PER_S = 1e3
BUSY_MS = 50.0  # length of the GPU busy loop, long beside launch latency and event resolution
CALIBRATION_CYCLES = 10_000_000
# CUDA events of a stage lie inside the synchronized wall time around it and cover nearly all of
# it; the host returned from launching long before the GPU finished (the work was asynchronous).
COVERED_SHARE = 0.9
HOST_SHARE = 0.5
TOKENS = 12
RUNS = 3
TOP_STAGES = ("preprocess_ms", "prefill_ms", "decode_ms")


@pytest.fixture(scope="module")
def device() -> torch.device:
    device = torch.device("cuda")
    torch.ones(1, device=device).sum().item()  # CUDA context up before any timing
    return device


def synchronized_ms(fn, device) -> tuple[float, float]:
    """(host ms until ``fn`` returned, wall ms until the GPU finished), from a drained GPU."""
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    host = (time.perf_counter() - start) * MS_PER_S
    torch.cuda.synchronize(device)
    return host, (time.perf_counter() - start) * MS_PER_S


def timed_by_the_timer(fn, timer, device) -> tuple[float, float, dict[str, float]]:
    """(host ms until ``fn`` returned, wall ms until the timer's own reading returned, the reading).

    Nothing here waits for the GPU between ``fn`` and the reading: the timer must synchronize
    before it reads its events (CUDA refuses events that have not completed), and once it has,
    the GPU work lies inside the wall time.
    """
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    host = (time.perf_counter() - start) * MS_PER_S
    reading = timer.elapsed_ms()
    wall = (time.perf_counter() - start) * MS_PER_S
    return host, wall, reading


def busy_cycles(device, ms: float) -> int:
    """GPU clock cycles that ``torch.cuda._sleep`` spins for about ``ms`` milliseconds here."""
    torch.cuda._sleep(CALIBRATION_CYCLES)  # warm the kernel up
    _, wall = synchronized_ms(lambda: torch.cuda._sleep(CALIBRATION_CYCLES), device)
    return max(1, int(CALIBRATION_CYCLES * ms / wall))


def test_cuda_event_stage_time_matches_synchronized_wall_time(device):
    from pytest_dsocr.timing import StageTimer

    cycles = busy_cycles(device, BUSY_MS)
    timer = StageTimer(device)

    def stage():
        with timer.stage("busy"):
            torch.cuda._sleep(cycles)

    host, wall, reading = timed_by_the_timer(stage, timer, device)
    reported = reading["busy"]
    assert host < HOST_SHARE * reported, "the launch returned late: the busy loop was not asynchronous"
    assert COVERED_SHARE * wall <= reported <= wall


def test_matmul_timed_by_events_and_by_synchronized_wall_clock(device):
    from pytest_dsocr.timing import StageTimer

    a = torch.randn(4096, 4096, device=device)
    b = torch.randn(4096, 4096, device=device)
    (a @ b).sum().item()  # kernel selection outside the timing
    timer = StageTimer(device)

    def stage():
        with timer.stage("prefill"):
            for _ in range(20):
                a @ b

    host, wall, reading = timed_by_the_timer(stage, timer, device)
    assert COVERED_SHARE * wall <= reading["prefill"] <= wall
    assert host < reading["prefill"]  # the host did not wait for the products


@pytest.fixture(scope="module")
def static_engine(device):
    """The tiny model on the GPU with ``infer.decode_backend=static``: CUDA-graph decode steps."""
    from pytest_dsocr.config import load_config
    from pytest_dsocr.data.pages import bundled_pages
    from pytest_dsocr.decoding import DecodePolicy
    from pytest_dsocr.engine import Engine
    from pytest_dsocr.models import resolve_dtype
    from pytest_dsocr.records import Sample
    from pytest_dsocr.session import build_adapter

    cfg = load_config(overrides=["infer.decode_backend=static", "model.device=cuda"])
    adapter = build_adapter(cfg, device, resolve_dtype(cfg.model.dtype, device))
    engine = Engine(adapter, DecodePolicy(eos_token_id=adapter.eos_token_id, no_repeat_ngram_size=0), TOKENS,
                    extra_processors=lambda prompt_len: [_NoEos(adapter.eos_token_id)])
    page = min(bundled_pages(), key=lambda p: p.stat().st_size)
    sample = Sample(image_path=page, epoch=0, index=0, sample_id=page.stem)
    engine.run(sample)  # compiles and captures the decode step once
    return engine, adapter, sample


class _NoEos:
    """A logits processor that keeps EOS out, so every run decodes all TOKENS steps."""

    def __init__(self, eos: int) -> None:
        self.eos = eos

    def __call__(self, input_ids, scores):
        scores[:, self.eos] = -float("inf")
        return scores


def test_graph_captured_decode_is_timed_by_its_events(static_engine, device, monkeypatch):
    engine, adapter, sample = static_engine
    bucket = adapter.static.active
    assert bucket is not None and bucket.graph is not None and not bucket.graph_failed, "no CUDA graph captured"
    replays = []
    original = torch.cuda.CUDAGraph.replay
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", lambda graph: replays.append(1) or original(graph))
    shares = []
    for _ in range(RUNS):
        replays.clear()
        run_box = []
        _, wall = synchronized_ms(lambda: run_box.append(engine.run(sample)), device)
        run = run_box[0]
        assert run.tokens == TOKENS and len(replays) == TOKENS - 1  # every decode step was a graph replay
        stages = sum(getattr(run, name) for name in TOP_STAGES)
        assert stages <= wall and run.vision_ms <= run.prefill_ms
        shares.append(stages / wall)
    assert max(shares) >= COVERED_SHARE


def test_nsys_hooks_open_the_capture_around_measured_rounds_only(device, tmp_path, monkeypatch):
    """Spies on cudaProfilerStart/Stop (torch.cuda.profiler.start/stop) through a real measure():
    warmup rounds run outside the capture, measured ones inside, one range per sample."""
    from pytest_dsocr.collector import Collector
    from pytest_dsocr.config import load_config, to_container
    from pytest_dsocr.data.pages import bundled_pages
    from pytest_dsocr.profilers.nsys import NsysHooks
    from pytest_dsocr.records import Sample
    from pytest_dsocr.session import DsocrSession

    cfg = load_config(overrides=["model.device=cuda", "infer.max_new_tokens=2", "infer.warmup_rounds=1",
                                 "infer.rounds=2"])
    collector = Collector(lambda: tmp_path, to_container(cfg), lambda: {}, lambda: {}, {})
    session = DsocrSession(cfg, collector)
    events: list[tuple] = []
    real_synchronize = torch.cuda.synchronize

    def synchronize(device=None):
        events.append(("synchronize",))
        return real_synchronize(device)

    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    monkeypatch.setattr(torch.cuda.profiler, "start", lambda: events.append(("start",)))
    monkeypatch.setattr(torch.cuda.profiler, "stop", lambda: events.append(("stop",)))
    hooks = NsysHooks(rounds=cfg.infer.rounds, mode="measured")
    original_start = hooks.on_iter_start

    def on_iter_start(sample, round_index, measured):
        events.append(("round", sample.sample_id, measured))
        original_start(sample, round_index, measured)

    hooks.on_iter_start = on_iter_start
    real_prefill = session.adapter.prefill
    monkeypatch.setattr(session.adapter, "prefill", lambda *a, **k: events.append(("work",)) or real_prefill(*a, **k))
    pages = sorted(bundled_pages(), key=lambda p: p.stat().st_size)[:2]
    for index, page in enumerate(pages):
        session.measure(Sample(image_path=page, epoch=0, index=index, sample_id=page.stem), stage="nsys", hooks=hooks)
        hooks.end_sample()
    hooks.finish()

    capturing, measured, opened = False, None, 0
    for position, event in enumerate(events):
        if event[0] == "round":
            measured = event[2]
        elif event[0] == "work":
            assert capturing == measured, f"round (measured={measured}) ran with the capture open={capturing}"
        elif event[0] in ("start", "stop"):
            assert events[position - 1] == ("synchronize",), f"{event[0]} without draining the GPU first"
            assert capturing == (event[0] == "stop")
            capturing = event[0] == "start"
            opened += event[0] == "start"
    assert not capturing and opened == len(pages)
    assert [e[0] for e in events].count("work") == len(pages) * (cfg.infer.warmup_rounds + cfg.infer.rounds)
    assert len(hooks.captured) == len(pages) * cfg.infer.rounds
