"""Pictograms: one recognisable drawing per object category.

Each drawing is made on a transparent layer twice the object's size and shrunk (smooth edges),
in unit coordinates: ``(0, 0)`` is the top left of the object's box and ``(1, 1)`` its bottom
right. Its opaque pixels are the object's mask. A ``variant`` number picks between drawing
styles of a category (a round tree or a pine), so that instances do not all look alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from relabel.world.ontology import COLOURS

RGB = tuple[int, int, int]
_SUPERSAMPLE = 2
_OPAQUE = 128  # alpha from which a pixel counts as part of the object


def shade(colour: RGB, factor: float) -> tuple[int, int, int, int]:
    """The colour darkened (factor < 1) or lightened (factor > 1), fully opaque."""
    if factor <= 1:
        return (*(int(channel * factor) for channel in colour), 255)  # type: ignore[return-value]
    return (*(int(channel + (255 - channel) * (factor - 1)) for channel in colour), 255)  # type: ignore[return-value]


def _named(name: str) -> tuple[int, int, int, int]:
    return (*COLOURS[name], 255)


class _Pen:
    """Draws shapes given in unit coordinates of the object's box."""

    def __init__(self, draw: ImageDraw.ImageDraw, width: float, height: float) -> None:
        self.draw, self.width, self.height = draw, width, height
        self.line_width = max(2, round(min(width, height) / 28))

    def xy(self, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(x * (self.width - 1), y * (self.height - 1)) for x, y in points]

    def box(self, x0: float, y0: float, x1: float, y1: float) -> list[float]:
        (a, b), (c, d) = self.xy([(x0, y0), (x1, y1)])
        return [a, b, c, d]

    def ellipse(self, box: tuple[float, float, float, float], fill, outline=None) -> None:
        self.draw.ellipse(self.box(*box), fill=fill, outline=outline, width=self.line_width)

    def rectangle(self, box: tuple[float, float, float, float], fill, outline=None) -> None:
        self.draw.rectangle(self.box(*box), fill=fill, outline=outline, width=self.line_width)

    def polygon(self, points: list[tuple[float, float]], fill, outline=None) -> None:
        self.draw.polygon(self.xy(points), fill=fill, outline=outline, width=self.line_width)

    def line(self, points: list[tuple[float, float]], fill, width: float = 1.0) -> None:
        self.draw.line(
            self.xy(points), fill=fill, width=max(1, round(self.line_width * width)), joint="curve"
        )


def _ball(pen: _Pen, colour: RGB, variant: int) -> None:
    pen.ellipse((0, 0, 1, 1), fill=shade(colour, 1), outline=shade(colour, 0.55))
    if variant % 2:
        pen.line([(0.08, 0.55), (0.3, 0.45), (0.6, 0.45), (0.92, 0.55)], fill=_named("white"), width=2.5)
    pen.ellipse((0.2, 0.15, 0.4, 0.32), fill=shade(colour, 1.6))


def _tree(pen: _Pen, colour: RGB, variant: int) -> None:
    pen.rectangle((0.42, 0.55, 0.58, 1.0), fill=_named("brown"), outline=shade(COLOURS["brown"], 0.6))
    if variant % 2:  # a pine: three stacked triangles
        for top, bottom, half in ((0.0, 0.35, 0.3), (0.15, 0.55, 0.4), (0.3, 0.78, 0.5)):
            pen.polygon(
                [(0.5, top), (0.5 + half, bottom), (0.5 - half, bottom)],
                fill=shade(colour, 1),
                outline=shade(colour, 0.6),
            )
    else:
        pen.ellipse((0.0, 0.0, 1.0, 0.72), fill=shade(colour, 1), outline=shade(colour, 0.6))
        pen.ellipse((0.2, 0.12, 0.45, 0.32), fill=shade(colour, 1.25))


def _flower(pen: _Pen, colour: RGB, variant: int) -> None:
    pen.line([(0.5, 0.4), (0.5, 1.0)], fill=_named("green"), width=1.5)
    pen.ellipse((0.5, 0.62, 0.85, 0.76), fill=_named("green"))
    petals = 5 + variant % 3
    for index in range(petals):
        angle = 2 * math.pi * index / petals
        cx, cy = 0.5 + 0.27 * math.cos(angle), 0.27 + 0.17 * math.sin(angle)
        pen.ellipse(
            (cx - 0.22, cy - 0.13, cx + 0.22, cy + 0.13),
            fill=shade(colour, 1),
            outline=shade(colour, 0.65),
        )
    centre = "brown" if colour == COLOURS["yellow"] else "yellow"
    pen.ellipse((0.36, 0.18, 0.64, 0.36), fill=_named(centre))


