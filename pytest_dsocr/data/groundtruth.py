"""Ground truth of a page as DeepSeek-OCR would write it, and where a dataset keeps it.

The model answers the grounding prompt (``<|grounding|>Convert the document to markdown.``) with
one span per layout block, in reading order::

    <|ref|>LABEL<|/ref|><|det|>[[x1, y1, x2, y2]]<|/det|>
    CONTENT

blocks separated by a blank line. Facts read from the vendor's published outputs and code:

- labels: ``title`` (content ``# ...``), ``sub_title`` (``## ...``), ``text`` (the paragraph as one
  line), ``table`` (HTML ``<table><tr><td>..</td></tr></table>``), ``table_caption`` (plain
  text), ``image`` (no content: the caption's span follows on the next line) and
  ``image_caption`` (wrapped in ``<center>..</center>``). Page furniture such as the page number
  is not transcribed (OmniDocBench, which the vendor reports on, ignores it as well).
- boxes: integers on a 0..999 grid per axis; the vendor's readers scale them back with
  ``int(v / 999 * side)`` (see :mod:`pytest_dsocr.outputs.markup`). The vendor publishes no
  encoder, so we use the nearest grid point, ``floor(p / side * 999 + 0.5)``: decoding that gives
  back the pixel within one grid cell (``side / 999`` px).
- the vendor's real outputs often carry a trailing space before the blank line; ours do not
  (nothing reads it, and a stray space would only cost tokens).

:func:`bundled_truth` reads the ``.mmd`` files shipped beside the bundled pages (written by
``python -m pytest_dsocr.data.pages``); :func:`omnidocbench_truth` converts an OmniDocBench
annotation file into the same comparable form, :class:`PageTruth`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from pytest_dsocr.errors import DsocrError
from pytest_dsocr.outputs.markup import GRID_MAX, parse_markup

TRUTH_SUFFIX = ".mmd"  # ground truth beside each bundled page: page_001.png -> page_001.mmd
BLOCK_SEPARATOR = "\n\n"
# Labels as DeepSeek-OCR writes them.
TITLE, SUB_TITLE, TEXT = "title", "sub_title", "text"
TABLE, TABLE_CAPTION, IMAGE, IMAGE_CAPTION = "table", "table_caption", "image", "image_caption"
HEADING_PREFIX = {TITLE: "# ", SUB_TITLE: "## "}
OMNIDOCBENCH_JSON = "OmniDocBench.json"
# OmniDocBench category_type -> the label DeepSeek-OCR writes for such a block. Categories not
# listed (header, footer, page_number, page_footnote, abandon, the span-level ones) are page
# furniture or parts of blocks: OmniDocBench's end-to-end text score leaves them out too.
OMNIDOCBENCH_LABELS = {
    "title": TITLE,
    "text_block": TEXT,
    "reference": TEXT,
    "code_txt": TEXT,
    "figure": IMAGE,
    "figure_caption": IMAGE_CAPTION,
    "figure_footnote": "image_footnote",
    "table": TABLE,
    "table_caption": TABLE_CAPTION,
    "table_footnote": "table_footnote",
    "equation_isolated": "equation",
    "equation_caption": "equation_caption",
    "code_txt_caption": "text",
}
POLY_POINTS = 8  # OmniDocBench polygons: x1, y1, ..., x4, y4 (four corners)

Box = tuple[int, int, int, int]  # x1, y1, x2, y2


@dataclass(frozen=True)
class Block:
    """One drawn block: its label, pixel box (x1, y1, x2, y2) and content as the vendor writes it."""

    label: str
    box: Box
    content: str


@dataclass(frozen=True)
class TruthBlock:
    """One block of a page's ground truth, in pixels of that page."""

    label: str
    box: Box
    text: str


@dataclass(frozen=True)
class PageTruth:
    """What a page should read as: its blocks in reading order (``markup`` when known)."""

    image_name: str
    width: int
    height: int
    blocks: tuple[TruthBlock, ...]
    markup: str | None = None  # the raw grounding markup, for the bundled pages


