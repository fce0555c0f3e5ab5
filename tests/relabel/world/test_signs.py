"""Signs: every written pixel lies inside the quad of its line."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from relabel.world.ontology import COLOURS, FONTS
from relabel.world.signs import draw_sign


def test_fonts_are_matplotlibs_bundled_files():
    assert len(FONTS) >= 4
    assert all(font.path.is_file() and "matplotlib" in str(font.path) for font in FONTS)


def test_ink_lies_inside_the_line_quads():
    rng = np.random.default_rng(5)
    for number in range(12):
        drawing = draw_sign(rng, ("grass", "indoor", "water", "sky")[number % 4], 320, 240)
        assert drawing is not None
        sign = drawing.placed(number, 0, 0)
        assert 4 <= abs(sign.angle) <= 30
        pixels = np.asarray(drawing.layer.convert("RGB"), dtype=np.int32)
        ink = np.abs(pixels - np.asarray(COLOURS[sign.ink])).sum(axis=2) < 40
        ink &= np.asarray(drawing.layer.getchannel("A")) == 255
        assert ink.sum() > 20
        inside = Image.new("L", drawing.layer.size, 0)
        for line in sign.lines:
            corners = list(zip(line.quad[0::2], line.quad[1::2], strict=True))
            ImageDraw.Draw(inside).polygon(corners, fill=255, outline=255, width=3)  # 1.5 px slack
        outside = ink & (np.asarray(inside) == 0)
        assert outside.sum() == 0, f"{sign.lines} has ink outside its quads"


def test_a_sign_that_cannot_fit_is_refused():
    assert draw_sign(np.random.default_rng(0), "grass", 20, 240) is None
