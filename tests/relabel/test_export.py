"""Exports of the label store: each format loads in the tool it is for, comes back in through
relabel's own ingest where relabel reads it (COCO, hf-parquet: lossless), and is
byte-deterministic; ``select_labels`` picks the rows.

Sources: hand-made frames over a few generated PNGs, the 80 real COCO photos of coco-mini
(skipped where absent), and a tiny embedded world with its ground truth for every task.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from PIL import Image
from pycocotools import mask
from pycocotools.coco import COCO

from models.corpus import write_florence2_jsonl
from models.tasks import OD, TASK_TOKENS
from relabel.config import SourceParams, WorldParams
from relabel.export import (
    FORMATS,
    ExportResult,
    export_labels,
    select_labels,
    write_coco,
    write_hf_parquet,
    write_yolo,
)
from relabel.ingest import catalog_sources, ingest_shard
from relabel.labels import check_schema, frame, quarantine_row
from relabel.shards import shard_keys
from relabel.world import render_world

SHARDS = 2
# every export format: the label store's own, and Florence-2 JSONL written by models.corpus
WRITERS = {**FORMATS, "florence2": write_florence2_jsonl}


# ----------------------------------------------------------------------------- helpers


def ingest(sources: list[SourceParams], root: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Images, labels and quarantine of ``sources`` ingested into a project at ``root``
    (data directory ``root/data``), with the accounting checked."""
    catalog = catalog_sources(sources, root, root / "data", SHARDS, 0.25, progress=False)
    shards = [
        ingest_shard(catalog.files, sources, root, root / "data", shard, SHARDS, progress=False)
        for shard in shard_keys(SHARDS)
    ]
    for result in shards:
        result.check_accounting()
    catalog.check_accounting(shards)
    return (
        pl.concat([result.images for result in shards]).sort("image_id"),
        pl.concat([result.labels for result in shards]).sort("label_id"),
        pl.concat([catalog.quarantine, *(result.quarantine for result in shards)]),
    )


def coco_source(folder: Path, name: str = "exported") -> SourceParams:
    return SourceParams(
        name=name,
        kind="coco",
        images=str(folder),
        instances=str(folder / "instances.json"),
        captions=str(folder / "captions.json"),
        detailed_captions=str(folder / "detailed_captions.json"),
    )


def parquet_source(folder: Path) -> SourceParams:
    return SourceParams(name="exported", kind="parquet", path=str(folder))


def objects(labels: pl.DataFrame) -> Counter:
    """Object labels as COCO keeps them: image, category, box (to 0.01 px), polygon, crowd."""
    rows = labels.filter(pl.col("task") == "object")
    return Counter(
        (
            row["image_id"],
            row["category"],
            tuple(round(v, 2) for v in row["box"]),
            None if row["polygon"] is None else tuple(map(tuple, row["polygon"])),
            bool(row["is_crowd"]),
            row["mask_rle"],
        )
        for row in rows.iter_rows(named=True)
    )


def captions(labels: pl.DataFrame) -> Counter:
    rows = labels.filter(pl.col("task").is_in(["brief_caption", "detailed_caption"]))
    return Counter(rows.select("image_id", pl.col("task").cast(pl.String), "text").iter_rows())


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path, a link as its target and the bytes behind it."""
    found = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_symlink():
            found[name + " ->"] = os.readlink(path).encode()
        if path.is_file():
            found[name] = path.read_bytes()
    return found


def write_png(path: Path, size: tuple[int, int], seed: int) -> str:
    """A small noise image (its own content, so its own id); returns its image id."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def crowd_rle(width: int, height: int) -> str:
    """A compressed COCO RLE of a rectangle, as relabel's coco source stores ``mask_rle``."""
    pixels = np.zeros((height, width), dtype=np.uint8, order="F")
    pixels[5:20, 10:30] = 1
    rle = mask.encode(pixels)
    return json.dumps(
        {"counts": rle["counts"].decode(), "size": rle["size"]}, sort_keys=True, separators=(",", ":")
    )


# ----------------------------------------------------------------------------- hand-made


