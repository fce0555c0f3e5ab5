"""The label store: one schema for images, labels and quarantine, used by every phase.

Three tables, each a polars frame with a fixed schema and stored as parquet:

``images``
    One row per distinct image. ``image_id`` is the SHA-256 of the image file's bytes, so
    the same picture arriving twice from two sources is one image (the second arrival goes
    to quarantine as ``duplicate_image``). ``uri`` is a path; a relative path is resolved
    against the project's data directory.

``labels``
    One row per annotation, of one of the three annotation types of the Florence-2 data
    engine (paper section 4.3):

    ==================== ========================================================== =========
    annotation_type      what the row holds                                          tasks
    ==================== ========================================================== =========
    text                 ``text`` describing the whole image                        see below
    region_text          a region (box, quad or polygon), ``region_kind`` object or
                         text, and ``text``: the category phrase, a brief region
                         caption or the characters read (OCR)
    text_phrase_region   a ``text``, the span ``[phrase_start, phrase_end)`` of one
                         phrase in it, and the region that phrase refers to
    ==================== ========================================================== =========

    ``task`` says which granularity or flavour the row is (``TASKS_BY_TYPE``).  Geometry is
    in pixels of the original image: ``box`` is ``[x0, y0, x1, y1]``, ``quad`` the four
    corners ``[x0, y0, .., x3, y3]`` of a rotated text box, ``polygon`` a list of rings,
    each a flat ``[x, y, x, y, ...]`` list as in COCO.  Crowd regions keep their COCO RLE in
    ``mask_rle`` with ``is_crowd`` set.  ``score`` is a confidence in [0, 1] (1 for human
    labels), ``source`` is ``human``, ``<specialist>@<version>`` or ``model@iter<k>``, and
    ``iteration`` the data-engine iteration in which the row entered. Fused labels keep the
    ids they were fused from in ``provenance`` and the number of agreeing sources in
    ``agreement``; a label that confirms another (a specialist's box on a human one) is folded
    into it (its id joins the provenance, its vote the agreement: one object, one label), and a
    label about another region (a region caption, a grounding, a conflicting class) names it in
    ``linked_label_id``. A
    label the model wrote in place of another names that one in ``replaces``.

``quarantine``
    Everything that was dropped, with what it was (``record_kind``: an image, a label, or a
    whole source file that could not be read), the phase that dropped it, a reason code, a human
    readable detail (including the threshold where one applied) and the offending row or
    raw record as JSON, so nothing is ever silently lost.

Functions here are plain: they build empty frames, coerce dict rows into the schema, derive
stable ids and check frames against the schema where data enters and leaves a phase.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import polars as pl

ANNOTATION_TYPES = ("text", "region_text", "text_phrase_region")

TASKS_BY_TYPE: dict[str, tuple[str, ...]] = {
    # image-level texts at the paper's three granularities, plus web alt-text as it arrives
    "text": ("brief_caption", "detailed_caption", "more_detailed_caption", "alt_text"),
    # object: text is the category phrase; region_caption: a brief text about the region;
    # ocr: the characters written in a text region
    "region_text": ("object", "region_caption", "ocr"),
    "text_phrase_region": ("phrase_grounding",),
}
TASKS = tuple(task for tasks in TASKS_BY_TYPE.values() for task in tasks)
REGION_KINDS = ("object", "text")
LABEL_STATUSES = ("raw", "accepted", "audited", "superseded")
SPLITS = ("train", "eval")
HUMAN_SOURCE = "human"

IMAGES_SCHEMA = pl.Schema(
    {
        "image_id": pl.String,
        "uri": pl.String,
        "width": pl.Int32,
        "height": pl.Int32,
        "dataset": pl.String,
        "split": pl.Enum(SPLITS),
    }
)

LABELS_SCHEMA = pl.Schema(
    {
        "label_id": pl.String,
        "image_id": pl.String,
        "annotation_type": pl.Enum(ANNOTATION_TYPES),
        "task": pl.Enum(TASKS),
        "text": pl.String,
        "phrase_start": pl.Int32,
        "phrase_end": pl.Int32,
        "region_kind": pl.Enum(REGION_KINDS),
        "box": pl.Array(pl.Float64, 4),
        "quad": pl.Array(pl.Float64, 8),
        "polygon": pl.List(pl.List(pl.Float64)),
        "mask_rle": pl.String,
        "is_crowd": pl.Boolean,
        "category": pl.String,
        "score": pl.Float64,
        "source": pl.String,
        "iteration": pl.Int32,
        "status": pl.Enum(LABEL_STATUSES),
        # consensus provenance: the label ids fused into this one and how many distinct
        # sources agreed on it; a machine label that confirms a human one links to it
        "provenance": pl.List(pl.String),
        "agreement": pl.Int32,
        "linked_label_id": pl.String,
        # history (phase 4's merge): the label this row replaced, which went to quarantine
        "replaces": pl.String,
    }
)

RECORD_KINDS = ("image", "label", "source")

QUARANTINE_SCHEMA = pl.Schema(
    {
        "record_kind": pl.Enum(RECORD_KINDS),
        "image_id": pl.String,
        "label_id": pl.String,
        "phase": pl.String,
        "reason": pl.String,
        "detail": pl.String,
        "origin": pl.String,
        "record": pl.String,
    }
)

SCHEMAS: dict[str, pl.Schema] = {
    "images": IMAGES_SCHEMA,
    "labels": LABELS_SCHEMA,
    "quarantine": QUARANTINE_SCHEMA,
}

REGION_TYPES = ("region_text", "text_phrase_region")


class SchemaError(ValueError):
    """A frame does not match the label-store schema of the table it claims to be."""


def empty(table: str) -> pl.DataFrame:
    """An empty frame of ``table`` ("images", "labels" or "quarantine")."""
    return pl.DataFrame(schema=SCHEMAS[table])


def frame(table: str, rows: Iterable[Mapping[str, Any]]) -> pl.DataFrame:
    """Build a frame of ``table`` from dict rows; missing columns are null.

    Raises ``SchemaError`` when a value cannot be cast to its column's type (for example a
    task that is not in ``TASKS``), naming the column.
    """
    schema = SCHEMAS[table]
    rows = list(rows)
    columns = {name: [row.get(name) for row in rows] for name in schema}
    try:
        return pl.DataFrame(columns, schema=schema, strict=False).pipe(_strict_enums, columns)
    except (pl.exceptions.PolarsError, TypeError, ValueError) as error:
        raise SchemaError(f"rows do not fit the {table} schema: {error}") from error


def _strict_enums(built: pl.DataFrame, columns: dict[str, list[Any]]) -> pl.DataFrame:
    # non-strict construction turns an unknown enum value into null; that would lose the
    # value silently, so a null that was not null in the input is an error
    for name, dtype in built.schema.items():
        if isinstance(dtype, pl.Enum):
            given = sum(value is not None for value in columns[name])
            if built[name].null_count() != len(built) - given:
                bad = sorted({str(v) for v in columns[name] if v is not None and v not in dtype.categories})
                raise SchemaError(f"column {name!r} has values outside {list(dtype.categories)}: {bad}")
    return built


def check_schema(data: pl.DataFrame, table: str) -> pl.DataFrame:
    """Return ``data`` unchanged if it has exactly the columns and types of ``table``.

    Called where data enters and leaves a phase, so a phase never reads or writes a frame
    that other phases would misread.
    """
    expected = SCHEMAS[table]
    if data.schema != expected:
        missing = [c for c in expected if c not in data.schema]
        extra = [c for c in data.schema if c not in expected]
        wrong = {
            c: f"{data.schema[c]} != {expected[c]}"
            for c in expected
            if c in data.schema and data.schema[c] != expected[c]
        }
        order = list(data.columns) != list(expected) and not (missing or extra or wrong)
        raise SchemaError(
            f"{table} frame does not match the schema: missing={missing} extra={extra} "
            f"wrong types={wrong}" + (" (column order differs)" if order else "")
        )
    if data[_id_column(table)].null_count() if table != "quarantine" else 0:
        raise SchemaError(f"{table} frame has null {_id_column(table)}")
    return data


def _id_column(table: str) -> str:
    return {"images": "image_id", "labels": "label_id"}[table]


def region_box(row: Mapping[str, Any]) -> list[float] | None:
    """A label row's region as ``[x0, y0, x1, y1]``: its box, else the bounds of its quad or of
    its polygon's rings; None for a label with no region."""
    if row["box"] is not None:
        return list(row["box"])
    points = (
        row["quad"] if row["quad"] is not None else [value for ring in row["polygon"] or () for value in ring]
    )
    if not points:
        return None
    xs, ys = points[0::2], points[1::2]
    return [min(xs), min(ys), max(xs), max(ys)]


