"""The prompt DeepSeek-OCR v1 sees, formatted the way the vendor's ``infer()`` formats it.

The vendor's Hugging Face ``infer()`` wraps the user prompt in a two-message conversation
(``<|User|>`` with the prompt, ``<|Assistant|>`` with ``""``) and calls
``format_messages(conversations, sft_format='plain', system_prompt='')``. That function strips
each message's content, appends it to a conversation template and strips the result. The
``plain`` template (DeepSeek-VL2 / DeepSeek-OCR ``conversation.py``, separator style PLAIN) has
an empty system template, empty role names and empty separators (``sep = sep2 = ""``), and it
skips empty messages; so the system prompt and roles never appear and the formatted prompt is
the user content, stripped. The vendor's vLLM script passes its ``PROMPT`` unformatted; for a
prompt without surrounding whitespace (like ours) both paths give the same string.
"""

from __future__ import annotations

from pytest_dsocr.errors import DsocrError

IMAGE_TOKEN = "<image>"
DEFAULT_PROMPT = "<image>\n<|grounding|>Convert the document to markdown."


def _format_plain(prompt: str) -> str:
    # PLAIN joins the non-empty messages with "" and drops the empty assistant turn;
    # the per-message strip and the final strip collapse into one.
    return prompt.strip()


SFT_FORMATS = {"plain": _format_plain}


def build_dsocr_prompt(prompt: str = DEFAULT_PROMPT, sft_format: str = "plain") -> str:
    """The prompt text the vendor's ``format_messages(..., sft_format=sft_format)`` yields.

    Only ``plain`` is known: it is the one template DeepSeek-OCR's ``infer()`` uses.
    """
    if sft_format not in SFT_FORMATS:
        raise DsocrError(
            f"unknown sft_format {sft_format!r}; DeepSeek-OCR v1 formats prompts with one of "
            f"{sorted(SFT_FORMATS)}"
        )
    if not isinstance(prompt, str) or not prompt.strip():
        raise DsocrError(
            f"prompt {prompt!r} is empty or not a string; give a text such as {DEFAULT_PROMPT!r}"
        )
    return SFT_FORMATS[sft_format](prompt)