@pytest.fixture
def hand_made(tmp_path: Path) -> tuple[Path, pl.DataFrame, pl.DataFrame]:
    """A project root, and images and labels of every task on three PNGs under its data dir."""
    root = tmp_path / "project"
    data = root / "data"
    sizes = {"a.png": (64, 48), "b.png": (40, 30), "sub/c.png": (50, 50)}
    ids = {name: write_png(data / "pics" / name, size, n) for n, (name, size) in enumerate(sizes.items())}
    a, b, c = ids.values()
    images = frame(
        "images",
        [
            {
                "image_id": ids[name],
                "uri": f"pics/{name}",
                "width": w,
                "height": h,
                "dataset": "hand",
                "split": split,
            }
            for (name, (w, h)), split in zip(sizes.items(), ("train", "eval", "train"), strict=True)
        ],
    )
    region = {"annotation_type": "region_text", "iteration": 1}
    rows = [
        {
            **region,
            "label_id": "obj-poly",
            "image_id": a,
            "task": "object",
            "region_kind": "object",
            "text": "kite",
            "category": "kite",
            "box": [2.5, 3.25, 30.0, 20.0],
            "polygon": [[2.5, 3.25, 30.0, 3.25, 30.0, 20.0, 2.5, 20.0]],
            "is_crowd": False,
            "score": 0.9,
            "source": "consensus@1",
            "status": "accepted",
            "provenance": ["p1", "p2"],
            "agreement": 2,
        },
        {
            **region,
            "label_id": "obj-crowd",
            "image_id": a,
            "task": "object",
            "region_kind": "object",
            "text": "person",
            "category": "person",
            "box": [10.0, 5.0, 30.0, 20.0],
            "mask_rle": crowd_rle(64, 48),
            "is_crowd": True,
            "score": 1.0,
            "source": "human",
            "status": "raw",
        },
        {
            **region,
            "label_id": "obj-box",
            "image_id": b,
            "task": "object",
            "region_kind": "object",
            "text": "dog",
            "category": "dog",
            "box": [0.0, 0.0, 40.0, 30.0],
            "is_crowd": False,
            "score": 0.7,
            "source": "model@iter0",
            "status": "raw",
            "linked_label_id": "obj-poly",
            "replaces": "old-1",
        },
        {
            **region,
            "label_id": "obj-c",
            "image_id": c,
            "task": "object",
            "region_kind": "object",
            "text": "kite",
            "category": "kite",
            "box": [1.0, 2.0, 3.0, 4.0],
            "is_crowd": False,
            "score": 0.4,
            "source": "detector@2",
            "status": "superseded",
        },
        {
            **region,
            "label_id": "region",
            "image_id": a,
            "task": "region_caption",
            "region_kind": "object",
            "text": "a red kite",
            "box": [2.5, 3.25, 30.0, 20.0],
            "score": 0.8,
            "source": "captioner@1",
            "status": "raw",
        },
        {
            **region,
            "label_id": "ocr",
            "image_id": c,
            "task": "ocr",
            "region_kind": "text",
            "text": "EXIT 94",
            "box": [5.0, 5.0, 25.0, 12.0],
            "quad": [5.0, 5.0, 25.0, 5.0, 25.0, 12.0, 5.0, 12.0],
            "score": 0.95,
            "source": "ocr@3",
            "status": "audited",
        },
        {
            "label_id": "ground",
            "image_id": a,
            "annotation_type": "text_phrase_region",
            "task": "phrase_grounding",
            "text": "A red kite in the sky.",
            "phrase_start": 2,
            "phrase_end": 10,
            "box": [2.5, 3.25, 30.0, 20.0],
            "score": 0.6,
            "source": "grounding@1",
            "iteration": 2,
            "status": "raw",
        },
        {
            "label_id": "cap-a",
            "image_id": a,
            "annotation_type": "text",
            "task": "brief_caption",
            "text": "A kite and a person.",
            "score": 1.0,
            "source": "human",
            "iteration": 0,
            "status": "raw",
        },
        {
            "label_id": "cap-b",
            "image_id": b,
            "annotation_type": "text",
            "task": "brief_caption",
            "text": "Ein Hund – grün.",
            "score": 1.0,
            "source": "human",
            "iteration": 0,
            "status": "raw",
        },
        {
            "label_id": "detail",
            "image_id": b,
            "annotation_type": "text",
            "task": "detailed_caption",
            "text": "A dog fills the whole picture.",
            "score": 0.5,
            "source": "model@iter0",
            "iteration": 1,
            "status": "accepted",
        },
        {
            "label_id": "more",
            "image_id": c,
            "annotation_type": "text",
            "task": "more_detailed_caption",
            "text": "A sign reads EXIT 94 above a kite.",
            "score": 0.5,
            "source": "model@iter0",
            "iteration": 1,
            "status": "raw",
        },
        {
            "label_id": "alt",
            "image_id": c,
            "annotation_type": "text",
            "task": "alt_text",
            "text": "IMG_0001.JPG",
            "score": 1.0,
            "source": "human",
            "iteration": 0,
            "status": "raw",
        },
    ]
    return root, images, frame("labels", rows).sort("label_id")


