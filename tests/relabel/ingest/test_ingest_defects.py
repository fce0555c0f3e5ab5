"""Each kind of bad input becomes exactly the expected quarantine rows; the good rows stay.

Every source is built in ``tmp_path`` from tiny generated images and hand-written JSON. The
``ingest`` helper runs the catalog and every shard and asserts the accounting (records in ==
kept + quarantined) before any test looks at the results.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from PIL import Image, ImageFile

from relabel.config import SourceParams
from relabel.ingest import (
    AccountingError,
    ShardIngest,
    SourceCatalog,
    catalog_sources,
    ingest_shard,
)
from relabel.labels import IMAGES_SCHEMA, LABELS_SCHEMA
from relabel.shards import shard_keys, shard_of

SHARDS = 2


@dataclass(frozen=True)
class Ingested:
    catalog: SourceCatalog
    shards: list[ShardIngest]

    @property
    def images(self) -> pl.DataFrame:
        return pl.concat([result.images for result in self.shards])

    @property
    def labels(self) -> pl.DataFrame:
        return pl.concat([result.labels for result in self.shards])

    @property
    def quarantine(self) -> pl.DataFrame:
        return pl.concat([self.catalog.quarantine, *(result.quarantine for result in self.shards)])

    def reasons(self) -> Counter[tuple[str, str]]:
        return Counter(self.quarantine.select(pl.col("record_kind").cast(pl.String), "reason").iter_rows())

    def accounting(self) -> dict[str, tuple[int, int, int]]:
        """(records in, kept, quarantined) by record kind, over the catalog and every shard."""
        quarantined = Counter(self.quarantine["record_kind"].cast(pl.String).to_list())
        kept = {"image": self.images.height, "label": self.labels.height}
        return {
            kind: (self.catalog.records_in.get(kind, 0), kept[kind], quarantined[kind])
            for kind in ("image", "label")
        }


def ingest(sources: list[SourceParams], root: Path, shard_count: int = SHARDS) -> Ingested:
    catalog = catalog_sources(sources, root, Path("data"), shard_count, 0.5, progress=False)
    shards = [
        ingest_shard(catalog.files, sources, root, Path("data"), shard, shard_count, progress=False)
        for shard in shard_keys(shard_count)
    ]
    for result in shards:
        result.check_accounting()
    catalog.check_accounting(shards)
    ingested = Ingested(catalog, shards)
    for records_in, kept, quarantined in ingested.accounting().values():
        assert records_in == kept + quarantined
    return ingested


def write_image(path: Path, shade: int, size: tuple[int, int] = (40, 30), fmt: str = "PNG") -> str:
    """A small image of its own colour (so its own hash); returns its image id."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.new("RGB", size, (shade, 255 - shade, (shade * 7) % 256)).save(buffer, fmt)
    path.write_bytes(buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def write_json(path: Path, document: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))


def coco_source(
    root: Path,
    images: dict[str, int],
    annotations: list[dict[str, Any]] = (),
    captions: list[dict[str, Any]] | None = None,
    name: str = "coco",
) -> SourceParams:
    """A COCO source under root/data/<name>. ``images`` maps file name -> shade (negative:
    listed but no file written); the COCO image ids are 1, 2, ... in that order."""
    folder = root / "data" / name
    entries = []
    for number, (file_name, shade) in enumerate(images.items(), start=1):
        if shade >= 0:  # a negative shade: listed in the JSON, file not written
            write_image(folder / "images" / file_name, shade)
        entries.append({"id": number, "file_name": file_name, "width": 40, "height": 30})
    categories = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    write_json(
        folder / "instances.json",
        {"images": entries, "annotations": list(annotations), "categories": categories},
    )
    if captions is not None:
        write_json(folder / "captions.json", {"images": entries, "annotations": captions})
    return SourceParams(
        name=name,
        kind="coco",
        images=f"data/{name}/images",
        instances=f"data/{name}/instances.json",
        captions=f"data/{name}/captions.json" if captions is not None else None,
    )


def box(annotation_id: int, image_id: int, bbox: list[float], **extra: Any) -> dict[str, Any]:
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": 1,
        "bbox": bbox,
        "iscrowd": 0,
        **extra,
    }


