"""The engine's own prefill + decode loop against the model's generate (tiny model, greedy)."""

import dataclasses

import pytest
import torch

from pytest_dsocr.config import load_config
from pytest_dsocr.data.pages import bundled_pages
from pytest_dsocr.decoding import DecodePolicy
from pytest_dsocr.engine import Engine, ProfilingHooks
from pytest_dsocr.records import Sample
from pytest_dsocr.session import build_adapter

MAX_NEW_TOKENS = 24


@pytest.fixture(scope="module")
def adapter():
    cfg = load_config()
    return build_adapter(cfg, torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def pages():
    return bundled_pages()


def sample_of(path, index=0):
    return Sample(image_path=path, epoch=0, index=index, sample_id=path.stem)


def reference_tokens(adapter, path, policy, max_new_tokens):
    prepared = adapter.prepare(adapter.load(path))
    return adapter.generate_reference(prepared, policy, max_new_tokens)


@pytest.mark.parametrize("page_index", [0, 1])
def test_engine_tokens_equal_generate(adapter, pages, page_index):
    policy = DecodePolicy(eos_token_id=adapter.eos_token_id, no_repeat_ngram_size=20)
    engine = Engine(adapter, policy, MAX_NEW_TOKENS)
    run = engine.run(sample_of(pages[page_index]))
    expected = reference_tokens(adapter, pages[page_index], policy, MAX_NEW_TOKENS)
    assert list(run.token_ids) == expected
    assert run.tokens == len(expected) == MAX_NEW_TOKENS
    assert run.finish_reason == "length"


def test_engine_stops_at_eos_like_generate(adapter, pages):
    """Make the first token that is new after position 0 the EOS id: both paths stop right after it."""
    policy = DecodePolicy(eos_token_id=adapter.eos_token_id, no_repeat_ngram_size=20)
    free_run = Engine(adapter, policy, MAX_NEW_TOKENS).run(sample_of(pages[0]))
    ids = free_run.token_ids
    stop_at = next(k for k in range(1, len(ids)) if ids[k] not in ids[:k])
    eos_policy = dataclasses.replace(policy, eos_token_id=ids[stop_at])
    run = Engine(adapter, eos_policy, None).run(sample_of(pages[0]))  # max_new_tokens=inf
    assert run.finish_reason == "eos"
    assert list(run.token_ids) == list(ids[: stop_at + 1])
    assert reference_tokens(adapter, pages[0], eos_policy, 64) == list(run.token_ids)


def test_stage_timings_nest(adapter, pages):
    policy = DecodePolicy(eos_token_id=adapter.eos_token_id)
    run = Engine(adapter, policy, 4).run(sample_of(pages[0]))
    assert set(run.substage_ms) == {"sam", "clip", "projector"}
    assert all(value > 0 for value in run.substage_ms.values())
    # Vision and its parts nest inside prefill; they are never summed with it.
    assert sum(run.substage_ms.values()) <= run.vision_ms <= run.prefill_ms
    assert run.ttft_ms == pytest.approx(run.preprocess_ms + run.prefill_ms)
    assert run.decode_ms > 0 and run.tokens == 4
    assert run.image_tokens > 0 and run.prefill_len > run.image_tokens


def test_uninstrumented_run_gives_the_same_tokens(adapter, pages):
    policy = DecodePolicy(eos_token_id=adapter.eos_token_id)
    engine = Engine(adapter, policy, 8)
    timed = engine.run(sample_of(pages[1]))
    bare = engine.run(sample_of(pages[1]), instrument=False)
    assert bare.token_ids == timed.token_ids
    assert bare.substage_ms == {}


class RecordingHooks(ProfilingHooks):
    def __init__(self):
        self.events = []

    def on_iter_start(self, sample, round_index, measured):
        self.events.append(("start", sample.sample_id, round_index, measured))

    def on_iter_end(self, sample, round_index, measured, run):
        self.events.append(("end", sample.sample_id, round_index, measured, run is not None))

    def stage_range(self, name):
        self.events.append(("stage", name))
        return super().stage_range(name)


def test_hooks_see_every_stage_once_per_call(adapter, pages):
    hooks = RecordingHooks()
    Engine(adapter, DecodePolicy(eos_token_id=adapter.eos_token_id), 3).run(
        sample_of(pages[0]), hooks=hooks, round_index=2, measured=False)
    stages = [e[1] for e in hooks.events if e[0] == "stage"]
    assert stages[:3] == ["preprocess", "prefill", "vision"]
    assert {"sam", "clip", "projector", "decode"} <= set(stages)
    assert hooks.events[0] == ("start", pages[0].stem, 2, False)
    assert hooks.events[-1] == ("end", pages[0].stem, 2, False, True)


class Observer:
    """Writes down what a decode observer is told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def on_decode_start(self, label: str) -> None:
        self.events.append(("start", label))

    def on_decode_step(self, tokens: int) -> None:
        self.events.append(("step", tokens))

    def on_decode_end(self, tokens: int) -> None:
        self.events.append(("end", tokens))


@pytest.mark.parametrize("batch", [False, True], ids=["one_page", "batch"])
def test_the_observer_hears_every_decode_step_with_the_host_count(adapter, pages, batch):
    engine = Engine(adapter, DecodePolicy(eos_token_id=adapter.eos_token_id), 5)
    engine.observer = observer = Observer()
    if batch:
        engine.run_batch([sample_of(pages[0]), sample_of(pages[1], 1)])
        label, steps = f"{pages[0].stem}+1", [2, 4, 6, 8, 10]  # both rows together
    else:
        engine.run(sample_of(pages[0]))
        label, steps = pages[0].stem, [1, 2, 3, 4, 5]
    assert observer.events == [("start", label), *(("step", n) for n in steps), ("end", steps[-1])]


def test_static_backend_gives_the_eager_tokens(pages):
    """decode_backend=static (static KV cache; graphs only on CUDA) decodes the eager path's tokens."""
    cfg = load_config(overrides=["infer.decode_backend=static"])
    static = build_adapter(cfg, torch.device("cpu"), torch.float32)
    eager = build_adapter(load_config(), torch.device("cpu"), torch.float32)
    policy = DecodePolicy(eos_token_id=eager.eos_token_id, no_repeat_ngram_size=20)
    for page in (pages[2], pages[4]):
        want = Engine(eager, policy, MAX_NEW_TOKENS).run(sample_of(page))
        got = Engine(static, policy, MAX_NEW_TOKENS).run(sample_of(page))
        assert got.token_ids == want.token_ids
    assert static.static.active is not None and static.static.active.graph is None  # no graph on the CPU


def test_no_box_warning_fires_once_for_box_free_outputs(caplog):
    from pytest_dsocr.parity import warn_if_no_boxes

    with caplog.at_level("WARNING"):
        assert warn_if_no_boxes(["plain text", "<filler_3> more"]) is True
        assert warn_if_no_boxes(["<|ref|>title<|/ref|><|det|>[[1, 2, 30, 40]]<|/det|>\nHello"]) is False
        assert warn_if_no_boxes([]) is False
    assert caplog.text.count("vendor_parity") == 1


def test_cuda_device_without_cuda_is_a_clear_error():
    from pytest_dsocr.env import resolve_device
    from pytest_dsocr.errors import DsocrError

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DsocrError, match="model.device='cuda'.*CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"
