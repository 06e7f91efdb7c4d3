"""Tokenizers for DeepSeek-OCR v1: the checkpoint's own files, or one built offline.

The offline tokenizer stands in for the checkpoint's when no ``model.path`` is given. It is a
byte-level BPE (every UTF-8 text round-trips) that keeps the ids the model and the vendor code
depend on, spends spare ids on merges learned from the bundled pages' ground truth
(:mod:`pytest_dsocr.models.deepseek_ocr.merges`: a bundled page costs a few hundred tokens
instead of one per byte), and names every other id so that any id the model can emit decodes.
Id layout (``I`` = ``spec.image_token_id``):

- 0, 1, 2: ``<｜begin▁of▁sentence｜>``, ``<｜end▁of▁sentence｜>``, ``<｜▁pad▁｜>`` (special)
- 3 .. 258: the 256 byte tokens, byte ``b`` at ``3 + b``
- I .. I+9: ``<image>``, ``<|ref|>``, ``<|/ref|>``, ``<|det|>``, ``<|/det|>``, ``<|grounding|>``,
  ``<td>``, ``</td>``, ``<tr>``, ``</tr>``. The real checkpoint has ``<image>`` at 128815 and the
  grounding tokens at 128816..128820 in this order; the vendor's vLLM script whitelists
  ``<td>``/``</td>`` as 128821/128822, and its commented token list puts ``<tr>``/``</tr>`` next.
  They are added tokens (one id each) but not special, so they survive
  ``skip_special_tokens=True`` like the vendor's markup does.
- the merges, in their learned order, on the free ids from 259 up (skipping ``I .. I+9``): as
  many as the vocabulary has room for (all of them for ``tiny`` and ``full``). Both sizes get the
  same merges so a text costs the same tokens whichever offline tokenizer reads it.
- every other id: a filler ``<filler_ID>`` that encoding never produces and decoding prints.
"""

from __future__ import annotations

import functools
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from pytest_dsocr.errors import DsocrError
from pytest_dsocr.models.deepseek_ocr.merges import byte_alphabet, load_merges
from pytest_dsocr.models.deepseek_ocr.prompt import IMAGE_TOKEN
from pytest_dsocr.models.deepseek_ocr.spec import DeepseekOCRSpec

BOS_TOKEN = "<｜begin▁of▁sentence｜>"
EOS_TOKEN = "<｜end▁of▁sentence｜>"
PAD_TOKEN = "<｜▁pad▁｜>"  # the vendor processor's pad token name
PAD_TOKEN_ID = 2
BYTE_TOKEN_OFFSET = 3  # byte b has id BYTE_TOKEN_OFFSET + b
# Added tokens from spec.image_token_id on, in the real checkpoint's order.
MARKUP_TOKENS = (
    IMAGE_TOKEN, "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<|grounding|>",
    "<td>", "</td>", "<tr>", "</tr>",
)
FILLER_TEMPLATE = "<filler_{}>"
# Tokens matched before the BPE model runs: merges never span them.
SPLIT_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, *MARKUP_TOKENS)
# What a checkpoint folder must hold for a fast tokenizer with the vendor's special tokens.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _vocab(spec: DeepseekOCRSpec, merges: tuple[tuple[str, str], ...]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary of ``spec`` and the merges that fit in it (in order, on the free ids)."""
    vocab_size, image_id = spec.text.vocab_size, spec.image_token_id
    first_free = BYTE_TOKEN_OFFSET + 256
    if not first_free <= image_id <= vocab_size - len(MARKUP_TOKENS):
        raise DsocrError(
            f"spec {spec.name!r}: image_token_id {image_id} must lie in "
            f"[{first_free}, {vocab_size - len(MARKUP_TOKENS)}] for vocab_size {vocab_size}"
        )
    vocab = {BOS_TOKEN: spec.bos_token_id, EOS_TOKEN: spec.eos_token_id, PAD_TOKEN: PAD_TOKEN_ID}
    if sorted(vocab.values()) != list(range(BYTE_TOKEN_OFFSET)):
        raise DsocrError(
            f"spec {spec.name!r}: bos/eos ids {spec.bos_token_id}/{spec.eos_token_id} must be 0/1 "
            f"(id {PAD_TOKEN_ID} is the pad token)"
        )
    vocab.update({char: BYTE_TOKEN_OFFSET + b for b, char in byte_alphabet().items()})
    vocab.update({token: image_id + i for i, token in enumerate(MARKUP_TOKENS)})
    taken = set(vocab.values())
    free = iter([i for i in range(vocab_size) if i not in taken])
    merged_tokens: set[str] = set()
    used: list[tuple[str, str]] = []
    for left, right in merges:
        merged = left + right
        if left not in vocab or right not in vocab or (merged in vocab and merged not in merged_tokens):
            raise DsocrError(f"tokenizer merges: ({left!r}, {right!r}) does not build a token from known ones; "
                             "regenerate them with python -m pytest_dsocr.models.deepseek_ocr.merges")
        if merged not in vocab:  # two pairs may build the same token (other splits of it): one id
            token_id = next(free, None)
            if token_id is None:
                break  # the vocabulary is full: the later merges stay unused
            vocab[merged] = token_id
            merged_tokens.add(merged)
        used.append((left, right))
    taken = set(vocab.values())
    vocab.update({FILLER_TEMPLATE.format(i): i for i in range(vocab_size) if i not in taken})
    return vocab, used


