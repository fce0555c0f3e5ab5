"""What a source reader hands to ingest: raw image and label records, before any checks.

Every reader (COCO JSON, image folder, parquet) turns its input into the same three things:
image records (one per picture file it names), label records (one per annotation, caption or
alt-text line) and source problems (a whole file that could not be read). A record that is
malformed is not dropped by the reader; it carries a ``Problem`` so that ingest can put it in
quarantine with the record itself, and the accounting of records in and out stays exact.

Text files are read as bytes and decoded with ``errors="surrogateescape"``: bytes that are
not UTF-8 become lone surrogates in the decoded string instead of failing the whole file, so
only the records that contain them are quarantined (``non_utf8_text``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relabel.labels import printable, quarantine_row

PHASE = "ingest"
_HEAD_CHARS = 500


@dataclass(frozen=True)
class Problem:
    """Why a record cannot be ingested: a reason code and a readable detail."""

    reason: str
    detail: str


@dataclass(frozen=True)
class RawImage:
    """One image record: a picture file a source names.

    ``ref`` is the source's own key for the image, the one its label records point at: the
    absolute file path for COCO and folder sources, the stored ``image_id`` for parquet.
    """

    source_index: int
    ref: str
    path: Path | None
    dataset: str
    origin: str
    record: Any
    problem: Problem | None = None


@dataclass(frozen=True)
class RawLabel:
    """One label record as read, pointing at an image by the source's ``image_ref``.

    ``row`` holds the label-store fields (without ``image_id``; ``label_id`` only where the
    source stores one) when the record converts; otherwise ``problem`` says why not.
    """

    source_index: int
    image_ref: str | None
    origin: str
    record: Any
    row: dict[str, Any] | None = None
    problem: Problem | None = None


@dataclass(frozen=True)
class SourceRecords:
    """Everything one source yielded: its records, how many paths (files and folders) the
    source names, and the quarantine rows of those that could not be read."""

    images: list[RawImage] = field(default_factory=list)
    labels: list[RawLabel] = field(default_factory=list)
    paths_read: int = 0
    source_problems: list[dict[str, Any]] = field(default_factory=list)


def read_text(path: Path) -> str:
    """A text file's content; non-UTF-8 bytes survive as lone surrogates (see module doc)."""
    return path.read_bytes().decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")


def has_surrogates(value: Any) -> bool:
    """True when a string anywhere in ``value`` (nested lists and dicts too) is not valid UTF-8."""
    if isinstance(value, str):
        return printable(value) != value
    if isinstance(value, dict):
        return any(has_surrogates(key) or has_surrogates(item) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return any(has_surrogates(item) for item in value)
    return False


def record_json(record: Any) -> str:
    """A raw record as storable JSON text."""
    return printable(json.dumps(record, default=str, ensure_ascii=False, sort_keys=True))


def quarantine(**fields: Any) -> dict[str, Any]:
    """A quarantine row of the ingest phase (fields as ``relabel.labels.quarantine_row``)."""
    return quarantine_row(phase=PHASE, **fields)


def source_problem(
    source: str, path: Path | str, reason: str, detail: str, content: str | None = None
) -> dict[str, Any]:
    """The quarantine row of a whole source file that cannot be read.

    The record names the file and, where it was read, keeps its first characters: enough to
    see what it is without copying a large file into the quarantine.
    """
    record: dict[str, Any] = {"source": source, "file": str(path)}
    if content is not None:
        record["length"] = len(content)
        record["head"] = content[:_HEAD_CHARS]
    return quarantine(
        record_kind="source", reason=reason, detail=detail, record=record, origin=f"{source}:{path}"
    )
