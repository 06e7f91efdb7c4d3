"""Write a stage's outputs so that nothing already written is ever lost.

- Whole files (json, text, images) are written to a temp file beside the target and moved over
  it with ``os.replace``: a reader sees the old file or the new one, never half of one, and a
  crash leaves at most a ``.<name>.*.tmp`` file, removed on any error we see. No fsync: the
  threat is a killed process, not a power cut, and fsync per file would slow the run.
- ``predictions.jsonl`` is only ever appended, one ``write`` call per line on an ``O_APPEND``
  descriptor (no user-space buffer to flush); a line cut short by an earlier crash is ended
  with a newline before the next line, so every later line still parses.
- ``viz/<md5(absolute image path)>/`` holds ``result_with_boxes.jpg``, ``result.mmd``,
  ``images/N.jpg`` crops (one per box; no ``images/`` when the output holds no box) and,
  written last as the sign the folder is complete, ``info.json``.
- ``viz/index.json`` and ``viz/index.md`` map each md5 folder back to its image, with links to
  the folder and its ``result_with_boxes.jpg`` thumbnail (:func:`write_viz_index`). They are
  built from the folders' ``info.json`` at the end of the session (and by ``python -m
  pytest_dsocr report``), so the folders of every xdist worker are in them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from pytest_dsocr.atomic import atomic_save_image, atomic_write_json, atomic_write_text, to_json_text
from pytest_dsocr.data.images import load_image
from pytest_dsocr.outputs.config import StageOutputConfig, validate_stage_output_config
from pytest_dsocr.outputs.markup import clean_text, parse_markup
from pytest_dsocr.outputs.render import crop_images, draw_boxes
from pytest_dsocr.records import ImageRun

PREDICTIONS_FILE = "predictions.jsonl"
RESULT_IMAGE = "result_with_boxes.jpg"
RESULT_MMD = "result.mmd"
INFO_JSON = "info.json"
CROPS_DIR = "images"
DEFAULT_THUMBNAIL_WIDTH = 480
INDEX_JSON = "index.json"
INDEX_MD = "index.md"


# --- predictions.jsonl -------------------------------------------------------------------


class PredictionWriter:
    """Appends one JSON line per image to ``path``; each line is on disk when ``write`` returns."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = None

    def write(self, record: dict[str, Any]) -> None:
        self._write_bytes((to_json_text(record, indent=None) + "\n").encode("utf-8"))

    def _write_bytes(self, data: bytes) -> None:
        if self._fd is None:
            self._open()
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        size = os.fstat(self._fd).st_size
        if size:
            with open(self.path, "rb") as handle:
                handle.seek(size - 1)
                cut_short = handle.read(1) != b"\n"
            if cut_short:
                self._write_bytes(b"\n")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def timings_of(run: ImageRun) -> dict[str, float]:
    """The stage timings of one run in ms; vision and its parts nest inside prefill."""
    return {
        "preprocess": run.preprocess_ms,
        "prefill": run.prefill_ms,
        "vision": run.vision_ms,
        **run.substage_ms,
        "decode": run.decode_ms,
        "ttft": run.ttft_ms,
    }


def prediction_record(run: ImageRun, strip_special_tokens: bool = False) -> dict[str, Any]:
    """One predictions.jsonl line for ``run``."""
    return {
        "sample_id": run.sample_id,
        "image_path": run.image_path,
        "epoch": run.epoch,
        "round": run.round,
        "text_raw": run.text_raw,
        "text_clean": clean_text(run.text_raw, strip_special_tokens),
        "tokens": run.tokens,
        "timings_ms": timings_of(run),
    }


# --- visualization ---------------------------------------------------------------------


def viz_dir_for(image_path: str | Path, viz_root: str | Path) -> Path:
    """``viz_root / md5(absolute image path)``: one folder per image, stable across runs."""
    absolute = os.path.abspath(os.fspath(image_path))
    return Path(viz_root) / hashlib.md5(os.fsencode(absolute)).hexdigest()


