"""Find the images of a dataset: bundled sample pages, a folder, or an OmniDocBench copy.

Supported datasets (``dataset.name``):

- ``samples``: the pages shipped in ``pytest_dsocr/data/pages/``; a ``dataset.root`` is an error
  (it reads none: a root given without ``dataset=folder`` would otherwise be silently ignored).
- ``folder``: files under ``dataset.root`` whose name (or path relative to the root) matches
  one of ``dataset.patterns``, case-insensitively; sub-folders too when ``dataset.recursive``.
  The default patterns are every extension of an image format Pillow decodes.
- ``omnidocbench``: ``dataset.root`` laid out as the published benchmark, ``images/`` plus
  ``OmniDocBench.json``. When the JSON is present, its entries' ``page_info.image_path``
  (file names under ``images/``) list the pages, and every listed page must exist; without it,
  ``images/`` is searched like a folder.

Common rules: hidden files and folders (name starting with ".") are skipped; results are
absolute paths sorted by their path relative to the image folder, so runs are reproducible.
A pattern search (no subset file, no OmniDocBench JSON) counts and names everything under the
image folder it passes over (:class:`Skipped`): files that match no pattern, hidden files and
folders, folders whose name matches a pattern (``x.png/``), symlinked folders (not followed),
sub-folders when ``dataset.recursive`` is false, and matching names that are not regular
files. :func:`scan_dataset` returns them with the images; the run puts them in metrics.json's
``dataset`` section and the summary, and logs one warning naming the first few.
``dataset.subset_file`` names images one per line, relative to the image folder (the bundled
pages folder, the root, or ``root/images``); blank lines and ``#`` comments are ignored, the
file's order is kept, repeated names count once, and patterns are not applied to them.
Names may hold spaces, non-ASCII characters and ``..`` (``a/../b.png`` is ``b.png``), but a
name that leaves the image folder (``../x.png``, an absolute path) is an error naming it, as
is a listed file that does not exist (up to five named, the rest counted).
A relative ``root`` or ``subset_file`` is taken relative to ``base_dir`` (default: the
current directory).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from pytest_dsocr.data.config import DEFAULT_PATTERNS, DatasetConfig, validate_dataset_config
from pytest_dsocr.data.groundtruth import TRUTH_SUFFIX
from pytest_dsocr.data.pages import PAGES_DIR
from pytest_dsocr.errors import DsocrError

log = logging.getLogger(__name__)

OMNIDOCBENCH_JSON = "OmniDocBench.json"
OMNIDOCBENCH_IMAGES = "images"
MAX_NAMED = 5  # missing files named in one error message (and skipped ones in the warning); the rest are counted
MAX_SKIPPED_LISTED = 200  # skipped entries listed by name in metrics.json; all are counted by reason

# Why a pattern search passed over an entry (the ``reason`` of :class:`Skipped`).
NO_PATTERN = "matches no dataset.patterns"
HIDDEN_FILE = "hidden file"
HIDDEN_FOLDER = "hidden folder, not searched"
MATCHING_FOLDER = "a folder, not an image file, although its name matches dataset.patterns"
SYMLINKED_FOLDER = "symlinked folder, not followed"
NOT_RECURSIVE = "sub-folder, not searched (dataset.recursive=false)"
NOT_A_FILE = "not a regular file"


@dataclass(frozen=True)
class Skipped:
    """One entry under the image folder that a pattern search did not take as an image."""

    path: str  # relative to the image folder, "/" separated; folders end with "/"
    reason: str


@dataclass(frozen=True)
class DatasetScan:
    """What discovery found: the images, where and how they were chosen, and what was passed over."""

    name: str  # samples | folder | omnidocbench
    image_dir: Path
    selection: str  # "patterns", "subset file <path>" or "manifest <path>"
    images: tuple[Path, ...]
    skipped: tuple[Skipped, ...] = ()

    def section(self) -> dict[str, Any]:
        """metrics.json's ``dataset`` section (stage-neutral: what every stage's samples came from)."""
        return {
            "name": self.name,
            "image_dir": str(self.image_dir),
            "selection": self.selection,
            "discovered": len(self.images),
            "skipped_count": len(self.skipped),
            "skipped_by_reason": dict(Counter(entry.reason for entry in self.skipped)),
            "skipped": [{"path": entry.path, "reason": entry.reason} for entry in self.skipped[:MAX_SKIPPED_LISTED]],
        }

    def warning(self) -> str | None:
        """One line naming the first skipped entries, or None when nothing was skipped."""
        if not self.skipped:
            return None
        shown = ", ".join(f"{entry.path} ({entry.reason})" for entry in self.skipped[:MAX_NAMED])
        more = f" and {len(self.skipped) - MAX_NAMED} more" if len(self.skipped) > MAX_NAMED else ""
        return (f"dataset: {len(self.skipped)} entr{'y' if len(self.skipped) == 1 else 'ies'} under "
                f"{self.image_dir} skipped: {shown}{more}; metrics.json `dataset` lists them")


def discover_images(cfg: DatasetConfig, base_dir: Path | None = None) -> list[Path]:
    """Absolute paths of the dataset's images, or a DsocrError naming the key and path."""
    return list(scan_dataset(cfg, base_dir).images)


