"""bench/photos.py's measures: what it drops, how it matches the export's boxes to the truth."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import photos  # noqa: E402


def _coco(boxes: list[tuple[int, int, list[float]]]) -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
        "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}],
        "annotations": [
            {"id": n, "image_id": image, "category_id": category, "bbox": bbox}
            for n, (image, category, bbox) in enumerate(boxes, start=1)
        ],
    }


def test_partial_labels_drop_the_share_asked_and_half_the_captioned_images() -> None:
    instances = _coco([(1, 1, [0, 0, 10, 10])] * 10)
    captions = {
        "images": instances["images"],
        "annotations": [
            {"id": 1, "image_id": 1, "caption": "a dog"},
            {"id": 2, "image_id": 2, "caption": "a cat"},
        ],
    }
    kept, kept_captions, dropped, uncaptioned = photos.partial_labels(instances, captions, 0.4, seed=0)
    assert len(dropped) == 4 and len(kept["annotations"]) == 6
    assert {a["id"] for a in kept["annotations"]}.isdisjoint(dropped)
    assert len(uncaptioned) == 1
    assert all(a["image_id"] not in uncaptioned for a in kept_captions["annotations"])
    # the same seed drops the same boxes
    assert photos.partial_labels(instances, captions, 0.4, seed=0)[2] == dropped


def test_match_pairs_each_box_once_by_class_and_overlap() -> None:
    truth = _coco([(1, 1, [0, 0, 10, 10]), (1, 2, [20, 20, 10, 10])])["annotations"]
    found = [
        {"image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]},  # the dog
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},  # the dog again: a better match
        {"image_id": 1, "category_id": 1, "bbox": [20, 20, 10, 10]},  # the cat's place, wrong class
        {"image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10]},  # another image
    ]
    assert photos.match(found, truth, 0.5) == [(1, 0)]


def test_exported_boxes_map_files_and_category_names_to_the_truth_ids() -> None:
    truth = _coco([])
    export = {
        "images": [{"id": 7, "file_name": "/data/photos/b.jpg"}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "face"}],
        "annotations": [
            {"image_id": 7, "category_id": 1, "bbox": [1, 2, 3, 4], "score": None, "source": "human"},
            {"image_id": 7, "category_id": 1, "bbox": [5, 6, 7, 8], "score": 0.4, "source": "consensus@1"},
            {"image_id": 7, "category_id": 2, "bbox": [0, 0, 1, 1], "score": 0.9, "source": "faces@1"},
        ],
    }
    boxes = photos.exported_boxes(export, truth)
    # a category the truth does not have (face) is not a box to score
    assert [(b["image_id"], b["category_id"], b["score"], b["human"]) for b in boxes] == [
        (2, 2, 1.0, True),
        (2, 2, 0.4, False),
    ]


def test_consensus_choices_score_the_fused_boxes_the_engine_added(tmp_path: Path) -> None:
    from relabel.labels import frame
    from resources.layout import INITIAL_ANNOTATIONS, frames_dir

    truth = _coco([(1, 1, [0, 0, 10, 10]), (1, 1, [50, 50, 10, 10]), (2, 1, [0, 0, 10, 10])])
    dropped = truth["annotations"][1:]

    def row(name: str, box: list[float], score: float, **extra: object) -> dict:
        return {
            "label_id": name,
            "image_id": extra.pop("image_id", "hash-a"),
            "annotation_type": "region_text",
            "task": "object",
            "box": box,
            "category": extra.pop("category", "dog"),
            "score": score,
            "source": extra.pop("source", "consensus@1"),
            **extra,
        }

    folder = frames_dir(INITIAL_ANNOTATIONS, tmp_path / "data")
    folder.mkdir(parents=True)
    frame(
        "labels",
        [
            row("kept", [0, 0, 10, 10], 1.0, source="human"),  # a person's box: not an addition
            row("dropped dog", [50, 50, 60, 61], 0.45),
            row("nothing", [80, 80, 90, 90], 0.32),
            row("conflict", [0, 0, 10, 10], 0.9, category="cat", linked_label_id="kept"),
            row("face", [0, 0, 10, 10], 0.6, category="face"),  # not a category of the truth
            row("frozen", [0, 0, 10, 10], 0.9, image_id="hash-b"),  # the export gives its audit
        ],
    ).write_parquet(folder / "shard-00.parquet")

    ids = {"hash-a": 1, "hash-b": 2}
    rows = dict(photos.consensus_choices(tmp_path / "data", truth, dropped, ids, frozen={2}))
    assert rows["consensus boxes >= 0.3: right; recovered"] == "1 / 2 = 50.0%; 50.0%"
    assert rows["consensus boxes >= 0.45: right; recovered"] == "1 / 1 = 100.0%; 50.0%"
    assert rows["consensus boxes >= 0.5: right; recovered"] == "0 / 0 = 0.0%; 0.0%"