def test_hf_parquet_reingests_to_exactly_the_same_labels(hand_made, tmp_path):
    root, images, labels = hand_made
    write_hf_parquet(images, labels, tmp_path / "hf", root / "data")

    again_images, again_labels, quarantined = ingest([parquet_source(tmp_path / "hf")], root)

    assert quarantined.height == 0, quarantined.to_dicts()
    assert again_labels.equals(labels)
    assert again_images.select("image_id", "width", "height", "dataset").equals(
        images.sort("image_id").select("image_id", "width", "height", "dataset")
    )


def test_coco_reingests_to_the_same_objects_and_captions(hand_made, tmp_path):
    root, images, labels = hand_made
    write_coco(images, labels, tmp_path / "coco", root / "data")

    again_images, again_labels, quarantined = ingest([coco_source(tmp_path / "coco")], root)

    assert quarantined.height == 0, quarantined.to_dicts()
    assert set(again_images["image_id"]) == set(images["image_id"])
    assert objects(again_labels) == objects(labels)
    assert captions(again_labels) == captions(labels)
    assert set(again_labels["task"].cast(pl.String)) == {"object", "brief_caption", "detailed_caption"}


def test_pycocotools_loads_the_coco_export(hand_made, tmp_path):
    root, images, labels = hand_made
    files = write_coco(images, labels, tmp_path / "coco", root / "data")
    assert [path.name for path in files] == ["captions.json", "detailed_captions.json", "instances.json"]

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco = COCO(str(tmp_path / "coco" / "instances.json"))
        brief = COCO(str(tmp_path / "coco" / "captions.json"))
    assert [category["name"] for category in coco.loadCats(coco.getCatIds())] == ["dog", "kite", "person"]
    assert len(coco.getImgIds()) == 3 and len(coco.getAnnIds()) == 4
    for image in coco.loadImgs(coco.getImgIds()):
        assert Path(image["file_name"]).is_absolute() and Path(image["file_name"]).is_file()
        row = images.filter(pl.col("image_id") == image["relabel_image_id"]).row(0, named=True)
        assert (image["width"], image["height"]) == (row["width"], row["height"])
    by_label = {ann["label_id"]: ann for ann in coco.loadAnns(coco.getAnnIds())}
    assert by_label["obj-poly"]["bbox"] == [2.5, 3.25, 27.5, 16.75]
    assert by_label["obj-poly"]["score"] == 0.9 and by_label["obj-poly"]["source"] == "consensus@1"
    # who confirmed the object travels with its one annotation
    assert by_label["obj-poly"]["provenance"] == ["p1", "p2"] and by_label["obj-poly"]["agreement"] == 2
    assert by_label["obj-crowd"]["iscrowd"] == 1 and isinstance(by_label["obj-crowd"]["segmentation"], dict)
    assert by_label["obj-crowd"]["area"] == 15 * 20  # the mask's pixels
    assert by_label["obj-box"]["segmentation"] == []  # a box alone: COCO's "no mask"
    for ann in by_label.values():
        assert ann["segmentation"] == [] or coco.annToMask(ann).sum() > 0
    assert len(brief.getAnnIds()) == 2


