"""Stage timers tied to clocks the tests can check: sleeps of known length, the run's wall time,
and the CUDA path's contract (synchronize before reading events) on a simulated GPU.

No test here asserts how long anything takes; each checks that two measurements of the same
interval agree (a stage time is at least the sleep inside it, at most the wall time around it;
the stages of a run fill its wall time).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
import torch

from pytest_dsocr.decoding import DecodePolicy
from pytest_dsocr.engine import Engine
from pytest_dsocr.records import Sample
from pytest_dsocr.timing import StageTimer

SLEEP_S = 0.03
SLEEP_MS = SLEEP_S * 1e3
MS_PER_S = 1e3
# The stages of a run (preprocess, prefill, decode; vision nests in prefill) cover its wall time
# but for the few Python statements between them: at least this share of it, in the best of
# RUNS runs (a preemption in a gap between stages can only lower one run's share).
COVERED_SHARE = 0.95
RUNS = 3
TOP_STAGES = ("preprocess_ms", "prefill_ms", "decode_ms")
REAL_RUNS, REAL_TOKENS = 2, 4  # the real model: fewer, longer runs (a gap is a smaller share of them)


def wall_ms(fn):
    start = time.perf_counter()
    result = fn()
    return (time.perf_counter() - start) * MS_PER_S, result


# --- the CPU timer ---------------------------------------------------------------------------


def test_cpu_timer_reports_a_sleep_at_its_length_in_ms():
    timer = StageTimer(torch.device("cpu"))

    def stage():
        with timer.stage("prefill"):
            time.sleep(SLEEP_S)

    outer_ms, _ = wall_ms(stage)
    reported = timer.elapsed_ms()["prefill"]
    assert SLEEP_MS <= reported <= outer_ms  # ms: microseconds would be 1000x, seconds 1/1000x


def test_cpu_timer_sums_intervals_and_nests():
    timer = StageTimer(torch.device("cpu"))

    def stages():
        with timer.stage("prefill"):
            with timer.stage("vision"):
                time.sleep(SLEEP_S)
            time.sleep(SLEEP_S)
        with timer.stage("vision"):  # a second call of the same stage adds up
            time.sleep(SLEEP_S)

    outer_ms, _ = wall_ms(stages)
    found = timer.elapsed_ms()
    assert 2 * SLEEP_MS <= found["prefill"] and 2 * SLEEP_MS <= found["vision"]
    assert found["prefill"] + SLEEP_MS <= outer_ms + 1e-6  # the second vision call is outside prefill


# --- a model-free engine: stages of known length -----------------------------------------------


@dataclass(frozen=True)
class Prepared:
    input_ids: torch.Tensor
    num_image_tokens: int = 4
    crop_grid: tuple[int, int] = (1, 1)


class Sleeper(torch.nn.Module):
    """A sub-stage module (timed by forward hooks) that takes a known time, or advances a simulated GPU clock."""

    def __init__(self, seconds: float, clock: "FakeCuda | None" = None) -> None:
        super().__init__()
        self.seconds, self.clock = seconds, clock

    def forward(self, x):
        _spend(self.seconds, self.clock)
        return x


class SleepyAdapter:
    """What the engine needs from a model family, with every stage a sleep of known length.

    With a ``clock`` (a simulated GPU) the model stages advance the GPU clock instead of
    sleeping, as kernels would, and return at once to the host.
    """

    family = "fake"
    substages = ("sam",)
    max_positions = None
    eos_token_id = 1
    VOCAB = 8
    LOAD_S, PREPARE_S, SAM_S, PREFILL_S, STEP_S = 0.010, 0.010, 0.015, 0.020, 0.004

    def __init__(self, clock: "FakeCuda | None" = None) -> None:
        self.clock = clock
        self.device = torch.device("cuda" if clock is not None else "cpu")
        self.sam = Sleeper(self.SAM_S, clock)

    def substage_modules(self):
        return [("sam", self.sam)]

    def load(self, image_path):
        time.sleep(self.LOAD_S)  # preprocessing is host work on any device
        return image_path

    def prepare(self, image):
        time.sleep(self.PREPARE_S)
        return Prepared(input_ids=torch.zeros((1, 6), dtype=torch.long))

    def encode_images(self, prepared):
        return self.sam(torch.zeros(1))

    def prefill(self, prepared, image_embeds):
        _spend(self.PREFILL_S, self.clock)
        return self._logits(), None

    def decode_step(self, token, cache):
        _spend(self.STEP_S, self.clock)
        return self._logits()

    def decode_text(self, token_ids):
        return " ".join(map(str, token_ids))

    def _logits(self):
        logits = torch.zeros((1, self.VOCAB))
        logits[0, 5] = 1.0  # never EOS: the run lasts its whole token budget
        return logits


def _spend(seconds: float, clock: "FakeCuda | None") -> None:
    if clock is None:
        time.sleep(seconds)
    else:
        clock.now_ms += seconds * MS_PER_S


SAMPLE = Sample(image_path="page.png", epoch=0, index=0, sample_id="page")  # the adapter never opens it
TOKENS = 5


def engine_of(adapter) -> Engine:
    return Engine(adapter, DecodePolicy(eos_token_id=adapter.eos_token_id, no_repeat_ngram_size=0), TOKENS)


def test_each_stage_is_at_least_its_sleep():
    adapter = SleepyAdapter()
    run = engine_of(adapter).run(SAMPLE)
    assert run.tokens == TOKENS
    assert run.preprocess_ms >= (adapter.LOAD_S + adapter.PREPARE_S) * MS_PER_S
    assert run.substage_ms["sam"] >= adapter.SAM_S * MS_PER_S
    assert run.vision_ms >= run.substage_ms["sam"]
    assert run.prefill_ms >= run.vision_ms + adapter.PREFILL_S * MS_PER_S
    assert run.decode_ms >= (TOKENS - 1) * adapter.STEP_S * MS_PER_S  # decode covers tokens 2..n


def covered_share(engine: Engine) -> float:
    """The best share of a run's wall time its top-level stages cover, over RUNS runs; every run's
    stages must fit inside its wall time."""
    shares = []
    for _ in range(RUNS):
        total_ms, run = wall_ms(lambda: engine.run(SAMPLE))
        stages_ms = sum(getattr(run, name) for name in TOP_STAGES)
        assert stages_ms <= total_ms, (stages_ms, total_ms)  # nothing is counted twice or in other units
        shares.append(stages_ms / total_ms)
    return max(shares)


def test_stages_of_a_run_add_up_to_its_wall_time():
    assert covered_share(engine_of(SleepyAdapter())) >= COVERED_SHARE


def test_stages_of_a_real_tiny_model_run_add_up_to_its_wall_time():
    """The embedded default on the CPU: preprocess + prefill + decode fill the measured wall time."""
    from pytest_dsocr.config import load_config
    from pytest_dsocr.data.pages import bundled_pages
    from pytest_dsocr.session import build_adapter

    adapter = build_adapter(load_config(), torch.device("cpu"), torch.float32)
    page = min(bundled_pages(), key=lambda p: p.stat().st_size)  # no crops: the quickest page
    engine = Engine(adapter, DecodePolicy(eos_token_id=adapter.eos_token_id), REAL_TOKENS)
    sample = Sample(image_path=page, epoch=0, index=0, sample_id=page.stem)
    shares = []
    for _ in range(REAL_RUNS):
        total_ms, run = wall_ms(lambda: engine.run(sample))
        stages_ms = sum(getattr(run, name) for name in TOP_STAGES)
        assert run.vision_ms <= run.prefill_ms and stages_ms <= total_ms
        shares.append(stages_ms / total_ms)
    assert max(shares) >= COVERED_SHARE


# --- the CUDA path on a simulated GPU ----------------------------------------------------------


class FakeCuda:
    """torch.cuda's events and synchronize as the timer uses them, over a simulated GPU clock.

    As on a real GPU, an event completes only when the host waits for it (``torch.cuda.synchronize``
    or ``event.synchronize()``, which also completes the events recorded before it), and
    ``elapsed_time`` between events that have not completed raises: reading CUDA events without
    a synchronize first is an error, never a silently wrong number.
    """

    def __init__(self) -> None:
        self.now_ms = 0.0
        self.recorded: list[FakeEvent] = []
        self.synchronizes = 0

    def event(self, enable_timing: bool = False) -> "FakeEvent":
        return FakeEvent(self)

    def synchronize(self, device=None) -> None:
        self.synchronizes += 1
        for event in self.recorded:
            event.done = True


class FakeEvent:
    def __init__(self, gpu: FakeCuda) -> None:
        self.gpu, self.stamp, self.done = gpu, None, False

    def record(self, stream=None) -> None:
        self.stamp = self.gpu.now_ms
        self.gpu.recorded.append(self)

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        for event in self.gpu.recorded[: self.gpu.recorded.index(self) + 1]:
            event.done = True

    def elapsed_time(self, end: "FakeEvent") -> float:
        if not (self.done and end.done):
            raise RuntimeError("CUDA error: device not ready (elapsed_time before the events completed)")
        return end.stamp - self.stamp


@pytest.fixture
def fake_cuda(monkeypatch) -> FakeCuda:
    gpu = FakeCuda()
    monkeypatch.setattr(torch.cuda, "Event", gpu.event)
    monkeypatch.setattr(torch.cuda, "synchronize", gpu.synchronize)
    return gpu


def test_gpu_timer_synchronizes_before_reading_events(fake_cuda):
    timer = StageTimer(torch.device("cuda"))
    with timer.stage("prefill"):
        fake_cuda.now_ms += 12.5
        with timer.stage("vision"):
            fake_cuda.now_ms += 7.0
    assert fake_cuda.synchronizes == 0  # no sync between stages: the GPU keeps its queue
    assert timer.elapsed_ms() == {"prefill": 19.5, "vision": 7.0}
    assert fake_cuda.synchronizes == 1


def test_engine_on_a_gpu_reports_device_time_of_each_stage(fake_cuda):
    """Kernels return at once to the host: only the events, read after a synchronize, see them."""
    adapter = SleepyAdapter(clock=fake_cuda)
    run = engine_of(adapter).run(SAMPLE)
    assert run.device == "cuda"
    assert run.substage_ms["sam"] == pytest.approx(adapter.SAM_S * MS_PER_S)
    assert run.vision_ms == pytest.approx(adapter.SAM_S * MS_PER_S)
    assert run.prefill_ms == pytest.approx((adapter.SAM_S + adapter.PREFILL_S) * MS_PER_S)
    assert run.decode_ms == pytest.approx((TOKENS - 1) * adapter.STEP_S * MS_PER_S)
    assert run.preprocess_ms >= (adapter.LOAD_S + adapter.PREPARE_S) * MS_PER_S  # host-timed
