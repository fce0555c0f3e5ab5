"""Ground-truth texts from the scene graph: captions at three granularities, region captions,
and the character span of every noun phrase that refers to objects (phrase grounding).

Captions are built phrase by phrase, so each phrase's span in the final text and the objects
it refers to are known exactly rather than found again by parsing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from relabel.world.ontology import CATEGORY_BY_NAME, FONT_BY_NAME
from relabel.world.scene import Scene, SceneObject
from relabel.world.signs import Sign

NUMBER_WORDS = tuple("zero one two three four five six seven eight nine ten eleven twelve".split())

# what each category does in a more detailed caption
_VERBS = {
    "ball": "lies",
    "tree": "stands",
    "flower": "grows",
    "house": "stands",
    "car": "is parked",
    "boat": "floats",
    "cat": "sits",
    "dog": "stands",
    "fish": "swims",
    "bird": "flies",
    "cup": "stands",
    "bottle": "stands",
    "star": "hangs",
    "umbrella": "stands open",
    "kite": "flies",
}

_BRIEF_SETTINGS = {
    "grass": ("on a grassy field", "on the grass", "in a field"),
    "indoor": ("in a room", "indoors", "on a wooden floor"),
    "water": ("on the water", "by the water", "at the lake"),
    "sky": ("against the sky", "under the open sky", "above some hills"),
}


@dataclass(frozen=True)
class Phrase:
    """Characters ``[start, end)`` of a caption name ``objects`` (indices in the scene)."""

    start: int
    end: int
    objects: tuple[int, ...]


@dataclass(frozen=True)
class Caption:
    """A caption of one granularity (its label-store task) with its grounded phrases."""

    task: str
    text: str
    phrases: tuple[Phrase, ...]


class _Writer:
    """Builds a text sentence by sentence, remembering where each grounded phrase lands."""

    def __init__(self) -> None:
        self._text = ""
        self._phrases: list[Phrase] = []

    def sentence(self, *parts: str | tuple[str, tuple[int, ...]]) -> None:
        """Append one sentence; a part given as (text, objects) is a grounded phrase."""
        if self._text:
            self._text += " "
        first = True
        for part in parts:
            words, objects = (part, ()) if isinstance(part, str) else part
            if first and words:
                words = words[0].upper() + words[1:]  # sentences start with a capital
                first = False
            if objects:
                self._phrases.append(Phrase(len(self._text), len(self._text) + len(words), objects))
            self._text += words

    def caption(self, task: str) -> Caption:
        """The finished caption."""
        return Caption(task, self._text, tuple(self._phrases))


def article(word: str) -> str:
    """``a`` or ``an`` before ``word``."""
    return "an" if word[0] in "aeiou" else "a"


def count_words(count: int) -> str:
    """A small number in words (digits from 13 on)."""
    return NUMBER_WORDS[count] if count < len(NUMBER_WORDS) else str(count)


def object_words(obj: SceneObject, *, size: bool = False, definite: bool = False) -> str:
    """``a large red ball`` / ``the red ball``: a noun phrase naming one object."""
    adjectives = [obj.size] if size and obj.size != "medium" else []
    words = " ".join([*adjectives, obj.colour, obj.category])
    return f"the {words}" if definite else f"{article(words)} {words}"


def group_words(objects: list[SceneObject], *, size: bool = False) -> str:
    """A noun phrase for several objects of one category: ``two red balls``, ``three trees``."""
    if len(objects) == 1:
        return object_words(objects[0], size=size)
    plural = CATEGORY_BY_NAME[objects[0].category].plural
    colours = {obj.colour for obj in objects}
    colour = f"{colours.pop()} " if len(colours) == 1 else ""
    return f"{count_words(len(objects))} {colour}{plural}"


def position_words(box: tuple[float, ...], width: int, height: int) -> str:
    """Where a box's centre lies in a 3x3 grid: ``in the top left``, ``on the right``, ..."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    column = "left" if cx < width / 3 else "right" if cx > 2 * width / 3 else "centre"
    row = "top" if cy < height / 3 else "bottom" if cy > 2 * height / 3 else "middle"
    if row == "middle":
        return "in the centre" if column == "centre" else f"on the {column}"
    if column == "centre":
        return f"at the {row}"
    return f"in the {row} {column}"


