"""Ingest of the 80 real COCO photos: every human caption and box is kept, deterministically,
and a parquet export of the result re-ingests to the same rows."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from relabel.config import SourceParams
from relabel.ingest import ShardIngest, catalog_sources, ingest_shard
from relabel.shards import shard_keys, shard_of

SHARDS = 4
EVAL_FRACTION = 0.1


def coco_mini_source(coco_mini_dir: Path) -> SourceParams:
    return SourceParams(
        name="coco-mini",
        kind="coco",
        images=str(coco_mini_dir / "images"),
        instances=str(coco_mini_dir / "annotations" / "instances.json"),
        captions=str(coco_mini_dir / "annotations" / "captions.json"),
    )


def ingest_all(sources: list[SourceParams], root: Path) -> list[ShardIngest]:
    catalog = catalog_sources(sources, root, root / "data", SHARDS, EVAL_FRACTION, progress=False)
    shards = [
        ingest_shard(catalog.files, sources, root, root / "data", shard, SHARDS, progress=False)
        for shard in shard_keys(SHARDS)
    ]
    for result in shards:
        result.check_accounting()
    catalog.check_accounting(shards)
    assert catalog.quarantine.height == 0, catalog.quarantine.to_dicts()
    return shards


def table(shards: list[ShardIngest], name: str) -> pl.DataFrame:
    return pl.concat([getattr(result, name) for result in shards])


@pytest.fixture(scope="module")
def coco_mini_ingest(coco_mini_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[ShardIngest]:
    return ingest_all([coco_mini_source(coco_mini_dir)], tmp_path_factory.mktemp("project"))


def test_every_human_caption_and_box_is_kept(
    coco_mini_dir: Path, coco_mini_ingest: list[ShardIngest]
) -> None:
    instances = json.loads((coco_mini_dir / "annotations" / "instances.json").read_text())
    captions = json.loads((coco_mini_dir / "annotations" / "captions.json").read_text())
    images, labels = table(coco_mini_ingest, "images"), table(coco_mini_ingest, "labels")

    assert table(coco_mini_ingest, "quarantine").height == 0
    assert images.height == len(instances["images"]) == 80
    tasks = Counter(labels["task"].cast(pl.String))
    assert tasks == {
        "brief_caption": len(captions["annotations"]),
        "object": len(instances["annotations"]),
    }
    crowd = labels.filter(pl.col("is_crowd"))
    assert crowd.height == sum(annotation["iscrowd"] for annotation in instances["annotations"]) > 0
    assert crowd["mask_rle"].null_count() == 0 and crowd["box"].null_count() == 0
    assert labels["label_id"].n_unique() == labels.height


def test_images_and_boxes_match_the_coco_json(
    coco_mini_dir: Path, coco_mini_ingest: list[ShardIngest]
) -> None:
    instances = json.loads((coco_mini_dir / "annotations" / "instances.json").read_text())
    images = table(coco_mini_ingest, "images")
    by_uri = {row["uri"]: row for row in images.iter_rows(named=True)}
    image_id_of = {}
    for entry in instances["images"]:
        path = coco_mini_dir / "images" / entry["file_name"]
        row = by_uri[str(path)]  # outside the data directory, so the uri is absolute
        assert row["image_id"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert (row["width"], row["height"]) == (entry["width"], entry["height"])
        image_id_of[entry["id"]] = row["image_id"]

    names = {category["id"]: category["name"] for category in instances["categories"]}
    expected = Counter(
        (
            image_id_of[a["image_id"]],
            names[a["category_id"]],
            tuple(a["bbox"][:2]),
            a["iscrowd"] == 1,
        )
        for a in instances["annotations"]
    )
    objects = table(coco_mini_ingest, "labels").filter(pl.col("task") == "object")
    found = Counter(
        (row["image_id"], row["category"], (row["box"][0], row["box"][1]), row["is_crowd"])
        for row in objects.iter_rows(named=True)
    )
    assert found == expected


def test_rows_land_in_the_shard_of_their_image(coco_mini_ingest: list[ShardIngest]) -> None:
    for result in coco_mini_ingest:
        assert result.images.height > 0
        for frame in (result.images, result.labels):
            assert {shard_of(image_id, SHARDS) for image_id in frame["image_id"]} == {result.shard}
    assert set(table(coco_mini_ingest, "images")["split"].cast(pl.String)) == {"train", "eval"}


def test_ingest_is_deterministic(
    coco_mini_dir: Path, coco_mini_ingest: list[ShardIngest], tmp_path: Path
) -> None:
    again = ingest_all([coco_mini_source(coco_mini_dir)], tmp_path)
    for first, second in zip(coco_mini_ingest, again, strict=True):
        assert first.images.equals(second.images)
        assert first.labels.equals(second.labels)
        assert first.quarantine.equals(second.quarantine)


def test_parquet_export_reingests_to_the_same_rows(
    coco_mini_ingest: list[ShardIngest], tmp_path: Path
) -> None:
    export = tmp_path / "export"
    export.mkdir()
    images, labels = table(coco_mini_ingest, "images"), table(coco_mini_ingest, "labels")
    images.write_parquet(export / "images.parquet")
    labels.write_parquet(export / "labels.parquet")

    again = ingest_all([SourceParams(name="coco-mini", kind="parquet", path="export")], tmp_path)

    assert table(again, "quarantine").height == 0
    assert table(again, "images").sort("image_id").equals(images.sort("image_id"))
    assert table(again, "labels").sort("label_id").equals(labels.sort("label_id"))
