"""The GPU paths on the CPU: device preprocessing as tensor ops, in-graph token selection without a
graph, batches through the engine, teacher-forced parity (tiny model); GPU-only checks skip here."""

import dataclasses

import pytest
import torch

from pytest_dsocr.config import load_config
from pytest_dsocr.data.images import load_image
from pytest_dsocr.data.pages import bundled_pages
from pytest_dsocr.decoding import DecodePolicy
from pytest_dsocr.engine import Engine
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.session import build_adapter
from pytest_dsocr.models.deepseek_ocr.device_processing import pixel_difference, prepare_inputs_on_device
from pytest_dsocr.models.deepseek_ocr.processing import prepare_inputs
from pytest_dsocr.ngram import IncrementalNoRepeatNGram, ban_repeated_ngrams
from pytest_dsocr.records import Sample
from pytest_dsocr.teacher_forcing import (compare_logits, forced_logits, forced_logits_batch, reference_tokens,
                                          teacher_forced_parity)

# torch's own modules (dynamo, flex_attention) define jit script methods when first imported.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

TOKENS = 24  # past the n-gram ban's 20: the ban is exercised
EIGHT_BIT_STEP = 2 / 255  # one 8-bit level after Normalize(0.5, 0.5)
SLEEP_CYCLES = 100_000_000  # about 50 ms at the 2 GHz of a datacenter GPU
SLEEP_MIN_MS = 10.0
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def adapter():
    return build_adapter(load_config(), torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def policy(adapter):
    return DecodePolicy(eos_token_id=adapter.eos_token_id, no_repeat_ngram_size=20)


@pytest.fixture(scope="module")
def pages():
    return {p.stem: p for p in bundled_pages()}


def sample(path):
    return Sample(image_path=path, epoch=0, index=0, sample_id=path.stem)


@pytest.fixture(scope="module")
def page(pages):
    return sample(pages["page_005"])  # the cheapest page: no crops


@pytest.fixture(scope="module")
def eager_tokens(adapter, policy, page):
    """The default (eager) path's greedy tokens: the reference of every faster path."""
    return reference_tokens(adapter, policy, page, TOKENS)


@pytest.fixture(scope="module")
def eager_logits(adapter, page, eager_tokens):
    return forced_logits(adapter, adapter.prepare(adapter.load(page.image_path)), eager_tokens)


# -- config --------------------------------------------------------------------------------------


@pytest.mark.parametrize("override, key", [
    ("infer.preprocess_device=tpu", "infer.preprocess_device"),
    ("infer.batch_size=0", "infer.batch_size"),
    ("infer.vision_backend=turbo", "infer.vision_backend"),
    ("infer.prefill_backend=fused", "infer.prefill_backend"),
])
def test_bad_new_infer_values_name_their_key(override, key):
    with pytest.raises(DsocrError, match=key.replace(".", r"\.")):
        load_config(overrides=[override])


def test_gpu_preprocessing_needs_the_model_on_the_gpu():
    with pytest.raises(DsocrError, match="infer.preprocess_device=cuda.*model.device=cpu"):
        load_config(overrides=["infer.preprocess_device=cuda", "model.device=cpu"])
    with pytest.raises(DsocrError, match="DeepSeek-OCR-2"):
        load_config(overrides=["model=deepseek_ocr2/tiny", "infer.preprocess_device=cuda"])
    cfg = load_config(overrides=["infer.decode_backend=graph", "infer.batch_size=4",
                                 "infer.vision_backend=compiled", "infer.prefill_backend=compiled"])
    assert (cfg.infer.decode_backend, cfg.infer.batch_size) == ("graph", 4)


def test_adapter_refuses_gpu_preprocessing_on_a_cpu_model(adapter):
    with pytest.raises(DsocrError, match="infer.preprocess_device=cuda: the model runs on cpu"):
        adapter.variant(preprocess_device="cuda")


# -- preprocessing as tensor ops -----------------------------------------------------------------


@pytest.mark.parametrize("page", ["page_001", "page_005"])
def test_tensor_preprocessing_matches_the_vendor_path(adapter, pages, page):
    image = load_image(pages[page])
    vendor = prepare_inputs(image, adapter.tokenizer, adapter.spec)
    tensors = prepare_inputs_on_device(image, adapter.tokenizer, adapter.spec, device="cpu")
    assert tensors.input_ids.tolist() == vendor.input_ids.tolist()
    assert tensors.images_seq_mask.tolist() == vendor.images_seq_mask.tolist()
    assert tensors.crop_grid == vendor.crop_grid and tensors.num_image_tokens == vendor.num_image_tokens
    diff = pixel_difference(vendor, tensors)
    # Pillow resamples in fixed point, torch in float: a pixel may land one 8-bit level apart.
    assert diff["max_abs"] <= 2 * EIGHT_BIT_STEP + 1e-6
    assert diff["share_differing"] < 1e-3


def test_a_grey_page_uploads_as_one_channel_with_the_same_pixels(adapter, pages):
    grey = load_image(pages["page_005"], keep_grey=True)
    assert grey.mode == "L"
    rgb = load_image(pages["page_005"])
    a = prepare_inputs_on_device(grey, adapter.tokenizer, adapter.spec)
    b = prepare_inputs_on_device(rgb, adapter.tokenizer, adapter.spec)
    assert pixel_difference(a, b)["max_abs"] == 0.0


def test_engine_times_device_preprocessing_like_the_model_stages(adapter, policy, page, eager_tokens):
    on_host = Engine(adapter, policy, 2)
    assert on_host.stage_clock("preprocess") == "host" and on_host.stage_clock("prefill") == "device"
    device_adapter = adapter.variant()
    device_adapter.preprocess_on_device = True  # the tensor path on CPU tensors (no GPU here)
    engine = Engine(device_adapter, policy, 2)
    assert engine.stage_clock("preprocess") == "device"
    run = engine.run(page)
    assert list(run.token_ids) == eager_tokens[:2]
    assert run.preprocess_ms > 0 and run.ttft_ms == pytest.approx(run.preprocess_ms + run.prefill_ms)


@pytest.mark.gpu
@needs_cuda
def test_gpu_preprocessing_time_covers_its_kernels():
    """A preprocess that queues long GPU work must be timed to its end, not to the host's return."""
    from pytest_dsocr.engine import NO_HOOKS

    class SlowDevicePreprocess:
        preprocess_on_device = True
        device = torch.device("cuda")

    engine = Engine.__new__(Engine)  # only the timing machinery: no model needed
    engine.adapter, engine._hooks = SlowDevicePreprocess(), NO_HOOKS
    timer = engine._new_timer(True)
    with engine._stage("preprocess", timer):
        torch.cuda._sleep(SLEEP_CYCLES)  # returns at once on the host; the GPU spins for tens of ms
    assert timer.elapsed_ms()["preprocess"] > SLEEP_MIN_MS


# -- token selection in the graph (run eagerly on the CPU) ---------------------------------------


def test_device_ngram_ban_equals_the_incremental_processor():
    generator = torch.Generator().manual_seed(0)
    for trial in range(40):
        n = (2, 3, 5, 20)[trial % 4]
        length = int(torch.randint(1, 70, (1,), generator=generator))
        ids = torch.randint(0, 4, (2, length), generator=generator)
        scores = torch.randn(2, 9, generator=generator)
        seen = torch.full((2, length + 7), 8)
        seen[:, :length] = ids
        want = IncrementalNoRepeatNGram(n)(ids, scores)
        got = ban_repeated_ngrams(scores, seen, torch.full((2,), length), n)
        assert torch.equal(torch.isinf(got), torch.isinf(want)), (n, length)


def test_graph_backend_gives_the_eager_tokens(adapter, policy, page, eager_tokens):
    graph = adapter.variant(decode_backend="graph")
    assert graph.selects_in_graph and graph.static.steps_per_replay > 1
    got = Engine(graph, policy, TOKENS).run(page)
    assert list(got.token_ids) == eager_tokens and len(got.token_ids) == TOKENS
    assert graph.static.active.select_graph is None  # no CUDA graph on the CPU: the same steps, eagerly


def test_graph_backend_stops_at_eos_and_honours_min_new_tokens(adapter, policy, page, eager_tokens):
    free = eager_tokens
    stop_at = next(k for k in range(1, len(free)) if free[k] not in free[:k])
    eos_policy = dataclasses.replace(policy, eos_token_id=free[stop_at])
    graph = adapter.variant(decode_backend="graph")
    got = Engine(graph, eos_policy, None).run(page)  # max_new_tokens=inf: only EOS stops it
    assert got.finish_reason == "eos" and list(got.token_ids) == free[: stop_at + 1]
    # EOS banned until min_new_tokens: host processors and the in-graph ban agree.
    want = Engine(adapter, eos_policy, stop_at + 4, min_new_tokens=stop_at + 3).run(page)
    got = Engine(graph, eos_policy, stop_at + 4, min_new_tokens=stop_at + 3).run(page)
    assert got.token_ids == want.token_ids and eos_policy.eos_token_id not in got.token_ids[: stop_at + 3]


# -- batches --------------------------------------------------------------------------------------


def test_a_padded_batch_gives_each_page_its_own_tokens(adapter, policy, pages, page, eager_tokens):
    engine = Engine(adapter, policy, 6)
    batch = [page, sample(pages["page_003"])]
    runs = engine.run_batch(batch)
    assert [r.sample_id for r in runs] == ["page_005", "page_003"]
    assert runs[0].prefill_len != runs[1].prefill_len  # different prompt lengths: left padding
    assert list(runs[0].token_ids) == eager_tokens[:6]
    assert runs[1].token_ids == engine.run(batch[1]).token_ids
    for run in runs:
        assert run.batch_size == 2 and run.batch_wall_ms > 0 and run.tpot_ms is not None
    assert runs[0].ttft_ms == runs[1].ttft_ms  # every page waits for the whole batch's prefill


def test_graph_backend_batches_pages_of_one_length(adapter, policy, page, eager_tokens):
    graph = adapter.variant(decode_backend="graph")
    runs = Engine(graph, policy, 6).run_batch([page] * 2)
    assert all(list(r.token_ids) == eager_tokens[:6] for r in runs)


def test_batch_logits_agree_with_each_page_alone_teacher_forced(adapter, pages):
    prepared = [adapter.prepare(adapter.load(pages[name])) for name in ("page_005", "page_003")]
    tokens = [[5, 6, 7, 8], [9, 10, 11]]
    together = forced_logits_batch(adapter, prepared, tokens)
    for p, t, rows in zip(prepared, tokens, together):
        result = compare_logits(forced_logits(adapter, p, t), rows, torch.float32)
        assert result.steps == len(t) and result.agrees, result


# -- teacher-forced parity ------------------------------------------------------------------------


def test_compare_logits_reports_relative_difference_and_top1():
    reference = torch.tensor([[0.0, 1.0, 2.0], [0.0, 4.0, 1.0]])
    candidate = reference.clone()
    candidate[1, 2] = 5.0  # moves the argmax of step 1 and differs by 4 on a range of 4
    result = compare_logits(reference, candidate, torch.bfloat16)
    assert result.max_rel == pytest.approx(1.0) and result.per_step_rel[0] == 0.0
    assert result.top1_agreement == 0.5 and result.first_top1_mismatch == 1
    assert not result.within_tolerance and result.tolerance == 5e-2


def test_static_backend_agrees_teacher_forced(adapter, page, eager_tokens):
    result = teacher_forced_parity(adapter, adapter.variant(decode_backend="static"), page, eager_tokens)
    assert result.steps == TOKENS and result.agrees and result.max_rel < 1e-4


def test_graph_backend_agrees_teacher_forced_through_its_own_steps(adapter, page, eager_tokens, eager_logits):
    candidate = adapter.variant(decode_backend="graph")  # forced ids replace the graph's own choices
    logits = forced_logits(candidate, candidate.prepare(candidate.load(page.image_path)), eager_tokens)
    result = compare_logits(eager_logits, logits, torch.float32)
    assert result.steps == TOKENS and result.agrees and result.max_rel < 1e-4


# -- the Triton kernel in its CPU interpreter -----------------------------------------------------


INTERPRETER_CHECK = """
import torch
import torch.nn.functional as F
from pytest_dsocr.kernels.moe_gemv import moe_gemv
generator = torch.Generator().manual_seed(0)
experts, hidden, inter, tokens, top_k = 5, 40, 24, 2, 2
gate_up = torch.randn(experts, 2 * inter, hidden, generator=generator) * 0.1
down = torch.randn(experts, hidden, inter, generator=generator) * 0.1
x = torch.randn(tokens, hidden, generator=generator)
ids = torch.stack([torch.randperm(experts, generator=generator)[:top_k] for _ in range(tokens)])
weights = torch.rand(tokens, top_k, generator=generator)
# What transformers' experts compute: silu(gate) * up, down projection, weighted sum over the top-k.
want = torch.zeros(tokens, hidden)
for t in range(tokens):
    for k in range(top_k):
        gate, up = F.linear(x[t], gate_up[ids[t, k]]).chunk(2)
        want[t] += weights[t, k] * F.linear(F.silu(gate) * up, down[ids[t, k]])
got = moe_gemv(x, ids, weights, gate_up, down)
assert torch.allclose(got, want, atol=1e-6, rtol=1e-5), (got - want).abs().max()
half = moe_gemv(x.bfloat16(), ids, weights, gate_up.bfloat16(), down.bfloat16())
assert half.dtype == torch.bfloat16 and (half.float() - want).abs().max() < 2e-2
print("ok")
"""


def test_moe_gemv_equals_batched_mm_in_the_triton_interpreter():
    """The Triton kernels in Triton's CPU interpreter (a fresh process: the mode is fixed at jit time)."""
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", INTERPRETER_CHECK], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


# -- compiled paths (switching only; compiling is a GPU matter) ----------------------------------


def test_vision_fast_path_switches_sam_attention_and_back(adapter):
    from pytest_dsocr.models.deepseek_ocr.flex_sam import SamFlexAttention

    attention = adapter.model.model.sam_model.layers[0].attn
    eager_class = type(attention)
    twin = adapter.variant()
    twin.use_backends("compiled", "eager")
    try:
        assert type(attention) is SamFlexAttention
        assert "forward" in vars(adapter.model.model.vision_model.transformer.layers[0])  # compiled forward installed
    finally:
        twin.use_backends("eager", "eager")
    assert type(attention) is eager_class and "forward" not in vars(adapter.model.model.vision_model.transformer.layers[0])


@pytest.mark.gpu
@needs_cuda
def test_compiled_vision_matches_eager_on_the_gpu(pages):
    cfg = load_config(overrides=["model.device=cuda"])
    gpu = build_adapter(cfg, torch.device("cuda"), torch.bfloat16)
    prepared = gpu.prepare(gpu.load(pages["page_005"]))
    with torch.inference_mode():
        eager = torch.cat(gpu.encode_images(prepared)).float()
        gpu.use_backends("compiled", "eager")
        fast = torch.cat(gpu.encode_images(prepared)).float()
    assert (eager - fast).abs().max() <= 5e-2 * eager.abs().max()
