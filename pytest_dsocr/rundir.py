"""Run directories: one per pytest session, never reusing a previous run's files.

- ``--dsocr-run-dir DIR`` (or ``run.dir``): used when it does not exist yet or is an empty
  directory; a directory holding anything (even one hidden file) or a file of that name is a
  clear error, so a previous run is never overwritten. A relative DIR is taken from the
  directory pytest was started in; ``..``, spaces and non-ASCII characters are fine, and the
  path is made absolute (``a/../b`` becomes ``<cwd>/b``) so every process of the run, xdist
  workers included, names the same folder.
- Otherwise ``<run.root>/<YYYYmmdd-HHMMSS>``, or ``...-1``, ``-2``, ... when that name is
  taken: each candidate is created with an exclusive ``mkdir``, so two sessions started in
  the same second still get different folders.
- Under pytest-xdist each worker writes its partial records to ``<run>/workers/<id>/``,
  reserved the same way (a restarted worker that reuses the id of a crashed one gets
  ``<id>-2``, so the crashed worker's records stay).
- Writability is probed when the session starts, before any model is built
  (:func:`check_writable`): the explicit run dir, or the nearest existing folder of
  ``run.root`` (the default run dir itself is made only when the first sample is recorded).
  The probe writes a temporary folder and removes it again, because permission bits do not
  tell (root ignores them; a read-only mount does not show in them).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from pytest_dsocr.errors import DsocrError

TIMESTAMP_FORMAT = "%Y%m%d-%H%M%S"
MAX_SUFFIX = 1000
WORKERS_DIR = "workers"


def new_run_dir(root: Path, explicit: str | Path | None = None, option: str = "--dsocr-run-dir",
                base_dir: Path | None = None) -> Path:
    """``explicit`` when it is new or empty, else ``root/<timestamp>[-N]``; created here.

    A relative ``explicit`` is taken from ``base_dir`` (default: the current directory).
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_absolute():
            path = Path(base_dir if base_dir is not None else Path.cwd()) / path
        path = Path(os.path.abspath(path))  # resolves "..", keeps symlinked folders as named
        if path.exists() and not path.is_dir():
            raise DsocrError(f"{option}={explicit}: {path} exists and is not a directory")
        if path.is_dir() and any(path.iterdir()):
            raise DsocrError(f"{option}={explicit}: {path} already holds files of an earlier run; "
                             "runs are never overwritten: choose a new directory or remove it")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DsocrError(f"{option}={explicit}: cannot create {path} ({exc.strerror})") from None
        check_writable(path, f"{option}={explicit}")
        return path
    stamp = time.strftime(TIMESTAMP_FORMAT)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DsocrError(f"run.root={root}: cannot create it ({exc.strerror})") from None
    return _exclusive_dir(root, stamp, f"run.root={root}")


def check_writable(path: Path, what: str) -> None:
    """DsocrError naming ``what`` unless a folder can be made in ``path`` or, when it does not
    exist yet, in its nearest existing parent (which must be a directory); leaves nothing behind."""
    path = Path(os.path.abspath(path))
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise DsocrError(f"{what}: cannot create {path}: {existing} is not a directory")
    try:
        probe = tempfile.mkdtemp(prefix=".dsocr-write-probe-", dir=existing)
    except OSError as exc:
        raise DsocrError(f"{what}: cannot write in {existing} ({exc.strerror}); "
                         "choose a writable folder") from None
    os.rmdir(probe)


def new_worker_dir(run_dir: Path, worker: str) -> Path:
    """``<run>/workers/<worker>``, or ``<worker>-2``, ... when an earlier process took it."""
    parent = Path(run_dir) / WORKERS_DIR
    parent.mkdir(parents=True, exist_ok=True)
    return _exclusive_dir(parent, worker, f"worker {worker}", first_suffix=2)


def remove_if_empty(path: Path) -> bool:
    """Remove ``path`` when it is an empty directory (an xdist run that measured nothing)."""
    try:
        path.rmdir()
    except OSError:
        return False
    return True


def _exclusive_dir(parent: Path, name: str, what: str, first_suffix: int = 1) -> Path:
    for suffix in range(first_suffix - 1, MAX_SUFFIX):
        path = parent / (name if suffix == first_suffix - 1 else f"{name}-{suffix}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise DsocrError(f"{what}: could not create a new directory {name} under {parent}")