def stable_id(*parts: Any) -> str:
    """A short deterministic id from the given parts (same parts -> same id, any machine)."""
    payload = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:20]


def label_id_for(row: Mapping[str, Any], ordinal: int = 0) -> str:
    """The id of a label row: a hash of what the label says and who said it.

    ``ordinal`` separates two otherwise identical labels from the same source on the same
    image (two humans writing the same caption are two labels, not one).
    """
    return stable_id(
        row.get("image_id"),
        row.get("source"),
        row.get("annotation_type"),
        row.get("task"),
        row.get("text"),
        row.get("phrase_start"),
        row.get("box"),
        row.get("quad"),
        row.get("category"),
        ordinal,
    )


def quarantine_row(
    *,
    record_kind: str,
    phase: str,
    reason: str,
    detail: str,
    record: Any,
    origin: str | None = None,
    image_id: str | None = None,
    label_id: str | None = None,
) -> dict[str, Any]:
    """One quarantine row. ``record`` (the offending row or raw input) is stored as JSON.

    A label refused before it had an id (a raw record that could not become a label row)
    gets one derived from its record, so every quarantined label can be named and found.
    """
    stored = json.dumps(_jsonable(record), ensure_ascii=False, sort_keys=True)
    if record_kind == "label" and label_id is None:
        label_id = stable_id("quarantined", image_id, origin, stored)
    return {
        "record_kind": record_kind,
        "image_id": image_id,
        "label_id": label_id,
        "phase": phase,
        "reason": reason,
        "detail": printable(detail),
        "origin": None if origin is None else printable(origin),
        "record": stored,
    }


_SURROGATES = re.compile("[\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` with each undecodable byte written as ``\\xNN``, so it can be stored and read.

    Text read with ``errors="surrogateescape"`` carries a byte 0x80..0xFF that is not UTF-8 as
    a lone surrogate (U+DC80..U+DCFF); parquet and JSON cannot store those.
    """
    return _SURROGATES.sub(_escape_surrogate, text)


def _escape_surrogate(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def _jsonable(value: Any) -> Any:
    # the record is evidence: a NaN score or undecodable bytes are kept visibly (as "nan",
    # "\\xff"), in valid JSON, rather than dropped or turned into null
    if isinstance(value, Mapping):
        return {printable(str(key)): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    if isinstance(value, str):
        return printable(value)
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)