def to_grid(value: float, side: int) -> int:
    """A pixel coordinate on the 0..999 grid: the nearest grid point, clamped to the grid."""
    return min(GRID_MAX, max(0, math.floor(value / side * GRID_MAX + 0.5)))


def grid_box(box: Box, width: int, height: int) -> Box:
    """A pixel box on the 0..999 grid."""
    x1, y1, x2, y2 = box
    return (to_grid(x1, width), to_grid(y1, height), to_grid(x2, width), to_grid(y2, height))


def heading(label: str, text: str) -> str:
    """A heading's content: markdown ``#`` for the title, ``##`` for a sub-title."""
    return HEADING_PREFIX[label] + text


def html_table(rows: list[list[str]]) -> str:
    """A table as the vendor writes it: one line of HTML, no header markup."""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table>{body}</table>"


def centered(text: str) -> str:
    """An image caption as the vendor writes it."""
    return f"<center>{text}</center>"


def page_markup(blocks: list[Block], width: int, height: int) -> str:
    """The grounding markup of a page: one span per block in order, blocks separated by a blank line.

    A block without content (an image) is followed directly by the next span on the next line,
    as the vendor writes an image and its caption.
    """
    pieces: list[str] = []
    for index, block in enumerate(blocks):
        x1, y1, x2, y2 = grid_box(block.box, width, height)
        pieces.append(f"<|ref|>{block.label}<|/ref|><|det|>[[{x1}, {y1}, {x2}, {y2}]]<|/det|>\n{block.content}")
        if index + 1 < len(blocks) and block.content:
            pieces.append(BLOCK_SEPARATOR)
    return "".join(pieces)


def truth_from_markup(markup: str, width: int, height: int, image_name: str = "") -> PageTruth:
    """The comparable form of grounding markup: each span's label, first box in pixels, text."""
    parsed = parse_markup(markup, width, height)
    blocks = tuple(TruthBlock(span.label, box, span.text) for span in parsed.spans for box in span.boxes[:1])
    return PageTruth(image_name, width, height, blocks, markup)


# ---------------------------------------------------------------------------------------
# Lookup
# ---------------------------------------------------------------------------------------


def truth_path(image_path: str | Path) -> Path:
    """Where a bundled page keeps its ground truth: the same stem with ``.mmd``."""
    return Path(image_path).with_suffix(TRUTH_SUFFIX)