def salience_order(objects: tuple[SceneObject, ...]) -> list[SceneObject]:
    """Objects from the most to the least prominent (largest visible box first)."""
    return sorted(
        objects, key=lambda obj: (-(obj.box[2] - obj.box[0]) * (obj.box[3] - obj.box[1]), obj.index)
    )


def category_groups(objects: tuple[SceneObject, ...]) -> list[list[SceneObject]]:
    """Objects grouped by category, groups ordered by their most prominent member."""
    groups: dict[str, list[SceneObject]] = defaultdict(list)
    for obj in salience_order(objects):
        groups[obj.category].append(obj)
    return list(groups.values())


def _listed(items: list[tuple[str, tuple[int, ...]]]) -> list[str | tuple[str, tuple[int, ...]]]:
    """Phrases joined as ``a, b and c``."""
    parts: list[str | tuple[str, tuple[int, ...]]] = []
    for number, item in enumerate(items):
        if number:
            parts.append(" and " if number == len(items) - 1 else ", ")
        parts.append(item)
    return parts


def _indices(objects: list[SceneObject]) -> tuple[int, ...]:
    return tuple(obj.index for obj in objects)


def brief_caption(scene: Scene, rng: np.random.Generator) -> Caption:
    """One short sentence naming the most prominent objects and the setting."""
    writer = _Writer()
    groups = category_groups(scene.objects)[: int(rng.integers(1, 4))]
    items = [(group_words(group), _indices(group)) for group in groups]
    setting = str(rng.choice(_BRIEF_SETTINGS[scene.background.kind]))
    opening = str(rng.choice(["", "a picture of ", "a drawing of "]))
    writer.sentence(opening, *_listed(items), f" {setting}.")
    return writer.caption("brief_caption")


def _sign_words(sign: Sign) -> str:
    return f"{article(sign.colour)} {sign.colour} {sign.style}"


def _quoted(sign: Sign) -> str:
    return " and ".join(f'"{line.text}"' for line in sign.lines)


def detailed_caption(scene: Scene, rng: np.random.Generator) -> Caption:
    """A few sentences: every object with counts, colours and sizes, where each one is, and
    what the signs say."""
    writer = _Writer()
    groups = category_groups(scene.objects)
    items = [(group_words(group, size=True), _indices(group)) for group in groups]
    writer.sentence(
        str(rng.choice(["the image shows ", "in this image there are ", "this picture shows "])),
        *_listed(items),
        f" in {scene.background.description}.",
    )
    for group in groups[:4]:
        places = [position_words(obj.box, scene.width, scene.height) for obj in group]
        if len(group) == 1:
            writer.sentence((object_words(group[0], definite=True), _indices(group)), f" is {places[0]}.")
        elif len(set(places)) == 1:
            plural = CATEGORY_BY_NAME[group[0].category].plural
            writer.sentence((f"the {plural}", _indices(group)), f" are all {places[0]}.")
        else:
            plural = CATEGORY_BY_NAME[group[0].category].plural
            unique = list(dict.fromkeys(places))
            writer.sentence(
                (f"the {plural}", _indices(group)),
                " are ",
                *_listed([(p, ()) for p in unique]),
                ".",
            )
    for sign in scene.signs:
        seen = any((s.style, s.colour) == (sign.style, sign.colour) for s in scene.signs[: sign.index])
        opening = f"another {sign.colour} {sign.style}" if seen else _sign_words(sign)
        writer.sentence(f"{opening} reads {_quoted(sign)}.")
    if len(scene.objects) > 2:
        writer.sentence(f"there are {count_words(len(scene.objects))} objects in total.")
    return writer.caption("detailed_caption")


def _tilt_words(angle: float) -> str:
    amount = "slightly " if abs(angle) < 12 else ""
    return f"tilted {amount}{'up' if angle > 0 else 'down'} to the right"