@functools.lru_cache(maxsize=None)
def build_offline_tokenizer(spec: DeepseekOCRSpec) -> PreTrainedTokenizerFast:
    """The offline tokenizer for ``spec`` (cached per spec: treat it as read-only).

    Builds in about 0.3 s for the full vocab of 129,280 ids, offline.
    """
    vocab, merges = _vocab(spec, load_merges())
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    # No regex split: the merges were learned over whole segments between markup tokens and may
    # span spaces (see merges.py); the byte-level mapping alone is applied.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)]
    )
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKUP_TOKENS])
    # Like the checkpoint's LlamaTokenizerFast (add_bos_token): BOS first when special tokens are on.
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, spec.bos_token_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="left",  # the vendor's processor pads on the left
        clean_up_tokenization_spaces=False,  # decode must give the text back byte for byte
        model_max_length=spec.text.max_position_embeddings,
    )


def load_tokenizer(path: str | None, spec: DeepseekOCRSpec) -> PreTrainedTokenizerFast:
    """The checkpoint's tokenizer from the local folder ``path``, or the offline one when None.

    Never reaches a hub. Fails naming the folder when its files are missing or unreadable, and
    naming both ids when its ``<image>`` id is not the spec's.
    """
    if path is None:
        return build_offline_tokenizer(spec)
    if not Path(path).is_dir():
        raise DsocrError(f"tokenizer folder {path} does not exist; set model.path to a local checkpoint folder")
    missing = [name for name in TOKENIZER_FILES if not (Path(path) / name).is_file()]
    if missing:
        raise DsocrError(
            f"tokenizer folder {path} lacks {', '.join(missing)}; copy the checkpoint's tokenizer files there"
        )
    try:
        # The generic fast tokenizer reads tokenizer.json as it is. The checkpoint's config names
        # LlamaTokenizerFast over a byte-level BPE: transformers 5.17-5.23 would rebuild that as
        # a Metaspace (sentencepiece-style) tokenizer and encode text wrongly; 5.24 falls back
        # to the file's own pipeline, as this does on every version.
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # broken files surface as OSError, ValueError, KeyError, JSON errors...
        raise DsocrError(
            f"cannot load the tokenizer from {path} ({type(exc).__name__}: {exc}); "
            f"check that its {' and '.join(TOKENIZER_FILES)} come from the checkpoint"
        ) from exc
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_id != spec.image_token_id:
        raise DsocrError(
            f"tokenizer in {path} maps {IMAGE_TOKEN} to id {image_id}, but model size {spec.name!r} "
            f"expects image_token_id {spec.image_token_id}; use the tokenizer of the same checkpoint"
        )
    return tokenizer
