"""Every Florence-2 task as text, both ways: label rows -> (prompt, target), generated text -> rows.

Florence-2 (paper section 3, appendix A) casts every task as translation: the image plus a
task prompt goes in, text comes out. Regions are written with location tokens: a coordinate
is quantized into one of 1000 bins along its axis and written ``<loc_k>``; x and y share the
same vocabulary. A box is 4 tokens (x0, y0, x1, y1), a quad 8 (four corners, clockwise from
the top-left), a polygon 2 tokens per point, its rings separated by ``<sep>``.

Task token (prompt after it) -> target, per task:

- ``<CAPTION>``, ``<DETAILED_CAPTION>``, ``<MORE_DETAILED_CAPTION>`` -> the caption text
- ``<OD>`` -> ``car<loc x4>dog<loc x4>`` (every object, category before each box)
- ``<DENSE_REGION_CAPTION>`` -> ``a red car<loc x4>...`` (every region caption)
- ``<REGION_PROPOSAL>`` -> ``<loc x4><loc x4>...`` (every object box, no text)
- ``<CAPTION_TO_PHRASE_GROUNDING>`` (a caption) -> ``red car<loc x4>two dogs<loc x4><loc x4>``
- ``<REFERRING_EXPRESSION_SEGMENTATION>`` (an expression) -> ``<loc x2n><sep><loc x2m>``
- ``<REGION_TO_SEGMENTATION>`` (``<loc x4>``, a box) -> ``<loc x2n><sep><loc x2m>``
- ``<OPEN_VOCABULARY_DETECTION>`` (a category) -> ``car<loc x4>car<loc x4>``
- ``<REGION_TO_CATEGORY>`` (``<loc x4>``) -> ``car``
- ``<REGION_TO_DESCRIPTION>`` (``<loc x4>``) -> ``a red car``
- ``<OCR>`` -> ``EXIT 94\\nTucker Rd`` (one line per text region, in reading order)
- ``<OCR_WITH_REGION>`` -> ``EXIT 94<loc x8>Tucker Rd<loc x8>``

``serialise`` turns one image's label rows (the label-store schema, ``relabel.labels``) into
``Example``s; ``parse`` turns what a model generated back into label rows and never raises on
any text: what it cannot read becomes a line in ``Parsed.problems``. Targets are written in a
stable order (regions top to bottom, then left to right), so the same rows give the same text.

Plain functions, no framework: this module knows nothing of Dagster or MLflow.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from relabel.task_tokens import (
    CAPTION,
    CAPTION_TO_PHRASE_GROUNDING,
    DENSE_REGION_CAPTION,
    DETAILED_CAPTION,
    MORE_DETAILED_CAPTION,
    OCR,
    OCR_WITH_REGION,
    OD,
    OPEN_VOCABULARY_DETECTION,
    REFERRING_EXPRESSION_SEGMENTATION,
    REGION_PROPOSAL,
    REGION_TO_CATEGORY,
    REGION_TO_DESCRIPTION,
    REGION_TO_SEGMENTATION,
    TASK_SOURCES,
    TASK_TOKENS,
)

# ----------------------------------------------------------------------------- location tokens

LOC_BINS = 1000
SEP = "<sep>"


def quantize(value: float, size: float, bins: int = LOC_BINS) -> int:
    """The bin of a pixel coordinate ``value`` along an axis of ``size`` pixels.

    ``floor(value / size * bins)`` clamped to ``[0, bins - 1]``, so the far edge (``value ==
    size``) and coordinates slightly outside the image still get a token.

    >>> quantize(10, 100), quantize(100, 100), quantize(-3, 100)
    (100, 999, 0)
    """
    if not math.isfinite(value) or not size > 0:
        raise ValueError(f"cannot quantize {value!r} on an axis of {size!r} pixels")
    # multiply before dividing: an integer pixel on a bin edge then lands exactly on it
    return min(max(math.floor(value * bins / size), 0), bins - 1)


def dequantize(bin: int, size: float, bins: int = LOC_BINS) -> float:
    """The pixel coordinate a bin stands for: its centre, ``(bin + 0.5) * size / bins``.

    The centre is at most half a bin (``size / bins / 2``) from any value that fell in it.
    """
    return (bin + 0.5) * size / bins


def loc_token(k: int) -> str:
    """The location token of bin ``k``: ``<loc_k>``."""
    return f"<loc_{k}>"


# ------------------------------------------------------------------------------------- tasks


# every token the tokenizer must know beyond ordinary text
VOCABULARY = TASK_TOKENS + (SEP,) + tuple(loc_token(k) for k in range(LOC_BINS))


@dataclass(frozen=True)
class Example:
    """One training pair: the image plus ``prompt`` should generate ``target``.

    ``label_ids`` are the label rows the pair was written from, in the order they appear.
    """

    task: str
    prompt: str
    target: str
    label_ids: tuple[str, ...]


@dataclass
class Parsed:
    """Label rows read back from generated text, and a readable line per thing that was not."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