def caption(annotation_id: int, image_id: int, text: str) -> dict[str, Any]:
    return {"id": annotation_id, "image_id": image_id, "caption": text}


def quarantined(result: Ingested, reason: str) -> list[dict[str, Any]]:
    return result.quarantine.filter(pl.col("reason") == reason).to_dicts()


def test_good_coco_source_converts_boxes_polygons_crowd_and_captions(tmp_path: Path) -> None:
    rle = {"counts": [5, 10, 1185], "size": [30, 40]}
    source = coco_source(
        tmp_path,
        {"a.png": 10, "b.png": 200},
        [
            box(1, 1, [2, 3, 10, 5], segmentation=[[2, 3, 12, 3, 12, 8]]),
            box(2, 2, [0, 0, 40, 30], segmentation=rle, iscrowd=1, category_id=2),
        ],
        [caption(3, 1, "  A red square.\n"), caption(4, 2, "A green square.")],
    )
    result = ingest([source], tmp_path)

    assert result.quarantine.height == 0
    images = result.images.sort("uri")
    assert images["uri"].to_list() == [
        "coco/images/a.png",
        "coco/images/b.png",
    ]  # under data_dir: relative
    assert images.select("width", "height").rows() == [(40, 30), (40, 30)]
    assert set(images["dataset"]) == {"coco"}
    objects = result.labels.filter(pl.col("task") == "object").sort("category")
    assert objects["box"].to_list() == [[2.0, 3.0, 12.0, 8.0], [0.0, 0.0, 40.0, 30.0]]
    assert objects["text"].to_list() == objects["category"].to_list() == ["cat", "dog"]
    assert objects["polygon"].to_list() == [[[2.0, 3.0, 12.0, 3.0, 12.0, 8.0]], None]
    assert objects["is_crowd"].to_list() == [False, True]
    assert json.loads(objects["mask_rle"][1]) == rle
    assert set(objects["region_kind"]) == {"object"}
    captions = result.labels.filter(pl.col("task") == "brief_caption").sort("text")
    assert captions["text"].to_list() == ["A green square.", "A red square."]
    assert captions["annotation_type"].cast(pl.String).to_list() == ["text", "text"]
    labels = result.labels
    assert set(labels["source"]) == {"human"} and set(labels["score"]) == {1.0}
    assert set(labels["iteration"]) == {0} and set(labels["status"].cast(pl.String)) == {"raw"}
    assert labels["label_id"].n_unique() == labels.height == 4


def test_unreadable_image_is_quarantined_with_its_labels(tmp_path: Path) -> None:
    folder = tmp_path / "web"
    write_image(folder / "good.png", 1)
    (folder / "bad.png").write_bytes(b"this is not an image at all")
    lines = [
        {"file_name": "good.png", "alt_text": "fine"},
        {"file_name": "bad.png", "alt_text": "lost picture"},
    ]
    (folder / "alt.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    source = SourceParams(name="web", kind="folder", images="web", sidecar="web/alt.jsonl")

    result = ingest([source], tmp_path)

    assert result.reasons() == {("image", "unreadable_image"): 1, ("label", "image_quarantined"): 1}
    (image_row,) = quarantined(result, "unreadable_image")
    assert "bad.png" in image_row["detail"] and image_row["image_id"] is not None
    (label_row,) = quarantined(result, "image_quarantined")
    assert json.loads(label_row["record"]) == lines[1]
    assert label_row["origin"].endswith("alt.jsonl:2")
    assert result.labels["text"].to_list() == ["fine"]
    assert result.images.height == 1


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_is_caught_even_if_pil_is_told_to_load_truncated_files(
    tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # another library may have switched this on for the whole process
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    folder = tmp_path / "web"
    write_image(folder / "whole.png", 1)
    # noise, so that the pixel data (not the header) is most of the file and the cut falls in it
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, fmt)
    path = folder / f"cut.{fmt.lower()}"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) * 2 // 3])

    result = ingest([SourceParams(name="web", kind="folder", images="web")], tmp_path)

    assert result.reasons() == {("image", "truncated_image"): 1}
    assert "cut." in quarantined(result, "truncated_image")[0]["detail"]
    assert result.images["uri"].to_list() == [
        str(tmp_path / "web" / "whole.png")
    ]  # outside data_dir: absolute
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the setting is restored


