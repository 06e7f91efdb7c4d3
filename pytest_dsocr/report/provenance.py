"""Which weights a run used, in words, from metrics.json's ``identity.weights``.

The identity is written by :func:`pytest_dsocr.models.weights.weights_identity`
(``{kind, seed, path, index_sha256}``, kind bundled | random | checkpoint); the reports name it
from that record alone, so any saved metrics.json can be re-rendered (without importing the
model code and torch behind :mod:`pytest_dsocr.models`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SHA_SHOWN = 12  # leading hex digits of the index sha256 shown in the reports (metrics.json has all)
ELLIPSIS = "…"


def describe_weights(weights: Mapping[str, Any] | None, size: str | None = None) -> str | None:
    """'bundled trained tiny (index sha256 abc123…)', 'random (seed 0)' or 'checkpoint /path
    (index sha256 …)'; None when the run did not record its weights (older metrics.json)."""
    if not weights:
        return None
    kind = weights.get("kind")
    if kind == "random":
        return f"random (seed {weights.get('seed')})"
    digest = weights.get("index_sha256")
    sha = f" (index sha256 {digest[:SHA_SHOWN]}{ELLIPSIS})" if digest else ""
    if kind == "bundled":
        return f"bundled trained{f' {size}' if size else ''}{sha}"
    return f"{kind} {weights.get('path')}{sha}"