# -------------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class _Grid:
    """The image's pixel size: flat [x, y, x, y, ...] coordinates to tokens and back."""

    width: int
    height: int

    def axis(self, index: int) -> int:
        return self.width if index % 2 == 0 else self.height

    def tokens(self, flat: Sequence[float]) -> str:
        return "".join(loc_token(quantize(v, self.axis(i))) for i, v in enumerate(flat))

    def pixels(self, bins: Sequence[int]) -> list[float]:
        return [dequantize(b, self.axis(i)) for i, b in enumerate(bins)]


def _grid(width: int, height: int) -> _Grid:
    if not (width > 0 and height > 0):
        raise ValueError(f"image size must be positive, got {width} x {height}")
    return _Grid(width, height)


# ------------------------------------------------------------------------------- serialise


def serialise(
    labels: pl.DataFrame, width: int, height: int, tasks: Sequence[str] | None = None
) -> list[Example]:
    """The Florence-2 examples of ONE image's label rows.

    Parameters
    ----------
    labels
        The image's label rows (label-store columns; missing columns read as null). Which rows
        to use (status, score, source) is the caller's choice: every row given is written.
    width, height
        The image's size in pixels; label geometry is in these pixels.
    tasks
        Task tokens to write, in this order (default: all of ``TASK_TOKENS``).

    Returns
    -------
    One ``Example`` per task instance: per image for the caption, OD, dense-caption, region
    proposal and OCR tasks, per caption for grounding, per category for open-vocabulary
    detection, per region for the region tasks. A row that lacks what a task needs (no
    polygon, no text, a text that would read as a token) gives nothing for that task. Two
    rows that write the same (task, prompt, target) give one example naming both. The list
    depends only on the rows' content and ids, not on their order.

    >>> from relabel.labels import frame
    >>> rows = frame("labels", [{"label_id": "a", "task": "object",
    ...     "annotation_type": "region_text", "category": "car", "box": [10, 20, 50, 80]}])
    >>> serialise(rows, 100, 200, [OD])[0].target
    'car<loc_100><loc_100><loc_500><loc_400>'
    """
    grid = _grid(width, height)
    unknown = [task for task in tasks or () if task not in TASK_SOURCES]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; known: {list(TASK_TOKENS)}")
    rows = labels.to_dicts()
    examples: list[Example] = []
    for task in dict.fromkeys(TASK_TOKENS if tasks is None else tasks):
        sources = [row for row in rows if row.get("task") in TASK_SOURCES[task]]
        examples.extend(_WRITERS[task](task, sources, grid))
    return _merge_duplicates(examples)


def _write_captions(task: str, rows: list[dict], grid: _Grid) -> list[Example]:
    examples = []
    for row in sorted(rows, key=lambda row: (row.get("text") or "", _id(row))):
        text = _writable(row.get("text"))
        if text:
            examples.append(Example(task, task, text, (_id(row),)))
    return examples


