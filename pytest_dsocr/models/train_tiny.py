"""Train a tiny DeepSeek-OCR to transcribe the bundled pages: the bundled weights' recipe.

    python -m pytest_dsocr.models.train_tiny --family deepseek_ocr  --out DIR_V1
    python -m pytest_dsocr.models.train_tiny --family deepseek_ocr2 --out DIR_V2 --decoder-from DIR_V1

The result is a checkpoint folder in the format a real one has (v1: the vendor's config.json,
safetensors and index; v2: transformers' format), plus the offline tokenizer's files, stored
in bfloat16 like the published checkpoints. Writing to ``pytest_dsocr/models/bundled/<family>-tiny``
replaces the weights ``model.weights=bundled`` loads.

Recipe (CPU, a few minutes per family):

- start from the seeded random build (``model.weights=random``, seed :data:`SEED`), every weight
  rounded to the stored precision first, so what is trained is exactly what is saved;
- the vision path stays at its seeded init and is frozen: SAM, CLIP / the Qwen2 encoder, the
  projector and the layout embeddings. Random features still differ page by page, so the decoder
  learns to read the pixels it is given. Each page's image features are computed once, with the
  project's own preprocessing and ``encode_images`` (the engine's path), and cached;
- the decoder (token embeddings, the MoE layers, final norm, LM head) is trained with teacher
  forcing over whole sequences, ``prompt + ground truth + EOS``, all pages per step, Adam with
  warmup and cosine decay, at most :data:`MAX_STEPS` steps; the loss is cross-entropy plus a
  hinge on every position whose margin is still short of :data:`MIN_MARGIN`. The prompt runs into a KV cache without autograd, recomputed
  every :data:`CACHE_REFRESH` steps, so only the target positions are back-propagated (see
  :func:`target_logits`); the final check always uses fresh caches. Weights are kept in float32
  but every forward uses them rounded to the stored precision (straight-through), and training
  stops once every target token wins its position by at least :data:`MIN_MARGIN` logits in that
  precision;
- v2 may start its decoder from v1's (``--decoder-from``, as the bundled v2 weights were made):
  both families share the decoder architecture and the tokenizer, so v2 only has to learn to
  tell the pages apart from its own image features;
- the saved folder is then loaded back through the normal loader and every page is decoded by
  the engine with the vendor policy (greedy, no_repeat_ngram_size 20, until EOS): the script
  fails unless each page reproduces its ground truth exactly and stops at EOS.

Fixed seed, fixed order, one thread (``--threads``): the same machine and torch build give the
same bytes; elsewhere float rounding may differ, and the final check still guarantees
exactness.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache

from pytest_dsocr import families
from pytest_dsocr.compat import cache_kwargs
from pytest_dsocr.config import load_config
from pytest_dsocr.data.groundtruth import read_truth_markup
from pytest_dsocr.data.pages import bundled_pages
from pytest_dsocr.decoding import DecodePolicy
from pytest_dsocr.engine import Engine
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.models import build_model
from pytest_dsocr.models.weights import WEIGHTS_GLOB, write_index
from pytest_dsocr.ngram import first_repeated_ngram
from pytest_dsocr.records import Sample
from pytest_dsocr.session import build_adapter as build_session_adapter

log = logging.getLogger(__name__)

SEED = 0
STORE_DTYPE = torch.bfloat16  # the published checkpoints' dtype
LEARNING_RATE = 3e-3
FINETUNE_LEARNING_RATE = 5e-4  # from a trained decoder (--decoder-from): adapt, do not relearn
WARMUP_STEPS = 20
DECAY_STEPS = 400  # cosine decay of the learning rate after warmup, down to FINAL_LR_SHARE of it
FINAL_LR_SHARE = 0.1
HINGE_SLACK = 0.5  # positions whose margin is below MIN_MARGIN + this get an extra hinge loss
MAX_STEPS = 3000
LOG_EVERY = 10
CACHE_REFRESH = 8  # steps a prompt's KV cache is reused before it is recomputed with the current weights
MIN_MARGIN = 2.0  # target logit minus the best other logit, at every position, to call a page learnt
GRAD_CLIP = 1.0
NGRAM_SIZE = 20  # the vendor's no_repeat_ngram_size: a repeated 20-gram could never be decoded
# The tiny model's ops are too small to gain from threads, and on a shared machine a second
# OpenMP thread waiting on a busy core made each step ~10x slower; one thread also fixes the
# order of every reduction, so a rerun on the same machine gives the same bytes.
THREADS = 1


@dataclass
class PageExample:
    """One bundled page ready for teacher forcing: its prepared prompt, cached image features and
    the ids to learn (ground truth then EOS)."""
    name: str
    prepared: Any
    image_embeds: Any
    target: torch.Tensor  # long [n + 1]


@dataclass(frozen=True)
class TrainResult:
    """What training reached: steps run, seconds, last loss and the smallest margin over all pages."""
    steps: int
    seconds: float
    loss: float
    min_margin: float


def model_config(family: str) -> Any:
    """The tiny preset of ``family`` with random weights (the preprocessing the engine uses)."""
    families.family(family, key="--family")
    return load_config(overrides=[f"model={family}/tiny", "model.weights=random", f"model.seed={SEED}"])


def build_adapter(cfg: Any) -> Any:

    return build_session_adapter(cfg, torch.device("cpu"), torch.float32)


@torch.no_grad()
def round_to_store_dtype(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(STORE_DTYPE).to(tensor.dtype)


@torch.no_grad()
def round_model(model: torch.nn.Module) -> None:
    """Every weight rounded to the stored precision and frozen (before any feature is cached)."""
    for p in model.parameters():
        p.requires_grad_(False)
        p.copy_(round_to_store_dtype(p))


@torch.no_grad()
def copy_decoder(adapter: Any, folder: Path) -> None:
    """Start from the decoder of a v1 checkpoint folder (the same DeepSeek-V2 decoder and tokenizer).

    Both families name the decoder alike (``model.language_model.*``, ``lm_head.weight``), so v2
    can begin from v1's trained decoder: it then only has to learn to tell the pages apart from
    its own image features, a fraction of the CPU time of learning the transcriptions again.
    """
    donor_family = families.family(adapter.family).decoder_donor
    if donor_family is None:
        raise DsocrError(f"--decoder-from {folder}: {adapter.family} starts from no other family's decoder")
    source = build_model(donor_family, "tiny", path=str(folder))
    donor = trainable_parameters(source)
    target = trainable_parameters(adapter.model)
    if set(donor) != set(target):
        raise DsocrError(f"--decoder-from {folder}: its decoder does not match the {adapter.family} tiny decoder")
    for name, param in target.items():
        if donor[name].shape != param.shape:
            raise DsocrError(f"--decoder-from {folder}: {name} is {list(donor[name].shape)}, "
                             f"the model has {list(param.shape)}")
        param.copy_(donor[name])


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The decoder: token embeddings, layers, final norm and LM head (both families name them alike)."""
    return {name: p for name, p in model.named_parameters()
            if name.startswith("model.language_model.") or name == "lm_head.weight"}


