"""Run directories: one per pytest session, never reusing a previous run's files."""

from __future__ import annotations

import time
from pathlib import Path

from pytest_dsocr.errors import DsocrError

TIMESTAMP_FORMAT = "%Y%m%d-%H%M%S"
MAX_SUFFIX = 1000


def new_run_dir(root: Path, explicit: str | Path | None = None, option: str = "--dsocr-run-dir") -> Path:
    """``explicit`` when it is new or empty, else ``root/<timestamp>[-N]``; created here."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if path.exists() and not path.is_dir():
            raise DsocrError(f"{option}={explicit}: exists and is not a directory")
        if path.is_dir() and any(path.iterdir()):
            raise DsocrError(f"{option}={explicit}: already holds files of an earlier run; "
                             "runs are never overwritten: choose a new directory or remove it")
        path.mkdir(parents=True, exist_ok=True)
        return path
    stamp = time.strftime(TIMESTAMP_FORMAT)
    root.mkdir(parents=True, exist_ok=True)
    for suffix in range(MAX_SUFFIX):
        path = root / (stamp if suffix == 0 else f"{stamp}-{suffix}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise DsocrError(f"run.root={root}: could not create a new run directory for {stamp}")