def postprocess_vendor_markup(
    text_raw: str,
    image_path: str | Path,
    out_dir: str | Path,
    strip_special_tokens: bool = False,
    thumbnail_width: int = DEFAULT_THUMBNAIL_WIDTH,
    timings_ms: dict[str, float] | None = None,
    image: Image.Image | None = None,
) -> dict[str, Any]:
    """Write the vendor-style outputs of one page into ``out_dir`` and return info.json's content.

    ``image`` is the page as the model saw it (loaded from ``image_path`` when not given); box
    coordinates in info.json are pixels of that page, ``{x, y, w, h}`` from the top-left.
    """
    out_dir = Path(out_dir)
    page = image if image is not None else load_image(image_path)
    parsed = parse_markup(text_raw, page.width, page.height)
    crops = []
    for number, crop in enumerate(crop_images(page, parsed.spans)):
        name = f"{CROPS_DIR}/{number}.jpg"
        atomic_save_image(out_dir / name, crop, format="JPEG")
        crops.append(name)
    atomic_save_image(out_dir / RESULT_IMAGE, draw_boxes(page, parsed.spans, thumbnail_width), format="JPEG")
    text_clean = clean_text(text_raw, strip_special_tokens, parsed)
    atomic_write_text(out_dir / RESULT_MMD, text_clean)
    info = {
        "source_image": os.path.abspath(os.fspath(image_path)),
        "result_image": RESULT_IMAGE,  # relative to this folder
        "image_size": {"width": page.width, "height": page.height},
        "text_raw": text_raw,
        "text_clean": text_clean,
        "boxes": [
            {"x": x1, "y": y1, "w": x2 - x1, "h": y2 - y1, "label": span.label, "text": span.text}
            for span in parsed.spans
            for x1, y1, x2, y2 in span.boxes
        ],
        "crops": crops,
        "timings_ms": dict(timings_ms or {}),
        "skipped_spans": parsed.skipped,
    }
    atomic_write_json(out_dir / INFO_JSON, info)
    return info


# --- one stage -------------------------------------------------------------------------


class StageOutputs:
    """Everything one stage writes per image: a predictions line and a visualization folder.

    Relative ``save_dir`` values resolve under ``stage_dir``; absolute ones are kept. At most
    ``max_images`` distinct images are visualized (None: all); the first run of an image is the
    one visualized (greedy decoding makes later rounds and epochs the same text), so repeated
    rounds and epochs cost nothing here. Predictions get one line per recorded run.
    """

    def __init__(self, stage_dir: str | Path, cfg: StageOutputConfig, key_prefix: str = "output",
                 prediction_writer: Callable[[Path], Any] | None = None):
        """``prediction_writer(path)`` makes the predictions.jsonl writer (default PredictionWriter;
        xdist workers pass one that appends under a file lock)."""
        validate_stage_output_config(cfg, key_prefix)
        self.stage_dir = Path(stage_dir)
        extra = cfg.extra.deepseek_ocr
        self.strip_special_tokens = bool(extra.prediction.strip_special_tokens)
        self.max_images = extra.visualization.max_images
        self.thumbnail_width = extra.visualization.thumbnail_width
        self.prediction_path = (
            self._resolve(cfg.prediction.save_dir) / PREDICTIONS_FILE if cfg.prediction.enable else None
        )
        self.viz_root = self._resolve(cfg.visualization.save_dir) if cfg.visualization.enable else None
        make_writer = prediction_writer or PredictionWriter
        self._predictions = make_writer(self.prediction_path) if self.prediction_path else None
        self._visualized: set[str] = set()

    def _resolve(self, save_dir: str) -> Path:
        path = Path(save_dir).expanduser()
        return path if path.is_absolute() else self.stage_dir / path

    def record(
        self, run: ImageRun, image: Image.Image | Callable[[], Image.Image] | None = None
    ) -> Path | None:
        """Write ``run``'s outputs; returns the visualization folder written now, if any.

        ``image`` is the page the model saw, or a function returning it, called only when a
        visualization is written (most records write none); None loads ``run.image_path``.
        """
        if self._predictions is not None:
            self._predictions.write(prediction_record(run, self.strip_special_tokens))
        if self.viz_root is None:
            return None
        key = os.path.abspath(run.image_path)
        if key in self._visualized:
            return None
        if self.max_images is not None and len(self._visualized) >= self.max_images:
            return None
        out_dir = viz_dir_for(run.image_path, self.viz_root)
        if callable(image):
            image = image()
        postprocess_vendor_markup(
            run.text_raw,
            run.image_path,
            out_dir,
            strip_special_tokens=self.strip_special_tokens,
            thumbnail_width=self.thumbnail_width,
            timings_ms=timings_of(run),
            image=image,
        )
        self._visualized.add(key)
        return out_dir

    def close(self) -> None:
        if self._predictions is not None:
            self._predictions.close()

    def __enter__(self) -> StageOutputs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the index of a visualization folder --------------------------------------------------