def examples(adapter: Any) -> list[PageExample]:
    """Every bundled page with its prompt, cached image features and target ids."""
    pages = []
    for path in bundled_pages():
        truth = read_truth_markup(path)
        prepared = adapter.prepare(adapter.load(path))
        with torch.no_grad():
            image_embeds = adapter.encode_images(prepared)
        ids = adapter.tokenizer.encode(truth, add_special_tokens=False) + [adapter.eos_token_id]
        if adapter.tokenizer.decode(ids[:-1]) != truth:
            raise DsocrError(f"{path.name}: the tokenizer does not round-trip its ground truth")
        sequence = prepared.input_ids[0].tolist() + ids
        repeat = first_repeated_ngram(sequence, NGRAM_SIZE, start=prepared.input_ids.shape[1])
        if repeat is not None:
            raise DsocrError(f"{path.name}: its ground truth repeats a {NGRAM_SIZE}-gram at token {repeat}; "
                             "greedy decoding with no_repeat_ngram_size could never reproduce it")
        pages.append(PageExample(path.name, prepared, image_embeds, torch.tensor(ids, dtype=torch.long)))
    return pages


def prompt_cache(adapter: Any, page: PageExample) -> Any:
    """The decoder's KV cache over the prompt but its last token, without autograd (as a prefill)."""

    cache = DynamicCache()
    with torch.no_grad():
        prompt = adapter.prompt_embeds(page.prepared, page.image_embeds)
        adapter.model(inputs_embeds=prompt[:, :-1], use_cache=True, logits_to_keep=1, **cache_kwargs(cache))
    return cache


