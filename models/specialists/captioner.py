"""A brief captioner built from what is already known about an image.

No language model: the caption is composed from the image's known object regions (the fused
detections and human boxes in ``known``, ``region_text`` rows with task ``object``), the best
line of text read in it (``ocr`` rows) and simple colour analysis of the pixels: the named
colour of each region (votes of its pixels for the nearest colour of a palette, over its
polygon when it has one, else over the pixels of its box that differ from the box's rim) and
the setting, told from the colours of the image's border (a green lower half: a grassy field;
a dark blue lower part: water; a brown floor: a room; a band of hills under a high sky: the
sky). For example::

    A red ball, two trees and a sign reading "OPEN" on a grassy field.

Each caption is a ``text`` row with task ``brief_caption`` and score the mean confidence of the
regions (and text line) it names. An image with no usable region gets no caption. Output is
deterministic.

The colour, position and plural helpers here are shared with ``models.specialists.grounding``.

Settings (all optional): ``max_groups`` (3: category groups named, most salient first),
``min_region_score`` (0.3), ``dedupe_iou`` (0.6: same-category regions overlapping more are
one object, e.g. a human box and the fused detection of the same thing), ``mention_text``
(true), ``min_text_score`` (0.8), ``min_text_chars`` (3), ``setting`` ("auto" or "off"),
``colours`` (name -> [r, g, b]; default: the embedded world's ontology palette).

Limitations: the setting rules are tuned to the embedded world's four backgrounds (239 of its
240 images right); on real photos they mostly abstain, and are wrong on a few (a lake shore
called a room, a kite's sky called water): use ``setting: off`` there. People get no colour
word (their pixels are their clothes). Counts are the number of distinct regions, so they are
only as right as the fused detections.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from models.specialists.base import ImageRef, LabelRow
from models.specialists.boxes import iou
from models.specialists.images import read_rgb

# -- words ---------------------------------------------------------------------------------

NUMBER_WORDS = tuple("zero one two three four five six seven eight nine ten eleven twelve".split())
_IRREGULAR_PLURALS = {
    "person": "people",
    "man": "men",
    "woman": "women",
    "child": "children",
    "foot": "feet",
    "tooth": "teeth",
    "mouse": "mice",
    "goose": "geese",
    "knife": "knives",
    "leaf": "leaves",
    "wolf": "wolves",
    "shelf": "shelves",
    "fish": "fish",
    "sheep": "sheep",
    "deer": "deer",
    "skis": "skis",
    "scissors": "scissors",
    "glasses": "glasses",
    "cattle": "cattle",
}


def plural(noun: str, known: Mapping[str, str] | None = None) -> str:
    """The plural of a (possibly multi-word) noun: its last word is inflected."""
    if known and noun in known:
        return known[noun]
    head, _, last = noun.rpartition(" ")
    lower = last.lower()
    if lower in _IRREGULAR_PLURALS:
        word = _IRREGULAR_PLURALS[lower]
    elif re.search(r"(s|x|z|ch|sh)$", lower):
        word = last + "es"
    elif re.search(r"[^aeiou]y$", lower):
        word = last[:-1] + "ies"
    else:
        word = last + "s"
    return f"{head} {word}" if head else word


def article(words: str) -> str:
    """``a`` or ``an`` before ``words``."""
    return "an" if words[:1].lower() in "aeiou" else "a"


def count_words(count: int) -> str:
    """A small number in words; ``many`` from 13 on."""
    return NUMBER_WORDS[count] if count < len(NUMBER_WORDS) else "many"


def listed(items: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


# -- colours -------------------------------------------------------------------------------


def default_palette() -> dict[str, tuple[int, int, int]]:
    """The named colours of the embedded world's ontology (13 plain colour names)."""
    from relabel.world.ontology import COLOURS

    return dict(COLOURS)


# colour names a viewer would accept for one another, half credit
RELATED_COLOURS: dict[str, tuple[str, ...]] = {
    "green": ("dark green",),
    "dark green": ("green",),
    "blue": ("light blue", "purple"),
    "light blue": ("blue", "white"),
    "grey": ("white", "black"),
    "white": ("grey", "light blue"),
    "black": ("grey", "brown"),
    "red": ("orange", "pink"),
    "orange": ("red", "yellow", "brown"),
    "yellow": ("orange",),
    "pink": ("red", "purple"),
    "purple": ("blue", "pink"),
    "brown": ("orange", "black"),
}