def _house(pen: _Pen, colour: RGB, variant: int) -> None:
    roof = ("brown", "grey", "red", "dark green")[variant % 4]
    pen.rectangle((0.1, 0.45, 0.9, 1.0), fill=shade(colour, 1), outline=shade(colour, 0.55))
    pen.polygon([(0.0, 0.5), (0.5, 0.0), (1.0, 0.5)], fill=_named(roof), outline=shade(COLOURS[roof], 0.6))
    pen.rectangle((0.42, 0.7, 0.58, 1.0), fill=_named("brown"))
    for left in (0.18, 0.66):
        pen.rectangle((left, 0.56, left + 0.16, 0.7), fill=_named("light blue"), outline=_named("white"))


def _car(pen: _Pen, colour: RGB, variant: int) -> None:
    pen.polygon(
        [(0.22, 0.48), (0.33, 0.12), (0.7, 0.12), (0.82, 0.48)],
        fill=shade(colour, 1),
        outline=shade(colour, 0.55),
    )
    pen.polygon([(0.28, 0.45), (0.36, 0.2), (0.49, 0.2), (0.49, 0.45)], fill=_named("light blue"))
    pen.polygon([(0.53, 0.45), (0.53, 0.2), (0.67, 0.2), (0.76, 0.45)], fill=_named("light blue"))
    pen.rectangle((0.0, 0.45, 1.0, 0.8), fill=shade(colour, 1), outline=shade(colour, 0.55))
    pen.rectangle((0.9, 0.52, 0.99, 0.6), fill=_named("yellow"))
    for centre in (0.23, 0.77):
        pen.ellipse((centre - 0.11, 0.62, centre + 0.11, 1.0), fill=_named("black"))
        pen.ellipse((centre - 0.05, 0.74, centre + 0.05, 0.88), fill=_named("grey"))


def _boat(pen: _Pen, colour: RGB, variant: int) -> None:
    pen.line([(0.5, 0.02), (0.5, 0.66)], fill=_named("brown"), width=1.2)
    sail = "white" if colour != COLOURS["white"] else "yellow"
    pen.polygon(
        [(0.53, 0.05), (0.53, 0.6), (0.92, 0.6)],
        fill=_named(sail),
        outline=shade(COLOURS[sail], 0.7),
    )
    if variant % 2:
        pen.polygon(
            [(0.47, 0.12), (0.47, 0.6), (0.15, 0.6)],
            fill=_named(sail),
            outline=shade(COLOURS[sail], 0.7),
        )
    pen.polygon(
        [(0.0, 0.64), (1.0, 0.64), (0.82, 1.0), (0.18, 1.0)],
        fill=shade(colour, 1),
        outline=shade(colour, 0.55),
    )


def _cat(pen: _Pen, colour: RGB, variant: int) -> None:
    outline = shade(colour, 0.5) if colour != COLOURS["black"] else _named("grey")
    pen.line([(0.18, 0.75), (0.05, 0.55), (0.1, 0.3)], fill=shade(colour, 1), width=2.2)
    pen.ellipse((0.12, 0.45, 0.8, 1.0), fill=shade(colour, 1), outline=outline)
    pen.polygon([(0.6, 0.3), (0.64, 0.0), (0.74, 0.2)], fill=shade(colour, 1), outline=outline)
    pen.polygon([(0.84, 0.2), (0.94, 0.0), (0.97, 0.3)], fill=shade(colour, 1), outline=outline)
    pen.ellipse((0.56, 0.12, 1.0, 0.6), fill=shade(colour, 1), outline=outline)
    eye = "green" if colour != COLOURS["green"] else "yellow"
    for x in (0.68, 0.86):
        pen.ellipse((x - 0.04, 0.28, x + 0.04, 0.38), fill=_named(eye))
    pen.polygon([(0.74, 0.44), (0.8, 0.44), (0.77, 0.48)], fill=_named("pink"))