def test_datasets_loads_the_hf_parquet_tables(hand_made, tmp_path):
    datasets = pytest.importorskip("datasets")
    root, images, labels = hand_made
    write_hf_parquet(images, labels, tmp_path / "hf", root / "data", embed_images=True)

    # one dataset per table: the tables have different columns, so they cannot be splits of one
    loaded = {
        table: datasets.load_dataset(
            "parquet",
            data_files={table: str(tmp_path / "hf" / f"{table}.parquet")},
            cache_dir=str(tmp_path / "cache"),
        )[table]
        for table in ("images", "labels", "image_bytes")
    }

    assert {table: data.num_rows for table, data in loaded.items()} == {
        "images": 3,
        "labels": 12,
        "image_bytes": 3,
    }
    alt = loaded["labels"][loaded["labels"]["label_id"].index("alt")]
    assert alt["task"] == "alt_text" and alt["box"] is None
    assert isinstance(loaded["image_bytes"].features["image"], datasets.Image)
    sizes = dict(zip(images["image_id"], zip(images["width"], images["height"], strict=True), strict=True))
    for row in loaded["image_bytes"]:
        assert row["image"].size == sizes[row["image_id"]]


def test_embedded_images_leave_the_parquet_source_readable(hand_made, tmp_path):
    root, images, labels = hand_made
    files = write_hf_parquet(images, labels, tmp_path / "hf", root / "data", embed_images=True)
    assert [path.name for path in files] == ["image_bytes.parquet", "images.parquet", "labels.parquet"]
    stored = pl.read_parquet(tmp_path / "hf" / "image_bytes.parquet")
    for image_id, image in stored.iter_rows():
        assert hashlib.sha256(image["bytes"]).hexdigest() == image_id

    _, again_labels, quarantined = ingest([parquet_source(tmp_path / "hf")], root)
    assert quarantined.height == 0 and again_labels.equals(labels)


def test_a_bad_enum_value_in_an_exported_table_is_quarantined(hand_made, tmp_path):
    root, images, labels = hand_made
    write_hf_parquet(images, labels, tmp_path / "hf", root / "data")
    stored = pl.read_parquet(tmp_path / "hf" / "labels.parquet")
    stored.with_columns(task=pl.lit("no_such_task")).write_parquet(tmp_path / "hf" / "labels.parquet")

    _, again_labels, quarantined = ingest([parquet_source(tmp_path / "hf")], root)

    assert again_labels.height == 0
    [problem] = quarantined.filter(pl.col("record_kind") == "source").to_dicts()
    assert problem["reason"] == "schema_mismatch" and "no_such_task" in problem["detail"]


def test_yolo_lines_denormalise_to_the_boxes(hand_made, tmp_path):
    root, images, labels = hand_made
    folder = tmp_path / "yolo"
    write_yolo(images, labels, folder, root / "data")

    data = yaml.safe_load((folder / "data.yaml").read_text())
    assert data == {"names": {0: "dog", 1: "kite"}, "nc": 2, "train": "train.txt", "val": "val.txt"}
    expected = {
        (row["image_id"], row["category"], tuple(row["box"]))
        for row in labels.filter(pl.col("task") == "object", ~pl.col("is_crowd")).iter_rows(named=True)
    }
    found = set()
    for image in images.iter_rows(named=True):
        stem = image["image_id"][:16]
        link = folder / "images" / f"{stem}.png"
        assert link.is_symlink() and link.read_bytes() == (root / "data" / image["uri"]).read_bytes()
        w, h = image["width"], image["height"]
        for line in (folder / "labels" / f"{stem}.txt").read_text().splitlines():
            index, cx, cy, bw, bh = line.split()
            assert all(len(value.split(".")[1]) == 6 for value in (cx, cy, bw, bh))
            cx, cy, bw, bh = float(cx) * w, float(cy) * h, float(bw) * w, float(bh) * h
            name = data["names"][int(index)]
            box = next(box for i, n, box in expected if (i, n) == (image["image_id"], name))
            corners = [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]
            assert corners == pytest.approx(box, abs=1e-5 * max(w, h))
            found.add((image["image_id"], name, box))
    assert found == expected  # every box once; the crowd region is left out
    eval_stem = images.filter(pl.col("split") == "eval")["image_id"][0][:16]
    assert (folder / "val.txt").read_text() == f"./images/{eval_stem}.png\n"
    assert len((folder / "train.txt").read_text().splitlines()) == 2
    assert len((folder / "images.txt").read_text().splitlines()) == 3


