"""The append-only records file of a run: every event, one JSON line, as it happens.

``<run>/records.jsonl`` (under xdist, ``<run>/workers/<id>/records.jsonl`` per worker) is the
run's source of truth; metrics.json, the summary and report.md are derived from it. Lines:

- ``{"kind": "session", "config": ..., "env": ..., "counts": ..., "identity": ..., "stage_tree": [...]}``
  first, so the file alone can be turned into metrics.json;
- ``{"kind": "run", ...ImageRun.to_json()}`` for each measured round;
- ``{"kind": "failure", ...SampleFailure.to_json()}``;
- ``{"kind": "section", "name": ..., "data": ...}`` and ``{"kind": "summary_section", "title": ...,
  "markdown": ...}`` for what stages add (a later line of the same name replaces an earlier);
- ``{"kind": "end", "complete": ..., "reason": ..., "memory": ...}`` when the session ends.

Each line is written and flushed to the operating system before the call returns, so a killed
process keeps every event it recorded; a background thread fsyncs the file shortly after
(coalescing bursts, without holding up appends meanwhile), so a sample never waits for an
fsync. A line cut short by a crash is skipped when the file is read.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_dsocr.atomic import json_safe
from pytest_dsocr.errors import DsocrError
from pytest_dsocr.records import ImageRun, SampleFailure

RECORDS_FILE = "records.jsonl"
SESSION, RUN, FAILURE, SECTION, SUMMARY_SECTION, END = "session", "run", "failure", "section", "summary_section", "end"
FSYNC_DELAY_S = 0.2  # the background fsync waits this long to take several lines at once


class RecordLog:
    """Appends event lines to one records file (see the module doc)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._handle = None
        self._dirty = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._syncer: threading.Thread | None = None

    def append(self, kind: str, payload: dict[str, Any]) -> None:
        event = {"kind": kind, **payload}
        try:
            line = json.dumps(event, allow_nan=False, ensure_ascii=False)
        except (TypeError, ValueError):  # NaN, a path, a tuple key...: the strict-JSON copy
            line = json.dumps(json_safe(event), allow_nan=False, ensure_ascii=False)
        with self._lock:
            if self._handle is None:
                self._open()
            try:
                self._handle.write(line + "\n")
                self._handle.flush()  # in the OS now: survives this process being killed
            except OSError as exc:
                raise DsocrError(f"{self.path}: cannot write the records file ({exc})") from None
        self._dirty.set()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a", encoding="utf-8")
        self._closed.clear()  # opened again after close(): a section added after the session end
        self._syncer = threading.Thread(target=self._sync_loop, name="dsocr-records-fsync", daemon=True)
        self._syncer.start()

    def _sync_loop(self) -> None:
        while not self._closed.is_set():
            self._dirty.wait()
            if self._closed.wait(FSYNC_DELAY_S):
                break
            self._dirty.clear()
            self._fsync()

    def _fsync(self) -> None:
        # Outside the lock: an fsync can take milliseconds, and append() must not wait for it.
        # The descriptor stays open meanwhile: close() joins this thread before it closes.
        with self._lock:
            fileno = self._handle.fileno() if self._handle is not None else None
        if fileno is not None:
            try:
                os.fsync(fileno)
            except OSError:  # a disk error here must not end the run; the line is written
                pass

    def close(self) -> None:
        self._closed.set()
        self._dirty.set()
        if self._syncer is not None:
            self._syncer.join()
        self._fsync()
        with self._lock:
            if self._handle is not None:
                try:
                    self._handle.close()
                except OSError:  # what a failed write left in the buffer: append reported it
                    pass
                self._handle = None


RUN_LINE_HEAD = '{"kind": "run", '


def run_texts(path: str | os.PathLike[str]) -> Iterator[str]:
    """The json text of each run line of a records file, in order, without the ``kind``: exactly
    ``json.dumps(run.to_json())`` of the run it records (what metrics.json's ``samples`` hold),
    copied rather than parsed and encoded again. A line cut short (no newline at the end of the
    file) is left out, as :func:`read_records` leaves it out."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.startswith(RUN_LINE_HEAD) and line.endswith("\n"):
                yield "{" + line[len(RUN_LINE_HEAD):-1]


@dataclass
class RunLog:
    """What one records file holds, read back."""

    path: Path
    session: dict[str, Any] = field(default_factory=dict)
    runs: list[ImageRun] = field(default_factory=list)
    failures: list[SampleFailure] = field(default_factory=list)
    sections: dict[str, Any] = field(default_factory=dict)
    summary_sections: dict[str, str] = field(default_factory=dict)
    end: dict[str, Any] | None = None
    torn_lines: int = 0  # lines cut short by a crash (skipped)

    @property
    def complete(self) -> bool:
        return bool(self.end and self.end.get("complete"))


def read_records(path: str | os.PathLike[str]) -> RunLog:
    """Read a records file; a line cut short at the end (a crash mid-write) is skipped and
    counted, a malformed line elsewhere is a DsocrError naming the file and line."""
    path = Path(path)
    log = RunLog(path)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise DsocrError(f"{path}: no records file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DsocrError(f"{path}: cannot read the records file ({exc})") from None
    last = len(lines) - 1
    for number, line in _numbered(lines):
        try:
            event = json.loads(line)
            _apply(log, event)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            torn = number == last  # the final piece had no newline: the write was cut short
            if torn and isinstance(exc, json.JSONDecodeError):
                log.torn_lines += 1
                continue
            raise DsocrError(f"{path}:{number + 1}: not a records line ({type(exc).__name__}: {exc})") from None
    return log


def _numbered(lines: list[str]) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(lines):
        if line.strip():
            yield number, line


def _apply(log: RunLog, event: dict[str, Any]) -> None:
    kind = event.pop("kind")
    if kind == SESSION:
        log.session = event
    elif kind == RUN:
        log.runs.append(ImageRun.from_json(event))
    elif kind == FAILURE:
        log.failures.append(SampleFailure.from_json(event))
    elif kind == SECTION:
        log.sections[event["name"]] = event["data"]
    elif kind == SUMMARY_SECTION:
        log.summary_sections[event["title"]] = event["markdown"]
    elif kind == END:
        log.end = event
    else:
        raise ValueError(f"unknown kind {kind!r}")