def test_missing_file_quarantines_the_image_record_and_its_labels(tmp_path: Path) -> None:
    source = coco_source(
        tmp_path,
        {"here.png": 5, "gone.png": -1},
        [box(1, 1, [1, 1, 5, 5]), box(2, 2, [1, 1, 5, 5]), box(3, 2, [2, 2, 5, 5])],
        [caption(4, 2, "a picture nobody has")],
    )

    result = ingest([source], tmp_path)

    assert result.reasons() == {("image", "missing_file"): 1, ("label", "image_missing"): 3}
    assert result.catalog.quarantine.height == 4  # no shard can take them
    (image_row,) = quarantined(result, "missing_file")
    assert json.loads(image_row["record"])["file_name"] == "gone.png"
    assert result.labels.height == 1 and result.images.height == 1


def test_broken_coco_json_is_one_source_row_and_the_folder_images_are_still_ingested(
    tmp_path: Path,
) -> None:
    source = coco_source(tmp_path, {"a.png": 1, "b.png": 2}, [box(1, 1, [1, 1, 5, 5])], [])
    (tmp_path / "data/coco/instances.json").write_text('{"images": [], "annotations": [')  # cut short
    write_json(tmp_path / "data/coco/captions.json", {"info": "this is a dataset card, not COCO"})

    result = ingest([source], tmp_path)

    assert result.reasons() == {("source", "unparseable_json"): 1, ("source", "not_coco_json"): 1}
    (not_json,) = quarantined(result, "unparseable_json")
    assert "instances.json" in not_json["detail"] and json.loads(not_json["record"])["head"].startswith(
        '{"images"'
    )
    (not_coco,) = quarantined(result, "not_coco_json")
    assert "lacks" in not_coco["detail"] and "captions.json" in not_coco["origin"]
    assert sorted(result.images["uri"]) == ["coco/images/a.png", "coco/images/b.png"]
    assert result.labels.height == 0


def test_json_array_is_not_coco(tmp_path: Path) -> None:
    source = coco_source(tmp_path, {"a.png": 1})
    write_json(tmp_path / "data/coco/instances.json", [1, 2, 3])

    result = ingest([source], tmp_path)

    assert result.reasons() == {("source", "not_coco_json"): 1}
    assert result.images.height == 1


def test_box_defects_are_quarantined_and_small_overhangs_clipped(tmp_path: Path) -> None:
    # images are 40 x 30
    source = coco_source(
        tmp_path,
        {"a.png": 1},
        [
            box(1, 1, [5, 5, 10, 10]),  # good
            box(2, 1, [-0.6, 2, 41.4, 28.9]),  # [-0.6, 2, 40.8, 30.9]: within 1 px, clipped
            box(3, 1, [30, 5, 20, 10]),  # ends at x = 50 > 40 + 1
            box(4, 1, [5, 5, 0, 10]),  # zero width
            box(5, 1, [5, 5, 10, -3]),  # negative height
            box(6, 1, [5, 5, 10, 10], segmentation=[[5, 5, 15, 15]]),  # a two-point polygon
            box(7, 99, [5, 5, 10, 10]),  # no image 99 in the file
            box(8, 1, [5, 5, 10, 10], category_id=42),  # no category 42
        ],
    )

    result = ingest([source], tmp_path)

    assert result.reasons() == {
        ("label", "box_outside_image"): 1,
        ("label", "zero_area_box"): 2,
        ("label", "degenerate_polygon"): 1,
        ("label", "unknown_image"): 1,
        ("label", "unknown_category"): 1,
    }
    assert sorted(result.labels["box"].to_list()) == [
        [0.0, 2.0, 40.0, 30.0],
        [5.0, 5.0, 15.0, 15.0],
    ]
    (outside,) = quarantined(result, "box_outside_image")
    assert (
        outside["detail"]
        == "box [30, 5, 50, 15] extends beyond the 40x30 image by more than the 1 px tolerance"
    )
    assert json.loads(outside["record"])["id"] == 3 and outside["origin"].endswith("#annotations[id=3]")
    assert outside["label_id"] is not None and outside["image_id"] == result.images["image_id"][0]
    assert {json.loads(row["record"])["id"] for row in quarantined(result, "zero_area_box")} == {
        4,
        5,
    }
    assert "ring 0 has 4 coordinates" in quarantined(result, "degenerate_polygon")[0]["detail"]
    (unknown,) = quarantined(result, "unknown_image")
    assert "99" in unknown["detail"] and unknown["image_id"] is None


