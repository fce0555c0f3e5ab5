"""The noisy, partial "human" labels a real collection would come with.

Curated images get COCO boxes (some traced as polygons) and brief captions; web images get
alt-text. The noise follows ``HumanNoiseParams``: whole images left unlabelled, objects not
boxed, boxes jittered, categories confused, captions with slips, alt-text that names the wrong
thing, is a file name, an advert, or is cut short.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from relabel.config import HumanNoiseParams
from relabel.world.captions import article, category_groups, count_words, salience_order
from relabel.world.geometry import ring_area
from relabel.world.ontology import CATEGORIES, CATEGORY_BY_NAME, COLOURS
from relabel.world.scene import Scene, SceneObject

_POLYGON_ANNOTATOR_RATE = 0.4  # share of labelled images whose annotator traced outlines
_CONFUSED_SHARE = 0.7  # a wrong category is the look-alike this often, otherwise any other
_SECOND_CAPTION_RATE = 0.25

_HUMAN_SETTINGS = {
    "grass": ("in a park", "on the grass", "outside", "in a field"),
    "indoor": ("inside", "in a kitchen", "on the floor", "in a room"),
    "water": ("in the sea", "on a lake", "at the beach", "on the water"),
    "sky": ("outdoors", "on a hill", "under the sky"),
}
_FILE_NAMES = (
    "image.png",
    "IMG_{n:04d}.JPG",
    "DSC_{n:04d}.jpg",
    "untitled-{m}.png",
    "photo_{n}.jpeg",
)
_ADVERTS = (
    "Best deals on {plural} - free shipping!",
    "Shop our new {name} collection today",
    "Click here to buy {plural} online",
    "{Plural} on sale now | up to 50% off",
)


def coco_categories() -> list[dict[str, Any]]:
    """The ontology's categories as COCO ``categories`` entries."""
    return [{"id": c.id, "name": c.name, "supercategory": c.supercategory} for c in CATEGORIES]


def human_annotations(
    scene: Scene,
    rng: np.random.Generator,
    noise: HumanNoiseParams,
    coco_image_id: int,
    first_id: int,
    tally: Counter[str],
) -> list[dict[str, Any]]:
    """COCO annotations a human made for a labelled curated scene: some objects missed,
    boxes jittered, some categories wrong, and for some annotators traced polygons."""
    traces_polygons = rng.random() < _POLYGON_ANNOTATOR_RATE
    annotations = []
    for obj in scene.objects:
        if rng.random() < noise.missing_object_rate:
            tally["missed_objects"] += 1
            continue
        category = _maybe_confused(obj.category, rng, noise, tally)
        annotation: dict[str, Any] = {
            "id": first_id + len(annotations),
            "image_id": coco_image_id,
            "category_id": CATEGORY_BY_NAME[category].id,
            "iscrowd": 0,
        }
        if traces_polygons:
            rings = [_jittered_ring(ring, rng, scene.width, scene.height) for ring in obj.polygon]
            xs = [x for ring in rings for x in ring[0::2]]
            ys = [y for ring in rings for y in ring[1::2]]
            annotation["segmentation"] = rings
            annotation["bbox"] = _xywh(min(xs), min(ys), max(xs), max(ys))
            annotation["area"] = round(sum(ring_area(ring) for ring in rings), 2)
            tally["polygons"] += 1
        else:
            annotation["bbox"] = _jittered_box(obj, rng, noise.box_jitter, scene.width, scene.height)
            annotation["area"] = round(annotation["bbox"][2] * annotation["bbox"][3], 2)
        tally["boxes"] += 1
        annotations.append(annotation)
    return annotations


def _maybe_confused(
    category: str, rng: np.random.Generator, noise: HumanNoiseParams, tally: Counter[str]
) -> str:
    if rng.random() >= noise.wrong_category_rate:
        return category
    tally["wrong_categories"] += 1
    if rng.random() < _CONFUSED_SHARE:
        return CATEGORY_BY_NAME[category].confused_with
    others = [c.name for c in CATEGORIES if c.name != category]
    return str(rng.choice(others))


def _xywh(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]


def _jittered_box(
    obj: SceneObject, rng: np.random.Generator, jitter: float, width: int, height: int
) -> list[float]:
    x0, y0, x1, y1 = obj.box
    w, h = x1 - x0, y1 - y0
    dx0, dx1 = rng.normal(0, jitter * w, 2)
    dy0, dy1 = rng.normal(0, jitter * h, 2)
    nx0, nx1 = np.clip([x0 + dx0, x1 + dx1], 0, width)
    ny0, ny1 = np.clip([y0 + dy0, y1 + dy1], 0, height)
    if nx1 - nx0 < 1 or ny1 - ny0 < 1:  # jitter turned the box inside out: keep the truth
        nx0, ny0, nx1, ny1 = x0, y0, x1, y1
    return _xywh(float(nx0), float(ny0), float(nx1), float(ny1))


