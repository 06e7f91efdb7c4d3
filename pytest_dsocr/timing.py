"""Stage timers: CUDA events on a GPU, perf_counter on the CPU.

A GPU timer records events on the current stream and synchronizes once, when the run is
finished, so timing never inserts a sync between stages. Sub-stages that are modules
(SAM, CLIP, projector) are timed by forward pre/post hooks, summed over the calls of one run
(SAM runs once for the crops and once for the global view).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch


class StageTimer:
    """Collects (start, end) marks per stage name for one inference."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self._intervals: dict[str, list[tuple[object, object]]] = defaultdict(list)
        self._open: dict[str, list[object]] = defaultdict(list)
        self.host_ms: dict[str, float] = {}  # stages timed on the host clock (see engine.HOST_STAGES)

    def _mark(self) -> object:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self, name: str) -> None:
        self._open[name].append(self._mark())

    def stop(self, name: str) -> None:
        start = self._open[name].pop()
        self._intervals[name].append((start, self._mark()))

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def elapsed_ms(self) -> dict[str, float]:
        """Milliseconds per stage, summed over its intervals (synchronizes first on a GPU)."""
        self.synchronize()
        result: dict[str, float] = {}
        for name, intervals in self._intervals.items():
            if self.cuda:
                total = sum(start.elapsed_time(end) for start, end in intervals)
            else:
                total = sum((end - start) * 1e3 for start, end in intervals)
            result[name] = float(total)
        result.update(self.host_ms)
        return result


class ModuleTimers:
    """Forward pre/post hooks that time named submodules into the active StageTimer.

    Registered once per session; they do nothing (one attribute check) while no timer is active,
    so a model can be run bare for overhead comparisons.
    """

    def __init__(self, modules: Iterable[tuple[str, torch.nn.Module]], on_enter=None, on_exit=None) -> None:
        self.timer: StageTimer | None = None
        self._on_enter = on_enter
        self._on_exit = on_exit
        self._handles = []
        for name, module in modules:
            self._handles.append(module.register_forward_pre_hook(self._pre(name)))
            self._handles.append(module.register_forward_hook(self._post(name)))

    def _pre(self, name: str):
        def hook(module, args):
            if self.timer is not None:
                if self._on_enter is not None:
                    self._on_enter(name)
                self.timer.start(name)
        return hook

    def _post(self, name: str):
        def hook(module, args, output):
            if self.timer is not None:
                self.timer.stop(name)
                if self._on_exit is not None:
                    self._on_exit(name)
        return hook

    @contextmanager
    def active(self, timer: StageTimer) -> Iterator[None]:
        self.timer = timer
        try:
            yield
        finally:
            self.timer = None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
