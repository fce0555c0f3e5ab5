"""Pictures of labels: any labels frame drawn over its image, and contact sheets of many.

Works on any frame in the label-store schema (``relabel.labels.LABELS_SCHEMA``), whoever made
the labels: boxes, quads and polygons are drawn in one colour per task with their category,
text or phrase; image-level texts (captions, alt-text) are written in a band under the image.
"""

from __future__ import annotations

import textwrap
from functools import lru_cache
from pathlib import Path

import matplotlib
import polars as pl
from PIL import Image, ImageDraw, ImageFont

TASK_COLOURS: dict[str, tuple[int, int, int]] = {
    "object": (230, 40, 40),
    "region_caption": (255, 140, 0),
    "ocr": (0, 150, 255),
    "phrase_grounding": (40, 190, 60),
    "brief_caption": (20, 20, 20),
    "detailed_caption": (60, 60, 140),
    "more_detailed_caption": (90, 40, 120),
    "alt_text": (120, 90, 40),
}
_OTHER_COLOUR = (200, 0, 200)
_FILL_ALPHA = 40
_TAG_CHARS = 32  # longer tags are cut with an ellipsis
_FOOTER_LINES = 6


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont:
    # matplotlib's bundled DejaVu Sans, so pictures look the same on every machine
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return ImageFont.truetype(str(path), size)


def _points(flat: list[float]) -> list[tuple[float, float]]:
    return list(zip(flat[0::2], flat[1::2], strict=False))


def _tag_text(row: dict) -> str:
    text = row.get("text") or row.get("category") or ""
    if row.get("phrase_start") is not None and row.get("phrase_end") is not None:
        text = text[row["phrase_start"] : row["phrase_end"]]
    elif row.get("task") == "object" and row.get("category"):
        text = row["category"]
    if row.get("score") is not None and row["score"] < 1:
        text = f"{text} {row['score']:.2f}"
    return text if len(text) <= _TAG_CHARS else text[: _TAG_CHARS - 1] + "…"


def draw_labels(image: Image.Image, labels: pl.DataFrame) -> Image.Image:
    """A copy of ``image`` with every label of ``labels`` drawn on it.

    Regions (``box``, ``quad``, ``polygon``) get an outline (polygons also a light fill) and a
    tag with their category, text or grounded phrase (and score when below 1), coloured by
    task (``TASK_COLOURS``). Rows without a region (captions, alt-text) are written as
    ``task: text`` lines in a band added under the image, so the result may be taller than
    the input. ``labels`` should hold the rows of this image only.
    """
    base = image.convert("RGB")
    width, height = base.size
    font = _font(max(9, min(width, height) // 26))
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    shapes = ImageDraw.Draw(overlay)
    tags = []
    texts = []
    for row in labels.iter_rows(named=True):
        task = str(row.get("task"))
        colour = TASK_COLOURS.get(task, _OTHER_COLOUR)
        box, quad, polygon = row.get("box"), row.get("quad"), row.get("polygon")
        if box is None and quad is None and not polygon:
            if row.get("text"):
                texts.append((colour, f"{task}: {row['text']}"))
            continue
        for ring in polygon or []:
            if len(ring) >= 6:
                shapes.polygon(_points(ring), fill=(*colour, _FILL_ALPHA), outline=(*colour, 255))
        if quad is not None:
            shapes.polygon(_points(list(quad)), outline=(*colour, 255), width=2)
        elif box is not None:
            shapes.rectangle(list(box), outline=(*colour, 255), width=2)
        anchor = (box[0], box[1]) if box is not None else min(_points(list(quad or polygon[0])))
        tags.append((colour, anchor, _tag_text(row)))
    drawn = Image.alpha_composite(base.convert("RGBA"), overlay)
    draw = ImageDraw.Draw(drawn)
    for colour, (x, y), text in tags:
        if not text:
            continue
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tag_height = bottom - top + 2
        x = min(max(0.0, x), max(0.0, width - (right - left) - 2))
        y = y - tag_height if y >= tag_height else y
        draw.rectangle([x, y, x + right - left + 2, y + tag_height], fill=(*colour, 220))
        draw.text((x + 1 - left, y + 1 - top), text, font=font, fill=(255, 255, 255, 255))
    result = drawn.convert("RGB")
    return _with_footer(result, texts, font) if texts else result


def _with_footer(
    image: Image.Image, texts: list[tuple[tuple[int, int, int], str]], font: ImageFont.FreeTypeFont
) -> Image.Image:
    width = image.width
    char_width = max(1.0, font.getlength("abcdefghijklmnopqrstuvwxyz") / 26)
    lines: list[tuple[tuple[int, int, int], str]] = []
    for colour, text in texts:
        for line in textwrap.wrap(text, width=max(10, int((width - 6) / char_width))):
            lines.append((colour, line))
    if len(lines) > _FOOTER_LINES:
        lines = [
            *lines[: _FOOTER_LINES - 1],
            (lines[_FOOTER_LINES - 1][0], lines[_FOOTER_LINES - 1][1] + " …"),
        ]
    line_height = round(font.size * 1.3)
    footer = Image.new("RGB", (width, image.height + line_height * len(lines) + 6), (255, 255, 255))
    footer.paste(image, (0, 0))
    draw = ImageDraw.Draw(footer)
    for number, (colour, line) in enumerate(lines):
        draw.text((3, image.height + 3 + number * line_height), line, font=font, fill=colour)
    return footer


def contact_sheet(images: list[Image.Image], columns: int = 4) -> Image.Image:
    """The images in a grid, ``columns`` wide, each in a cell as large as the largest one."""
    if not images:
        raise ValueError("a contact sheet needs at least one image")
    gap = 4
    cell_width = max(image.width for image in images)
    cell_height = max(image.height for image in images)
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    sheet = Image.new(
        "RGB",
        (columns * (cell_width + gap) + gap, rows * (cell_height + gap) + gap),
        (235, 235, 235),
    )
    for number, image in enumerate(images):
        row, column = divmod(number, columns)
        sheet.paste(
            image.convert("RGB"),
            (gap + column * (cell_width + gap), gap + row * (cell_height + gap)),
        )
    return sheet
