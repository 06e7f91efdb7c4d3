"""NVTX ranges in the "dsocr" domain: what Nsight Systems and Nsight Compute filter on.

Range names are the stage names (``sample:<id>``, ``preprocess``, ``prefill``, ``vision``,
``sam``, ``clip``, ``projector``, ``decode``), so an ncu filter reads
``--nvtx-include dsocr@decode/``. Without a profiler attached a push/pop costs well under a
microsecond, so ranges are always emitted.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import nvtx

DOMAIN = "dsocr"


@lru_cache(maxsize=None)
def _domain() -> nvtx.Domain:
    return nvtx.get_domain(DOMAIN)


@lru_cache(maxsize=256)
def _attributes(message: str):
    # Registered once per name: pushing pre-built attributes is the cheapest NVTX call.
    return _domain().get_event_attributes(message=message)


def push(message: str) -> None:
    _domain().push_range(_attributes(message))


def pop() -> None:
    _domain().pop_range()


@contextmanager
def nvtx_range(message: str) -> Iterator[None]:
    push(message)
    try:
        yield
    finally:
        pop()