def _dog(pen: _Pen, colour: RGB, variant: int) -> None:
    outline = shade(colour, 0.5) if colour != COLOURS["black"] else _named("grey")
    pen.line([(0.15, 0.5), (0.04, 0.25)], fill=shade(colour, 1), width=2.2)
    for x in (0.2, 0.32, 0.58, 0.7):
        pen.rectangle((x, 0.65, x + 0.08, 1.0), fill=shade(colour, 0.85))
    pen.ellipse((0.1, 0.38, 0.8, 0.8), fill=shade(colour, 1), outline=outline)
    pen.ellipse((0.58, 0.08, 0.96, 0.5), fill=shade(colour, 1), outline=outline)
    pen.ellipse((0.84, 0.28, 1.0, 0.44), fill=shade(colour, 0.9), outline=outline)
    pen.ellipse((0.55, 0.1, 0.7, 0.48), fill=shade(colour, 0.6))
    pen.ellipse((0.94, 0.3, 1.0, 0.36), fill=_named("black"))
    pen.ellipse((0.76, 0.2, 0.83, 0.27), fill=_named("black"))


def _fish(pen: _Pen, colour: RGB, variant: int) -> None:
    pen.polygon([(0.0, 0.1), (0.3, 0.5), (0.0, 0.9)], fill=shade(colour, 0.85), outline=shade(colour, 0.5))
    pen.polygon([(0.45, 0.22), (0.6, 0.0), (0.72, 0.22)], fill=shade(colour, 0.85))
    pen.ellipse((0.18, 0.15, 1.0, 0.85), fill=shade(colour, 1), outline=shade(colour, 0.5))
    if variant % 2:
        for x in (0.45, 0.6):
            pen.line([(x, 0.2), (x - 0.04, 0.5), (x, 0.8)], fill=shade(colour, 0.7))
    pen.ellipse((0.74, 0.32, 0.86, 0.5), fill=_named("white"))
    pen.ellipse((0.78, 0.37, 0.84, 0.46), fill=_named("black"))


def _bird(pen: _Pen, colour: RGB, variant: int) -> None:
    pen.polygon([(0.0, 0.45), (0.2, 0.55), (0.1, 0.75)], fill=shade(colour, 0.8))
    pen.ellipse((0.08, 0.35, 0.78, 0.85), fill=shade(colour, 1), outline=shade(colour, 0.55))
    pen.ellipse((0.55, 0.12, 0.9, 0.5), fill=shade(colour, 1), outline=shade(colour, 0.55))
    pen.polygon([(0.88, 0.25), (1.0, 0.32), (0.88, 0.38)], fill=_named("orange"))
    pen.ellipse(
        (0.72, 0.22, 0.8, 0.3),
        fill=_named("black") if colour != COLOURS["black"] else _named("white"),
    )
    wing_top = 0.05 if variant % 2 else 0.45
    pen.polygon([(0.25, 0.55), (0.4, wing_top), (0.55, 0.55)], fill=shade(colour, 0.7))
    pen.line([(0.4, 0.84), (0.38, 1.0)], fill=_named("orange"))
    pen.line([(0.5, 0.84), (0.52, 1.0)], fill=_named("orange"))


def _cup(pen: _Pen, colour: RGB, variant: int) -> None:
    pen.draw.ellipse(pen.box(0.55, 0.32, 0.98, 0.78), outline=shade(colour, 0.8), width=pen.line_width * 3)
    pen.rectangle((0.05, 0.15, 0.75, 1.0), fill=shade(colour, 1), outline=shade(colour, 0.6))
    pen.ellipse((0.05, 0.08, 0.75, 0.22), fill=_named("brown"), outline=shade(colour, 0.6))
    if variant % 2:
        pen.rectangle((0.05, 0.5, 0.75, 0.62), fill=shade(colour, 0.7))


def _bottle(pen: _Pen, colour: RGB, variant: int) -> None:
    pen.rectangle((0.35, 0.0, 0.65, 0.08), fill=_named("black"))
    pen.rectangle((0.38, 0.06, 0.62, 0.32), fill=shade(colour, 1), outline=shade(colour, 0.55))
    pen.polygon([(0.38, 0.3), (0.62, 0.3), (0.95, 0.45), (0.05, 0.45)], fill=shade(colour, 1))
    pen.rectangle((0.05, 0.44, 0.95, 1.0), fill=shade(colour, 1), outline=shade(colour, 0.55))
    label = ("white", "yellow", "red")[variant % 3]
    pen.rectangle((0.05, 0.58, 0.95, 0.8), fill=_named(label))
    pen.line([(0.2, 0.5), (0.2, 0.95)], fill=shade(colour, 1.5))