def test_empty_text_is_quarantined(tmp_path: Path) -> None:
    source = coco_source(
        tmp_path,
        {"a.png": 1},
        [],
        [caption(1, 1, "A cat."), caption(2, 1, "   "), caption(3, 1, "")],
    )

    result = ingest([source], tmp_path)

    assert result.reasons() == {("label", "empty_text"): 2}
    assert result.labels["text"].to_list() == ["A cat."]


def test_non_utf8_line_loses_only_itself(tmp_path: Path) -> None:
    folder = tmp_path / "web"
    for number in range(3):
        write_image(folder / f"{number}.png", number)
    (folder / "alt.jsonl").write_bytes(
        b'{"file_name": "0.png", "alt_text": "caf\xc3\xa9 sign"}\n'  # valid UTF-8 (cafe with an accent)
        b'{"file_name": "1.png", "alt_text": "caf\xe9 sign"}\n'  # latin-1 bytes
        b'{"file_name": "2.png", "alt_text": "a bus"}\n'
    )
    source = SourceParams(name="web", kind="folder", images="web", sidecar="web/alt.jsonl")

    result = ingest([source], tmp_path)

    assert result.reasons() == {("label", "non_utf8_text"): 1}
    (row,) = quarantined(result, "non_utf8_text")
    assert "caf\\xe9 sign" in row["detail"] and json.loads(row["record"])["alt_text"] == "caf\\xe9 sign"
    assert sorted(result.labels["text"]) == ["a bus", "café sign"]
    assert set(result.labels["task"].cast(pl.String)) == {"alt_text"}


def test_non_utf8_caption_in_coco_json_loses_only_itself(tmp_path: Path) -> None:
    source = coco_source(tmp_path, {"a.png": 1}, [], [caption(1, 1, "PLACEHOLDER"), caption(2, 1, "A dog.")])
    path = tmp_path / "data/coco/captions.json"
    path.write_bytes(path.read_bytes().replace(b"PLACEHOLDER", b"Stra\xdfe"))

    result = ingest([source], tmp_path)

    assert result.reasons() == {("label", "non_utf8_text"): 1}
    assert result.labels["text"].to_list() == ["A dog."]


def test_csv_sidecar_and_its_bad_rows(tmp_path: Path) -> None:
    folder = tmp_path / "web"
    write_image(folder / "a.png", 1)
    write_image(folder / "b.png", 2)
    (folder / "alt.csv").write_bytes(
        b'file_name,alt_text\na.png,"a sign, red"\nb.png,\xff\xfe\nmissing.png,ghost\nb.png,\n'
    )
    source = SourceParams(name="web", kind="folder", images="web", sidecar="web/alt.csv")

    result = ingest([source], tmp_path)

    assert result.reasons() == {
        ("label", "non_utf8_text"): 1,
        ("label", "unknown_image"): 1,
        ("label", "empty_text"): 1,
    }
    assert result.labels["text"].to_list() == ["a sign, red"]


def test_unparseable_sidecar_line_loses_only_itself(tmp_path: Path) -> None:
    folder = tmp_path / "web"
    write_image(folder / "a.png", 1)
    (folder / "alt.jsonl").write_text(
        '{"file_name": "a.png", "alt_text": "ok"}\n{"file_name": "a.png", "alt_\n\n[1, 2]\n'
    )
    source = SourceParams(name="web", kind="folder", images="web", sidecar="web/alt.jsonl")

    result = ingest([source], tmp_path)

    assert result.reasons() == {("label", "unparseable_json"): 1, ("label", "invalid_record"): 1}
    assert json.loads(quarantined(result, "unparseable_json")[0]["record"]) == '{"file_name": "a.png", "alt_'
    assert result.labels["text"].to_list() == ["ok"]