def target_logits(adapter: Any, page: PageExample, cache: Any) -> torch.Tensor:
    """Logits [n + 1, vocab] at the positions that predict the page's target ids (teacher forcing).

    ``cache`` (from :func:`prompt_cache`, consumed: the targets' keys and values are appended)
    holds the prompt; the last prompt token and the known target ids run with autograd on top
    of it. Gradients reach every weight through the target positions but not through the
    prompt's keys and values: the backward pass covers a few hundred positions instead of the
    whole ~1,000-token prompt, and the prompt's cache can be reused for a few steps.
    """
    embed = adapter.model.get_input_embeddings()
    tail = torch.cat([embed(page.prepared.input_ids[:, -1:]), embed(page.target[None, :-1])], dim=1)
    out = adapter.model(inputs_embeds=tail, use_cache=True, **cache_kwargs(cache))
    return out.logits[0].float()


def learning_rate_share(step: int) -> float:
    """Linear warmup, then cosine decay to FINAL_LR_SHARE over DECAY_STEPS, then constant."""
    if step < WARMUP_STEPS:
        return (step + 1) / WARMUP_STEPS
    progress = min(1.0, (step - WARMUP_STEPS) / DECAY_STEPS)
    return FINAL_LR_SHARE + (1 - FINAL_LR_SHARE) * 0.5 * (1 + math.cos(math.pi * progress))


