"""Ingest of one shard: decode its images, build and check their labels.

A shard takes the catalogued files whose image id falls in it, in catalog order (source order
in the params, then uri). The first file of each image id is decoded; later files with the
same content are quarantined as ``duplicate_image``, but their labels are kept on the same
image id since they describe the same picture. Label records are re-read from the sources
that have images in the shard (readers are deterministic, so these are the records the
catalog counted) and the shard keeps those whose image it holds.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from contextlib import chdir
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from tqdm import tqdm

from relabel.config import SourceParams
from relabel.files import from_root
from relabel.ingest.catalog import COUNTED_KINDS, AccountingError
from relabel.ingest.images import decode_image
from relabel.ingest.records import (
    Problem,
    RawLabel,
    has_surrogates,
    quarantine,
    record_json,
)
from relabel.ingest.sources import read_source
from relabel.ingest.validate import validate_labels
from relabel.labels import check_schema, frame, label_id_for, printable
from relabel.shards import in_shard, shard_keys


@dataclass(frozen=True)
class ShardIngest:
    """The images, labels and quarantine of one shard, and the raw image and label records
    that came in (``records_in`` by record kind)."""

    shard: str
    images: pl.DataFrame
    labels: pl.DataFrame
    quarantine: pl.DataFrame
    records_in: dict[str, int]

    def __post_init__(self) -> None:
        check_schema(self.images, "images")
        check_schema(self.labels, "labels")
        check_schema(self.quarantine, "quarantine")

    def check_accounting(self) -> dict[str, dict[str, int]]:
        """Check that every record in was kept or quarantined: for images and labels,
        ``records_in == kept + quarantined``. Returns the counts by record kind; raises
        ``AccountingError`` naming the shard and the counts when they disagree."""
        quarantined = Counter(self.quarantine["record_kind"].cast(pl.String).to_list())
        kept = {"image": self.images.height, "label": self.labels.height}
        counts = {
            kind: {
                "records_in": self.records_in.get(kind, 0),
                "kept": kept[kind],
                "quarantined": quarantined[kind],
            }
            for kind in COUNTED_KINDS
        }
        wrong = {k: c for k, c in counts.items() if c["records_in"] != c["kept"] + c["quarantined"]}
        stray = {kind: n for kind, n in quarantined.items() if kind not in COUNTED_KINDS}
        if wrong or stray:
            raise AccountingError(
                f"shard {self.shard}: records in != kept + quarantined for {wrong}"
                + (f"; unexpected quarantine kinds {stray}" if stray else "")
            )
        return counts


def ingest_shard(
    catalog_files: pl.DataFrame,
    sources: Sequence[SourceParams],
    root: Path,
    data_dir: Path,
    shard: str,
    shard_count: int,
    progress: bool = True,
) -> ShardIngest:
    """Build the images, labels and quarantine of ``shard`` from the catalogued sources.

    Images are decoded in full (unreadable and truncated files and decompression bombs are
    quarantined), get their size and the split the catalog drew; labels become human,
    iteration-0, raw rows and pass ``validate_labels``.
    ``catalog_files`` is ``SourceCatalog.files`` (as stored by the catalog asset) and
    ``sources`` must be the sources the catalog was built from, in the same order.
    """
    if shard not in shard_keys(shard_count):
        raise ValueError(f"{shard!r} is not one of the {shard_count} shards")
    root = Path(os.path.abspath(root))
    data_dir = from_root(data_dir, root)
    # membership is recomputed from the image id, so a catalog made with another shard
    # count can never hand this shard the wrong images
    files = in_shard(catalog_files, shard, shard_count)
    # the image of each label record, by (source, the source's image key); files are in catalog
    # order, so where a parquet source lists one key twice the first listing wins, as in the catalog
    image_of: dict[tuple[int, str], str] = {}
    for index, ref, image_id in files.select("source_index", "ref", "image_id").iter_rows():
        image_of.setdefault((index, ref), image_id)
    # stored paths are named from the project root (see ``from_root``), so files are read there
    with chdir(root):
        image_rows, failed, quarantined = _decode_images(files, shard, progress)
        label_records = [
            (image_of[(label.source_index, label.image_ref)], label)
            for index in sorted(set(files["source_index"].to_list()))
            for label in read_source(sources[index], index, root, data_dir).labels
            if (label.source_index, label.image_ref) in image_of
        ]
    images = frame("images", image_rows)
    label_rows, raw_by_label_id, label_quarantine = _label_rows(label_records, failed)
    checked, invalid = validate_labels(frame("labels", label_rows), images)
    return ShardIngest(
        shard=shard,
        images=images,
        labels=checked,
        quarantine=frame(
            "quarantine", [*quarantined, *label_quarantine, *_with_origin(invalid, raw_by_label_id)]
        ),
        records_in={"image": files.height, "label": len(label_records)},
    )


def _decode_images(
    files: pl.DataFrame, shard: str, progress: bool
) -> tuple[list[dict[str, Any]], dict[str, Problem], list[dict[str, Any]]]:
    """Image rows, the problem of each image id that failed, and the image quarantine rows."""
    image_rows: list[dict[str, Any]] = []
    failed: dict[str, Problem] = {}
    quarantined: list[dict[str, Any]] = []
    first_file: dict[str, dict[str, Any]] = {}
    rows = files.iter_rows(named=True)
    for file in tqdm(rows, total=files.height, desc=f"ingest {shard}", unit="image", disable=not progress):
        image_id = file["image_id"]
        if image_id in first_file:
            first = first_file[image_id]
            problem = Problem(
                "duplicate_image",
                f"same content as {first['uri']} of source {first['source']!r}, which is kept",
            )
        else:
            first_file[image_id] = file
            decoded = decode_image(Path(file["path"]), image_id)
            if isinstance(decoded, Problem):
                problem = failed[image_id] = decoded
            else:
                width, height = decoded
                image_rows.append(
                    {
                        "image_id": image_id,
                        "uri": file["uri"],
                        "width": width,
                        "height": height,
                        "dataset": file["dataset"],
                        "split": file["split"],
                    }
                )
                continue
        quarantined.append(
            quarantine(
                record_kind="image",
                reason=problem.reason,
                detail=problem.detail,
                record=json.loads(file["record"]),
                origin=file["origin"],
                image_id=image_id,
            )
        )
    return image_rows, failed, quarantined


def _label_rows(
    label_records: list[tuple[str, RawLabel]], failed: dict[str, Problem]
) -> tuple[list[dict[str, Any]], dict[str, RawLabel], list[dict[str, Any]]]:
    """Label rows with their ids, the raw record behind each id, and the quarantine rows of
    records that cannot become a label row at all."""
    rows: list[dict[str, Any]] = []
    raw_by_label_id: dict[str, RawLabel] = {}
    quarantined: list[dict[str, Any]] = []
    same_label_seen: Counter[str] = Counter()

    def drop(label: RawLabel, image_id: str, reason: str, detail: str, label_id: str | None = None) -> None:
        quarantined.append(
            quarantine(
                record_kind="label",
                reason=reason,
                detail=detail,
                record=label.record,
                origin=label.origin,
                image_id=image_id,
                label_id=label_id,
            )
        )

    for image_id, label in label_records:
        if label.problem is not None:
            drop(label, image_id, label.problem.reason, label.problem.detail)
            continue
        if has_surrogates(label.row):
            # polars strings (and every later consumer) need valid UTF-8
            shown = printable(str(label.row.get("text")))
            drop(label, image_id, "non_utf8_text", f"text is not valid UTF-8: '{shown}'")
            continue
        row = {**label.row, "image_id": image_id}
        if row.get("label_id") is None:
            # identical labels on one image (two people writing the same caption) stay two
            # labels: the ordinal counts the earlier ones, in the shard's deterministic order
            same = label_id_for(row)
            row["label_id"] = label_id_for(row, same_label_seen[same])
            same_label_seen[same] += 1
        if image_id in failed:
            detail = f"its image was quarantined: {failed[image_id].reason}"
            drop(label, image_id, "image_quarantined", detail, row["label_id"])
        elif row["label_id"] in raw_by_label_id:
            taken_by = raw_by_label_id[row["label_id"]].origin
            detail = f"label_id {row['label_id']} is already taken by {taken_by}"
            drop(label, image_id, "duplicate_label_id", detail, row["label_id"])
        else:
            raw_by_label_id[row["label_id"]] = label
            rows.append(row)
    return rows, raw_by_label_id, quarantined


def _with_origin(invalid: pl.DataFrame, raw_by_label_id: dict[str, RawLabel]) -> list[dict[str, Any]]:
    """``validate_labels`` quarantine rows, with the origin and raw record of each label."""
    return [
        {
            **row,
            "origin": raw_by_label_id[row["label_id"]].origin,
            "record": record_json(raw_by_label_id[row["label_id"]].record),
        }
        for row in invalid.iter_rows(named=True)
    ]