def scan_dataset(cfg: DatasetConfig, base_dir: Path | None = None) -> DatasetScan:
    """The dataset's images and what a pattern search passed over; DsocrError naming the key and path."""
    validate_dataset_config(cfg)
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    patterns = _patterns(cfg)
    recursive = cfg.recursive
    manifest = None
    if cfg.name == "samples":
        image_dir, recursive = PAGES_DIR, False
    elif cfg.name == "folder":
        image_dir = _root(cfg, base)
    else:  # omnidocbench (validate_dataset_config refused any other name)
        root = _root(cfg, base)
        image_dir = root / OMNIDOCBENCH_IMAGES
        if not image_dir.is_dir():
            raise DsocrError(
                f"dataset.root: {root} has no {OMNIDOCBENCH_IMAGES}/ folder; point it at an "
                f"OmniDocBench copy (images/ and {OMNIDOCBENCH_JSON})"
            )
        if (root / OMNIDOCBENCH_JSON).is_file():
            manifest = root / OMNIDOCBENCH_JSON

    skipped: list[Skipped] = []
    if cfg.subset_file:
        images = _from_subset(_resolve(cfg.subset_file, base), image_dir)
        where = selection = f"subset file {cfg.subset_file}"
    elif manifest is not None:
        images = _from_manifest(manifest, image_dir)
        where, selection = str(manifest), f"manifest {manifest}"
    else:
        images, skipped = _match_files(image_dir, patterns, recursive)
        shown = "every image type Pillow decodes" if patterns == DEFAULT_PATTERNS else ", ".join(patterns)
        where, selection = f"{image_dir} (patterns: {shown})", "patterns"
    scan = DatasetScan(cfg.name, image_dir, selection, tuple(images), tuple(skipped))
    if not images:
        passed_over = f" ({scan.warning()})" if skipped else ""
        raise DsocrError(f"dataset: no images found in {where}{passed_over}; check dataset.root and dataset.patterns")
    warning = scan.warning()
    if warning:
        log.warning(warning)
    return scan


def _patterns(cfg: DatasetConfig) -> list[str]:
    patterns = [str(p) for p in (cfg.patterns or []) if str(p).strip()]
    if not patterns:
        raise DsocrError("dataset.patterns: empty; give at least one file-name glob such as '*.png'")
    return patterns


def _resolve(path: str, base: Path) -> Path:
    return Path(os.path.abspath(base / Path(path).expanduser()))


def _root(cfg: DatasetConfig, base: Path) -> Path:
    if not cfg.root:
        raise DsocrError(f"dataset.root: required for dataset {cfg.name!r}; set dataset.root=/path/to/images")
    root = _resolve(cfg.root, base)
    if not root.exists():
        raise DsocrError(f"dataset.root: {root} does not exist")
    if not root.is_dir():
        raise DsocrError(f"dataset.root: {root} is not a directory")
    return root