def _write_object_detection(task: str, rows: list[dict], grid: _Grid) -> list[Example]:
    found = [(box, name, row) for row in rows if (box := _box_of(row)) and (name := _category_of(row))]
    return _one_example(task, task, grid, found)


def _write_dense_region_caption(task: str, rows: list[dict], grid: _Grid) -> list[Example]:
    found = [
        (box, text, row) for row in rows if (box := _box_of(row)) and (text := _writable(row.get("text")))
    ]
    return _one_example(task, task, grid, found)


def _write_region_proposal(task: str, rows: list[dict], grid: _Grid) -> list[Example]:
    found = [(box, "", row) for row in rows if (box := _box_of(row))]
    return _one_example(task, task, grid, found)


def _one_example(
    task: str, prompt: str, grid: _Grid, found: list[tuple[list[float], str, dict]]
) -> list[Example]:
    # "text<loc x4>" per region, regions in reading order; nothing found -> no example
    if not found:
        return []
    found.sort(key=lambda item: (_position(item[0]), item[1], _id(item[2])))
    target = "".join(text + grid.tokens(box) for box, text, _ in found)
    return [Example(task, prompt, target, tuple(_id(row) for _, _, row in found))]


def _write_phrase_grounding(task: str, rows: list[dict], grid: _Grid) -> list[Example]:
    # one example per caption; its phrases in caption order, each followed by all its boxes
    by_caption: dict[str, dict[tuple[int, int], list[tuple[list[float], dict]]]] = {}
    for row in rows:
        caption, box = row.get("text"), _box_of(row)
        span = _phrase_span(caption, row.get("phrase_start"), row.get("phrase_end"))
        if span is None or box is None:
            continue
        by_caption.setdefault(caption, {}).setdefault(span, []).append((box, row))
    examples = []
    for caption in sorted(by_caption):
        target, ids = "", []
        for (start, end), boxes in sorted(by_caption[caption].items()):
            boxes.sort(key=lambda item: (_position(item[0]), _id(item[1])))
            target += caption[start:end] + "".join(grid.tokens(box) for box, _ in boxes)
            ids += [_id(row) for _, row in boxes]
        examples.append(Example(task, task + caption, target, tuple(ids)))
    return examples


def _write_referring_segmentation(task: str, rows: list[dict], grid: _Grid) -> list[Example]:
    found = []
    for row in rows:
        rings, box = _rings_of(row), _box_of(row)
        # the expression: a region's caption, or an object's category
        if row.get("task") == "region_caption":
            expression = _writable(row.get("text"))
        else:
            expression = _category_of(row)
        if rings and box and expression:
            found.append((_position(box), expression, _id(row), rings))
    return [
        Example(task, task + expression, _polygon_tokens(rings, grid), (label_id,))
        for _, expression, label_id, rings in sorted(found, key=lambda item: item[:3])
    ]


def _write_region_to_segmentation(task: str, rows: list[dict], grid: _Grid) -> list[Example]:
    found = [(box, _id(row), rings) for row in rows if (rings := _rings_of(row)) and (box := _box_of(row))]
    return [
        Example(task, task + grid.tokens(box), _polygon_tokens(rings, grid), (label_id,))
        for box, label_id, rings in sorted(found, key=lambda item: (_position(item[0]), item[1]))
    ]


def _write_open_vocabulary_detection(task: str, rows: list[dict], grid: _Grid) -> list[Example]:
    by_category: dict[str, list[tuple[list[float], str, dict]]] = {}
    for row in rows:
        box, name = _box_of(row), _category_of(row)
        if box and name:
            by_category.setdefault(name, []).append((box, name, row))
    return [
        example
        for name in sorted(by_category)
        for example in _one_example(task, task + name, grid, by_category[name])
    ]