def _md_cell(text: Any) -> str:
    """Text safe inside a markdown table cell (one line, pipes escaped)."""
    return str(text).replace("\r", " ").replace("\n", " ").replace("|", "\\|")


def write_viz_index(viz_root: str | Path) -> list[dict[str, Any]]:
    """``index.json`` and ``index.md`` in ``viz_root``: each complete ``<md5>/`` folder (one with
    its ``info.json``), the image it shows, its box count and links; returns the entries.

    Nothing is written when ``viz_root`` holds no complete folder.
    """
    viz_root = Path(viz_root)
    entries: list[dict[str, Any]] = []
    folders = sorted(p for p in viz_root.iterdir() if p.is_dir()) if viz_root.is_dir() else []
    for folder in folders:
        try:
            info = json.loads((folder / INFO_JSON).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # not written yet, or cut short: info.json comes last
            continue
        entries.append({
            "folder": folder.name,
            "image": info.get("source_image"),
            "boxes": len(info.get("boxes") or ()),
            "result_image": f"{folder.name}/{info.get('result_image') or RESULT_IMAGE}",
            "info": f"{folder.name}/{INFO_JSON}",
        })
    if not entries:
        return entries
    entries.sort(key=lambda entry: str(entry["image"]))
    atomic_write_json(viz_root / INDEX_JSON, {
        "description": "one entry per visualization folder: <md5 of the absolute image path>/ -> image",
        "folders": entries,
    })
    lines = [
        "# Visualizations",
        "",
        "Each folder is named by the md5 of the absolute image path; the thumbnail is the page with its boxes.",
        "",
        "| Image | Folder | Boxes | Thumbnail |",
        "| --- | --- | ---: | --- |",
    ]
    lines += [f"| {_md_cell(entry['image'])} | [{entry['folder']}]({entry['folder']}/) | {entry['boxes']} "
              f"| [{RESULT_IMAGE}]({entry['result_image']}) |" for entry in entries]
    atomic_write_text(viz_root / INDEX_MD, "\n".join(lines) + "\n")
    return entries


def viz_roots(run_dir: str | Path, config: Mapping[str, Any]) -> list[Path]:
    """The visualization folder of every stage whose ``pipeline.<stage>.output`` enables one."""
    roots = []
    for stage, stage_cfg in (config.get("pipeline") or {}).items():
        visualization = ((stage_cfg or {}).get("output") or {}).get("visualization") or {}
        if visualization.get("enable"):
            save_dir = Path(str(visualization.get("save_dir") or "viz")).expanduser()
            roots.append(save_dir if save_dir.is_absolute() else Path(run_dir) / stage / save_dir)
    return roots


def write_viz_indexes(run_dir: str | Path, config: Mapping[str, Any]) -> list[Path]:
    """The index of every stage's visualization folder that holds any; returns the folders indexed."""
    return [root for root in viz_roots(run_dir, config) if write_viz_index(root)]
