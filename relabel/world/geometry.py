"""Geometry helpers: outlines of pixel masks, polygon simplification, rotated corners.

Polygons are flat COCO-style rings ``[x, y, x, y, ...]`` in pixel-corner coordinates: a pixel
``(x, y)`` covers ``[x, x + 1] x [y, y + 1]``, so the outline of a mask encloses exactly its
pixels and a box ``[x0, y0, x1, y1]`` with ``x1 = last column + 1`` is its tight bound.
"""

from __future__ import annotations

import math

import numpy as np

# walking directions on the pixel-corner grid: right, down, left, up (y grows downwards)
_STEPS = ((1, 0), (0, 1), (-1, 0), (0, -1))


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The tight box ``(x0, y0, x1, y1)`` of a boolean mask (exclusive ends), None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    columns = np.flatnonzero(mask.any(axis=0))
    return int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1


def mask_to_polygons(mask: np.ndarray, min_pixels: int = 12, tolerance: float = 0.75) -> list[list[float]]:
    """The outer outlines of a mask's 4-connected parts, largest first, as flat rings.

    Parts smaller than ``min_pixels`` are left out unless nothing else is left; holes are
    not cut out (a ring is the part's outer boundary). Rings are simplified with
    Douglas-Peucker at ``tolerance`` pixels and always keep at least three points.
    """
    box = mask_box(mask)
    if box is None:
        return []
    x0, y0, x1, y1 = box
    remaining = mask[y0:y1, x0:x1].copy()
    parts: list[tuple[int, list[float]]] = []
    while remaining.any():
        start = np.argmax(remaining)  # the first pixel in raster order: a top-left corner
        row, column = divmod(int(start), remaining.shape[1])
        corners = _trace_outline(remaining, column, row)
        region = _inside(corners, remaining.shape)
        pixels = int(np.count_nonzero(region & remaining))
        remaining &= ~region
        ring = _simplify_ring(corners, tolerance)
        parts.append((pixels, [value for x, y in ring for value in (float(x + x0), float(y + y0))]))
    parts.sort(key=lambda part: -part[0])
    kept = [ring for pixels, ring in parts if pixels >= min_pixels]
    return kept or [parts[0][1]]


def _trace_outline(mask: np.ndarray, column: int, row: int) -> list[tuple[int, int]]:
    """Corners of the outer boundary of the part holding pixel (column, row), clockwise.

    Walks along pixel edges keeping the part on the right-hand side; at each corner the two
    pixels ahead decide whether to turn right, go straight or turn left. Pixels that touch
    only diagonally belong to different parts.
    """
    height, width = mask.shape

    def inside(x: int, y: int) -> bool:
        return 0 <= x < width and 0 <= y < height and bool(mask[y, x])

    # the pixels ahead of a corner (x, y) when walking in each direction: (left, right)
    def ahead(x: int, y: int, direction: int) -> tuple[bool, bool]:
        if direction == 0:
            return inside(x, y - 1), inside(x, y)
        if direction == 1:
            return inside(x, y), inside(x - 1, y)
        if direction == 2:
            return inside(x - 1, y), inside(x - 1, y - 1)
        return inside(x - 1, y - 1), inside(x, y - 1)

    start = (column, row)
    x, y, direction = column, row, 0
    corners = [start]
    while True:
        x, y = x + _STEPS[direction][0], y + _STEPS[direction][1]
        left, right = ahead(x, y, direction)
        if not right:
            turned = (direction + 1) % 4
        elif left:
            turned = (direction - 1) % 4
        else:
            turned = direction
        if (x, y) == start and turned == 0:
            return corners
        if turned != direction:
            corners.append((x, y))
            direction = turned


def _inside(corners: list[tuple[int, int]], shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centres lie inside a closed rectilinear outline (even-odd rule)."""
    crossings = np.zeros((shape[0], shape[1] + 1), dtype=np.uint8)
    for (xa, ya), (xb, yb) in zip(corners, corners[1:] + corners[:1], strict=True):
        if xa == xb and ya != yb:  # a vertical edge toggles inside-ness for its rows
            crossings[min(ya, yb) : max(ya, yb), xa] ^= 1
    return (np.bitwise_xor.accumulate(crossings, axis=1)[:, : shape[1]]).astype(bool)


def _simplify_ring(corners: list[tuple[int, int]], tolerance: float) -> list[tuple[float, float]]:
    if len(corners) <= 4:
        return [(float(x), float(y)) for x, y in corners]
    points = np.asarray(corners, dtype=np.float64)
    # split the closed ring at its first point and the point farthest from it
    far = int(np.argmax(((points - points[0]) ** 2).sum(axis=1)))
    first = _douglas_peucker(points[: far + 1], tolerance)
    second = _douglas_peucker(np.vstack([points[far:], points[:1]]), tolerance)
    ring = np.vstack([first[:-1], second[:-1]])
    if len(ring) < 3:
        ring = points
    return [(float(x), float(y)) for x, y in ring]


def _douglas_peucker(points: np.ndarray, tolerance: float) -> np.ndarray:
    keep = np.zeros(len(points), dtype=bool)
    keep[0] = keep[-1] = True
    stack = [(0, len(points) - 1)]
    while stack:
        first, last = stack.pop()
        if last - first < 2:
            continue
        segment = points[last] - points[first]
        offsets = points[first + 1 : last] - points[first]
        length = math.hypot(*segment)
        if length == 0:
            distances = np.hypot(offsets[:, 0], offsets[:, 1])
        else:
            distances = np.abs(segment[0] * offsets[:, 1] - segment[1] * offsets[:, 0]) / length
        index = int(np.argmax(distances))
        if distances[index] > tolerance:
            middle = first + 1 + index
            keep[middle] = True
            stack.extend([(first, middle), (middle, last)])
    return points[keep]


def ring_area(ring: list[float]) -> float:
    """The area enclosed by a flat ring (shoelace formula)."""
    xs, ys = np.asarray(ring[0::2]), np.asarray(ring[1::2])
    return float(abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))) / 2)


def rotate_points(
    points: list[tuple[float, float]],
    angle: float,
    centre: tuple[float, float],
    to: tuple[float, float],
) -> list[tuple[float, float]]:
    """Points turned ``angle`` degrees counter-clockwise on screen about ``centre``, then moved
    so that ``centre`` lands on ``to`` (what PIL's ``Image.rotate(expand=True)`` does to
    pixels, with ``centre`` the old and ``to`` the new image centre)."""
    radians = math.radians(angle)
    cos, sin = math.cos(radians), math.sin(radians)
    turned = []
    for x, y in points:
        dx, dy = x - centre[0], y - centre[1]
        turned.append((to[0] + dx * cos + dy * sin, to[1] - dx * sin + dy * cos))
    return turned


def bounds(points: list[tuple[float, float]]) -> tuple[float, float, float, float]:
    """The axis-aligned box ``(x0, y0, x1, y1)`` around points."""
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    return min(xs), min(ys), max(xs), max(ys)