def more_detailed_caption(scene: Scene, rng: np.random.Generator) -> Caption:
    """Several sentences: the setting, then each object with its size, colour, place,
    occlusion and a spatial relation to its nearest neighbour, then every sign with its
    text, colour, font and tilt."""
    writer = _Writer()
    setting = "an indoor scene" if scene.background.kind == "indoor" else "an outdoor scene"
    writer.sentence(f"this is {setting} showing {scene.background.description}.")
    by_index = {obj.index: obj for obj in scene.objects}
    for obj in salience_order(scene.objects):
        size = "medium-sized" if obj.size == "medium" else obj.size
        words = f"{article(size)} {size} {obj.colour} {obj.category}"
        place = position_words(obj.box, scene.width, scene.height)
        parts: list[str | tuple[str, tuple[int, ...]]] = [
            (words, (obj.index,)),
            f" {_VERBS[obj.category]} {place}",
        ]
        hidden = obj.occluders()
        if hidden:
            amount = "mostly" if obj.visible_fraction < 0.6 else "partly"
            parts.append(f", {amount} hidden behind ")
            first = hidden[0]
            if first.target_kind == "sign":
                parts.append(f"the {scene.signs[first.target].style}")
            else:
                parts.append((_reference(by_index[first.target], obj, scene), (first.target,)))
        else:
            ahead = [r for r in obj.relations if r.relation == "in front of"]
            neighbour = ahead[0].target if ahead else _nearest(obj, scene.objects)
            if neighbour is not None:
                relation = "in front of" if ahead else _spatial(obj, neighbour)
                parts.extend([f", {relation} ", (_reference(by_index[neighbour], obj, scene), (neighbour,))])
        writer.sentence(*parts, ".")
    for sign in scene.signs:
        style = FONT_BY_NAME[sign.lines[0].font].style
        writer.sentence(
            f"{_sign_words(sign)} {_tilt_words(sign.angle)} carries the "
            f"{'words' if len(sign.lines) > 1 else 'text'} {_quoted(sign)} in {article(style)} "
            f"{style} font."
        )
    return writer.caption("more_detailed_caption")


def _reference(target: SceneObject, speaker: SceneObject, scene: Scene) -> str:
    """A definite phrase, in a sentence about ``speaker``, for ``target`` that fits no other
    object of the scene: ``the red fish``, else ``the small red fish``, else ``the other red
    fish`` (one of a pair that includes the speaker) or ``one of the red fish``."""
    alike = [o for o in scene.objects if (o.category, o.colour) == (target.category, target.colour)]
    if len(alike) == 1:
        return object_words(target, definite=True)
    if sum(o.size == target.size for o in alike) == 1:
        size = "medium-sized" if target.size == "medium" else target.size
        return f"the {size} {target.colour} {target.category}"
    if len(alike) == 2 and speaker in alike:
        return f"the other {target.colour} {target.category}"
    return f"one of the {target.colour} {CATEGORY_BY_NAME[target.category].plural}"


def _nearest(obj: SceneObject, objects: tuple[SceneObject, ...]) -> int | None:
    def centre(o: SceneObject) -> tuple[float, float]:
        return (o.box[0] + o.box[2]) / 2, (o.box[1] + o.box[3]) / 2

    here = centre(obj)
    others = [
        (np.hypot(centre(o)[0] - here[0], centre(o)[1] - here[1]), o.index) for o in objects if o is not obj
    ]
    return min(others)[1] if others else None


def _spatial(obj: SceneObject, target: int) -> str:
    relation = next(
        r.relation
        for r in obj.relations
        if r.target == target
        and r.target_kind == "object"
        and r.relation in ("left of", "right of", "above", "below")
    )
    return relation if relation in ("above", "below") else f"to the {relation}"


def region_caption(obj: SceneObject, scene: Scene) -> str:
    """A brief text about one object region: ``a large red ball in the top left, partly
    hidden behind a tree``."""
    text = f"{object_words(obj, size=True)} {position_words(obj.box, scene.width, scene.height)}"
    hidden = obj.occluders()
    if hidden:
        first = hidden[0]
        behind = (
            scene.signs[first.target].style
            if first.target_kind == "sign"
            else next(o.category for o in scene.objects if o.index == first.target)
        )
        text += f", partly hidden behind {article(behind)} {behind}"
    return text


def scene_captions(scene: Scene, rng: np.random.Generator) -> list[Caption]:
    """The brief, detailed and more detailed caption of a scene."""
    return [
        brief_caption(scene, rng),
        detailed_caption(scene, rng),
        more_detailed_caption(scene, rng),
    ]
