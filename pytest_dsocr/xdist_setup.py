"""What an xdist controller and its workers agree on before pytest-dsocr starts in them.

Kept light (no numpy, no torch): the plugin consults it in every session with xdist loaded,
including sessions that never use pytest-dsocr.

- ``workerinput`` keys: the run dir a started controller made (:data:`RUN_DIR_KEY`), the GPU
  it gave the worker (:data:`GPU_KEY`), and a run dir *name* for workers that start pytest-dsocr
  on their own (:data:`RUN_NAME_KEY`); ``workeroutput``: the dir such a worker made.
- GPUs: ``CUDA_VISIBLE_DEVICES`` round-robin by worker number (see :mod:`pytest_dsocr.xdist`).
- :class:`LazyXdistController`: when no dsocr option or marker expression gave the controller
  a reason to start, workers that collect a pytest-dsocr test start it there, share one run
  dir named by the controller, and report it back; the controller then starts and merges.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any, Callable

import pytest

from pytest_dsocr.errors import DsocrError

log = logging.getLogger(__name__)

RUN_DIR_KEY = "dsocr_run_dir"  # workerinput: the run directory the controller created
GPU_KEY = "dsocr_cuda_visible_devices"  # workerinput: the GPU given to the worker, or None
RUN_NAME_KEY = "dsocr_run_name"  # workerinput: run dir name for workers that start on their own
WORKER_RUN_DIR_KEY = "dsocr_worker_run_dir"  # workeroutput: the run dir such a worker made
RUN_NAME_FORMAT = "%Y%m%d-%H%M%S"  # as rundir's, plus the controller's pid (no folder is reserved)
CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
# Device settings that let a worker use whichever GPU it is given.
ANY_GPU_DEVICES = ("auto", "cuda")
WORKER_NUMBER = re.compile(r"(\d+)$")


# --- where am I -------------------------------------------------------------------------


def worker_id(config: pytest.Config) -> str | None:
    """``gw0``, ``gw1``, ... in an xdist worker, None elsewhere."""
    workerinput = getattr(config, "workerinput", None)
    return None if workerinput is None else str(workerinput.get("workerid"))


def is_controller(config: pytest.Config) -> bool:
    """True in the process that distributes tests to xdist workers (``-n N`` with N >= 1).

    xdist's own test (``dist`` not "no" and some ``--tx``): it registers its distributed
    session only in its pytest_configure, which may run after ours.
    """
    option = config.option
    return (worker_id(config) is None and config.pluginmanager.hasplugin("xdist")
            and getattr(option, "dist", "no") != "no" and bool(getattr(option, "tx", None))
            and not getattr(option, "collectonly", False))


def worker_input(config: pytest.Config, key: str) -> Any:
    return (getattr(config, "workerinput", None) or {}).get(key)


# --- GPUs -------------------------------------------------------------------------------


def visible_gpus(environ: Mapping[str, str] | None = None,
                 device_count: Callable[[], int] | None = None) -> list[str]:
    """The GPUs this process may hand out, as ``CUDA_VISIBLE_DEVICES`` entries.

    The entries of ``CUDA_VISIBLE_DEVICES`` when it is set (indices or UUIDs; empty or "-1"
    means none), else ``0 .. n-1`` for the n GPUs torch counts (through NVML, without
    initialising CUDA in this process).
    """
    environ = os.environ if environ is None else environ
    if CUDA_VISIBLE_DEVICES in environ:
        entries = [e.strip() for e in environ[CUDA_VISIBLE_DEVICES].split(",") if e.strip()]
        visible = []
        for entry in entries:
            if entry.startswith("-"):  # CUDA stops at the first invalid index
                break
            visible.append(entry)
        return visible
    if device_count is None:
        import torch

        device_count = torch.cuda.device_count
    return [str(index) for index in range(device_count())]


def gpu_for(worker: str, gpus: Sequence[str]) -> str | None:
    """Round-robin by worker number: gw0 -> gpus[0], gw1 -> gpus[1], ... (None: do not set)."""
    if len(gpus) < 2:
        return None
    match = WORKER_NUMBER.search(worker)
    number = int(match.group(1)) if match else 0
    return gpus[number % len(gpus)]


def assign_gpus(specs: Sequence[Any], gpus: Sequence[str], device: str) -> dict[str, str]:
    """Put one GPU into each execnet spec's environment; returns {worker id: GPU}.

    Left alone: fewer than two GPUs, a fixed ``model.device`` (cpu, cuda:N), and specs whose
    environment already sets ``CUDA_VISIBLE_DEVICES`` (``--tx popen//env:...``).
    """
    if device not in ANY_GPU_DEVICES:
        return {}
    assigned = {}
    for index, spec in enumerate(specs):
        worker = str(getattr(spec, "id", None) or f"gw{index}")
        if CUDA_VISIBLE_DEVICES in spec.env:
            continue
        gpu = gpu_for(worker, gpus)
        if gpu is None:
            continue
        spec.env[CUDA_VISIBLE_DEVICES] = gpu
        assigned[worker] = gpu
    return assigned


def apply_worker_gpu(config: pytest.Config) -> None:
    """In a worker: make sure the GPU the controller chose is the one CUDA will see.

    execnet has already set it before this process imported anything; this only repairs a
    worker started some other way, and warns when CUDA was initialised too early for it.
    """
    gpu = worker_input(config, GPU_KEY)
    if gpu is None or os.environ.get(CUDA_VISIBLE_DEVICES) == gpu:
        return
    os.environ[CUDA_VISIBLE_DEVICES] = gpu
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        log.warning("worker %s: CUDA was initialised before CUDA_VISIBLE_DEVICES=%s could be set; "
                    "it may share a GPU with another worker", worker_id(config), gpu)


def claim_gpu(config: pytest.Config, device: str, environ: MutableMapping[str, str] | None = None,
              device_count: Callable[[], int] | None = None) -> str | None:
    """In a worker the controller gave no GPU (pytest-dsocr started there, during collection):
    take one round-robin by worker number, if CUDA is not initialised yet. Returns it or None."""
    environ = os.environ if environ is None else environ
    if worker_input(config, GPU_KEY) is not None or device not in ANY_GPU_DEVICES:
        return None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return None
    gpu = gpu_for(worker_id(config) or "gw0", visible_gpus(environ, device_count))
    if gpu is not None:
        environ[CUDA_VISIBLE_DEVICES] = gpu
    return gpu


def share_run_dir(config: pytest.Config, state) -> None:
    """In a worker: the run dir all workers of this session write into.

    A controller that started pytest-dsocr made it already (``RUN_DIR_KEY``). Otherwise each
    worker that collects a pytest-dsocr test creates ``<run.root>/<name>`` from the name the
    controller handed out, and reports it back (``workeroutput``) so the controller merges.
    """
    if state.worker_run_dir is None:
        name = worker_input(config, RUN_NAME_KEY)
        if name is None:
            return  # started without our controller hooks: a run dir of its own
        root = Path(state.cfg.run.root)
        if not root.is_absolute():
            root = Path(config.rootpath) / root
        path = root / name
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DsocrError(f"run.root={root}: cannot create {path} ({exc.strerror})") from None
        state.worker_run_dir = str(path)
        claim_gpu(config, str(state.cfg.model.device))
    output = getattr(config, "workeroutput", None)
    if output is not None:
        output[WORKER_RUN_DIR_KEY] = state.worker_run_dir


class LazyXdistController:
    """Controller hooks registered whenever xdist is loaded; they do nothing visible unless a
    worker starts pytest-dsocr on its own (no dsocr option or marker expression was given, so
    the controller had no reason to). Workers then share one run dir named here, and the
    controller starts pytest-dsocr when a worker reports that dir, to merge and report it."""

    def __init__(self, config: pytest.Config, activate: Callable[[pytest.Config], Any]) -> None:
        self.config = config
        self.activate = activate
        self.name = time.strftime(RUN_NAME_FORMAT) + f"-{os.getpid()}"

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node) -> None:
        node.workerinput[RUN_NAME_KEY] = self.name  # a name only: nothing is created here

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        run_dir = (getattr(node, "workeroutput", None) or {}).get(WORKER_RUN_DIR_KEY)
        if run_dir is None:
            return
        state = self.activate(self.config)
        if not state.has_run_dir:
            state.adopt_run_dir(run_dir)