def test_duplicate_images_keep_the_first_source_and_every_label(tmp_path: Path) -> None:
    coco = coco_source(tmp_path, {"x.png": 9}, [box(1, 1, [1, 1, 5, 5])], [caption(2, 1, "A square.")])
    folder = tmp_path / "data" / "web"
    image_id = write_image(folder / "copy.png", 9)  # the same picture again
    write_image(folder / "copy2.png", 9)  # and once more in the same folder
    (folder / "alt.jsonl").write_text(json.dumps({"file_name": "copy2.png", "alt_text": "square"}))
    web = SourceParams(name="web", kind="folder", images="data/web", sidecar="data/web/alt.jsonl")

    # the web source comes second in the params, so the COCO file is the one kept
    result = ingest([coco, web], tmp_path)

    assert result.reasons() == {("image", "duplicate_image"): 2}
    assert result.images.rows() == [
        (image_id, "coco/images/x.png", 40, 30, "coco", result.images["split"][0])
    ]
    duplicates = quarantined(result, "duplicate_image")
    assert [row["image_id"] for row in duplicates] == [image_id, image_id]
    # paths are named from the project root, so quarantine reads the same on every machine
    assert sorted(json.loads(row["record"])["file"] for row in duplicates) == [
        "data/web/copy.png",
        "data/web/copy2.png",
    ]
    assert "coco/images/x.png" in duplicates[0]["detail"]
    assert sorted(result.labels["text"]) == ["A square.", "cat", "square"]
    assert set(result.labels["image_id"]) == {image_id}


