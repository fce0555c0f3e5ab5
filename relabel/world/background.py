"""Backgrounds: sky, grassy field, water or a room, with gradients and a mild noise texture."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SKY_PALETTES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    # top and horizon colour of the sky
    "clear": ((70, 130, 220), (175, 210, 245)),
    "sunset": ((70, 60, 140), (250, 165, 95)),
    "overcast": ((135, 140, 150), (205, 205, 212)),
}
SKY_WORDS = {
    "clear": "a clear blue sky",
    "sunset": "a sunset sky",
    "overcast": "an overcast grey sky",
}

WALL_COLOURS: dict[str, tuple[int, int, int]] = {
    "beige": (226, 210, 178),
    "light blue": (190, 210, 228),
    "pale green": (200, 224, 196),
    "grey": (196, 196, 200),
}


@dataclass(frozen=True)
class Background:
    """What is behind the objects. ``horizon`` is the row where sky meets ground or water
    (the floor line indoors); ``palette`` names the sky (outdoors) or the wall colour."""

    kind: str
    palette: str
    horizon: int
    description: str

    def to_json(self) -> dict[str, object]:
        """The background as written to ``scenes.jsonl``."""
        return {
            "kind": self.kind,
            "palette": self.palette,
            "horizon": self.horizon,
            "description": self.description,
        }


def _vertical_gradient(top: tuple[int, ...], bottom: tuple[int, ...], rows: int, width: int) -> np.ndarray:
    weights = np.linspace(0.0, 1.0, max(rows, 1), dtype=np.float32)[:, None, None]
    column = (1 - weights) * np.asarray(top, np.float32) + weights * np.asarray(bottom, np.float32)
    return np.broadcast_to(column, (max(rows, 1), width, 3))[:rows].copy()


def _sky(palette: str, rows: int, width: int) -> np.ndarray:
    top, bottom = SKY_PALETTES[palette]
    return _vertical_gradient(top, bottom, rows, width)


def paint_background(
    rng: np.random.Generator, kind: str, width: int, height: int
) -> tuple[np.ndarray, Background]:
    """An RGB float array of the background and its description for the scene graph."""
    palette = str(rng.choice(list(SKY_PALETTES)))
    if kind == "indoor":
        palette = str(rng.choice(list(WALL_COLOURS)))
        horizon = int(height * rng.uniform(0.58, 0.72))
        wall = np.asarray(WALL_COLOURS[palette], np.float32)
        pixels = _vertical_gradient(wall * 1.02, wall * 0.9, height, width)
        floor = _vertical_gradient((165, 115, 70), (120, 80, 45), height - horizon, width)
        # planks: darker seams every few rows, spaced wider towards the viewer
        seam_rows = horizon + (np.cumsum(np.linspace(4, 12, 12)) * height / 240).astype(int)
        for row in seam_rows[seam_rows < height]:
            floor[row - horizon] *= 0.8
        pixels[horizon:] = floor
        description = f"a room with a {palette} wall and a wooden floor"
    elif kind == "sky":
        horizon = int(height * rng.uniform(0.8, 0.9))
        pixels = _sky(palette, height, width)
        # distant hills: a sum of slow waves along the bottom edge
        columns = np.arange(width, dtype=np.float32)
        phase = rng.uniform(0, 2 * math.pi, 2)
        ridge = horizon + height * (
            0.04 * np.sin(columns / width * 5 + phase[0]) + 0.02 * np.sin(columns / width * 13 + phase[1])
        )
        rows = np.arange(height, dtype=np.float32)[:, None]
        pixels[rows >= ridge[None, :]] = (70, 120, 75)
        description = f"{SKY_WORDS[palette]} with clouds above distant hills"
    else:
        horizon = int(height * rng.uniform(0.3, 0.45))
        pixels = _sky(palette, height, width)
        if kind == "grass":
            pixels[horizon:] = _vertical_gradient((120, 185, 80), (55, 125, 40), height - horizon, width)
            description = f"a grassy field under {SKY_WORDS[palette]}"
        else:
            water = _vertical_gradient((75, 140, 195), (25, 75, 140), height - horizon, width)
            rows = np.arange(height - horizon, dtype=np.float32)[:, None]
            columns = np.arange(width, dtype=np.float32)[None, :]
            waves = np.sin(columns / 9.0 + rows * 0.9 + rng.uniform(0, 6.28)) * np.sin(rows / 3.0)
            water += (waves > 0.85)[..., None] * 35.0
            pixels[horizon:] = water
            description = f"calm water under {SKY_WORDS[palette]}"
    pixels = _with_clouds(rng, pixels, horizon) if kind != "indoor" and palette != "overcast" else pixels
    return _with_texture(rng, pixels), Background(kind, palette, horizon, description)


def _with_clouds(rng: np.random.Generator, pixels: np.ndarray, horizon: int) -> np.ndarray:
    height, width = pixels.shape[:2]
    layer = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = rng.uniform(0, width), rng.uniform(0.05, 0.6) * max(horizon, 1)
        size = rng.uniform(0.08, 0.16) * width
        for dx in (-0.6, 0.0, 0.6):
            draw.ellipse(
                [
                    cx + dx * size - size * 0.55,
                    cy - size * 0.3,
                    cx + dx * size + size * 0.55,
                    cy + size * 0.3,
                ],
                fill=150,
            )
    alpha = np.asarray(layer, np.float32)[..., None] / 255.0
    return pixels * (1 - alpha) + 250.0 * alpha


def _with_texture(rng: np.random.Generator, pixels: np.ndarray) -> np.ndarray:
    # smooth blotches (coarse noise, enlarged) so that no two skies or floors are equal; no
    # per-pixel grain, which would double the size of every PNG for no gain in realism
    height, width = pixels.shape[:2]
    coarse = rng.normal(0.0, 5.0, (height // 16 + 2, width // 16 + 2)).astype(np.float32)
    blotches = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR))
    return np.clip(pixels + blotches[..., None], 0, 255)
