"""Shared by the object-specialist tests: the embedded world read the way the engine reads it,
and detections scored against its ground truth (used in tests only, never by a specialist)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest

from models.specialists.base import ImageRef
from models.specialists.boxes import iou
from relabel.evaluation_split import draw_split
from relabel.labels import check_schema, frame, label_id_for


def human_frames(world_dir: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The curated images (images table) and their human COCO boxes (labels table), read
    the way ingest reads them: image_id = SHA-256 of the file, a 10% eval split drawn by category."""
    document = json.loads((world_dir / "human" / "instances.json").read_text())
    names = {c["id"]: c["name"] for c in document["categories"]}
    images, ids = [], {}
    for entry in document["images"]:
        path = world_dir / "images" / entry["file_name"]
        if not path.is_file():  # the world's injected "missing file" defect
            continue
        image_id = hashlib.sha256(path.read_bytes()).hexdigest()
        ids[entry["id"]] = image_id
        images.append(
            {
                "image_id": image_id,
                "uri": str(path),
                "width": entry["width"],
                "height": entry["height"],
                "dataset": "world",
            }
        )
    labels = []
    for a in document["annotations"]:
        if a["image_id"] not in ids or a["category_id"] not in names:
            continue
        x, y, w, h = a["bbox"]
        name = names[a["category_id"]]
        labels.append(
            {
                "label_id": f"h{a['id']}",
                "image_id": ids[a["image_id"]],
                "annotation_type": "region_text",
                "task": "object",
                "region_kind": "object",
                "text": name,
                "category": name,
                "box": [x, y, x + w, y + h],
                "polygon": a.get("segmentation") or None,
                "score": 1.0,
                "source": "human",
                "iteration": 0,
                "status": "raw",
            }
        )
    categories: dict[str, set[str]] = {}
    for label in labels:
        categories.setdefault(label["image_id"], set()).add(label["category"])
    split = draw_split([i["image_id"] for i in images], [None] * len(images), categories, 0.1, 0)
    images = [{**image, "split": split[image["image_id"]]} for image in images]
    return frame("images", images).unique("image_id", keep="first", maintain_order=True), frame(
        "labels", labels
    )


def truth_objects(
    world_dir: Path, truth_dir: Path
) -> tuple[list[ImageRef], dict[str, list[tuple[list[float], str]]]]:
    """Every rendered image and its ground-truth object boxes with categories."""
    scenes = [json.loads(line) for line in (truth_dir / "scenes.jsonl").read_text().splitlines()]
    refs = [ImageRef(s["image_id"], world_dir / s["file"], s["width"], s["height"]) for s in scenes]
    objects = pl.read_parquet(truth_dir / "labels.parquet").filter(pl.col("task").cast(pl.String) == "object")
    truth: dict[str, list[tuple[list[float], str]]] = {}
    for image_id, box, category in objects.select("image_id", "box", "category").iter_rows():
        truth.setdefault(image_id, []).append((list(box), category))
    return refs, truth


def precision_recall(outputs, refs, truth, class_aware: bool = True) -> tuple[float, float]:
    """Box precision and recall at IoU 0.5 (greedy matching, best score first)."""
    tp = fp = fn = 0
    for ref, rows in zip(refs, outputs, strict=True):
        gts, used = truth.get(ref.image_id, []), set()
        for row in sorted(rows, key=lambda r: -r["score"]):
            candidates = [
                (iou(row["box"], box), i)
                for i, (box, category) in enumerate(gts)
                if i not in used and (not class_aware or category == row["category"])
            ]
            best = max(candidates, default=(0.0, None))
            if best[0] >= 0.5:
                used.add(best[1])
                tp += 1
            else:
                fp += 1
        fn += len(gts) - len(used)
    return tp / max(tp + fp, 1), tp / max(tp + fn, 1)


def check_rows(outputs, refs, source: str, text_is_category: bool = True) -> pl.DataFrame:
    """The rows pass the label schema once the runner's columns are added; polygons have at
    least three points and lie inside their boxes; scores are in [0, 1]."""
    rows = []
    for ref, image_rows in zip(refs, outputs, strict=True):
        for ordinal, row in enumerate(image_rows):
            assert row["annotation_type"] == "region_text" and row["task"] == "object"
            assert row["region_kind"] == "object"
            assert row["text"] == row["category"] or not text_is_category
            assert 0.0 <= row["score"] <= 1.0
            x0, y0, x1, y1 = row["box"]
            assert 0 <= x0 < x1 <= ref.width and 0 <= y0 < y1 <= ref.height
            for ring in row["polygon"]:
                assert len(ring) >= 6 and len(ring) % 2 == 0
                assert all(x0 <= x <= x1 for x in ring[0::2]) and all(y0 <= y <= y1 for y in ring[1::2])
            full = {**row, "image_id": ref.image_id, "source": source, "iteration": 0, "status": "raw"}
            rows.append({**full, "label_id": label_id_for(full, ordinal)})
    return check_schema(frame("labels", rows), "labels")


@pytest.fixture(scope="session")
def world_eval() -> SimpleNamespace:
    """``human_frames``, ``truth_objects``, ``precision_recall`` and ``check_rows``."""
    return SimpleNamespace(
        **{f.__name__: f for f in (human_frames, truth_objects, precision_recall, check_rows)}
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, Path]:
    """A 40-image embedded world (its folder, its ground truth), rendered once per test module;
    a module that needs another world defines its own ``world``."""
    from relabel.config import WorldParams
    from relabel.world import render_world

    base = tmp_path_factory.mktemp("world")
    render_world(WorldParams(n_images=40), base / "world", base / "truth", progress=False)
    return base / "world", base / "truth"