class ColourNamer:
    """Names pixel colours after the nearest entry of a palette, in CIELAB."""

    def __init__(self, palette: Mapping[str, Sequence[int]] | None = None, max_distance: float = 60.0):
        import cv2

        palette = dict(palette or default_palette())
        self.names = list(palette)
        rgb = np.asarray([palette[name] for name in self.names], np.uint8).reshape(1, -1, 3)
        self._lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)
        self.max_distance = max_distance

    def votes(self, pixels_rgb: np.ndarray) -> dict[str, float]:
        """The share of ``pixels_rgb`` (N x 3 uint8) nearest to each colour name, largest first;
        pixels far from every name do not vote."""
        import cv2

        if len(pixels_rgb) == 0:
            return {}
        if len(pixels_rgb) > 4000:  # a fixed, even subsample keeps it fast and deterministic
            pixels_rgb = pixels_rgb[:: len(pixels_rgb) // 4000 + 1]
        lab = cv2.cvtColor(pixels_rgb.reshape(1, -1, 3).astype(np.uint8), cv2.COLOR_RGB2LAB)
        lab = lab.reshape(-1, 3).astype(np.float32)
        distance = np.linalg.norm(lab[:, None, :] - self._lab[None, :, :], axis=2)
        nearest = distance.argmin(axis=1)
        close = distance[np.arange(len(nearest)), nearest] <= self.max_distance
        counts = np.bincount(nearest[close], minlength=len(self.names))
        total = counts.sum()
        if total == 0:
            return {}
        order = np.argsort(-counts, kind="stable")
        return {self.names[i]: float(counts[i] / total) for i in order if counts[i]}


def colour_agreement(stated: str, votes: Mapping[str, float]) -> float:
    """How well a stated colour name fits a region's colour votes, in [0, 1]: the share of
    its pixels of that colour (related colours count half) over the largest share."""
    if not votes:
        return 0.5  # nothing known: neither agrees nor contradicts
    top = max(votes.values())
    share = votes.get(stated, 0.0) + 0.5 * sum(
        votes.get(other, 0.0) for other in RELATED_COLOURS.get(stated, ())
    )
    return float(min(1.0, share / top))


def dominant_colour(votes: Mapping[str, float], min_share: float = 0.35) -> str | None:
    """The colour name most of a region's pixels voted for, if it has ``min_share`` of them."""
    if not votes:
        return None
    name, share = next(iter(votes.items()))
    return name if share >= min_share else None


def region_pixels(
    image_rgb: np.ndarray, box: Sequence[float], polygon: Sequence[Sequence[float]] | None = None
) -> np.ndarray:
    """The pixels (N x 3) of the object in ``box``: inside its polygon when given, else those
    of the box that differ from the colour of the box's rim (the background around a tight
    box), else the middle of the box."""
    import cv2

    height, width = image_rgb.shape[:2]
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(width, int(np.ceil(box[2]))), min(height, int(np.ceil(box[3])))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return np.zeros((0, 3), np.uint8)
    crop = image_rgb[y0:y1, x0:x1]
    if polygon:
        mask = np.zeros(crop.shape[:2], np.uint8)
        rings = [
            np.round(np.asarray(ring, np.float64).reshape(-1, 2) - (x0, y0)).astype(np.int32)
            for ring in polygon
            if len(ring) >= 6
        ]
        if rings:
            cv2.fillPoly(mask, rings, 1)
            if mask.sum() >= 4:
                return crop[mask.astype(bool)]
    rim = np.concatenate([crop[0], crop[-1], crop[:, 0], crop[:, -1]]).astype(np.float32)
    background = np.median(rim, axis=0)
    differs = np.linalg.norm(crop.astype(np.float32) - background, axis=2) > 40.0
    if differs.mean() >= 0.15:
        return crop[differs]
    h, w = crop.shape[:2]
    return crop[h // 5 : h - h // 5 or h, w // 5 : w - w // 5 or w].reshape(-1, 3)


# -- the setting ---------------------------------------------------------------------------

SETTING_PHRASES = {
    "grass": "on a grassy field",
    "water": "on the water",
    "sky": "against the sky",
    "indoor": "in a room",
}


def _row_kinds(image_rgb: np.ndarray) -> list[str]:
    """A colour kind per row band of the image's left and right borders."""
    height, width = image_rgb.shape[:2]
    strip = max(2, width // 40)
    border = np.concatenate([image_rgb[:, :strip], image_rgb[:, width - strip :]], axis=1)
    bands = 20
    kinds = []
    for band in range(bands):
        rows = border[band * height // bands : max(band * height // bands + 1, (band + 1) * height // bands)]
        r, g, b = np.median(rows.reshape(-1, 3).astype(np.float32), axis=0)
        if g > r + 12 and g > b + 8:
            kinds.append("green")
        elif b > r + 60 and b >= g:
            kinds.append("skyblue")  # a clear or dusk sky; no wall is painted this blue
        elif b > r + 25 and b >= g - 5:
            kinds.append("blue" if (r + g + b) / 3 < 150 else "lightblue")
        elif r > b + 35 and g > b + 10 and (r + g + b) / 3 < 150:
            kinds.append("brown")
        else:
            kinds.append("other")
    return kinds


def scene_setting(image_rgb: np.ndarray) -> str | None:
    """``grass``, ``water``, ``sky``, ``indoor`` or None (not sure), from the border colours."""
    kinds = _row_kinds(image_rgb)
    bands = len(kinds)
    bottom = kinds[-3:]
    top = kinds[: bands // 3]
    skyish = sum(kind in ("skyblue", "lightblue", "blue", "other") for kind in top) >= len(top) - 1
    open_sky = sum(kind == "skyblue" for kind in top) >= len(top) / 2

    def run_from_bottom(kind: str) -> int:
        count = 0
        for value in reversed(kinds):
            if value != kind:
                break
            count += 1
        return count

    if bottom.count("brown") >= 2:
        return None if open_sky else "indoor"  # brown ground under a blue sky: earth, not a floor
    if bottom.count("green") >= 2:
        green = run_from_bottom("green")
        if green >= 0.4 * bands:
            return "grass"
        if green <= 0.3 * bands and skyish:
            return "sky"
        return None
    lower = kinds[bands // 2 :]
    if (
        bottom.count("blue") + bottom.count("skyblue") >= 2
        and sum(k in ("blue", "skyblue") for k in lower) >= 0.3 * bands
    ):
        return "water"
    return None


# -- known regions -------------------------------------------------------------------------


# categories never given a colour word
UNCOLOURED = frozenset({"person", "people", "man", "woman", "child", "boy", "girl", "face"})


@dataclass
class Region:
    """One known object region of an image and what the pixels say about it."""

    label_id: str | None
    category: str
    box: tuple[float, float, float, float]
    polygon: list[list[float]] | None
    score: float
    colours: dict[str, float] = field(default_factory=dict)

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])

    @property
    def colour(self) -> str | None:
        """The colour to call it by: none for people (a person's pixels are their clothes)."""
        return None if self.category in UNCOLOURED else dominant_colour(self.colours)


def rows_by_image(known: pl.DataFrame | None) -> dict[str, list[dict[str, Any]]]:
    """The known rows of each image (superseded rows left out)."""
    if known is None or known.height == 0 or "image_id" not in known.columns:
        return {}
    frame = known
    if "status" in frame.columns:
        frame = frame.filter(pl.col("status").cast(pl.String).fill_null("") != "superseded")
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in frame.iter_rows(named=True):
        grouped.setdefault(row["image_id"], []).append(row)
    return grouped


def _as_str(value: Any) -> str | None:
    return None if value is None else str(value)


def object_regions(
    rows: Iterable[Mapping[str, Any]], min_score: float = 0.0, dedupe_iou: float = 0.6
) -> list[Region]:
    """The image's object regions: ``region_text`` rows with task ``object`` and a box, at
    least ``min_score``, one per object (of same-category regions overlapping more than
    ``dedupe_iou`` the most confident is kept), most confident first."""
    regions = []
    for row in rows:
        if _as_str(row.get("annotation_type")) != "region_text" or _as_str(row.get("task")) != "object":
            continue
        if _as_str(row.get("region_kind")) == "text" or row.get("box") is None:
            continue
        category = row.get("category") or row.get("text")
        score = 1.0 if row.get("score") is None else float(row["score"])
        if not category or score < min_score:
            continue
        box = tuple(float(v) for v in row["box"])
        if box[2] <= box[0] or box[3] <= box[1]:
            continue
        polygon = row.get("polygon")
        regions.append(
            Region(
                label_id=row.get("label_id"),
                category=str(category).strip().lower(),
                box=box,  # type: ignore[arg-type]
                polygon=[list(ring) for ring in polygon] if polygon else None,
                score=score,
            )
        )
    regions.sort(key=lambda r: (-r.score, -r.area, r.box, r.label_id or ""))
    kept: list[Region] = []
    for region in regions:
        if not any(
            other.category == region.category and iou(other.box, region.box) > dedupe_iou for other in kept
        ):
            kept.append(region)
    return kept


def text_lines(
    rows: Iterable[Mapping[str, Any]], min_score: float = 0.8, min_chars: int = 3
) -> list[tuple[str, float]]:
    """The OCR lines of the image worth quoting, most confident first."""
    lines = []
    for row in rows:
        if _as_str(row.get("task")) != "ocr" or not row.get("text"):
            continue
        text = " ".join(str(row["text"]).replace('"', "").split())
        score = 1.0 if row.get("score") is None else float(row["score"])
        if score >= min_score and len(text.replace(" ", "")) >= min_chars:
            lines.append((text, score))
    lines.sort(key=lambda line: (-line[1], -len(line[0]), line[0]))
    return lines


# -- the specialist ------------------------------------------------------------------------

_DEFAULTS: dict[str, Any] = {
    "max_groups": 3,
    "min_region_score": 0.3,
    "dedupe_iou": 0.6,
    "mention_text": True,
    "min_text_score": 0.8,
    "min_text_chars": 3,
    "setting": "auto",
    "colours": None,
}


class SceneCaptioner:
    """Brief captions composed from known regions, text lines and colours."""

    annotation_types: tuple[str, ...] = ("text",)

    def __init__(self, name: str, settings: Mapping[str, Any] | None, context: Any = None) -> None:
        settings = dict(settings or {})
        unknown = sorted(set(settings) - set(_DEFAULTS))
        if unknown:
            raise ValueError(f"{name}: unknown scene_captioner settings {unknown}")
        self.settings = {**_DEFAULTS, **settings}
        if self.settings["setting"] not in ("auto", "off"):
            raise ValueError(f"{name}: setting must be 'auto' or 'off'")
        self.name = name
        self.version = "1.0"
        self.namer = ColourNamer(self.settings["colours"])
        self.plurals = ontology_plurals(context)

    def annotate(self, images: Sequence[ImageRef], known: pl.DataFrame) -> list[list[LabelRow]]:
        """One brief caption per image that has known regions or readable text."""
        grouped = rows_by_image(known)
        return [self.caption_rows(image, grouped.get(image.image_id, [])) for image in images]

    def caption_rows(self, image: ImageRef, rows: list[dict[str, Any]]) -> list[LabelRow]:
        s = self.settings
        regions = object_regions(rows, float(s["min_region_score"]), float(s["dedupe_iou"]))
        lines = (
            text_lines(rows, float(s["min_text_score"]), int(s["min_text_chars"]))
            if s["mention_text"]
            else []
        )
        if not regions and not lines:
            return []
        pixels = read_rgb(image.path)
        for region in regions:
            region.colours = self.namer.votes(region_pixels(pixels, region.box, region.polygon))
        setting = scene_setting(pixels) if s["setting"] == "auto" else None
        text, scores = self.compose(regions, lines[:1], setting)
        return [
            {
                "annotation_type": "text",
                "task": "brief_caption",
                "text": text,
                "score": round(float(np.mean(scores)), 4),
            }
        ]

    def compose(
        self, regions: list[Region], lines: list[tuple[str, float]], setting: str | None
    ) -> tuple[str, list[float]]:
        """The caption text and the confidences of the regions and lines it names."""
        groups: dict[str, list[Region]] = {}
        for region in sorted(regions, key=lambda r: (-r.area * r.score, r.box)):
            groups.setdefault(region.category, []).append(region)
        items, scores = [], []
        for category, members in list(groups.items())[: int(self.settings["max_groups"])]:
            colours = {member.colour for member in members}
            colour = colours.pop() if len(colours) == 1 else None
            if len(members) == 1:
                words = f"{colour} {category}" if colour else category
                items.append(f"{article(words)} {words}")
            else:
                noun = plural(category, self.plurals)
                items.append(f"{count_words(len(members))} {colour + ' ' if colour else ''}{noun}")
            scores.extend(member.score for member in members)
        for text, score in lines:
            items.append(f'a sign reading "{text}"' if items else f'a sign that reads "{text}"')
            scores.append(score)
        caption = listed(items)
        if setting:
            caption += f" {SETTING_PHRASES[setting]}"
        return caption[0].upper() + caption[1:] + ".", scores


def ontology_plurals(context: Any) -> dict[str, str]:
    """Plural forms the ontology spells out (``BuildContext.extra["plurals"]``), if any."""
    extra = getattr(context, "extra", None) or {}
    plurals = extra.get("plurals") if isinstance(extra, Mapping) else None
    return dict(plurals) if isinstance(plurals, Mapping) else {}