def margins(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Target logit minus the best other logit at each position (> 0: greedy picks the target)."""
    chosen = logits.gather(1, target[:, None])[:, 0]
    others = logits.scatter(1, target[:, None], float("-inf")).max(dim=1).values
    return chosen - others


def train(adapter: Any, pages: list[PageExample], max_steps: int = MAX_STEPS,
          learning_rate: float = LEARNING_RATE) -> TrainResult:
    """Teacher-forced training of the decoder until every page is learnt with margin (or max_steps).

    Each step's forward pass doubles as the check: when every target token already wins by
    :data:`MIN_MARGIN` with the current (rounded) weights, training stops before updating them.
    """
    params = trainable_parameters(adapter.model)
    master = {name: p.detach().clone() for name, p in params.items()}
    for p in params.values():
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(master.values(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_share)
    total = sum(page.target.numel() for page in pages)
    start = time.perf_counter()
    caches: list[Any] = [None] * len(pages)
    fresh_from = 0  # step at which the prompt caches were last recomputed
    step = 0
    while True:
        for name, p in params.items():
            p.data.copy_(round_to_store_dtype(master[name]))  # forward in the stored precision
            p.grad = None
        if step - fresh_from >= CACHE_REFRESH or caches[0] is None:
            caches = [prompt_cache(adapter, page) for page in pages]
            fresh_from = step
        loss_sum, worst, where = 0.0, float("inf"), ""
        for page, cache in zip(pages, caches):
            logits = target_logits(adapter, page, copy.deepcopy(cache))
            page_margins = margins(logits, page.target)
            lowest = int(page_margins.detach().argmin())
            if float(page_margins[lowest].detach()) < worst:
                worst, where = float(page_margins[lowest].detach()), f"{page.name} token {lowest}"
            # Cross-entropy everywhere, plus a hinge on the positions that do not yet win clearly.
            hinge = torch.relu(MIN_MARGIN + HINGE_SLACK - page_margins).sum()
            loss = (torch.nn.functional.cross_entropy(logits, page.target, reduction="sum") + hinge) / total
            loss.backward()
            loss_sum += float(loss.detach())
        if step % LOG_EVERY == 0:
            log.info("step %d: loss %.4f, smallest margin %.3f at %s (%.0f s)", step, loss_sum, worst, where,
                     time.perf_counter() - start)
        if worst >= MIN_MARGIN and fresh_from == step:
            log.info("step %d: every page learnt, smallest margin %.3f", step, worst)
            break
        if worst >= MIN_MARGIN:  # judged on stale prompt caches: judge again on fresh ones
            caches[0] = None
            continue
        if step == max_steps:
            break
        for name, p in params.items():
            master[name].grad = p.grad  # straight-through: the rounded weights' gradient moves the master
        torch.nn.utils.clip_grad_norm_(list(master.values()), GRAD_CLIP)
        optimizer.step()
        schedule.step()
        step += 1
    for p in params.values():
        p.requires_grad_(False)
        p.grad = None
    return TrainResult(step, time.perf_counter() - start, loss_sum, worst)


# ---------------------------------------------------------------------------------------
# Saving: a checkpoint folder like a real one
# ---------------------------------------------------------------------------------------


def save(adapter: Any, family: str, out: Path) -> None:
    """config.json + bfloat16 safetensors + index + tokenizer files, in ``family``'s real format."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob(WEIGHTS_GLOB), *out.glob("*.json")]:
        stale.unlink()
    families.family(family).load("checkpoint_writer")(adapter.model, out, STORE_DTYPE)
    write_index(out)
    adapter.tokenizer.save_pretrained(out)



# ---------------------------------------------------------------------------------------
# Verification through the engine
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PageCheck:
    """One page decoded by the engine: exact match with the ground truth, and why it stopped."""
    name: str
    exact: bool
    finish_reason: str
    tokens: int
    seconds: float


def verify(family: str, folder: Path) -> list[PageCheck]:
    """Load ``folder`` through the normal loader and decode every bundled page with the engine."""
    cfg = load_config(overrides=[f"model={family}/tiny", f"model.path={folder}", "infer=vendor"])
    adapter = build_adapter(cfg)
    policy = DecodePolicy(eos_token_id=adapter.eos_token_id, no_repeat_ngram_size=cfg.infer.no_repeat_ngram_size)
    engine = Engine(adapter, policy, max_new_tokens=None)
    checks = []
    for path in bundled_pages():
        start = time.perf_counter()
        run = engine.run(Sample(path, 0, 0, path.stem))
        text = adapter.decode_text([t for t in run.token_ids if t != adapter.eos_token_id])
        checks.append(PageCheck(path.name, text == read_truth_markup(path) and run.finish_reason == "eos",
                                run.finish_reason, run.tokens, time.perf_counter() - start))
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_dsocr.models.train_tiny", description=__doc__.split("\n")[0])
    parser.add_argument("--family", required=True, choices=families.FAMILY_NAMES)
    parser.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    parser.add_argument("--max-steps", type=int, default=MAX_STEPS)
    parser.add_argument("--threads", type=int, default=THREADS, help=f"torch CPU threads (default {THREADS})")
    parser.add_argument("--decoder-from", type=Path, default=None,
                        help="start the decoder from this v1 checkpoint folder (e.g. the bundled deepseek_ocr-tiny)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    try:
        adapter = build_adapter(model_config(args.family))
        if args.decoder_from is not None:
            copy_decoder(adapter, args.decoder_from)
        round_model(adapter.model)
        pages = examples(adapter)
        log.info("%s: %d pages, %d target tokens", args.family, len(pages), sum(p.target.numel() for p in pages))
        rate = LEARNING_RATE if args.decoder_from is None else FINETUNE_LEARNING_RATE
        result = train(adapter, pages, args.max_steps, rate)
        log.info("trained %d steps in %.0f s: loss %.4f, smallest margin %.3f",
                 result.steps, result.seconds, result.loss, result.min_margin)
        if result.min_margin <= 0:
            log.error("not every page is learnt after %d steps", result.steps)
            return 1
        save(adapter, args.family, args.out)
        checks = verify(args.family, args.out)
    except DsocrError as exc:
        log.error("%s", exc)
        return 2
    for check in checks:
        log.info("%s: %s, %s after %d tokens (%.1f s)", check.name, "exact" if check.exact else "DIFFERS",
                 check.finish_reason, check.tokens, check.seconds)
    summary = {"family": args.family, "steps": result.steps, "train_seconds": round(result.seconds, 1),
               "min_margin": round(result.min_margin, 3), "exact_pages": sum(c.exact for c in checks)}
    print(json.dumps(summary))
    return 0 if all(check.exact for check in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