def read_truth_markup(image_path: str | Path) -> str:
    """The ground-truth markup of a page that has a ``.mmd`` beside it; DsocrError naming the file."""
    path = truth_path(image_path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DsocrError(f"no ground truth for {image_path}: {path} is missing "
                         "(regenerate with python -m pytest_dsocr.data.pages)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DsocrError(f"cannot read the ground truth {path} ({exc})") from exc


def bundled_truth() -> dict[str, PageTruth]:
    """Ground truth of every bundled page, keyed by image file name."""
    from pytest_dsocr.data.pages import PAGE_SPECS, PAGES_DIR

    truths = {}
    for spec in PAGE_SPECS:
        image = PAGES_DIR / f"{spec.name}.png"
        truths[image.name] = truth_from_markup(read_truth_markup(image), spec.width, spec.height, image.name)
    return truths


def truth_for_dataset(cfg, base_dir: Path | None = None) -> dict[Path, PageTruth]:
    """Ground truth of a dataset's pages, keyed by absolute image path (the paths
    :func:`~pytest_dsocr.data.datasets.discover_images` gives); pages without one are absent.

    - ``samples``: the ``.mmd`` beside every bundled page (all of them have one);
    - ``omnidocbench``: ``dataset.root/OmniDocBench.json`` when it is there (else nothing);
    - ``folder``: a ``.mmd`` beside an image (``scan.png`` -> ``scan.mmd``) when there is one.
    """
    from pytest_dsocr.data.datasets import OMNIDOCBENCH_IMAGES, discover_images

    images = discover_images(cfg, base_dir)
    if cfg.name == "omnidocbench":
        root = _omnidocbench_root(images[0], OMNIDOCBENCH_IMAGES)
        if not (root / OMNIDOCBENCH_JSON).is_file():
            return {}
        by_name = omnidocbench_truth(root)
        return {image: by_name[image.name] for image in images if image.name in by_name}
    truths = {}
    for image in images:
        if truth_path(image).is_file():
            truths[image] = _truth_beside(image)
    return truths


def _omnidocbench_root(image: Path, images_dir: str) -> Path:
    """The benchmark root above an image under its ``images/`` folder."""
    for parent in image.parents:
        if parent.name == images_dir:
            return parent.parent
    return image.parent


def _truth_beside(image: Path) -> PageTruth:
    from PIL import Image

    try:
        with Image.open(image) as handle:
            width, height = handle.size
    except (OSError, ValueError) as exc:
        raise DsocrError(f"cannot read the size of {image} for its ground truth ({exc})") from exc
    return truth_from_markup(read_truth_markup(image), width, height, image.name)


def omnidocbench_truth(root: str | Path) -> dict[str, PageTruth]:
    """Ground truth of an OmniDocBench copy (``root/OmniDocBench.json``), keyed by image file name.

    Each page's ``layout_dets`` become blocks in their annotated ``order``: ``poly`` (four
    corners) becomes its bounding box, ``category_type`` the vendor's label
    (:data:`OMNIDOCBENCH_LABELS`), ``text`` (``html`` for tables, ``latex`` for equations) the
    text. Ignored entries and page furniture are left out.
    """
    path = Path(root) / OMNIDOCBENCH_JSON
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DsocrError(f"dataset.root: {path} is missing; OmniDocBench ground truth lives there") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DsocrError(f"dataset.root: cannot read {path} ({exc})") from exc
    if not isinstance(entries, list):
        raise DsocrError(f"dataset.root: {path} is not a list of pages")
    truths = {}
    for number, entry in enumerate(entries):
        page = _omnidocbench_page(entry, f"{path} entry {number}")
        truths[page.image_name] = page
    return truths


def _omnidocbench_page(entry: object, where: str) -> PageTruth:
    info = entry.get("page_info") if isinstance(entry, dict) else None
    if not isinstance(info, dict) or not isinstance(info.get("image_path"), str):
        raise DsocrError(f"{where}: no page_info.image_path")
    try:
        width, height = int(info["width"]), int(info["height"])
    except (KeyError, TypeError, ValueError):
        raise DsocrError(f"{where}: page_info needs integer width and height") from None
    dets = entry.get("layout_dets") or []
    if not isinstance(dets, list):
        raise DsocrError(f"{where}: layout_dets is not a list")
    kept = []
    for index, det in enumerate(dets):
        if not isinstance(det, dict):
            raise DsocrError(f"{where}: layout_dets[{index}] is not an object")
        label = OMNIDOCBENCH_LABELS.get(det.get("category_type"))
        if label is None or det.get("ignore"):
            continue
        kept.append((det.get("order") if isinstance(det.get("order"), (int, float)) else math.inf, index,
                     TruthBlock(label, _poly_box(det.get("poly"), f"{where} layout_dets[{index}]"),
                                _omnidocbench_text(det))))
    kept.sort(key=lambda item: (item[0], item[1]))
    return PageTruth(Path(info["image_path"]).name, width, height, tuple(block for _, _, block in kept))


def _poly_box(poly: object, where: str) -> Box:
    if (not isinstance(poly, list) or len(poly) != POLY_POINTS
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in poly)):
        raise DsocrError(f"{where}: poly must be {POLY_POINTS} numbers (four corners)")
    xs, ys = poly[0::2], poly[1::2]
    return (int(min(xs)), int(min(ys)), int(max(xs)), int(max(ys)))


def _omnidocbench_text(det: dict) -> str:
    category = det.get("category_type")
    if category == "table":
        return str(det.get("html") or det.get("text") or "")
    if category == "equation_isolated":
        return str(det.get("latex") or det.get("text") or "")
    return str(det.get("text") or "")