def test_parquet_source_with_a_wrong_schema_is_one_source_row(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    image_id = write_image(tmp_path / "data/pics/a.png", 3)
    pl.DataFrame({"image_id": [image_id], "uri": ["pics/a.png"], "w": [40]}).write_parquet(
        folder / "images.parquet"
    )
    label = {
        "label_id": "l1",
        "image_id": image_id,
        "annotation_type": "text",
        "task": "brief_caption",
        "text": "A square.",
        "score": 1.0,
        "source": "human",
        "iteration": 0,
        "status": "raw",
    }
    pl.DataFrame([label], schema=LABELS_SCHEMA).write_parquet(folder / "labels.parquet")

    result = ingest([SourceParams(name="export", kind="parquet", path="export")], tmp_path)

    assert result.reasons() == {("source", "schema_mismatch"): 1, ("label", "unknown_image"): 1}
    assert "extra=['w']" in quarantined(result, "schema_mismatch")[0]["detail"]
    assert result.images.height == 0


def test_parquet_labels_are_validated_and_follow_their_image(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    image_id = write_image(tmp_path / "data/pics/a.png", 3)
    stale_id = "0" * 64  # the stored id no longer matches the file: labels follow the file's hash
    pl.DataFrame(
        [
            {
                "image_id": stale_id,
                "uri": "pics/a.png",
                "width": 1,
                "height": 1,
                "dataset": "old",
                "split": "eval",
            }
        ],
        schema=IMAGES_SCHEMA,
    ).write_parquet(folder / "images.parquet")
    base = {
        "image_id": stale_id,
        "annotation_type": "text",
        "task": "brief_caption",
        "text": "A square.",
        "source": "model@iter1",
        "iteration": 1,
        "status": "accepted",
    }
    rows = [
        {**base, "label_id": "good", "score": 0.9},
        {**base, "label_id": "nan", "score": float("nan")},
        {**base, "label_id": "high", "score": 1.5},
        {**base, "label_id": "none", "score": None},
        {**base, "label_id": "good", "score": 0.8},  # the same id again
    ]
    pl.DataFrame(rows, schema=LABELS_SCHEMA).write_parquet(folder / "labels.parquet")

    result = ingest([SourceParams(name="export", kind="parquet", path="export")], tmp_path)

    assert result.reasons() == {("label", "invalid_score"): 3, ("label", "duplicate_label_id"): 1}
    assert result.images.rows() == [(image_id, "pics/a.png", 40, 30, "old", result.images["split"][0])]
    (kept,) = result.labels.to_dicts()
    assert (kept["label_id"], kept["image_id"], kept["score"], kept["source"]) == (
        "good",
        image_id,
        0.9,
        "model@iter1",
    )
    details = {row["label_id"]: row["detail"] for row in quarantined(result, "invalid_score")}
    assert details == {
        "nan": "score NaN is not a number in [0, 1]",
        "high": "score 1.5 is not a number in [0, 1]",
        "none": "score null is not a number in [0, 1]",
    }


def test_same_inputs_give_identical_frames_and_rows_land_in_their_shard(tmp_path: Path) -> None:
    source = coco_source(
        tmp_path,
        {f"{n}.png": n * 20 for n in range(8)},
        [box(n, n % 8 + 1, [1, 1, 5 + n, 5]) for n in range(1, 20)] + [box(99, 1, [0, 0, 80, 5])],
        [caption(100 + n, n + 1, f"Picture {n}.") for n in range(8)] + [caption(200, 1, "Picture 0.")],
    )
    first, second = (
        ingest([source], tmp_path, shard_count=3),
        ingest([source], tmp_path, shard_count=3),
    )

    assert first.catalog.files.equals(second.catalog.files)
    for a, b in zip(first.shards, second.shards, strict=True):
        assert a.images.equals(b.images) and a.labels.equals(b.labels) and a.quarantine.equals(b.quarantine)
        for table in (a.images, a.labels, a.quarantine.filter(pl.col("image_id").is_not_null())):
            assert {shard_of(image_id, 3) for image_id in table["image_id"]} <= {a.shard}
    # two humans writing the same caption on one image: two labels with their own ids
    assert first.labels.filter(pl.col("text") == "Picture 0.")["label_id"].n_unique() == 2


def test_accounting_error_names_the_shard(tmp_path: Path) -> None:
    source = coco_source(tmp_path, {"a.png": 1}, [box(1, 1, [1, 1, 5, 5])])
    result = ingest([source], tmp_path, shard_count=1)
    (shard,) = result.shards
    broken = ShardIngest(shard.shard, shard.images, shard.labels.head(0), shard.quarantine, shard.records_in)
    with pytest.raises(AccountingError, match="shard-00"):
        broken.check_accounting()


def test_the_same_project_in_two_folders_ingests_to_identical_bytes(tmp_path: Path) -> None:
    """Nothing machine-specific (such as the checkout's absolute path) reaches the store,
    so the DVC hashes of a shard agree between checkouts."""
    written = []
    for name in ("one", "elsewhere/two"):
        root = tmp_path / name
        coco = coco_source(root, {"x.png": 9, "gone.png": -1}, [box(1, 1, [1, 1, 5, 5])], [])
        result = ingest([coco], root)
        frames = [result.images, result.labels, result.quarantine]
        assert result.quarantine.height, "the missing file must be quarantined"
        buffers = []
        for table in frames:
            buffer = io.BytesIO()
            table.write_parquet(buffer)
            buffers.append(buffer.getvalue())
        written.append(buffers)
    assert written[0] == written[1]


def test_detailed_captions_of_a_coco_source_are_human_detailed_captions(tmp_path: Path) -> None:
    source = coco_source(
        tmp_path, {"a.png": 10, "b.png": 200}, [box(1, 1, [2, 3, 10, 5])], [caption(2, 1, "A red square.")]
    )
    folder = tmp_path / "data" / "coco"
    entries = json.loads((folder / "instances.json").read_text())["images"]
    write_json(
        folder / "detailed.json",
        {
            "images": entries,
            "annotations": [caption(3, 2, "A green square sits at the top left, next to nothing.")],
        },
    )
    result = ingest([source.model_copy(update={"detailed_captions": "data/coco/detailed.json"})], tmp_path)
    assert result.quarantine.height == 0
    detailed = result.labels.filter(pl.col("task") == "detailed_caption")
    assert detailed["text"].to_list() == ["A green square sits at the top left, next to nothing."]
    assert detailed.row(0, named=True)["source"] == "human"
    assert result.labels.filter(pl.col("task") == "brief_caption").height == 1
