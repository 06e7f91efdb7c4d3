"""Atomic file writes for everything the report produces (a crash never leaves half a file)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and os.replace.

    Readers see either the previous file or the new one, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(value: Any) -> Any:
    """A copy of ``value`` that json.dumps accepts as strict JSON.

    NaN and infinity become None (strict JSON has no spelling for them; a missing number is
    more honest than an invented one), tuples become lists, paths and other objects their str.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if callable(getattr(value, "tolist", None)):  # numpy arrays and scalars
        return json_safe(value.tolist())
    return str(value)


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Strict JSON (see :func:`json_safe`), indented for people, written atomically."""
    text = json.dumps(json_safe(data), indent=2, allow_nan=False, ensure_ascii=False)
    return atomic_write_text(path, text + "\n")
