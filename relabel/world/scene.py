"""Scenes: objects placed on a background with occlusion, signs on top, and the scene graph.

Objects are drawn back to front (their ``z`` order). An instance-id map records which object
(or sign) owns each pixel, so the ground-truth box and polygon of an object are those of its
*visible* part. A placement that would leave an object already in the scene less than
``MIN_VISIBLE`` of its pixels is rejected and tried elsewhere; signs never cover each other,
so every written line stays readable.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from relabel.config import WorldParams
from relabel.world.background import Background, paint_background
from relabel.world.geometry import mask_box, mask_to_polygons
from relabel.world.ontology import (
    BACKGROUND_KINDS,
    BACKGROUND_WEIGHTS,
    CATEGORIES,
    COLOURS,
    SIZE_CLASSES,
    SIZE_RANGES,
    SIZE_WEIGHTS,
    Category,
)
from relabel.world.pictograms import draw_pictogram
from relabel.world.signs import Sign, draw_sign

MIN_VISIBLE = 0.3  # an object keeps at least this share of its pixels visible
_PLACEMENT_TRIES = 12
_SIGN_ID_OFFSET = 100  # instance ids of signs in the id map; objects are 1, 2, ...
_OCCLUSION_SHARE = 0.02  # covering this share of an object's pixels makes one "in front of" it


@dataclass(frozen=True)
class Relation:
    """``relation`` holds from the owning object to object (or sign) number ``target``."""

    relation: str
    target: int
    target_kind: str = "object"

    def to_json(self) -> dict[str, object]:
        """The relation as written to ``scenes.jsonl``."""
        return {"relation": self.relation, self.target_kind: self.target}


@dataclass(frozen=True)
class SceneObject:
    """One object instance. ``drawn_box`` bounds the whole pictogram; ``box`` and ``polygon``
    (flat rings) bound its visible part, which is ``visible_fraction`` of its pixels."""

    index: int
    category: str
    colour: str
    size: str
    variant: int
    mirrored: bool
    z: int
    drawn_box: tuple[int, int, int, int]
    box: tuple[int, int, int, int]
    polygon: list[list[float]]
    visible_fraction: float
    relations: tuple[Relation, ...] = ()

    def occluders(self) -> list[Relation]:
        """The objects and signs in front of this one, most covering first."""
        return [relation for relation in self.relations if relation.relation == "behind"]

    def to_json(self) -> dict[str, object]:
        """The object as written to ``scenes.jsonl``."""
        return {
            "index": self.index,
            "category": self.category,
            "colour": self.colour,
            "rgb": list(COLOURS[self.colour]),
            "size": self.size,
            "variant": self.variant,
            "mirrored": self.mirrored,
            "z": self.z,
            "drawn_box": list(self.drawn_box),
            "box": list(self.box),
            "polygon": self.polygon,
            "visible_fraction": self.visible_fraction,
            "relations": [relation.to_json() for relation in self.relations],
        }


@dataclass(frozen=True)
class Scene:
    """The scene graph of one image; ``image_id`` is the SHA-256 of its PNG file."""

    index: int
    collection: str
    file: str
    width: int
    height: int
    background: Background
    objects: tuple[SceneObject, ...]
    signs: tuple[Sign, ...]
    image_id: str = ""

    def to_json(self) -> dict[str, object]:
        """The scene as one line of ``scenes.jsonl``."""
        return {
            "image_id": self.image_id,
            "index": self.index,
            "collection": self.collection,
            "file": self.file,
            "width": self.width,
            "height": self.height,
            "background": self.background.to_json(),
            "objects": [obj.to_json() for obj in self.objects],
            "signs": [sign.to_json() for sign in self.signs],
            "texts": [
                {
                    "sign": sign.index,
                    "line": number,
                    "text": line.text,
                    "font": line.font,
                    "font_size": line.font_size,
                    "angle": sign.angle,
                    "quad": list(line.quad),
                    "box": [round(value, 2) for value in line.box],
                }
                for sign in self.signs
                for number, line in enumerate(sign.lines)
            ],
        }


@dataclass
class _Canvas:
    """The image being composed and its instance-id map."""

    image: Image.Image
    ids: np.ndarray
    # instance id -> where its mask was drawn (left, top) and the mask
    drawn: dict[int, tuple[int, int, np.ndarray]] = field(default_factory=dict)

    def try_place(self, instance: int, left: int, top: int, mask: np.ndarray) -> bool:
        """Claim the mask's pixels for ``instance`` unless that hides too much of an object
        or any pixel of a sign."""
        candidate = self.ids.copy()
        region = candidate[top : top + mask.shape[0], left : left + mask.shape[1]]
        region[mask] = instance
        before = np.bincount(self.ids.ravel(), minlength=_SIGN_ID_OFFSET * 2)
        after = np.bincount(candidate.ravel(), minlength=_SIGN_ID_OFFSET * 2)
        for other, (_, _, other_mask) in self.drawn.items():
            if other >= _SIGN_ID_OFFSET and after[other] < before[other]:
                return False
            if after[other] < MIN_VISIBLE * np.count_nonzero(other_mask):
                return False
        self.ids = candidate
        self.drawn[instance] = (left, top, mask)
        return True


def compose_scene(
    rng: np.random.Generator, params: WorldParams, index: int, collection: str, file: str
) -> tuple[Image.Image, Scene]:
    """Draw one random scene and return the RGB image with its scene graph."""
    width, height = params.width, params.height
    kind = str(rng.choice(BACKGROUND_KINDS, p=[BACKGROUND_WEIGHTS[k] for k in BACKGROUND_KINDS]))
    pixels, background = paint_background(rng, kind, width, height)
    canvas = _Canvas(Image.fromarray(pixels.astype(np.uint8)), np.zeros((height, width), np.int16))

    drafts = []
    for _ in range(1 + int(rng.binomial(params.max_objects - 1, 0.5))):
        draft = _draw_object(rng, kind, background.horizon, width, height, len(drafts) + 1, canvas)
        if draft is not None:
            drafts.append(draft)

    signs: list[Sign] = []
    if rng.random() < params.text_probability:
        for _ in range(2 if rng.random() < 0.2 else 1):
            sign = _draw_sign(rng, kind, width, height, len(signs), canvas)
            if sign is not None:
                signs.append(sign)

    objects = _with_relations([_finish_object(draft, canvas) for draft in drafts])
    scene = Scene(index, collection, file, width, height, background, objects, tuple(signs))
    return canvas.image, scene


def _category_weights(kind: str) -> tuple[list[Category], np.ndarray]:
    present = [category for category in CATEGORIES if kind in category.contexts]
    weights = np.asarray([category.contexts[kind] for category in present])
    return present, weights / weights.sum()


def _position(
    rng: np.random.Generator, placement: str, w: int, h: int, horizon: int, width: int, height: int
) -> tuple[int, int]:
    left = int(rng.integers(0, width - w + 1))
    if placement == "ground":  # standing below the horizon
        lowest_top = horizon + 0.1 * (height - horizon) - h
    elif placement == "water":  # mostly below the waterline
        lowest_top = horizon - 0.4 * h
    else:  # "air": anywhere, the top of the box above the horizon
        return left, int(rng.integers(0, max(1, min(horizon, height - h)) + 1))
    low = int(np.clip(lowest_top, 0, height - h))
    return left, int(rng.integers(low, height - h + 1))


@dataclass(frozen=True)
class _ObjectDraft:
    instance: int
    category: str
    colour: str
    size: str
    variant: int
    mirrored: bool
    drawn_box: tuple[int, int, int, int]


def _draw_object(
    rng: np.random.Generator,
    kind: str,
    horizon: int,
    width: int,
    height: int,
    instance: int,
    canvas: _Canvas,
) -> _ObjectDraft | None:
    categories, weights = _category_weights(kind)
    category = categories[int(rng.choice(len(categories), p=weights))]
    colour = str(rng.choice(category.colours))
    size = str(rng.choice(SIZE_CLASSES, p=[SIZE_WEIGHTS[s] for s in SIZE_CLASSES]))
    h = rng.uniform(*SIZE_RANGES[size]) * min(width, height) * category.scale
    w = h * category.aspect
    shrink = min(1.0, 0.9 * width / w, 0.9 * height / h)
    w, h = max(8, round(w * shrink)), max(10, round(h * shrink))
    variant, mirrored = int(rng.integers(0, 6)), bool(rng.random() < 0.5)
    layer, mask = draw_pictogram(category.name, w, h, COLOURS[colour], variant, mirrored)
    for _ in range(_PLACEMENT_TRIES):
        left, top = _position(rng, category.placement, w, h, horizon, width, height)
        if canvas.try_place(instance, left, top, mask):
            canvas.image.paste(layer, (left, top), layer)
            return _ObjectDraft(
                instance,
                category.name,
                colour,
                size,
                variant,
                mirrored,
                (left, top, left + w, top + h),
            )
    return None


def _draw_sign(
    rng: np.random.Generator, kind: str, width: int, height: int, number: int, canvas: _Canvas
) -> Sign | None:
    drawing = draw_sign(rng, kind, width, height)
    if drawing is None:
        return None
    for _ in range(_PLACEMENT_TRIES):
        left = int(rng.integers(2, width - drawing.layer.width - 1))
        top = int(rng.integers(2, height - drawing.layer.height - 1))
        if canvas.try_place(_SIGN_ID_OFFSET + number, left, top, drawing.mask):
            canvas.image.paste(drawing.layer, (left, top), drawing.layer)
            return drawing.placed(number, left, top)
    return None


def _finish_object(draft: _ObjectDraft, canvas: _Canvas) -> SceneObject:
    """The object's visible box and polygon, and what hides part of it (``behind``)."""
    visible = canvas.ids == draft.instance
    left, top, mask = canvas.drawn[draft.instance]
    box = mask_box(visible)
    assert box is not None, "placement keeps every object partly visible"
    # who owns the pixels of this object's drawing now: itself or something in front of it
    owners = canvas.ids[top : top + mask.shape[0], left : left + mask.shape[1]][mask]
    counts = np.bincount(owners, minlength=_SIGN_ID_OFFSET * 2)
    drawn_pixels = int(mask.sum())
    behind = []
    for owner in np.argsort(-counts, kind="stable"):
        if counts[owner] < max(3, _OCCLUSION_SHARE * drawn_pixels):
            break
        if owner >= _SIGN_ID_OFFSET:
            behind.append(Relation("behind", int(owner) - _SIGN_ID_OFFSET, "sign"))
        elif owner != draft.instance:
            behind.append(Relation("behind", int(owner) - 1))
    return SceneObject(
        index=draft.instance - 1,
        category=draft.category,
        colour=draft.colour,
        size=draft.size,
        variant=draft.variant,
        mirrored=draft.mirrored,
        z=draft.instance - 1,
        drawn_box=draft.drawn_box,
        box=box,
        polygon=mask_to_polygons(visible),
        visible_fraction=round(int(visible.sum()) / drawn_pixels, 3),
        relations=tuple(behind),
    )


def _with_relations(objects: list[SceneObject]) -> tuple[SceneObject, ...]:
    """Add ``in front of`` (the inverse of ``behind``) and where each object is relative to
    each other one (``left of``, ``right of``, ``above``, ``below``, by visible centres)."""
    in_front_of: dict[int, list[Relation]] = {obj.index: [] for obj in objects}
    for obj in objects:
        for relation in obj.relations:
            if relation.target_kind == "object":
                in_front_of[relation.target].append(Relation("in front of", obj.index))
    finished = []
    for obj in objects:
        spatial = []
        for other in objects:
            if other.index == obj.index:
                continue
            dx = (obj.box[0] + obj.box[2] - other.box[0] - other.box[2]) / 2
            dy = (obj.box[1] + obj.box[3] - other.box[1] - other.box[3]) / 2
            if abs(dx) >= abs(dy):
                spatial.append(Relation("left of" if dx < 0 else "right of", other.index))
            else:
                spatial.append(Relation("above" if dy < 0 else "below", other.index))
        relations = (*obj.relations, *in_front_of[obj.index], *spatial)
        finished.append(replace(obj, relations=relations))
    return tuple(finished)
