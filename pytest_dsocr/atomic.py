"""Atomic file writes for everything the harness writes: a crash never leaves half a file.

Each write goes to a temporary file in the same folder, is flushed to disk, and replaces the
target with os.replace, so readers see the previous file or the new one, never a torn one.
Files get the mode a plain open() would give (the umask decides), not mkstemp's 0600.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image

from pytest_dsocr.errors import DsocrError

FILE_MODE = 0o666  # before the umask, as open() uses

log = logging.getLogger(__name__)


@contextmanager
def atomic_open(path: str | os.PathLike[str], durable: bool = True) -> Iterator[BinaryIO]:
    """A binary handle whose content replaces ``path`` only when the block ends without error
    (for files written in a stream, e.g. a large gzipped trace).

    ``durable=False`` skips the fsync: the replace is still atomic for every reader and
    survives a crash of this process, not a power cut (interim files rewritten often).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _atomic(path: str | os.PathLike[str], write: Callable[[BinaryIO], None], durable: bool = True) -> Path:
    with atomic_open(path, durable) as handle:
        write(handle)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, durable: bool = True) -> Path:
    """Replace ``path`` with ``data`` atomically."""
    return _atomic(path, lambda handle: handle.write(data), durable)


def atomic_write_text(path: str | os.PathLike[str], text: str, durable: bool = True) -> Path:
    """Replace ``path`` with UTF-8 ``text`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"), durable)


def json_safe(value: Any) -> Any:
    """A copy of ``value`` that strict JSON accepts.

    NaN and infinity become None (a missing number is more honest than an invented one),
    tuples and sets become lists, paths and other objects their str.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return [json_safe(item) for item in sorted(value, key=str)]
    if callable(getattr(value, "tolist", None)):  # numpy arrays and scalars
        return json_safe(value.tolist())
    return str(value)


def to_json_text(data: Any, indent: int | None = 2) -> str:
    """Strict JSON as the project writes it: UTF-8 characters kept, indented for people."""
    return json.dumps(json_safe(data), indent=indent, allow_nan=False, ensure_ascii=False)


def atomic_write_json(path: str | os.PathLike[str], data: Any, indent: int | None = 2) -> Path:
    """Replace ``path`` with ``data`` as strict JSON atomically (the old file stays if encoding fails)."""
    return atomic_write_text(path, to_json_text(data, indent) + "\n")


def atomic_save_figure(path: str | os.PathLike[str], figure, **params: Any) -> Path:
    """Replace ``path`` with a matplotlib figure atomically (format from the extension)."""
    return _atomic(path, lambda handle: figure.savefig(handle, format=Path(path).suffix.lstrip("."), **params))


def atomic_save_image(path: str | os.PathLike[str], image: Image.Image, format: str | None = None,
                      **params: Any) -> Path:
    """Replace ``path`` with ``image`` atomically; the format defaults to the file's extension."""
    path = Path(path)
    if format is None:
        format = Image.registered_extensions().get(path.suffix.lower())
        if format is None:
            raise DsocrError(f"{path}: unknown image extension {path.suffix!r}")
    return _atomic(path, lambda handle: image.save(handle, format=format, **params))


class BackgroundWriter:
    """Atomic, non-durable file writes on a thread of its own, the newest content winning.

    For files rewritten every few seconds while a run goes on (the interim metrics.json and
    summary): creating and renaming a file can stall for milliseconds on a busy disk, and the
    sample being recorded would wait for it. :meth:`submit` takes content the caller has
    already made (so no user code runs on this thread) and returns at once; content still
    pending when newer content for the same file arrives is dropped unwritten. :meth:`close`
    returns once everything submitted is on disk. A write that fails is logged once per file
    and the run goes on: these files are views, the records file is the data.
    """

    def __init__(self, name: str = "dsocr-writer") -> None:
        self.name = name
        self._pending: dict[Path, bytes] = {}
        self._writing = False
        self._closed = False
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._failed: set[Path] = set()

    def submit(self, files: Mapping[str | os.PathLike[str], bytes]) -> None:
        with self._changed:
            if self._closed:
                raise RuntimeError(f"{self.name}: closed")
            self._pending.update((Path(path), data) for path, data in files.items())
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
            self._changed.notify_all()

    def wait(self) -> None:
        """Return once everything submitted so far is written (or failed)."""
        with self._changed:
            while self._pending or self._writing:
                self._changed.wait()

    def close(self) -> None:
        """Write what is pending, then stop the thread; later submits are an error."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while True:
            with self._changed:
                while not self._pending and not self._closed:
                    self._changed.wait()
                if not self._pending:
                    return
                files, self._pending = self._pending, {}
                self._writing = True
            try:
                for path, data in files.items():
                    try:
                        atomic_write_bytes(path, data, durable=False)
                    except Exception as exc:  # noqa: BLE001 - the thread must outlive any one write
                        if path not in self._failed:
                            self._failed.add(path)
                            log.warning("pytest-dsocr: cannot write %s (%s); the records file keeps every sample",
                                        path, exc)
            finally:  # a waiter is never left waiting on a write that ended
                with self._changed:
                    self._writing = False
                    self._changed.notify_all()