def test_yolo_gives_an_image_without_objects_an_empty_file(hand_made, tmp_path):
    root, images, labels = hand_made
    without = labels.filter(pl.col("image_id") != images["image_id"][1])
    write_yolo(images, without, tmp_path / "yolo", root / "data")
    assert (tmp_path / "yolo" / "labels" / f"{images['image_id'][1][:16]}.txt").read_bytes() == b""


def test_florence2_lines_are_prompt_target_pairs(hand_made, tmp_path):
    root, images, labels = hand_made
    [path] = write_florence2_jsonl(images, labels, tmp_path / "f2", root / "data")

    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    keys = {"image", "image_id", "task", "prompt", "target", "label_ids"}
    assert lines and all(set(line) == keys for line in lines)
    for line in lines:
        assert line["task"] in TASK_TOKENS and line["prompt"].startswith(line["task"])
        assert Path(line["image"]).is_file()
    detection = [line for line in lines if line["task"] == OD]
    assert len(detection) == 3 and all("<loc_" in line["target"] for line in detection)
    assert {line["task"] for line in lines} >= {"<CAPTION>", "<OCR>", "<CAPTION_TO_PHRASE_GROUNDING>"}
    assert "alt" not in {label_id for line in lines for label_id in line["label_ids"]}
    assert [line["image_id"] for line in lines] == sorted(line["image_id"] for line in lines)


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_every_format_is_byte_deterministic(hand_made, tmp_path, fmt):
    root, images, labels = hand_made
    options = {"embed_images": True} if fmt == "hf-parquet" else {}
    first = export_labels(fmt, images, labels, tmp_path / "one", root / "data", WRITERS, **options)
    # the same rows in another order, into another folder
    shuffled = labels.sample(fraction=1.0, shuffle=True, seed=3)
    second = export_labels(
        fmt, images.reverse(), shuffled, tmp_path / "two", root / "data", WRITERS, **options
    )

    assert files_of(tmp_path / "one") == files_of(tmp_path / "two")
    assert first.files == second.files == tuple(sorted(first.files))
    assert set(first.files) == {name for name in files_of(tmp_path / "one") if not name.endswith(" ->")}


def test_export_labels_clears_the_folder_and_counts(hand_made, tmp_path):
    root, images, labels = hand_made
    folder = tmp_path / "out"
    (folder / "stale").mkdir(parents=True)
    (folder / "stale" / "old.txt").write_text("old")

    result = export_labels("coco", images, labels, folder, root / "data")

    assert result == ExportResult(
        format="coco",
        folder=folder,
        files=("captions.json", "detailed_captions.json", "instances.json"),
        images=3,
        labels={"brief_caption": 2, "detailed_caption": 1, "object": 4},
    )
    assert not (folder / "stale").exists()
    hf = export_labels("hf-parquet", images, labels, folder, root / "data")
    assert hf.labels == dict(Counter(labels["task"].cast(pl.String)))
    assert hf.files == ("images.parquet", "labels.parquet")
    eval_only = export_labels("yolo", images.filter(pl.col("split") == "eval"), labels, folder, root / "data")
    assert eval_only.images == 1 and eval_only.labels == {"object": 1}
    with pytest.raises(ValueError, match="unknown export format"):
        export_labels("voc", images, labels, folder, root / "data")
    with pytest.raises(ValueError, match="holds the data directory"):
        export_labels("coco", images, labels, root, root / "data")


# ----------------------------------------------------------------------------- select_labels


def test_select_labels_filters_by_score_and_status():
    rows = [
        {"label_id": "human-no-score", "source": "human", "score": None, "status": "raw"},
        {"label_id": "audit-no-score", "source": "human-audit", "score": None, "status": "audited"},
        {"label_id": "model-no-score", "source": "model@iter0", "score": None, "status": "raw"},
        {"label_id": "model-nan", "source": "model@iter0", "score": float("nan"), "status": "raw"},
        {"label_id": "model-low", "source": "model@iter0", "score": 0.2, "status": "accepted"},
        {"label_id": "model-high", "source": "model@iter0", "score": 0.8, "status": "accepted"},
    ]
    caption = {"image_id": "i", "annotation_type": "text", "task": "brief_caption", "text": "t"}
    labels = frame("labels", [{**caption, **row} for row in rows])

    def ids(selection) -> list[str]:
        return selection.labels["label_id"].to_list()

    assert ids(select_labels(labels)) == sorted(labels["label_id"])
    assert ids(select_labels(labels, min_score=0.5)) == ["audit-no-score", "human-no-score", "model-high"]
    assert ids(select_labels(labels, statuses=["accepted"])) == ["model-high", "model-low"]
    both = select_labels(labels, min_score=0.5, statuses=("raw", "audited"))
    assert ids(both) == ["audit-no-score", "human-no-score"]
    check_schema(select_labels(labels, min_score=0.5).labels, "labels")
    with pytest.raises(ValueError, match="unknown statuses"):
        select_labels(labels, statuses=["approved"])