def _star(pen: _Pen, colour: RGB, variant: int) -> None:
    points = []
    for index in range(10):
        radius = 0.5 if index % 2 == 0 else 0.2 + 0.03 * (variant % 3)
        angle = -math.pi / 2 + math.pi * index / 5
        points.append((0.5 + radius * math.cos(angle), 0.55 + radius * 1.05 * math.sin(angle)))
    pen.polygon(points, fill=shade(colour, 1), outline=shade(colour, 0.6))


def _umbrella(pen: _Pen, colour: RGB, variant: int) -> None:
    pen.line([(0.5, 0.4), (0.5, 0.9)], fill=_named("black"), width=1.4)
    pen.draw.arc(
        pen.box(0.5, 0.78, 0.72, 1.0),
        0,
        180,
        fill=_named("black"),
        width=round(pen.line_width * 1.4),
    )
    pen.draw.pieslice(
        pen.box(0.0, 0.02, 1.0, 0.9),
        180,
        360,
        fill=shade(colour, 1),
        outline=shade(colour, 0.55),
        width=pen.line_width,
    )
    for index in range(4):  # scalloped rim
        left = index / 4
        pen.draw.pieslice(pen.box(left, 0.38, left + 0.25, 0.52), 0, 180, fill=shade(colour, 1))
    if variant % 2:
        for x in (0.25, 0.5, 0.75):
            pen.line([(0.5, 0.05), (x, 0.45)], fill=shade(colour, 0.7))


def _kite(pen: _Pen, colour: RGB, variant: int) -> None:
    pen.line([(0.5, 0.68), (0.62, 0.8), (0.45, 0.9), (0.58, 1.0)], fill=_named("black"))
    for x, y in ((0.6, 0.79), (0.47, 0.9)):
        pen.polygon(
            [(x - 0.1, y - 0.04), (x + 0.1, y + 0.04), (x + 0.1, y - 0.04), (x - 0.1, y + 0.04)],
            fill=_named("red") if colour != COLOURS["red"] else _named("yellow"),
        )
    pen.polygon(
        [(0.5, 0.0), (0.95, 0.3), (0.5, 0.7), (0.05, 0.3)],
        fill=shade(colour, 1),
        outline=shade(colour, 0.55),
    )
    pen.line([(0.5, 0.0), (0.5, 0.7)], fill=shade(colour, 0.6))
    pen.line([(0.05, 0.3), (0.95, 0.3)], fill=shade(colour, 0.6))
    if variant % 2:
        pen.polygon([(0.5, 0.0), (0.95, 0.3), (0.5, 0.3)], fill=shade(colour, 1.35))


PICTOGRAMS: dict[str, Callable[[_Pen, RGB, int], None]] = {
    "ball": _ball,
    "tree": _tree,
    "flower": _flower,
    "house": _house,
    "car": _car,
    "boat": _boat,
    "cat": _cat,
    "dog": _dog,
    "fish": _fish,
    "bird": _bird,
    "cup": _cup,
    "bottle": _bottle,
    "star": _star,
    "umbrella": _umbrella,
    "kite": _kite,
}


def draw_pictogram(
    category: str, width: int, height: int, colour: RGB, variant: int, mirrored: bool
) -> tuple[Image.Image, np.ndarray]:
    """The pictogram of ``category`` as an RGBA layer of ``width`` x ``height`` and its mask.

    ``mirrored`` flips it left to right (a cat facing the other way).
    """
    scale = _SUPERSAMPLE
    layer = Image.new("RGBA", (width * scale, height * scale), (0, 0, 0, 0))
    PICTOGRAMS[category](_Pen(ImageDraw.Draw(layer), width * scale, height * scale), colour, variant)
    if mirrored:
        layer = layer.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    # shrink premultiplied, so transparent pixels do not darken the edges
    layer = layer.convert("RGBa").reduce(scale).convert("RGBA")
    mask = np.asarray(layer.getchannel("A")) >= _OPAQUE
    return layer, mask
