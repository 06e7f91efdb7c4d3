"""Deterministic document-like sample pages: the embedded default dataset (``samples``).

Each page has a title, paragraphs, a ruled table, a figure with a caption and a page number,
drawn with Pillow's built-in font so that it works offline. The sizes are chosen so the
vendor's default crop grids (base 1024, crops of 640, 2..9 tiles by closest aspect ratio)
differ from page to page, including one page small enough (<= 640 px) to get no crops.

The drawing records every block it draws (label, pixel box, text), so each page comes with its
ground truth: what DeepSeek-OCR should answer to the grounding prompt, in the vendor's markup
(:mod:`pytest_dsocr.data.groundtruth`), written beside the PNG as ``page_NNN.mmd``.

The PNGs and ``.mmd`` files ship inside the package (``pytest_dsocr/data/pages/``); regenerate
them with

    python -m pytest_dsocr.data.pages [OUT_DIR]

Text and layout are fixed by a seed per page; pixels also depend on the Pillow version (its
default font and antialiasing), which is recorded in each PNG's ``Software`` text chunk.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path

import PIL
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from pytest_dsocr.data import groundtruth
from pytest_dsocr.data.groundtruth import Block

PAGES_DIR = Path(__file__).resolve().parent / "pages"
SOFTWARE_TAG = f"pytest-dsocr pages.py (Pillow {PIL.__version__})"
INK = 20  # near-black text on white paper, grey for rules and figure fills
RULE = 90
FILL = 185
PAPER = 255

WORDS = (
    "the model reads each page as a grid of visual tokens and writes markdown with layout "
    "boxes so that a profiler can measure where time goes between the vision encoder the "
    "projector and the decoder while the cache grows with every generated token results "
    "depend on resolution crop grid prompt length batch size memory bandwidth and kernel "
    "efficiency measured across epochs rounds and devices under controlled conditions"
).split()
TITLES = (
    "Quarterly Throughput Report",
    "Inference Latency Study",
    "Receipt No. 4711",
    "Layout Analysis Notes",
    "Short Memo",
    "Results at a Glance",
)


@dataclass(frozen=True)
class PageSpec:
    """One bundled page: its file stem, size in pixels and layout kind."""

    name: str
    width: int
    height: int
    kind: str  # portrait | landscape | receipt | square | small | slide
    # default crop grid (w x h tiles) the vendor picks for this size, for readers and tests
    crop_grid: tuple[int, int]


PAGE_SPECS = (
    PageSpec("page_001", 900, 1273, "portrait", (2, 3)),  # A4-like, 1 : sqrt(2)
    PageSpec("page_002", 1280, 905, "landscape", (3, 2)),
    PageSpec("page_003", 480, 1300, "receipt", (1, 3)),
    PageSpec("page_004", 1000, 1000, "square", (2, 2)),
    PageSpec("page_005", 512, 640, "small", (1, 1)),  # <= 640 on both sides: global view only
    PageSpec("page_006", 1300, 731, "slide", (2, 1)),  # 16 : 9
)


@dataclass(frozen=True)
class DrawnPage:
    """A rendered page and the blocks drawn on it, in reading order."""

    image: Image.Image
    blocks: tuple[Block, ...]

    @property
    def markup(self) -> str:
        """The page's ground truth in the vendor's grounding markup."""
        return groundtruth.page_markup(list(self.blocks), self.image.width, self.image.height)


def bundled_pages() -> list[Path]:
    """The shipped page PNGs, sorted by name."""
    return sorted(PAGES_DIR.glob("page_*.png"))


def load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at ``size`` px where Pillow supports sizes, else its bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or built without FreeType
        return ImageFont.load_default()


class _Flow:
    """Places blocks top to bottom inside the page margins."""

    def __init__(self, draw: ImageDraw.ImageDraw, spec: PageSpec, rng: random.Random):
        self.draw = draw
        self.rng = rng
        self.margin = max(24, spec.width // 14)
        self.left = self.margin
        self.right = spec.width - self.margin
        self.top = self.margin
        self.bottom = spec.height - self.margin - 24  # keep room for the page number
        self.y = self.top
        self.unit = max(11, min(spec.width, spec.height) // 55)  # body font size
        self.body = load_font(self.unit)
        self.gap = self.unit
        self.blocks: list[Block] = []  # what was drawn, for the ground truth

    @property
    def width(self) -> int:
        return self.right - self.left

    def fits(self, height: int) -> bool:
        return self.y + height <= self.bottom

    def heading(self, text: str, scale: float, label: str = groundtruth.SUB_TITLE) -> None:
        font = load_font(int(self.unit * scale))
        box = self.draw.textbbox((self.left, self.y), text, font=font)
        self.draw.text((self.left, self.y), text, font=font, fill=INK)
        self.blocks.append(Block(label, box, groundtruth.heading(label, text)))
        self.y = box[3] + self.gap

    def paragraph(self, words: int) -> None:
        lines = self._wrap([self.rng.choice(WORDS) for _ in range(words)])
        line_height = int(self.unit * 1.4)
        if not self.fits(line_height):
            return
        drawn, boxes = [], []
        for line in lines:
            if not self.fits(line_height):
                break
            self.draw.text((self.left, self.y), line, font=self.body, fill=INK)
            boxes.append(self.draw.textbbox((self.left, self.y), line, font=self.body))
            drawn.append(line)
            self.y += line_height
        # The vendor writes a wrapped paragraph as one line; lines cut off by the page are not read.
        self.blocks.append(Block(groundtruth.TEXT, _union(boxes), " ".join(drawn)))
        self.y += self.gap

    def _wrap(self, words: list[str]) -> list[str]:
        words[0] = words[0].capitalize()
        lines, line = [], ""
        for word in words:
            candidate = f"{line} {word}".strip()
            if self.draw.textlength(candidate, font=self.body) > self.width and line:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line + ".")
        return lines

    def table(self, rows: int, cols: int) -> None:
        row_height = int(self.unit * 1.8)
        rows = min(rows, max(0, (self.bottom - self.y) // row_height - 1))
        if rows < 2:
            return
        col_width = self.width // cols
        x0, y0 = self.left, self.y
        x1, y1 = x0 + col_width * cols, y0 + row_height * rows
        self.draw.rectangle([x0, y0, x1, y0 + row_height], fill=230)  # header shading
        for r in range(rows + 1):
            y = y0 + r * row_height
            self.draw.line([x0, y, x1, y], fill=RULE, width=2 if r in (0, 1, rows) else 1)
        for c in range(cols + 1):
            x = x0 + c * col_width
            self.draw.line([x, y0, x, y1], fill=RULE, width=1)
        pad = max(3, self.unit // 3)
        cells: list[list[str]] = []
        for r in range(rows):
            cells.append([])
            for c in range(cols):
                if r == 0:
                    text = "Item" if c == 0 else f"Col {c}"
                elif c == 0:
                    text = self.rng.choice(WORDS).capitalize()
                else:
                    text = f"{self.rng.uniform(0, 999):.1f}"
                self.draw.text((x0 + c * col_width + pad, y0 + r * row_height + pad), text,
                               font=self.body, fill=INK)
                cells[-1].append(text)
        self.blocks.append(Block(groundtruth.TABLE, (x0, y0, x1, y1), groundtruth.html_table(cells)))
        self.y = y1 + self.gap
        caption = f"Table {self.rng.randint(1, 9)}: {' '.join(self.rng.sample(WORDS, 4))}."
        self.caption(caption, groundtruth.TABLE_CAPTION, caption)

    def figure(self, height_fraction: float, number: int) -> None:
        height = int((self.bottom - self.top) * height_fraction)
        if not self.fits(height + 2 * self.gap):
            return
        x0, y0, x1, y1 = self.left, self.y, self.right, self.y + height
        self.draw.rectangle([x0, y0, x1, y1], outline=RULE, width=2)
        bars = 6
        slot = (x1 - x0) // (bars + 1)
        for i in range(bars):
            bar_height = int((y1 - y0 - 2 * self.gap) * self.rng.uniform(0.2, 0.9))
            bx = x0 + slot // 2 + i * slot + slot // 4
            self.draw.rectangle([bx, y1 - self.gap - bar_height, bx + slot // 2, y1 - self.gap],
                                fill=FILL, outline=RULE)
        self.blocks.append(Block(groundtruth.IMAGE, (x0, y0, x1, y1), ""))
        self.y = y1 + self.gap // 2
        caption = f"Figure {number}: {' '.join(self.rng.sample(WORDS, 5))}."
        self.caption(caption, groundtruth.IMAGE_CAPTION, groundtruth.centered(caption))

    def caption(self, text: str, label: str, content: str) -> None:
        font = load_font(max(9, int(self.unit * 0.85)))
        self.draw.text((self.left, self.y), text, font=font, fill=RULE - 40)
        self.blocks.append(Block(label, self.draw.textbbox((self.left, self.y), text, font=font), content))
        self.y += int(self.unit * 1.3) + self.gap


def _union(boxes: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def render_page(spec: PageSpec, number: int) -> Image.Image:
    """Draw one page; the same spec and number always give the same page."""
    return draw_page(spec, number).image


def draw_page(spec: PageSpec, number: int) -> DrawnPage:
    """Draw one page and record its blocks (the page number, page furniture, is not a block)."""
    image = Image.new("L", (spec.width, spec.height), PAPER)
    draw = ImageDraw.Draw(image)
    flow = _Flow(draw, spec, random.Random(number))
    flow.heading(TITLES[(number - 1) % len(TITLES)], 2.0, groundtruth.TITLE)
    if spec.kind == "receipt":
        flow.paragraph(12)
        flow.table(rows=14, cols=2)
        flow.heading("Total", 1.3)
        flow.paragraph(20)
    elif spec.kind == "small":
        flow.paragraph(30)
        flow.table(rows=4, cols=3)
        flow.figure(0.18, number)
    elif spec.kind == "slide":
        flow.heading("Key findings", 1.3)
        flow.paragraph(40)
        flow.table(rows=4, cols=5)
        flow.figure(0.3, number)
    else:
        flow.paragraph(70)
        flow.heading("1. Method", 1.3)
        flow.paragraph(50)
        flow.table(rows=6, cols=4)
        flow.figure(0.22, number)
        flow.heading("2. Discussion", 1.3)
        flow.paragraph(90)
    footer = load_font(max(9, flow.unit - 2))
    label = f"- {number} -"
    width = draw.textlength(label, font=footer)
    draw.text(((spec.width - width) / 2, spec.height - flow.margin // 2 - flow.unit), label,
              font=footer, fill=INK)
    return DrawnPage(image, tuple(flow.blocks))


def drawn_pages() -> list[DrawnPage]:
    """Every page of PAGE_SPECS with its blocks, in order."""
    return [draw_page(spec, number) for number, spec in enumerate(PAGE_SPECS, start=1)]


def write_pages(out_dir: Path) -> list[Path]:
    """Render every page of PAGE_SPECS into ``out_dir`` as small greyscale PNGs, each with its
    ground truth beside it (``.mmd``, UTF-8, the vendor's grounding markup)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    info.add_text("Software", SOFTWARE_TAG)
    paths = []
    for spec, page in zip(PAGE_SPECS, drawn_pages()):
        path = out_dir / f"{spec.name}.png"
        page.image.save(path, format="PNG", optimize=True, pnginfo=info)
        groundtruth.truth_path(path).write_text(page.markup, encoding="utf-8")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or (args and args[0] in ("-h", "--help")):
        print("usage: python -m pytest_dsocr.data.pages [OUT_DIR]", file=sys.stderr)
        return 2
    out_dir = Path(args[0]) if args else PAGES_DIR
    for path in write_pages(out_dir):
        print(path)
        print(groundtruth.truth_path(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