def _write_region_to_text(task: str, rows: list[dict], grid: _Grid) -> list[Example]:
    # REGION_TO_CATEGORY reads object rows (their category), REGION_TO_DESCRIPTION region
    # captions (their text)
    found = []
    for row in rows:
        box = _box_of(row)
        text = _category_of(row) if task == REGION_TO_CATEGORY else _writable(row.get("text"))
        if box and text:
            found.append((_position(box), text, _id(row), box))
    return [
        Example(task, task + grid.tokens(box), text, (label_id,))
        for _, text, label_id, box in sorted(found, key=lambda item: item[:3])
    ]


def _write_ocr(task: str, rows: list[dict], grid: _Grid) -> list[Example]:
    # one line per text region in reading order; a line break inside a region's text would
    # read back as two regions, so it becomes a space
    found = []
    for row in rows:
        line = _writable((row.get("text") or "").replace("\n", " "))
        if line:
            found.append((_reading_order(row), line, _id(row)))
    if not found:
        return []
    found.sort()
    target = "\n".join(line for _, line, _ in found)
    return [Example(task, task, target, tuple(label_id for _, _, label_id in found))]


def _write_ocr_with_region(task: str, rows: list[dict], grid: _Grid) -> list[Example]:
    found = []
    for row in rows:
        quad, text = _quad_of(row), _writable(row.get("text"))
        if quad and text:
            found.append((_reading_order(row), text, _id(row), quad))
    if not found:
        return []
    found.sort(key=lambda item: item[:3])
    target = "".join(text + grid.tokens(quad) for _, text, _, quad in found)
    return [Example(task, task, target, tuple(label_id for _, _, label_id, _ in found))]


_WRITERS = {
    CAPTION: _write_captions,
    DETAILED_CAPTION: _write_captions,
    MORE_DETAILED_CAPTION: _write_captions,
    OD: _write_object_detection,
    DENSE_REGION_CAPTION: _write_dense_region_caption,
    REGION_PROPOSAL: _write_region_proposal,
    CAPTION_TO_PHRASE_GROUNDING: _write_phrase_grounding,
    REFERRING_EXPRESSION_SEGMENTATION: _write_referring_segmentation,
    REGION_TO_SEGMENTATION: _write_region_to_segmentation,
    OPEN_VOCABULARY_DETECTION: _write_open_vocabulary_detection,
    REGION_TO_CATEGORY: _write_region_to_text,
    REGION_TO_DESCRIPTION: _write_region_to_text,
    OCR: _write_ocr,
    OCR_WITH_REGION: _write_ocr_with_region,
}


def _merge_duplicates(examples: Iterable[Example]) -> list[Example]:
    # an object row and a region caption of the same region write the same segmentation pair
    merged: dict[tuple[str, str, str], list[str]] = {}
    for example in examples:
        ids = merged.setdefault((example.task, example.prompt, example.target), [])
        ids.extend(label_id for label_id in example.label_ids if label_id not in ids)
    return [Example(*key, tuple(ids)) for key, ids in merged.items()]


# ------------------------------------------------------------------- reading a label row


def _id(row: dict) -> str:
    return row.get("label_id") or ""


def _finite(values: Any, length: int | None = None) -> list[float] | None:
    if values is None:
        return None
    values = [float(v) for v in values if v is not None]
    if (length is not None and len(values) != length) or not all(math.isfinite(v) for v in values):
        return None
    return values


def _bounds(flat: list[float]) -> list[float]:
    xs, ys = flat[0::2], flat[1::2]
    return [min(xs), min(ys), max(xs), max(ys)]


def _box_of(row: dict) -> list[float] | None:
    """The row's box with x0 <= x1 and y0 <= y1; a row without one is bounded by its quad or
    polygon (every region can be detected)."""
    box = _finite(row.get("box"), 4)
    if box:
        return [min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])]
    quad = _finite(row.get("quad"), 8)
    if quad:
        return _bounds(quad)
    rings = _rings_of(row)
    return _bounds([v for ring in rings for v in ring]) if rings else None