def _jittered_ring(ring: list[float], rng: np.random.Generator, width: int, height: int) -> list[float]:
    # a hand-traced outline wobbles by about a pixel around the true one
    points = np.asarray(ring).reshape(-1, 2) + rng.normal(0, 0.7, (len(ring) // 2, 2))
    points = np.clip(points, 0, [width, height])
    return [round(float(value), 1) for value in points.ravel()]


def human_captions(scene: Scene, rng: np.random.Generator, noise: HumanNoiseParams) -> list[str]:
    """Zero, one or two brief human captions of a labelled curated scene."""
    if rng.random() >= noise.caption_rate:
        return []
    count = 2 if rng.random() < _SECOND_CAPTION_RATE else 1
    return [_human_caption(scene, rng) for _ in range(count)]


def _human_caption(scene: Scene, rng: np.random.Generator) -> str:
    groups = category_groups(scene.objects)[: int(rng.integers(1, 3))]
    phrases = [_sloppy_group(group, rng) for group in groups]
    setting = str(rng.choice(_HUMAN_SETTINGS[scene.background.kind]))
    if len(phrases) == 2 and rng.random() < 0.5:
        text = f"{phrases[0]} next to {phrases[1]}"
    else:
        template = str(rng.choice(["{x} {s}", "there is {x} {s}", "a photo of {x} {s}", "{x}"]))
        text = template.format(x=" and ".join(phrases), s=setting)
    if rng.random() < 0.12:
        text = _with_typo(text, rng)
    if rng.random() < 0.6:  # most people write a sentence; some just type words
        text = text[0].upper() + text[1:] + "."
    return text


def _sloppy_group(group: list[SceneObject], rng: np.random.Generator) -> str:
    count = len(group)
    if rng.random() < 0.1:  # miscounted
        count = max(1, count + int(rng.choice([-1, 1])))
    colour = group[0].colour
    if rng.random() < 0.15:  # misremembered colour
        colour = str(rng.choice([c for c in COLOURS if c != colour]))
    category = CATEGORY_BY_NAME[group[0].category]
    colour_word = f"{colour} " if rng.random() < 0.6 else ""
    if count == 1:
        return f"{article(colour_word or category.name)} {colour_word}{category.name}"
    return f"{count_words(count)} {colour_word}{category.plural}"


def _with_typo(text: str, rng: np.random.Generator) -> str:
    words = text.split(" ")
    long_words = [i for i, word in enumerate(words) if len(word) > 3]
    if not long_words:
        return text
    index = int(rng.choice(long_words))
    word = words[index]
    at = int(rng.integers(0, len(word) - 1))
    words[index] = word[:at] + word[at + 1] + word[at] + word[at + 2 :]
    return " ".join(words)


def alt_text(
    scene: Scene, rng: np.random.Generator, noise: HumanNoiseParams
) -> tuple[str | None, str | None]:
    """The alt-text a web page gave this image, and the kind of noise in it (None if clean);
    ``(None, None)`` when the page gave none."""
    if rng.random() >= noise.alt_text_rate:
        return None, None
    clean = clean_alt_text(scene, rng)
    if rng.random() >= noise.alt_text_noise_rate:
        return clean, None
    kind = str(rng.choice(["wrong_object", "file_name", "advert", "truncated"]))
    present = {obj.category for obj in scene.objects}
    if kind == "wrong_object":
        absent = [c.name for c in CATEGORIES if c.name not in present and not c.rare]
        name = str(rng.choice(absent))
        setting = rng.choice(_HUMAN_SETTINGS[scene.background.kind])
        return f"{article(name).capitalize()} {name} {setting}", kind
    if kind == "file_name":
        template = str(rng.choice(_FILE_NAMES))
        return template.format(n=int(rng.integers(1, 10000)), m=int(rng.integers(1, 20))), kind
    if kind == "advert":
        category = CATEGORY_BY_NAME[salience_order(scene.objects)[0].category]
        template = str(rng.choice(_ADVERTS))
        return template.format(
            name=category.name, plural=category.plural, Plural=category.plural.capitalize()
        ), kind
    cut = int(rng.integers(max(3, len(clean) // 3), max(4, len(clean) - 2)))
    return clean[:cut], kind


def clean_alt_text(scene: Scene, rng: np.random.Generator) -> str:
    """A faithful but terse web-style description of the scene."""
    first = salience_order(scene.objects)[0]
    others = [
        group[0].category for group in category_groups(scene.objects) if group[0].category != first.category
    ]
    setting = str(rng.choice(_HUMAN_SETTINGS[scene.background.kind]))
    style = int(rng.integers(0, 4))
    if style == 0 and others:
        return f"{first.colour} {first.category} and {others[0]} {setting}"
    if style == 1:
        return f"{first.category.capitalize()} stock photo"
    if style == 2 and scene.signs:
        return f'{scene.signs[0].style.capitalize()} saying "{scene.signs[0].lines[0].text}" {setting}'
    return f"Photo of {article(first.colour)} {first.colour} {first.category} {setting}"