def test_select_labels_leaves_out_a_machine_box_in_conflict_with_a_persons():
    box = {"image_id": "i", "annotation_type": "region_text", "task": "object", "box": [0.0, 0.0, 4.0, 4.0]}

    def machine(name: str, source: str, linked: str) -> dict:
        return {**box, "label_id": name, "category": name, "source": source, "linked_label_id": linked}

    labels = frame(
        "labels",
        [
            {**box, "label_id": "car", "category": "car", "source": "human", "status": "accepted"},
            {**box, "label_id": "van", "category": "van", "source": "human-audit@ls", "status": "audited"},
            # merged onto the person's car as a truck: a conflict
            machine("truck", "consensus@1", "car"),
            machine("bus", "model@iter1", "van"),
            # linked to a machine box only: not a conflict with a person
            machine("lorry", "model@iter1", "truck"),
            # a region caption naming the person's box is about it, not a second box
            {
                **box,
                "label_id": "caption",
                "task": "region_caption",
                "text": "a red car",
                "source": "grounding@1",
                "linked_label_id": "car",
            },
        ],
    )
    selection = select_labels(labels)
    assert selection.labels["label_id"].to_list() == ["caption", "car", "lorry", "van"]
    assert selection.in_conflict == ("bus", "truck")
    assert select_labels(labels, categories=["car", "van"]).in_conflict == ()


def test_select_labels_keeps_only_the_categories_asked_for_and_every_text():
    region = {
        "image_id": "i",
        "annotation_type": "region_text",
        "task": "object",
        "region_kind": "object",
        "box": [0.0, 0.0, 4.0, 4.0],
        "source": "centernet@1",
        "score": 0.9,
        "status": "raw",
    }
    labels = frame(
        "labels",
        [
            {**region, "label_id": "dog", "category": "dog", "text": "dog"},
            {**region, "label_id": "face", "category": "face", "text": "face"},
            {
                "label_id": "caption",
                "image_id": "i",
                "annotation_type": "text",
                "task": "brief_caption",
                "text": "a dog",
                "source": "human",
                "status": "raw",
            },
        ],
    )
    kept = select_labels(labels, categories=["dog", "cat"]).labels
    assert kept["label_id"].to_list() == ["caption", "dog"]
    assert select_labels(labels, categories=None).labels.height == 3


def entry(reason: str, record: dict, record_kind: str = "label", **fields: str) -> dict:
    return quarantine_row(
        record_kind=record_kind, phase="test", reason=reason, detail="", record=record, **fields
    )


def test_quarantined_labels_come_back_only_when_asked():
    kept = {
        "label_id": "kept",
        "image_id": "i",
        "annotation_type": "text",
        "task": "brief_caption",
        "text": "a cat",
        "score": 0.9,
        "source": "model@iter0",
        "status": "accepted",
    }
    dropped = {**kept, "label_id": "dropped", "text": "a dog", "score": 0.3, "status": "raw", "box": None}
    labels = frame("labels", [kept])
    quarantine = frame(
        "quarantine",
        [
            entry("low_score", dropped, label_id="dropped"),
            # quarantined twice: comes back once
            entry("replaced", dropped, label_id="dropped"),
            # a label also in ``labels``: not doubled
            entry("confirms_existing", kept, label_id="kept"),
            # a raw source record that never became a label row, a row outside the schema,
            # and an image
            entry("unknown_category", {"id": 3, "bbox": [1, 2, 3, 4], "category_id": 99}),
            entry("invalid_record", {**kept, "label_id": "bad", "task": "no_such_task"}),
            entry("missing_file", {"file": "x.png"}, record_kind="image"),
        ],
    )

    assert select_labels(labels, quarantine=quarantine).labels.equals(labels)
    selection = select_labels(labels, quarantine=quarantine, include_quarantined=True)
    assert selection.labels["label_id"].to_list() == ["dropped", "kept"]
    assert selection.from_quarantine == ("dropped",)
    assert selection.labels.filter(pl.col("label_id") == "dropped").row(0, named=True)["status"] == "raw"
    check_schema(selection.labels, "labels")
    # the filters apply to the rows brought back too
    strict = select_labels(labels, min_score=0.5, quarantine=quarantine, include_quarantined=True)
    assert strict.labels["label_id"].to_list() == ["kept"] and strict.from_quarantine == ()
    with pytest.raises(ValueError, match="needs the quarantine"):
        select_labels(labels, include_quarantined=True)


