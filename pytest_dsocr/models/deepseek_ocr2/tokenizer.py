"""Tokenizer of DeepSeek-OCR-2: v1's, unchanged.

DeepSeek-OCR-2 ships the same tokenizer as v1 (vocabulary 129,280, ``<image>`` at 128815, the same
grounding tokens, BOS 0 / EOS 1), so both the offline builder and the local-folder loader of
:mod:`pytest_dsocr.models.deepseek_ocr.tokenizer` apply as they are: they read only the decoder's
vocabulary size, the image token id and BOS/EOS from the spec. Both families' ``tiny`` sizes share
one decoder spec and therefore one offline tokenizer.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

from pytest_dsocr.models.deepseek_ocr.tokenizer import build_offline_tokenizer
from pytest_dsocr.models.deepseek_ocr.tokenizer import load_tokenizer as _load_tokenizer
from pytest_dsocr.models.deepseek_ocr2.spec import DeepseekOCR2Spec

__all__ = ["build_offline_tokenizer", "load_tokenizer"]


def load_tokenizer(path: str | None, spec: DeepseekOCR2Spec) -> PreTrainedTokenizerFast:
    """The checkpoint's tokenizer from the local folder ``path``, or the offline one when None."""
    return _load_tokenizer(path, spec)
