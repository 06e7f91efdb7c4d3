"""Markdown building blocks shared by the summary, report.md and the regression gate."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

MISSING = "n/a"  # shown for a statistic that was not measured; never a made-up number
MS_DIGITS = 2
SHARE_DIGITS = 1
RATE_DIGITS = 2
RATIO_DIGITS = 3
ACCURACY_DIGITS = 3  # edit distances and IoU (0..1)
SIGNIFICANT_DIGITS = 6  # free-form numbers in key/value tables


def fmt(value: Any, digits: int = MS_DIGITS) -> str:
    """A number as table text: ints as they are, floats with ``digits`` decimals, None as n/a."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return cell(value)


def pct(fraction: float | None, digits: int = SHARE_DIGITS) -> str:
    """A fraction (0.25) as a percentage without the sign ("25.0")."""
    return MISSING if fraction is None else f"{fraction * 100:.{digits}f}"


def cell(value: Any) -> str:
    """Text safe inside a table cell: one line, pipes escaped."""
    text = str(value).replace("\r", " ").replace("\n", " ")
    return text.replace("|", "\\|")


def table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], numeric_from: int = 1, align: str | None = None
) -> str:
    """A GitHub markdown table; columns from ``numeric_from`` on are right-aligned, unless
    ``align`` spells every column ("lrrl").

    Cells that are not strings go through :func:`fmt`.
    """
    if align is None:
        align = "l" * numeric_from + "r" * (len(headers) - numeric_from)
    lines = [
        "| " + " | ".join(cell(h) for h in headers) + " |",
        "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |",
    ]
    for row in rows:
        texts = [value if isinstance(value, str) else fmt(value) for value in row]
        lines.append("| " + " | ".join(cell(text) for text in texts) + " |")
    return "\n".join(lines)


def section(title: str, body: str, level: int = 2) -> str:
    return f"{'#' * level} {title}\n\n{body.strip()}\n"


def key_value_table(mapping: Mapping[str, Any], headers: Sequence[str] = ("Key", "Value")) -> str:
    return table(headers, [(str(key), _scalar_text(value)) for key, value in mapping.items()], numeric_from=2)


def _scalar_text(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_scalar_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_scalar_text(v) for v in value)
    return f"{value:.{SIGNIFICANT_DIGITS}g}" if isinstance(value, float) else fmt(value)
