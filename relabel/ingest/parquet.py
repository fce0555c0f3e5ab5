"""Parquet sources: a folder with ``images.parquet`` and ``labels.parquet`` in the label schema.

This is how a label store (or another team's export of one) comes back in. The tables are
checked against the schema; a table that does not match is one quarantined source record, not
a crash. Enum columns stored as plain strings and fixed-size array columns stored as lists (as
``relabel.export``'s ``hf-parquet`` format writes them, for readers that do not know polars'
types) are cast back to the schema's types first. Image ids are recomputed from the files like
for any other source, and the labels follow their image to the recomputed id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from relabel.config import SourceParams
from relabel.files import from_root, path_of_uri
from relabel.ingest.records import Problem, RawImage, RawLabel, SourceRecords, source_problem
from relabel.labels import SCHEMAS, SchemaError, check_schema


def read_parquet_source(source: SourceParams, index: int, root: Path, data_dir: Path) -> SourceRecords:
    """The image and label records of a parquet source; relative uris resolve against ``data_dir``."""
    folder = from_root(source.path, root)
    problems: list[dict[str, Any]] = []
    images_path, labels_path = folder / "images.parquet", folder / "labels.parquet"
    image_rows = _read_table(source.name, images_path, "images", problems)
    label_rows = _read_table(source.name, labels_path, "labels", problems)
    images = [
        _image_record(source.name, index, images_path, position, row, data_dir)
        for position, row in image_rows
    ]
    known = {image.ref for image in images}
    labels = [
        _label_record(source.name, index, labels_path, position, row, known) for position, row in label_rows
    ]
    return SourceRecords(images=images, labels=labels, paths_read=2, source_problems=problems)


def _read_table(
    name: str, path: Path, table: str, problems: list[dict[str, Any]]
) -> list[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        problems.append(source_problem(name, path, "missing_file", f"{table} table {path} does not exist"))
        return []
    try:
        data = pl.read_parquet(path)
    except Exception as error:  # pyarrow and polars raise several types for a damaged file
        problems.append(
            source_problem(name, path, "unreadable_parquet", f"{path} is not readable parquet: {error}")
        )
        return []
    try:
        data = check_schema(_schema_types(data, table), table)
    except SchemaError as error:
        problems.append(source_problem(name, path, "schema_mismatch", str(error)))
        return []
    return list(enumerate(data.iter_rows(named=True)))


def _schema_types(data: pl.DataFrame, table: str) -> pl.DataFrame:
    """``data`` with plain-typed columns cast to ``table``'s enum and array types.

    An export for other tools (``relabel.export.write_hf_parquet``) writes enums as strings and
    fixed-size arrays as lists; a value outside the enum or a list of the wrong length is a
    ``SchemaError``, so such a table is quarantined like any other mismatch.
    """
    stored = data.schema
    casts = {
        name: dtype
        for name, dtype in SCHEMAS[table].items()
        if name in stored
        and (
            (isinstance(dtype, pl.Enum) and stored[name] == pl.String)
            or (isinstance(dtype, pl.Array) and stored[name] == pl.List(dtype.inner))
        )
    }
    try:
        return data.cast(casts)
    except pl.exceptions.PolarsError as error:
        raise SchemaError(f"{table} columns do not cast to the schema: {error}") from error


def _image_record(
    name: str, index: int, images_path: Path, position: int, row: dict[str, Any], data_dir: Path
) -> RawImage:
    origin = f"{name}:{images_path}#row={position}"
    uri = row["uri"]
    return RawImage(
        source_index=index,
        ref=row["image_id"],
        path=path_of_uri(uri, data_dir) if uri else None,
        # the stored dataset still says which collection the image first came from
        dataset=row["dataset"] or name,
        origin=origin,
        record=row,
        problem=None if uri else Problem("invalid_record", "image row has no uri"),
    )


def _label_record(
    name: str, index: int, labels_path: Path, position: int, row: dict[str, Any], known: set[str]
) -> RawLabel:
    origin = f"{name}:{labels_path}#row={position}"
    if row["image_id"] not in known:
        problem = Problem("unknown_image", f"image_id {row['image_id']!r} is not in images.parquet")
        return RawLabel(index, None, origin, row, problem=problem)
    fields = {key: value for key, value in row.items() if key != "image_id"}
    return RawLabel(index, row["image_id"], origin, row, row=fields)
