"""Signs: a plate with one or two lines of text, turned by a few degrees.

Each line of text is one OCR region; its quad is the tight box of its ink, turned with the
plate, so quads are not axis-aligned. Fonts are matplotlib's bundled TTF files.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from relabel.world.geometry import bounds, rotate_points
from relabel.world.ontology import COLOURS, FONT_BY_NAME, FONTS, PLATE_STYLES, SIGN_TEXTS
from relabel.world.pictograms import shade

_MIN_FONT_SIZE = 9
_MAX_ANGLE = 30.0
_MIN_ANGLE = 4.0  # every sign is visibly turned, so no quad is axis-aligned


@dataclass(frozen=True)
class TextLine:
    """One line written on a sign: what it says, its font, and its quad in image pixels
    (corners top-left, top-right, bottom-right, bottom-left in reading order)."""

    text: str
    font: str
    font_size: int
    quad: tuple[float, ...]

    @property
    def box(self) -> tuple[float, float, float, float]:
        """The axis-aligned bounds of the quad."""
        return bounds(list(zip(self.quad[0::2], self.quad[1::2], strict=True)))


@dataclass(frozen=True)
class Sign:
    """A plate carrying text: its style (sign, banner, label), colours, turn and corners."""

    index: int
    style: str
    colour: str
    ink: str
    angle: float
    quad: tuple[float, ...]
    lines: tuple[TextLine, ...]

    def to_json(self) -> dict[str, object]:
        """The sign as written to ``scenes.jsonl`` (its lines appear under ``texts``)."""
        return {
            "index": self.index,
            "style": self.style,
            "colour": self.colour,
            "ink": self.ink,
            "angle": self.angle,
            "quad": list(self.quad),
        }


@dataclass(frozen=True)
class SignDrawing:
    """A rendered sign before placement: its RGBA layer, mask and corners in layer pixels."""

    layer: Image.Image
    mask: np.ndarray
    style: str
    colour: str
    ink: str
    angle: float
    plate_corners: list[tuple[float, float]]
    line_corners: list[list[tuple[float, float]]]
    texts: list[str]
    font: str
    font_size: int

    def placed(self, index: int, left: int, top: int) -> Sign:
        """The sign with its layer's top-left corner at (left, top) of the image."""

        def shifted(corners: list[tuple[float, float]]) -> tuple[float, ...]:
            return tuple(round(value, 2) for x, y in corners for value in (x + left, y + top))

        lines = tuple(
            TextLine(text, self.font, self.font_size, shifted(corners))
            for text, corners in zip(self.texts, self.line_corners, strict=True)
        )
        return Sign(index, self.style, self.colour, self.ink, self.angle, shifted(self.plate_corners), lines)


@lru_cache(maxsize=64)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONT_BY_NAME[name].path), size)


def draw_sign(rng: np.random.Generator, background: str, width: int, height: int) -> SignDrawing | None:
    """A random sign suited to the background that fits in a ``width`` x ``height`` image,
    or None when even the smallest font would not fit."""
    style = str(rng.choice(list(PLATE_STYLES)))
    colour = str(rng.choice(PLATE_STYLES[style]["plates"]))
    ink = PLATE_STYLES[style]["ink"]
    font = FONTS[int(rng.integers(len(FONTS)))].name
    vocabulary = SIGN_TEXTS[background]
    count = 2 if rng.random() < 0.3 else 1
    texts = [str(vocabulary[i]) for i in rng.choice(len(vocabulary), size=count, replace=False)]
    angle = round(float(rng.uniform(_MIN_ANGLE, _MAX_ANGLE) * rng.choice([-1, 1])), 1)
    font_size = int(rng.uniform(0.05, 0.095) * height)
    while font_size >= _MIN_FONT_SIZE:
        drawing = _render(style, colour, ink, angle, texts, font, font_size)
        if drawing.layer.width <= width - 4 and drawing.layer.height <= height - 4:
            return drawing
        font_size -= 2
    return None


def _render(
    style: str,
    colour: str,
    ink: str,
    angle: float,
    texts: list[str],
    font_name: str,
    font_size: int,
) -> SignDrawing:
    font = _font(font_name, font_size)
    pad = max(3, round(font_size * 0.4))
    line_height = round(font_size * 1.45)
    text_widths = [round(font.getlength(text)) for text in texts]
    plate_width = max(text_widths) + 2 * pad
    plate_height = line_height * len(texts) + 2 * pad
    plate = Image.new("RGBA", (plate_width, plate_height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(plate)
    draw.rectangle(
        [0, 0, plate_width - 1, plate_height - 1],
        fill=(*COLOURS[colour], 255),
        outline=shade(COLOURS[colour], 0.6),
        width=max(1, font_size // 10),
    )
    ink_boxes = []
    for number, (text, text_width) in enumerate(zip(texts, text_widths, strict=True)):
        position = ((plate_width - text_width) / 2, pad + number * line_height)
        draw.text(position, text, font=font, fill=(*COLOURS[ink], 255))
        # the tight box of this line's ink, measured on its own mask
        ink_mask = Image.new("L", plate.size, 0)
        ImageDraw.Draw(ink_mask).text(position, text, font=font, fill=255)
        x0, y0, x1, y1 = ink_mask.getbbox()
        ink_boxes.append((x0 - 1, y0 - 1, x1 + 1, y1 + 1))
    turned = plate.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    centre = (plate_width / 2, plate_height / 2)
    to = (turned.width / 2, turned.height / 2)

    def corners(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
        return rotate_points([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], angle, centre, to)

    return SignDrawing(
        layer=turned,
        mask=np.asarray(turned.getchannel("A")) >= 128,
        style=style,
        colour=colour,
        ink=ink,
        angle=angle,
        plate_corners=corners(0, 0, plate_width, plate_height),
        line_corners=[corners(*box) for box in ink_boxes],
        texts=texts,
        font=font_name,
        font_size=font_size,
    )