def _quad_of(row: dict) -> list[float] | None:
    """The row's quad, or its box's corners clockwise from the top-left."""
    quad = _finite(row.get("quad"), 8)
    if quad:
        return quad
    box = _box_of(row)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def _rings_of(row: dict) -> list[list[float]]:
    # rings of at least 3 points with finite coordinates; anything else cannot be written
    rings = []
    for ring in row.get("polygon") or []:
        ring = _finite(ring)
        if ring and len(ring) % 2 == 0 and len(ring) >= 6:
            rings.append(ring)
    return rings


def _polygon_tokens(rings: list[list[float]], grid: _Grid) -> str:
    return SEP.join(grid.tokens(ring) for ring in rings)


def _category_of(row: dict) -> str | None:
    # object rows carry the category in both columns; ``category`` is the canonical name
    return _writable(row.get("category")) or _writable(row.get("text"))


def _position(box: list[float]) -> tuple[float, ...]:
    # reading order: top to bottom, then left to right
    return (box[1], box[0], box[3], box[2])


def _reading_order(row: dict) -> tuple:
    # regions first, top to bottom then left to right; texts without a region after them
    box = _box_of(row)
    return (0, *_position(box)) if box else (1,)


def _writable(text: Any) -> str | None:
    """``text`` stripped, or None when it is empty, holds something that reads as a token
    (``<loc_5>``, ``<sep>``, ``<OD>``) or ends like an unfinished one (``x <lo``): written
    into a target it could not be read back."""
    if not isinstance(text, str):
        return None
    text = text.strip()
    return text if text and not _TOKEN.search(text) and not _CUT_TOKEN.search(text) else None


def _phrase_span(caption: Any, start: Any, end: Any) -> tuple[int, int] | None:
    # the span [start, end) in the caption, narrowed to its phrase without surrounding
    # whitespace (targets hold stripped texts)
    if not isinstance(caption, str) or _TOKEN.search(caption) or start is None or end is None:
        return None
    if not 0 <= start < end <= len(caption):
        return None
    phrase = caption[start:end]
    stripped = phrase.strip()
    if not stripped:
        return None
    start += len(phrase) - len(phrase.lstrip())
    return start, start + len(stripped)


# ----------------------------------------------------------------------------------- parse

# a special token: <loc_12>, <sep>, <OD>, </s>; anything else with angle brackets is text
_TOKEN = re.compile(r"<(/?[A-Za-z_][A-Za-z0-9_]*)>")
_LOC = re.compile(r"loc_([0-9]+)")
# an unfinished location or separator token where generation stopped: "...<loc_12", "...<se"
_CUT_TOKEN = re.compile(r"<(l(o(c(_[0-9]*)?)?)?|s(e(p)?)?)?$")
# BART's framing tokens, left in when generated ids are decoded without skip_special_tokens
_FRAMING = {"s", "/s", "pad"}

# the label-store task of the rows a text-only task gives back
_TEXT_TASKS = {
    CAPTION: "brief_caption",
    DETAILED_CAPTION: "detailed_caption",
    MORE_DETAILED_CAPTION: "more_detailed_caption",
}


def parse(task: str, generated: str, width: int, height: int, *, prompt_text: str | None = None) -> Parsed:
    """Label rows read from the text a model generated for ``task`` on a ``width`` x ``height``
    image.

    Each row is a dict with the label-store columns annotation_type, task, text,
    phrase_start, phrase_end, region_kind, box, quad, polygon and category (None where they
    do not apply); coordinates are pixels (bin centres, so within half a bin of what was
    written). ``prompt_text`` is the prompt the text answers, with or without the task
    token: grounding finds its phrases in it, region tasks read their box from it, and
    open-vocabulary detection and referring segmentation their category or expression.

    Never raises for any ``generated`` text: everything well-formed is in ``rows``, in the
    order it was written, and everything that is not (an unfinished box, a location out of
    range, an unknown token, text where a region belongs) is a readable line in
    ``problems``. Raises ``ValueError`` only for an unknown task or a non-positive size.

    >>> parse(OD, "car<loc_100><loc_100><loc_500><loc_400>", 100, 200).rows[0]["box"]
    [10.05, 20.1, 50.05, 80.1]
    """
    if task not in TASK_SOURCES:
        raise ValueError(f"unknown task {task!r}; known: {list(TASK_TOKENS)}")
    grid = _grid(width, height)
    parsed = Parsed()
    if not generated.strip():
        parsed.problems.append("the generated text is empty")
        return parsed
    items = _lex(generated, parsed.problems)
    prompt = None
    if prompt_text is not None:
        prompt = prompt_text[len(task) :] if prompt_text.startswith(task) else prompt_text
    _READERS[task](task, items, prompt, grid, parsed)
    return parsed