def _match_files(image_dir: Path, patterns: list[str], recursive: bool) -> tuple[list[Path], list[Skipped]]:
    """Files under ``image_dir`` matching ``patterns``, and every entry passed over, both sorted."""
    lowered = [p.lower() for p in patterns]
    found: list[Path] = []
    skipped: list[Skipped] = []

    def matches(path: Path) -> bool:
        name, relative = path.name.lower(), path.relative_to(image_dir).as_posix().lower()
        return any(fnmatch(name, p) or fnmatch(relative, p) for p in lowered)

    def skip(path: Path, reason: str, folder: bool = False) -> None:
        skipped.append(Skipped(path.relative_to(image_dir).as_posix() + ("/" if folder else ""), reason))

    for dirpath, dirnames, filenames in os.walk(image_dir):
        searched = []
        for name in dirnames:
            path = Path(dirpath) / name
            if name.startswith("."):
                skip(path, HIDDEN_FOLDER, folder=True)
            elif path.is_symlink():  # os.walk does not follow it: say so rather than pass it by
                skip(path, SYMLINKED_FOLDER, folder=True)
            elif not recursive:
                skip(path, MATCHING_FOLDER if matches(path) else NOT_RECURSIVE, folder=True)
            else:
                if matches(path):  # searched like any folder, but not read as the image its name suggests
                    skip(path, MATCHING_FOLDER, folder=True)
                searched.append(name)
        dirnames[:] = searched
        for name in filenames:
            path = Path(dirpath) / name
            if name.startswith("."):
                skip(path, HIDDEN_FILE)
            elif not matches(path):
                skip(path, NO_PATTERN)
            elif not path.is_file() and path.exists():  # a socket or fifo; a dangling link fails as a sample
                skip(path, NOT_A_FILE)
            else:
                found.append(path)
    found.sort(key=lambda p: p.relative_to(image_dir).as_posix())
    # page_001.mmd beside page_001.png is that page's ground truth, read with it: not passed over
    truths = {path.with_suffix(TRUTH_SUFFIX).relative_to(image_dir).as_posix() for path in found}
    skipped = [entry for entry in skipped if not (entry.reason == NO_PATTERN and entry.path in truths)]
    skipped.sort(key=lambda entry: entry.path)
    return [Path(os.path.abspath(p)) for p in found], skipped


def _from_manifest(manifest: Path, image_dir: Path) -> list[Path]:
    try:
        entries = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DsocrError(f"dataset.root: cannot read {manifest} ({exc})") from exc
    if not isinstance(entries, list):
        raise DsocrError(f"dataset.root: {manifest} is not a list of pages")
    names = []
    for entry in entries:
        page_info = entry.get("page_info") if isinstance(entry, dict) else None
        name = page_info.get("image_path") if isinstance(page_info, dict) else None
        if not isinstance(name, str) or not name:
            raise DsocrError(f"dataset.root: {manifest} has an entry without page_info.image_path")
        names.append(Path(name).name)  # the benchmark stores bare file names; be lenient on prefixes
    return _existing(sorted(set(names)), image_dir, f"dataset.root: {manifest} lists")


def _from_subset(subset: Path, image_dir: Path) -> list[Path]:
    if not subset.is_file():
        raise DsocrError(f"dataset.subset_file: {subset} does not exist")
    try:
        lines = subset.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DsocrError(f"dataset.subset_file: cannot read {subset} as UTF-8 text ({exc})") from exc
    names = []
    for line in lines:
        name = line.strip()
        if name and not name.startswith("#") and name not in names:
            names.append(name)
    outside = [name for name in names if not _inside(image_dir, name)]
    if outside:
        shown = ", ".join(repr(name) for name in outside[:MAX_NAMED])
        more = f" and {len(outside) - MAX_NAMED} more" if len(outside) > MAX_NAMED else ""
        raise DsocrError(
            f"dataset.subset_file: {subset} names {len(outside)} path(s) outside the image folder "
            f"{image_dir}: {shown}{more}; list files relative to that folder"
        )
    return _existing(names, image_dir, f"dataset.subset_file: {subset} names")


def _inside(image_dir: Path, name: str) -> bool:
    """True when ``name`` (relative, ``..`` allowed) stays inside ``image_dir``."""
    if Path(name).is_absolute():
        return False
    folder = os.path.abspath(image_dir)
    return os.path.commonpath([folder, os.path.abspath(os.path.join(folder, name))]) == folder


def _existing(names: list[str], image_dir: Path, what: str) -> list[Path]:
    paths = [Path(os.path.abspath(image_dir / name)) for name in names]
    missing = [name for name, path in zip(names, paths) if not path.is_file()]
    if missing:
        shown = ", ".join(missing[:MAX_NAMED])
        more = f" and {len(missing) - MAX_NAMED} more" if len(missing) > MAX_NAMED else ""
        raise DsocrError(f"{what} {len(missing)} file(s) not found in {image_dir}: {shown}{more}")
    return paths