# ----------------------------------------------------------------------------- coco-mini


@pytest.fixture(scope="module")
def coco_mini(coco_mini_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("coco-mini-project")
    source = SourceParams(
        name="coco-mini",
        kind="coco",
        images=str(coco_mini_dir / "images"),
        instances=str(coco_mini_dir / "annotations" / "instances.json"),
        captions=str(coco_mini_dir / "annotations" / "captions.json"),
    )
    images, labels, quarantined = ingest([source], root)
    assert quarantined.height == 0
    return root, images, labels


def test_coco_mini_round_trips_through_coco(coco_mini, tmp_path):
    root, images, labels = coco_mini
    export_labels("coco", images, labels, tmp_path / "coco", root / "data")

    again_images, again_labels, quarantined = ingest([coco_source(tmp_path / "coco")], root)

    assert quarantined.height == 0
    assert again_images.height == images.height == 80
    assert objects(again_labels) == objects(labels)
    assert captions(again_labels) == captions(labels)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(tmp_path / "coco" / "instances.json"))
    assert len(coco.getAnnIds()) == labels.filter(pl.col("task") == "object").height
    assert sum(ann["iscrowd"] for ann in coco.loadAnns(coco.getAnnIds())) > 0


def test_coco_mini_round_trips_losslessly_through_hf_parquet(coco_mini, tmp_path):
    root, images, labels = coco_mini
    export_labels("hf-parquet", images, labels, tmp_path / "hf", root / "data")

    _, again_labels, quarantined = ingest([parquet_source(tmp_path / "hf")], root)

    assert quarantined.height == 0
    assert again_labels.equals(labels)


# ----------------------------------------------------------------------------- the world


def test_world_labels_of_every_task_round_trip_through_hf_parquet(tmp_path):
    root = tmp_path / "project"
    world, truth = root / "data" / "world", tmp_path / "truth"
    render_world(WorldParams(seed=3, n_images=8), world, truth, progress=False)
    sources = [
        coco_source(world / "human", "world").model_copy(update={"images": str(world / "images")}),
        SourceParams(
            name="world-alt-text",
            kind="folder",
            images=str(world / "web"),
            sidecar=str(world / "web" / "alt_text.jsonl"),
        ),
    ]
    images, human, _ = ingest(sources, root)
    # the ground truth adds what no human labelled: OCR quads, region captions, grounding
    ground_truth = pl.read_parquet(truth / "labels.parquet").filter(
        pl.col("image_id").is_in(images["image_id"].implode())
    )
    labels = pl.concat([human, ground_truth]).sort("label_id")
    tasks = set(labels["task"].cast(pl.String))
    assert tasks >= {
        "object",
        "brief_caption",
        "detailed_caption",
        "alt_text",
        "ocr",
        "phrase_grounding",
        "region_caption",
    }

    export_labels("hf-parquet", images, labels, tmp_path / "hf", root / "data")
    again_images, again_labels, quarantined = ingest([parquet_source(tmp_path / "hf")], root)

    assert quarantined.height == 0, quarantined.to_dicts()
    assert set(again_images["image_id"]) == set(images["image_id"])
    for task in tasks:
        assert again_labels.filter(pl.col("task") == task).equals(labels.filter(pl.col("task") == task)), task
    assert again_labels.equals(labels)