def _lex(text: str, problems: list[str], where: str = "") -> list[tuple[str, Any]]:
    """``text`` as items: ("text", str), ("loc", bin or None when out of range), ("sep", None).

    Framing tokens (``<s>``, ``</s>``, ``<pad>``) are dropped; other unknown tokens are dropped
    with a problem.
    """
    items: list[tuple[str, Any]] = []
    position = 0
    for match in _TOKEN.finditer(text):
        if match.start() > position:
            items.append(("text", text[position : match.start()]))
        position = match.end()
        name = match.group(1)
        loc = _LOC.fullmatch(name)
        if loc:
            digits = loc.group(1)
            # compare digit counts first: int() refuses strings of thousands of digits
            in_range = len(digits) <= len(str(LOC_BINS)) and int(digits) < LOC_BINS
            if not in_range:
                problems.append(f"{where}location token {_quote(match.group())} is outside 0..{LOC_BINS - 1}")
            items.append(("loc", int(digits) if in_range else None))
        elif match.group() == SEP:
            items.append(("sep", None))
        elif name not in _FRAMING:
            problems.append(f"{where}unknown token {_quote(match.group())} ignored")
    rest = text[position:]
    cut = _CUT_TOKEN.search(rest)
    if cut:
        problems.append(f"{where}the text ends in an unfinished token {_quote(cut.group())}")
        rest = rest[: cut.start()]
    if rest:
        items.append(("text", rest))
    return items


