"""The catalog: every image file of every source, hashed and assigned to its shard.

This is the one pass over all sources. It reads each source's records, hashes every image
file that exists (the hash is the image id and decides the shard) and quarantines what no
shard can take: source files that cannot be read, image records without a file, images whose
header declares more pixels than PIL decodes (decompression bombs), and the label records of
those images. Because it sees everything, it also draws the evaluation split
(``relabel.evaluation_split.draw_split``: stratified by the categories of the labels,
near-duplicates together, a frozen split kept). Decoding images and building labels is left to
the shards.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from contextlib import chdir
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from tqdm import tqdm

# a module import, not names: relabel.evaluation_split reads image files through this package
import relabel.evaluation_split as evaluation_split
from relabel.config import SourceParams
from relabel.files import from_root, hash_file, uri_for
from relabel.ingest.images import decompression_bomb
from relabel.ingest.records import Problem, RawImage, has_surrogates, quarantine, record_json
from relabel.ingest.sources import read_source
from relabel.labels import check_schema, frame
from relabel.shards import shard_of

FILES_SCHEMA = pl.Schema(
    {
        "source_index": pl.Int32,  # position of the source in the params, for a stable order
        "source": pl.String,
        "kind": pl.String,
        "ref": pl.String,  # the source's own key of the image, which its labels point at
        "path": pl.String,  # the file, relative to the project root when inside it
        "uri": pl.String,  # the uri the images table stores
        "dataset": pl.String,
        "origin": pl.String,
        "record": pl.String,  # the raw image record as JSON
        "image_id": pl.String,
        "shard": pl.String,
        "phash": pl.String,  # perceptual hash, null when the file does not decode
        "split": pl.String,
    }
)

COUNTED_KINDS = ("image", "label")


class AccountingError(AssertionError):
    """Records went in that neither came out nor went to quarantine (or the reverse)."""


@dataclass(frozen=True)
class SourceCatalog:
    """Every catalogued image file (``files``, in ``FILES_SCHEMA``, ordered by source then
    uri), the quarantine of what no shard can take, and the raw records seen by kind."""

    files: pl.DataFrame
    quarantine: pl.DataFrame
    records_in: dict[str, int]
    shard_count: int

    def check_accounting(self, shards: Iterable[Any]) -> dict[str, dict[str, int]]:
        """Check that the ``ShardIngest`` results of all shards, with the catalog's own
        quarantine, account for every image and label record the catalog saw.

        Returns the counts by record kind; raises ``AccountingError`` when they disagree.
        """
        shards = list(shards)
        in_catalog = Counter(self.quarantine["record_kind"].cast(pl.String).to_list())
        counts = {
            kind: {
                "records_in": self.records_in.get(kind, 0),
                "in_shards": sum(result.records_in.get(kind, 0) for result in shards),
                "quarantined_in_catalog": in_catalog[kind],
            }
            for kind in COUNTED_KINDS
        }
        wrong = {
            k: c for k, c in counts.items() if c["records_in"] != c["in_shards"] + c["quarantined_in_catalog"]
        }
        if wrong:
            raise AccountingError(f"catalog records are not all accounted for: {wrong}")
        return counts


def catalog_sources(
    sources: Sequence[SourceParams],
    root: Path,
    data_dir: Path,
    shard_count: int,
    eval_fraction: float = 0.1,
    near_duplicate_distance: int = 8,
    frozen_split: pl.DataFrame | None = None,
    progress: bool = True,
) -> SourceCatalog:
    """List and hash every image record of ``sources``, assign it to one of ``shard_count``
    shards and to the train or eval split.

    Paths in ``sources`` are relative to ``root``; ``data_dir`` (relative to ``root`` unless
    absolute) is where relative image uris point. The split holds ``eval_fraction`` of the
    near-duplicate groups (perceptual hashes within ``near_duplicate_distance`` bits), drawn
    stratified by label category; the images of ``frozen_split`` (a frozen split's manifest)
    stay in it. Never raises on bad input: what cannot be read is in the returned quarantine.
    """
    root = Path(os.path.abspath(root))
    data_dir = from_root(data_dir, root)
    file_rows: list[dict[str, Any]] = []
    quarantined: list[dict[str, Any]] = []
    records_in: Counter[str] = Counter()
    categories: dict[str, set[str]] = {}
    # stored paths are named from the project root (see ``from_root``): read files there
    with chdir(root):
        for index, source in enumerate(sources):
            records = read_source(source, index, root, data_dir)
            records_in.update(source=records.paths_read, image=len(records.images), label=len(records.labels))
            quarantined += records.source_problems
            catalogued: set[str] = set()
            failed: dict[str, Problem] = {}
            for image in tqdm(
                records.images, desc=f"catalog {source.name}", unit="image", disable=not progress
            ):
                image_id, problem = _hash_image(image)
                if problem is not None:
                    failed.setdefault(image.ref, problem)
                    quarantined.append(
                        quarantine(
                            record_kind="image",
                            reason=problem.reason,
                            detail=problem.detail,
                            record=image.record,
                            origin=image.origin,
                        )
                    )
                    continue
                catalogued.add(image.ref)
                file_rows.append(_file_row(source, image, image_id, data_dir, shard_count))
            image_of = {row["ref"]: row["image_id"] for row in file_rows if row["source_index"] == index}
            for label in records.labels:
                if label.image_ref in catalogued:
                    if label.row is not None and label.row.get("category"):
                        categories.setdefault(image_of[label.image_ref], set()).add(label.row["category"])
                    continue  # its shard ingests it
                problem = label.problem if label.image_ref is None else _orphaned(label.image_ref, failed)
                quarantined.append(
                    quarantine(
                        record_kind="label",
                        reason=problem.reason,
                        detail=problem.detail,
                        record=label.record,
                        origin=label.origin,
                    )
                )
    split = evaluation_split.draw_split(
        [row["image_id"] for row in file_rows],
        [row["phash"] for row in file_rows],
        categories,
        eval_fraction,
        near_duplicate_distance,
        frozen_split,
    )
    for row in file_rows:
        row["split"] = split[row["image_id"]]
    files = pl.DataFrame(file_rows, schema=FILES_SCHEMA).sort("source_index", "uri", maintain_order=True)
    return SourceCatalog(
        files=files,
        quarantine=check_schema(frame("quarantine", quarantined), "quarantine"),
        records_in=dict(records_in),
        shard_count=shard_count,
    )


def _hash_image(image: RawImage) -> tuple[str, None] | tuple[None, Problem]:
    """The image id of a record's file, or the problem that keeps the file out of every shard."""
    if image.problem is not None:
        return None, image.problem
    if has_surrogates(str(image.path)):
        # a file name that is not UTF-8 cannot be stored as a uri; rename the file to ingest it
        return None, Problem("non_utf8_path", f"the file name {image.path!r} is not valid UTF-8")
    try:
        image_id = hash_file(image.path)
    except FileNotFoundError:
        return None, Problem("missing_file", f"image file {image.path} does not exist")
    except OSError as error:
        return None, Problem("unreadable_image", f"cannot read {image.path}: {error}")
    # refused here, before the perceptual hash decodes the file: a bomb would exhaust memory
    # or raise out of the catalog and stop every source
    bomb = decompression_bomb(image.path)
    return (None, bomb) if bomb is not None else (image_id, None)


def _orphaned(image_ref: str, failed: Mapping[str, Problem]) -> Problem:
    image_problem = failed[image_ref]
    reason = "image_missing" if image_problem.reason == "missing_file" else "image_quarantined"
    return Problem(reason, f"its image {image_ref} was quarantined: {image_problem.detail}")


def _file_row(
    source: SourceParams, image: RawImage, image_id: str, data_dir: Path, shard_count: int
) -> dict[str, Any]:
    return {
        "source_index": image.source_index,
        "source": source.name,
        "kind": source.kind,
        "ref": image.ref,
        "path": str(image.path),
        "uri": uri_for(image.path, data_dir),
        "dataset": image.dataset,
        "origin": image.origin,
        "record": record_json(image.record),
        "image_id": image_id,
        "shard": shard_of(image_id, shard_count),
        "phash": evaluation_split.perceptual_hash(image.path),
    }
