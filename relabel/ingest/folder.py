"""Image-folder sources: every image file under a folder, with optional web alt-text.

The alt-text sidecar is JSONL (one ``{"file_name": ..., "alt_text": ...}`` object a line) or
CSV (columns ``file_name`` and ``alt_text``); ``file_name`` is relative to the image folder.
A bad line is one quarantined label record; the other lines are read as usual. An entry has
exactly those two keys: one with another key (a typo such as ``alt``, a CSV cell beyond the
header) is quarantined as ``unknown_key``, one lacking either as ``missing_key``, the detail
naming the keys, so that a misspelt alt text is not mistaken for an empty one.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from relabel.config import SourceParams
from relabel.files import from_root, normalised
from relabel.ingest.coco import HUMAN_LABEL, too_long
from relabel.ingest.images import list_image_files
from relabel.ingest.records import (
    Problem,
    RawImage,
    RawLabel,
    SourceRecords,
    read_text,
    source_problem,
)

_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
_SIDECAR_KEYS = ("file_name", "alt_text")
_SIDECAR_EXAMPLE = '{"file_name": "shop/sign.jpg", "alt_text": "A red stop sign"}'
# the key csv.DictReader gives the cells of a row beyond the header's columns
_EXTRA_CELLS = "(cells beyond the header)"


def read_folder(source: SourceParams, index: int, root: Path) -> SourceRecords:
    """The image records of a folder source and the alt-text label records of its sidecar."""
    folder = from_root(source.images, root)
    problems: list[dict[str, Any]] = []
    images: list[RawImage] = []
    if folder.is_dir():
        images = [
            RawImage(
                source_index=index,
                ref=str(path),
                path=path,
                dataset=source.name,
                origin=f"{source.name}:{path}",
                record={"file": str(path)},
            )
            for path in list_image_files(folder)
        ]
    else:
        problems.append(
            source_problem(source.name, folder, "missing_file", f"image folder {folder} does not exist")
        )
    labels: list[RawLabel] = []
    if source.sidecar is not None:
        sidecar = from_root(source.sidecar, root)
        entries, problem = _read_sidecar(source.name, sidecar)
        if problem is not None:
            problems.append(problem)
        known = {image.ref for image in images}
        labels = [_alt_text_label(index, folder, known, *entry) for entry in entries]
    return SourceRecords(
        images=images,
        labels=labels,
        paths_read=1 + (source.sidecar is not None),
        source_problems=problems,
    )


# one sidecar entry: where it is, what it holds, and the problem when it did not parse
_Entry = tuple[str, Any, Problem | None]


def _read_sidecar(name: str, path: Path) -> tuple[list[_Entry], dict[str, Any] | None]:
    """The sidecar's entries, or the file's quarantine row."""
    if not path.is_file():
        return [], source_problem(name, path, "missing_file", f"alt-text sidecar {path} does not exist")
    text = read_text(path)
    suffix = path.suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        return _jsonl_entries(name, path, text), None
    if suffix == ".csv":
        return _csv_entries(name, path, text)
    detail = f"alt-text sidecar {path} is neither JSONL ({', '.join(_JSONL_SUFFIXES)}) nor .csv"
    return [], source_problem(name, path, "unsupported_sidecar", detail)


def _jsonl_entries(name: str, path: Path, text: str) -> list[_Entry]:
    entries: list[_Entry] = []
    # split on newlines only: str.splitlines would also split inside strings at U+2028 and friends
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        origin = f"{name}:{path}:{number}"
        try:
            entries.append((origin, json.loads(line), None))
        except json.JSONDecodeError as error:
            entries.append((origin, line, Problem("unparseable_json", f"line {number} is not JSON: {error}")))
    return entries


def _csv_entries(name: str, path: Path, text: str) -> tuple[list[_Entry], dict[str, Any] | None]:
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), restkey=_EXTRA_CELLS)
        missing = [column for column in _SIDECAR_KEYS if column not in (reader.fieldnames or [])]
        if missing:
            detail = f"alt-text CSV {path} lacks the column(s) {missing} (header: {reader.fieldnames})"
            return [], source_problem(name, path, "invalid_sidecar", detail, text)
        # line_num is the line the row ended on, so a quoted multi-line cell still points right
        return [(f"{name}:{path}:{reader.line_num}", row, None) for row in reader], None
    except csv.Error as error:
        return [], source_problem(name, path, "unparseable_csv", f"alt-text CSV {path}: {error}", text)


def _alt_text_label(
    index: int, folder: Path, known: set[str], origin: str, entry: Any, problem: Problem | None
) -> RawLabel:
    if problem is None and isinstance(entry, dict):
        problem = _key_problem(entry)
    if problem is not None:
        return RawLabel(index, None, origin, entry, problem=problem)
    file_name = entry.get("file_name") if isinstance(entry, dict) else None
    alt_text = entry.get("alt_text") if isinstance(entry, dict) else None
    if not isinstance(file_name, str) or not (alt_text is None or isinstance(alt_text, str)):
        problem = Problem(
            "invalid_record", "entry needs a string 'file_name' and a string or null 'alt_text'"
        )
        return RawLabel(index, None, origin, entry, problem=problem)
    image_ref = str(normalised(folder / file_name))
    if image_ref not in known:
        problem = Problem("unknown_image", f"file_name {file_name!r} is not an image file in {folder}")
        return RawLabel(index, None, origin, entry, problem=problem)
    # a null alt-text is kept as an empty text, so the check quarantines it as empty_text
    text = (alt_text or "").strip()
    problem = too_long(text, "alt_text")
    if problem is not None:
        return RawLabel(index, image_ref, origin, entry, problem=problem)
    row = {
        "annotation_type": "text",
        "task": "alt_text",
        "text": text,
        **HUMAN_LABEL,
    }
    return RawLabel(index, image_ref, origin, entry, row=row)


def _key_problem(entry: dict[Any, Any]) -> Problem | None:
    """Why a sidecar entry does not have exactly the keys ``_SIDECAR_KEYS``; None when it does."""
    unknown = [str(key) for key in entry if key not in _SIDECAR_KEYS]
    missing = [key for key in _SIDECAR_KEYS if key not in entry]
    found = []
    if unknown:
        found.append(f"unknown key(s) {unknown}")
    if missing:
        found.append(f"missing key(s) {missing}")
    if not found:
        return None
    # a key is most often missing because it is misspelt, so an unknown key names the reason
    return Problem(
        "unknown_key" if unknown else "missing_key",
        f"{' and '.join(found)}; a sidecar entry has exactly the keys {list(_SIDECAR_KEYS)}, "
        f"e.g. {_SIDECAR_EXAMPLE}",
    )