def _quote(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _row(annotation_type: str, task: str, **values: Any) -> dict[str, Any]:
    row = dict.fromkeys(
        ("text", "phrase_start", "phrase_end", "region_kind", "box", "quad", "polygon", "category")
    )
    return {"annotation_type": annotation_type, "task": task, **row, **values}


def _object_row(**values: Any) -> dict[str, Any]:
    return _row("region_text", "object", region_kind="object", **values)


def _region_caption_row(**values: Any) -> dict[str, Any]:
    return _row("region_text", "region_caption", region_kind="object", **values)


# --- readers: one per kind of target; each appends to parsed.rows and parsed.problems


def _read_caption(task: str, items: list, prompt: str | None, grid: _Grid, parsed: Parsed) -> None:
    text = _text_only(items, parsed.problems, " ")
    if text:
        parsed.rows.append(_row("text", _TEXT_TASKS[task], text=text))
    else:
        parsed.problems.append("no caption text")


def _read_ocr(task: str, items: list, prompt: str | None, grid: _Grid, parsed: Parsed) -> None:
    # one text region per line; OCR without regions gives rows without geometry
    lines = [line.strip() for line in _text_only(items, parsed.problems, "\n").split("\n")]
    for line in lines:
        if line:
            parsed.rows.append(_row("region_text", "ocr", region_kind="text", text=line))
    if not parsed.rows:
        parsed.problems.append("no OCR text")


def _read_region_text(task: str, items: list, prompt: str | None, grid: _Grid, parsed: Parsed) -> None:
    text = _text_only(items, parsed.problems, " ")
    box = _prompt_box(prompt, grid, parsed.problems)
    if not text:
        parsed.problems.append("no text for the region")
    elif task == REGION_TO_CATEGORY:
        parsed.rows.append(_object_row(text=text, category=text, box=box))
    else:
        parsed.rows.append(_region_caption_row(text=text, box=box))


def _read_boxes(task: str, items: list, prompt: str | None, grid: _Grid, parsed: Parsed) -> None:
    # OD, dense region captions, region proposals, open-vocabulary detection, grounding
    search_from: tuple[int, int] | None = None
    default = prompt.strip() if task == OPEN_VOCABULARY_DETECTION and prompt else ""
    for text, bins in _labelled_regions(items, 4, "box", parsed.problems):
        number = f"box {len(parsed.rows) + 1}"
        if task == REGION_PROPOSAL and text:
            parsed.problems.append(f"{number}: text {_quote(text)} ignored (proposals have none)")
        text = text or default
        if not text and task != REGION_PROPOSAL:
            parsed.problems.append(f"{number}: a box without a text; dropped")
            continue
        box = _box(bins, grid, number, parsed.problems)
        if task == OD or task == OPEN_VOCABULARY_DETECTION:
            row = _object_row(text=text, category=text, box=box)
        elif task == DENSE_REGION_CAPTION:
            row = _region_caption_row(text=text, box=box)
        elif task == REGION_PROPOSAL:
            row = _object_row(box=box)
        else:
            caption, start, search_from = _find_phrase(prompt, text, search_from, parsed.problems)
            row = _row(
                "text_phrase_region",
                "phrase_grounding",
                region_kind="object",
                text=caption,
                phrase_start=start,
                phrase_end=start + len(text),
                box=box,
            )
        parsed.rows.append(row)


def _read_quads(task: str, items: list, prompt: str | None, grid: _Grid, parsed: Parsed) -> None:
    for text, bins in _labelled_regions(items, 8, "quad", parsed.problems):
        if not text:
            parsed.problems.append(f"quad {len(parsed.rows) + 1}: a quad without a text; dropped")
            continue
        quad = grid.pixels(bins)
        parsed.rows.append(_row("region_text", "ocr", region_kind="text", text=text, quad=quad))


def _read_polygon(task: str, items: list, prompt: str | None, grid: _Grid, parsed: Parsed) -> None:
    rings: list[list[int | None]] = [[]]
    for kind, value in items:
        if kind == "loc":
            rings[-1].append(value)
        elif kind == "sep":
            rings.append([])
        elif value.strip():
            parsed.problems.append(f"text {_quote(value.strip())} ignored (a polygon has none)")
    polygon = []
    for number, ring in enumerate(rings, 1):
        if None in ring:
            parsed.problems.append(f"ring {number}: a location is out of range; ring dropped")
            continue
        if len(ring) % 2:
            parsed.problems.append(f"ring {number}: an odd number of locations; the last dropped")
            ring = ring[:-1]
        if len(ring) < 6:
            points = len(ring) // 2
            plural = "" if points == 1 else "s"
            parsed.problems.append(f"ring {number}: {points} point{plural}, needs 3; dropped")
            continue
        polygon.append(grid.pixels(ring))
    if not polygon:
        return
    if task == REFERRING_EXPRESSION_SEGMENTATION:
        # the expression that was asked about; a region caption, as it describes one region
        expression = prompt.strip() if prompt and prompt.strip() else None
        parsed.rows.append(_region_caption_row(text=expression, polygon=polygon))
    else:
        box = _prompt_box(prompt, grid, parsed.problems)
        parsed.rows.append(_object_row(box=box, polygon=polygon))


_READERS = {
    CAPTION: _read_caption,
    DETAILED_CAPTION: _read_caption,
    MORE_DETAILED_CAPTION: _read_caption,
    OD: _read_boxes,
    DENSE_REGION_CAPTION: _read_boxes,
    REGION_PROPOSAL: _read_boxes,
    CAPTION_TO_PHRASE_GROUNDING: _read_boxes,
    REFERRING_EXPRESSION_SEGMENTATION: _read_polygon,
    REGION_TO_SEGMENTATION: _read_polygon,
    OPEN_VOCABULARY_DETECTION: _read_boxes,
    REGION_TO_CATEGORY: _read_region_text,
    REGION_TO_DESCRIPTION: _read_region_text,
    OCR: _read_ocr,
    OCR_WITH_REGION: _read_quads,
}


def _text_only(items: list, problems: list[str], joiner: str) -> str:
    # tasks whose answer is text: location tokens and separators are not part of it
    stray = sum(kind != "text" for kind, _ in items)
    if stray:
        problems.append(f"{stray} location or <sep> token(s) ignored (this task answers in text)")
    return joiner.join(value.strip() for kind, value in items if kind == "text" and value.strip())


def _labelled_regions(items: list, size: int, shape: str, problems: list[str]) -> list[tuple[str, list[int]]]:
    """(text, bins) for each complete region of "text<loc x size><loc x size>...text<loc...>".

    A text may be followed by several regions (Florence-2 writes "dogs<box><box>"); each
    gets the text. A text with no region, an unfinished region or one with a location out of
    range is dropped with a problem.
    """
    segments: list[tuple[str, list[int | None]]] = []
    text, locs = "", []
    for kind, value in items:
        if kind == "text":
            if locs:
                segments.append((text, locs))
                text, locs = "", []
            text += value
        elif kind == "loc":
            locs.append(value)
        else:
            problems.append(f"<sep> after {_quote(text.strip())} ignored (only polygons have one)")
    if text or locs:
        segments.append((text, locs))

    regions = []
    for text, locs in segments:
        text = text.strip()
        if not locs:
            if text:
                problems.append(f"text {_quote(text)} has no {shape}; dropped")
            continue
        whole = len(locs) - len(locs) % size
        for start in range(0, whole, size):
            chunk = locs[start : start + size]
            if None in chunk:
                problems.append(f"a {shape} of {_quote(text)} has a location out of range; dropped")
            else:
                regions.append((text, chunk))
        if whole < len(locs):
            problems.append(
                f"{len(locs) - whole} location token(s) after {_quote(text)} do not make a {shape} "
                f"({size} are needed); dropped"
            )
    return regions


def _box(bins: list[int], grid: _Grid, number: str, problems: list[str]) -> list[float]:
    x0, y0, x1, y1 = bins
    if x1 < x0:
        problems.append(f"{number}: x1 < x0, swapped")
        x0, x1 = x1, x0
    if y1 < y0:
        problems.append(f"{number}: y1 < y0, swapped")
        y0, y1 = y1, y0
    return grid.pixels([x0, y0, x1, y1])


def _prompt_box(prompt: str | None, grid: _Grid, problems: list[str]) -> list[float] | None:
    # region tasks: the box asked about is in the prompt; without a prompt it is unknown
    if prompt is None:
        return None
    items = _lex(prompt, problems, where="prompt: ")
    items = [(kind, value) for kind, value in items if kind != "text" or value.strip()]
    bins = [value for kind, value in items if kind == "loc"]
    if len(bins) != 4 or None in bins or len(items) != 4:
        problems.append(f"the prompt {_quote(prompt)} is not one box; the region is unknown")
        return None
    return _box(bins, grid, "the prompt's box", problems)


def _find_phrase(
    prompt: str | None, phrase: str, after: tuple[int, int] | None, problems: list[str]
) -> tuple[str, int, tuple[int, int]]:
    """The caption, the start of ``phrase`` in it, and the span to search after next time.

    Phrases are written in caption order, so the phrase is looked for after the previous
    one's span (a later span starts later, or at the same place and is longer). A phrase
    that is not in the caption, or when there is no caption, stands for itself.
    """
    if prompt is None:
        return phrase, 0, (0, len(phrase))
    start = -1
    if after is not None:
        start = prompt.find(phrase, after[0])
        if start == after[0] and len(phrase) <= after[1] - after[0]:
            start = prompt.find(phrase, after[0] + 1)
    if start < 0:
        start = prompt.find(phrase)
    if start < 0:
        problems.append(f"phrase {_quote(phrase)} is not in the caption; kept as its own text")
        return phrase, 0, after or (0, 0)
    return prompt, start, (start, start + len(phrase))
