"""Find the images of a dataset: bundled sample pages, a folder, or an OmniDocBench copy.

Supported datasets (``dataset.name``):

- ``samples``: the pages shipped in ``pytest_dsocr/data/pages/`` (``dataset.root`` ignored).
- ``folder``: files under ``dataset.root`` whose name (or path relative to the root) matches
  one of ``dataset.patterns``, case-insensitively; sub-folders too when ``dataset.recursive``.
- ``omnidocbench``: ``dataset.root`` laid out as the published benchmark, ``images/`` plus
  ``OmniDocBench.json``. When the JSON is present, its entries' ``page_info.image_path``
  (file names under ``images/``) list the pages, and every listed page must exist; without it,
  ``images/`` is searched like a folder.

Common rules: hidden files and folders (name starting with ".") are skipped; results are
absolute paths sorted by their path relative to the image folder, so runs are reproducible.
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
import os
from fnmatch import fnmatch
from pathlib import Path

from pytest_dsocr.data.config import DatasetConfig
from pytest_dsocr.data.pages import PAGES_DIR
from pytest_dsocr.errors import DsocrError

DATASET_NAMES = ("samples", "folder", "omnidocbench")
OMNIDOCBENCH_JSON = "OmniDocBench.json"
OMNIDOCBENCH_IMAGES = "images"
MAX_NAMED = 5  # missing files named in one error message; the rest are counted


def discover_images(cfg: DatasetConfig, base_dir: Path | None = None) -> list[Path]:
    """Absolute paths of the dataset's images, or a DsocrError naming the key and path."""
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    patterns = _patterns(cfg)
    recursive = cfg.recursive
    manifest = None
    if cfg.name == "samples":
        image_dir, recursive = PAGES_DIR, False
    elif cfg.name == "folder":
        image_dir = _root(cfg, base)
    elif cfg.name == "omnidocbench":
        root = _root(cfg, base)
        image_dir = root / OMNIDOCBENCH_IMAGES
        if not image_dir.is_dir():
            raise DsocrError(
                f"dataset.root: {root} has no {OMNIDOCBENCH_IMAGES}/ folder; point it at an "
                f"OmniDocBench copy (images/ and {OMNIDOCBENCH_JSON})"
            )
        if (root / OMNIDOCBENCH_JSON).is_file():
            manifest = root / OMNIDOCBENCH_JSON
    else:
        raise DsocrError(
            f"dataset.name: unknown dataset {cfg.name!r}; choose one of {', '.join(DATASET_NAMES)}"
        )

    if cfg.subset_file:
        images = _from_subset(_resolve(cfg.subset_file, base), image_dir)
        where = f"subset file {cfg.subset_file}"
    elif manifest is not None:
        images = _from_manifest(manifest, image_dir)
        where = str(manifest)
    else:
        images = _match_files(image_dir, patterns, recursive)
        where = f"{image_dir} (patterns {', '.join(patterns)})"
    if not images:
        raise DsocrError(f"dataset: no images found in {where}; check dataset.root and dataset.patterns")
    return images


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


def _match_files(image_dir: Path, patterns: list[str], recursive: bool) -> list[Path]:
    lowered = [p.lower() for p in patterns]
    found = []
    for dirpath, dirnames, filenames in os.walk(image_dir):
        dirnames[:] = [] if not recursive else [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            relative = path.relative_to(image_dir).as_posix().lower()
            if any(fnmatch(name.lower(), p) or fnmatch(relative, p) for p in lowered):
                found.append(path)
    found.sort(key=lambda p: p.relative_to(image_dir).as_posix())
    return [Path(os.path.abspath(p)) for p in found]


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
