"""Draw parsed boxes on a page and cut out its image crops, in the vendor's visual style.

Differences from the vendor's ``draw_bounding_boxes``, and why:
- colours come from the label (same label, same colour, every run) instead of ``np.random``;
- the page is first shrunk to ``thumbnail_width`` and the boxes drawn at that scale, so labels
  stay readable in the small JPEG (drawing first and shrinking after blurs them away);
- crops are cut from the full-resolution page for labels in ``IMAGE_LABELS`` only (the vendor's
  ``image``): result.mmd links exactly those files, and cropping every text box would write
  hundreds of files per page that nothing reads. A crop is at least one pixel wide and high.
"""

from __future__ import annotations

import zlib

from PIL import Image, ImageDraw

from pytest_dsocr.data.pages import load_font
from pytest_dsocr.outputs.markup import Span

# Vendor style: 4 px outline for titles, 2 px otherwise, a translucent fill (alpha 20 of 255),
# the label above the box's top-left corner on a light background.
TITLE_LABELS = frozenset({"title"})
TITLE_LINE_WIDTH = 4
LINE_WIDTH = 2
FILL_ALPHA = 20
LABEL_FONT_PX = 12
LABEL_BACKGROUND = (255, 255, 255)
# Distinct colours with every channel <= 200, so boxes stay visible on white paper.
PALETTE = (
    (200, 30, 30), (30, 120, 200), (20, 150, 60), (170, 60, 190), (200, 120, 0),
    (0, 150, 150), (120, 80, 30), (200, 40, 130), (80, 80, 200), (100, 140, 0),
)


def label_colour(label: str) -> tuple[int, int, int]:
    """A stable colour for ``label`` (crc32, not Python's per-process string hash)."""
    return PALETTE[zlib.crc32(label.encode("utf-8")) % len(PALETTE)]


def fit_width(image: Image.Image, max_width: int) -> Image.Image:
    """``image`` shrunk to ``max_width`` keeping its aspect ratio, or unchanged if not wider."""
    if image.width <= max_width:
        return image
    height = max(1, round(image.height * max_width / image.width))
    return image.resize((max_width, height), Image.Resampling.LANCZOS)


def draw_boxes(page: Image.Image, spans: tuple[Span, ...] | list[Span], thumbnail_width: int) -> Image.Image:
    """A new RGB image: ``page`` fitted to ``thumbnail_width`` with every span's boxes and label."""
    canvas = fit_width(page.convert("RGB"), thumbnail_width).copy()
    scale = canvas.width / page.width
    overlay = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    fills = ImageDraw.Draw(overlay)
    draw = ImageDraw.Draw(canvas)
    font = load_font(LABEL_FONT_PX)
    labels = []
    for span in spans:
        colour = label_colour(span.label)
        width = TITLE_LINE_WIDTH if span.label in TITLE_LABELS else LINE_WIDTH
        for box in span.boxes:
            x1, y1, x2, y2 = (round(v * scale) for v in box)
            fills.rectangle([x1, y1, x2, y2], fill=colour + (FILL_ALPHA,))
            draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
            labels.append((x1, y1, span.label, colour))
    canvas.paste(overlay, (0, 0), overlay)
    for x1, y1, label, colour in labels:  # labels last, so no box is drawn over one
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        y = max(0, y1 - (bottom - top) - 3)
        draw.rectangle([x1, y, x1 + right - left + 2, y + bottom - top + 2], fill=LABEL_BACKGROUND)
        draw.text((x1 + 1 - left, y + 1 - top), label, font=font, fill=colour)
    return canvas


def crop_images(page: Image.Image, spans: tuple[Span, ...] | list[Span]) -> list[Image.Image]:
    """Full-resolution crops of every box of every image span, numbered as result.mmd links them."""
    crops = []
    width, height = page.size
    for span in spans:
        if not span.is_image:
            continue
        for x1, y1, x2, y2 in span.boxes:
            x1, y1 = min(x1, width - 1), min(y1, height - 1)
            x2, y2 = min(max(x2, x1 + 1), width), min(max(y2, y1 + 1), height)
            crops.append(page.crop((x1, y1, x2, y2)).convert("RGB"))
    return crops
