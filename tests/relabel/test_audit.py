"""relabel.audit: the round trip of an audit through Label Studio's config, task and export formats."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import polars as pl
import pytest

from relabel.audit import (
    CONTROLS,
    DECISIONS_SCHEMA,
    accept_all,
    audit_from_truth,
    audit_tasks,
    import_audit,
    judge_from_truth,
    label_config,
)
from relabel.labels import LABELS_SCHEMA, QUARANTINE_SCHEMA, TASKS_BY_TYPE, frame, label_id_for

FIXTURES = Path(__file__).parent / "fixtures" / "label_studio"
SIZES = {"img-a": (640, 480), "img-b": (320, 240), "img-v": (100, 100), "img-w": (200, 100)}


def url(uri: str) -> str:
    return f"/data/local-files/?d={uri}"


def images(*image_ids: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "image_id": list(image_ids),
            "uri": [f"eval/{image_id}.png" for image_id in image_ids],
            "width": [SIZES[image_id][0] for image_id in image_ids],
            "height": [SIZES[image_id][1] for image_id in image_ids],
        }
    )


def label(
    image,
    task,
    *,
    label_id=None,
    box=None,
    category=None,
    text=None,
    span=None,
    source="noisy@1",
    score=0.5,
    **extra,
):
    """A label row; an object's text is its category, a region's kind follows its task."""
    annotation_type = next(kind for kind, tasks in TASKS_BY_TYPE.items() if task in tasks)
    row = {
        "image_id": image,
        "annotation_type": annotation_type,
        "task": task,
        "region_kind": None if annotation_type == "text" else "text" if task == "ocr" else "object",
        "box": box,
        "category": category,
        "text": category if task == "object" else text,
        "phrase_start": span[0] if span else None,
        "phrase_end": span[1] if span else None,
        "score": score,
        "source": source,
        "iteration": 0,
        "status": "raw",
        **extra,
    }
    return {**row, "label_id": label_id or label_id_for(row)}


def fixture_labels() -> pl.DataFrame:
    """The labels the hand-written export audits (region id = first 12 characters of the id)."""
    return frame(
        "labels",
        [
            label(
                "img-a",
                "object",
                label_id="lbl-dog-0001-aaaa",
                box=[64.0, 48.0, 192.0, 144.0],
                category="dog",
                polygon=[[64.0, 48.0, 192.0, 48.0, 128.0, 144.0]],
                score=0.9,
            ),
            label(
                "img-a",
                "object",
                label_id="lbl-cat-0002-aaaa",
                box=[320.0, 240.0, 480.0, 360.0],
                category="cat",
                score=0.8,
            ),
            label(
                "img-a",
                "object",
                label_id="lbl-car-0003-aaaa",
                box=[0.0, 0.0, 64.0, 48.0],
                category="car",
                score=0.4,
            ),
            label("img-a", "brief_caption", label_id="lbl-cap-0004-aaaa", text="a dog and a cat", score=0.7),
            label(
                "img-a",
                "ocr",
                label_id="lbl-ocr-0005-aaaa",
                box=[400.0, 20.0, 464.0, 52.0],
                text="STOP",
                score=0.6,
            ),
            label(
                "img-b",
                "object",
                label_id="lbl-bus-0006-aaaa",
                box=[10.0, 10.0, 100.0, 100.0],
                category="bus",
            ),
        ],
    )


def truth_labels() -> pl.DataFrame:
    caption = "a dog next to a cat"
    return frame(
        "labels",
        [
            label(
                "img-w",
                "object",
                box=[10.0, 10.0, 50.0, 50.0],
                category="dog",
                polygon=[[10.0, 10.0, 50.0, 10.0, 30.0, 50.0]],
                source="world",
                score=1.0,
            ),
            label(
                "img-w", "object", box=[100.0, 20.0, 160.0, 80.0], category="cat", source="world", score=1.0
            ),
            label(
                "img-w",
                "object",
                box=[170.25, 5.5, 195.75, 30.33],
                category="bird",
                source="world",
                score=1.0,
            ),
            label("img-w", "object", box=[60.0, 5.0, 90.0, 40.0], category="tree", source="world", score=1.0),
            label(
                "img-w",
                "ocr",
                box=[60.0, 60.0, 90.0, 75.0],
                quad=[60.0, 60.0, 90.0, 60.0, 90.0, 75.0, 60.0, 75.0],
                text="EXIT",
                source="world",
                score=1.0,
            ),
            label(
                "img-w",
                "region_caption",
                box=[10.0, 10.0, 50.0, 50.0],
                category="dog",
                text="a small brown dog",
                source="world",
                score=1.0,
            ),
            label("img-w", "brief_caption", text=caption, source="world", score=1.0),
            label(
                "img-w",
                "phrase_grounding",
                box=[10.0, 10.0, 50.0, 50.0],
                category="dog",
                text=caption,
                span=(0, 5),
                source="world",
                score=1.0,
            ),
            label(
                "img-w",
                "phrase_grounding",
                box=[100.0, 20.0, 160.0, 80.0],
                category="cat",
                text=caption,
                span=(14, 19),
                source="world",
                score=1.0,
            ),
            label("img-v", "brief_caption", text="an empty room", source="world", score=1.0),
        ],
    )


def noisy_labels() -> pl.DataFrame:
    """The truth of img-w with one kind of error per label (img-v has no labels at all)."""
    return frame(
        "labels",
        [
            label(
                "img-w", "object", box=[12.0, 12.0, 52.0, 50.0], category="dog", score=0.9
            ),  # moved, no polygon
            label(
                "img-w", "object", box=[100.0, 20.0, 160.0, 80.0], category="dog", score=0.8
            ),  # wrong class
            label("img-w", "object", box=[0.0, 80.0, 20.0, 100.0], category="car", score=0.3),  # not there
            label("img-w", "object", box=[60.0, 5.0, 90.0, 40.0], category="tree", score=0.7),  # right
            label("img-w", "ocr", box=[60.0, 60.0, 90.0, 75.0], text="FXIT", score=0.6),  # misread
            label(
                "img-w", "region_caption", box=[10.0, 10.0, 50.0, 50.0], category="dog", text="a brown dog"
            ),
            label("img-w", "brief_caption", text="a dog near a cat"),
            # the right caption, the wrong phrase ("dog" for "a dog")
            label(
                "img-w",
                "phrase_grounding",
                box=[10.0, 10.0, 50.0, 50.0],
                category="dog",
                text="a dog next to a cat",
                span=(2, 5),
            ),
            # a grounding of the wrong caption: the auditor cannot fix the caption, so deletes it
            label(
                "img-w",
                "phrase_grounding",
                box=[100.0, 20.0, 160.0, 80.0],
                category="cat",
                text="a dog near a cat",
                span=(11, 16),
            ),
        ],
    )


def content(data: pl.DataFrame) -> list[tuple]:
    """What a label says, geometry to 0.01 px, in a stable order."""
    rows = []
    for row in data.iter_rows(named=True):
        box = None if row["box"] is None else tuple(round(v, 2) for v in row["box"])
        polygon = (
            None
            if row["polygon"] is None
            else tuple(tuple(round(v, 2) for v in ring) for ring in row["polygon"])
        )
        span = (row["phrase_start"], row["phrase_end"])
        rows.append((row["image_id"], row["task"], box, polygon, row["category"], row["text"], span))
    return sorted(rows, key=repr)


def counts(result) -> dict[str, int]:
    return dict(result.decisions.group_by("decision").len().iter_rows())


def check_accounting(result, labels: pl.DataFrame) -> None:
    """Every predicted label is accepted, corrected, rejected or unaudited, exactly once."""
    decided = result.decisions.filter(pl.col("label_id").is_not_null())
    assert decided["label_id"].is_unique().all()
    assert set(decided["label_id"]) | set(result.unaudited["label_id"]) == set(labels["label_id"])
    n = counts(result)
    decided_count = n.get("accepted", 0) + n.get("corrected", 0) + n.get("rejected", 0)
    assert decided_count + result.unaudited.height == labels.height
    assert result.labels.height == n.get("accepted", 0) + n.get("corrected", 0) + n.get("added", 0)
    assert result.labels["label_id"].is_unique().all()
    assert result.labels.schema == LABELS_SCHEMA and result.unaudited.schema == LABELS_SCHEMA
    assert result.quarantine.schema == QUARANTINE_SCHEMA and result.decisions.schema == DECISIONS_SCHEMA
    assert result.labels["status"].unique().to_list() in ([], ["audited"])
    assert set(result.unaudited["image_id"]) <= set(result.unaudited_images)


def test_label_config_parses_and_names_every_control_and_category():
    categories = ["dog", "cat & mouse", 'a "quoted" <thing>', "dog"]
    root = ET.fromstring(label_config(categories))
    controls = {element.get("name"): element for element in root.iter() if element.get("toName") == "image"}
    assert set(controls) == set(CONTROLS)
    expected = ["dog", "cat & mouse", 'a "quoted" <thing>']  # escaped, deduplicated, in order
    for name in ("object", "object_polygon", "region_caption", "phrase_grounding"):
        assert [label.get("value") for label in controls[name]] == expected
    assert (controls["object"].tag, controls["object_polygon"].tag) == ("RectangleLabels", "PolygonLabels")
    assert [label.get("value") for label in controls["ocr"]] == ["text"]
    for name in ("ocr_text", "region_caption_text", "phrase_grounding_text"):
        assert (controls[name].tag, controls[name].get("perRegion")) == ("TextArea", "true")
    for name in ("brief_caption", "detailed_caption", "more_detailed_caption"):
        assert controls[name].tag == "TextArea" and controls[name].get("perRegion") is None
    assert root.find("Image").attrib == {"name": "image", "value": "$image", "zoom": "true"}
    with pytest.raises(ValueError, match="non-empty strings"):
        label_config(["dog", ""])


def test_tasks_show_labels_as_percent_regions_named_after_their_labels():
    labels = fixture_labels()
    tasks = audit_tasks(images("img-b", "img-a"), labels, url)
    assert [task["data"]["image_id"] for task in tasks] == ["img-a", "img-b"]
    first = tasks[0]
    assert first["data"]["image"] == "/data/local-files/?d=eval/img-a.png"
    prediction = first["predictions"][0]
    assert prediction["model_version"] == "relabel"
    assert prediction["score"] == pytest.approx((0.9 + 0.8 + 0.4 + 0.7 + 0.6) / 5)
    by_id = {(result["id"], result["from_name"]): result for result in prediction["result"]}
    assert sorted(by_id) == [
        ("lbl-cap-0004", "brief_caption"),
        ("lbl-car-0003", "object"),
        ("lbl-cat-0002", "object"),
        ("lbl-dog-0001", "object"),
        ("lbl-dog-0001_p", "object_polygon"),
        ("lbl-ocr-0005", "ocr"),
        ("lbl-ocr-0005", "ocr_text"),
    ]
    cat = by_id["lbl-cat-0002", "object"]
    assert cat["value"] == {
        "x": 50.0,
        "y": 50.0,
        "width": 25.0,
        "height": 25.0,
        "rotation": 0,
        "rectanglelabels": ["cat"],
    }
    assert (cat["type"], cat["to_name"], cat["image_rotation"]) == ("rectanglelabels", "image", 0)
    assert (cat["original_width"], cat["original_height"]) == (640, 480)
    assert cat["score"] == 0.8 and cat["meta"] == {"source": "noisy@1", "label_id": "lbl-cat-0002-aaaa"}
    assert by_id["lbl-dog-0001_p", "object_polygon"]["value"]["points"] == [
        [10.0, 10.0],
        [30.0, 10.0],
        [20.0, 30.0],
    ]
    assert by_id["lbl-ocr-0005", "ocr"]["value"]["rectanglelabels"] == ["text"]
    assert by_id["lbl-ocr-0005", "ocr_text"]["value"] == {"text": ["STOP"]}
    assert by_id["lbl-cap-0004", "brief_caption"]["value"] == {"text": ["a dog and a cat"]}
    # the hand-written export was made from exactly these tasks
    exported = json.loads((FIXTURES / "audit_export.json").read_text())
    assert [item["data"] for item in exported] == [task["data"] for task in tasks]


def test_phrase_groundings_carry_their_caption_and_ocr_quads_are_boxed():
    labels = frame(
        "labels",
        [
            label(
                "img-w",
                "phrase_grounding",
                label_id="pg-grounding",
                box=[10.0, 10.0, 50.0, 50.0],
                category="dog",
                text="a dog next to a cat",
                span=(0, 5),
            ),
            label(
                "img-w",
                "ocr",
                label_id="ocr-text-001",
                quad=[60.0, 62.0, 90.0, 60.0, 92.0, 75.0, 58.0, 74.0],
                text="EXIT",
            ),
        ],
    )
    (task,) = audit_tasks(images("img-w"), labels, url)
    assert task["data"]["phrase_grounding_texts"] == {"pg-grounding": "a dog next to a cat"}
    assert task["data"]["grounding_captions"] == "a dog next to a cat"
    results = {
        (result["id"], result["from_name"]): result["value"] for result in task["predictions"][0]["result"]
    }
    assert results["pg-grounding", "phrase_grounding_text"] == {"text": ["a dog"]}
    ocr = results["ocr-text-001", "ocr"]
    assert [ocr["x"], ocr["y"], ocr["width"], ocr["height"]] == pytest.approx([29.0, 60.0, 17.0, 15.0])


def test_region_ids_grow_past_twelve_characters_only_where_needed():
    labels = frame(
        "labels",
        [
            label(
                "img-a", "object", label_id=f"same-prefix-0{i}-x", box=[0.0, 0.0, 10.0, 10.0], category="dog"
            )
            for i in "ab"
        ],
    )
    (task, _) = audit_tasks(images("img-a", "img-b"), labels, url)
    assert [result["id"] for result in task["predictions"][0]["result"]] == [
        "same-prefix-0a",
        "same-prefix-0b",
    ]


def test_labels_of_tasks_an_audit_does_not_show_are_refused():
    labels = frame("labels", [label("img-a", "alt_text", text="photo of a dog")])
    with pytest.raises(ValueError, match="alt_text"):
        audit_tasks(images("img-a"), labels, url)


def test_accepting_every_prediction_gives_the_labels_back_all_accepted():
    labels = pl.concat([fixture_labels(), truth_labels(), noisy_labels()])
    tasks = audit_tasks(images("img-a", "img-b", "img-v", "img-w"), labels, url)
    export = json.loads(json.dumps(accept_all(tasks)))  # through a file, as Label Studio gives it
    result = import_audit(tasks, export, labels)
    check_accounting(result, labels)
    assert counts(result) == {"accepted": labels.height}
    assert result.unaudited_images == [] and result.problems == [] and result.quarantine.height == 0
    back = result.labels.sort("label_id")
    assert back.drop("status", "source", "score").equals(
        labels.sort("label_id").drop("status", "source", "score")
    )
    assert set(back["source"]) == {"human-audit@accept-all"} and set(back["score"]) == {1.0}
    assert content(back) == content(labels)


def test_a_real_export_is_read_region_by_region():
    labels = fixture_labels()
    tasks = audit_tasks(images("img-a", "img-b"), labels, url)
    export = json.loads((FIXTURES / "audit_export.json").read_text())
    result = import_audit(tasks, export, labels)
    check_accounting(result, labels)
    # the latest submitted annotation (58, by user 1) is read; 57 is older, 61 and 62 cancelled
    assert counts(result) == {"accepted": 2, "corrected": 2, "rejected": 1, "added": 1}
    assert set(result.decisions["auditor"]) == {"1"}
    assert result.unaudited_images == ["img-b"] and result.unaudited["label_id"].to_list() == [
        "lbl-bus-0006-aaaa"
    ]
    decision = dict(zip(result.decisions["region_id"], result.decisions["decision"], strict=True))
    assert decision == {
        "lbl-cap-0004": "accepted",
        "lbl-car-0003": "rejected",
        "lbl-cat-0002": "corrected",
        "lbl-dog-0001": "accepted",
        "lbl-ocr-0005": "corrected",
        "Yk3vQ9s_Zt": "added",
    }
    out = {row["label_id"]: row for row in result.labels.iter_rows(named=True)}
    original = {row["label_id"]: row for row in labels.iter_rows(named=True)}
    dog = out["lbl-dog-0001-aaaa"]
    assert {**dog, "status": "raw", "source": "noisy@1", "score": 0.9} == original["lbl-dog-0001-aaaa"]
    assert (dog["status"], dog["source"], dog["score"]) == ("audited", "human-audit@1", 1.0)

    (cat,) = [row for row in out.values() if row["replaces"] == "lbl-cat-0002-aaaa"]
    assert cat["box"] == [353.0, 239.0, 513.0, 359.0]  # x 55.15625 % of 640, y 49.7916.. % of 480
    assert (cat["category"], cat["text"], cat["source"], cat["status"]) == (
        "cat",
        "cat",
        "human-audit@1",
        "audited",
    )
    assert cat["label_id"] == label_id_for(cat)
    (ocr,) = [row for row in out.values() if row["replaces"] == "lbl-ocr-0005-aaaa"]
    assert (ocr["text"], ocr["box"], ocr["region_kind"]) == ("SHOP", [400.0, 20.0, 464.0, 52.0], "text")
    (bird,) = [row for row in out.values() if row["category"] == "bird"]
    assert bird["box"] == [448.0, 24.0, 528.0, 72.0]
    assert (bird["task"], bird["annotation_type"], bird["region_kind"], bird["text"]) == (
        "object",
        "region_text",
        "object",
        "bird",
    )
    assert bird["replaces"] is None and bird["image_id"] == "img-a"
    added = result.decisions.filter(pl.col("decision") == "added").row(0, named=True)
    assert added["label_id"] is None and added["new_label_id"] == bird["label_id"]

    reasons = dict(result.quarantine.group_by("reason").len().iter_rows())
    assert reasons == {"rejected_in_audit": 1, "corrected_in_audit": 2, "unreadable_audit_result": 1}
    rejected = result.quarantine.filter(pl.col("reason") == "rejected_in_audit").row(0, named=True)
    assert (rejected["label_id"], rejected["phase"], rejected["record_kind"]) == (
        "lbl-car-0003-aaaa",
        "audit",
        "label",
    )
    assert json.loads(rejected["record"])["category"] == "car" and "by 1" in rejected["detail"]
    (problem,) = result.problems
    assert "image_quality" in problem and "img-a" in problem
    unreadable = result.quarantine.filter(pl.col("reason") == "unreadable_audit_result").row(0, named=True)
    assert json.loads(unreadable["record"])["id"] == "Qw8-Hn2pLc"


def test_the_truth_auditor_turns_noisy_labels_into_the_truth():
    truth, noisy = truth_labels(), noisy_labels()
    tasks = audit_tasks(images("img-v", "img-w"), noisy, url)
    export = json.loads(json.dumps(audit_from_truth(tasks, truth)))
    result = import_audit(tasks, export, noisy)
    check_accounting(result, noisy)
    assert result.problems == []
    assert content(result.labels) == content(truth)
    assert counts(result) == {"accepted": 1, "corrected": 6, "rejected": 2, "added": 3}
    by_decision = {
        decision: sorted(result.decisions.filter(pl.col("decision") == decision)["task"].cast(pl.String))
        for decision in ("accepted", "rejected", "added")
    }
    assert by_decision == {
        "accepted": ["object"],
        "rejected": ["object", "phrase_grounding"],
        "added": ["brief_caption", "object", "phrase_grounding"],
    }
    assert set(result.labels["source"]) == {"human-audit@world-auditor"}
    # an accepted label is the prediction itself; corrections name what they replaced
    corrected = result.labels.filter(pl.col("replaces").is_not_null())
    assert set(corrected["replaces"]) <= set(noisy["label_id"]) and corrected.height == 6


def queue_labels() -> pl.DataFrame:
    """Labels of img-w a review queue shows, one case each (their truth is truth_labels())."""
    caption = "a dog next to a cat"
    return frame(
        "labels",
        [
            label(
                "img-w", "object", label_id="q-tree", box=[60.0, 5.0, 90.0, 40.0], category="tree"
            ),  # right
            label(
                "img-w", "object", label_id="q-dog", box=[101.0, 21.0, 159.0, 79.0], category="dog"
            ),  # a cat
            label(
                "img-w", "object", label_id="q-car", box=[0.0, 80.0, 20.0, 100.0], category="car"
            ),  # nothing there
            label("img-w", "ocr", label_id="q-ocr", box=[60.0, 60.0, 90.0, 75.0], text="EXT"),  # not judged
            label("img-w", "brief_caption", label_id="q-brief", text=caption),  # right
            label("img-w", "detailed_caption", label_id="q-detailed", text="a bus parked by a tree"),  # wrong
            # "a cat" grounded on the dog: the truth grounds "a dog" there
            label(
                "img-w",
                "phrase_grounding",
                label_id="q-ground",
                box=[10.0, 10.0, 50.0, 50.0],
                category="cat",
                text=caption,
                span=(14, 19),
            ),
            # a grounding of a caption the truth does not have: nothing to correct it to
            label(
                "img-w",
                "phrase_grounding",
                label_id="q-other",
                box=[10.0, 10.0, 50.0, 50.0],
                category="dog",
                text="a dog on a sofa",
                span=(0, 5),
            ),
        ],
    )


def test_the_truth_judge_keeps_right_labels_corrects_wrong_ones_and_draws_nothing():
    detailed = "a small brown dog and a grey cat by a tree"
    truth = pl.concat(
        [
            truth_labels(),
            frame("labels", [label("img-w", "detailed_caption", text=detailed, source="world", score=1.0)]),
        ]
    )
    labels = queue_labels()
    tasks = audit_tasks(images("img-w"), labels, url)
    # q-tree is missing (not judged); q-ocr cannot be judged
    correct = {
        "q-dog": False,
        "q-car": False,
        "q-ocr": None,
        "q-brief": True,
        "q-detailed": False,
        "q-ground": False,
        "q-other": False,
    }
    export = json.loads(json.dumps(judge_from_truth(tasks, truth, correct)))
    result = import_audit(tasks, export, labels)
    check_accounting(result, labels)
    assert result.problems == [] and result.unaudited_images == []
    decision = {row["label_id"]: row for row in result.decisions.iter_rows(named=True)}
    assert {label_id: row["decision"] for label_id, row in decision.items()} == {
        "q-tree": "accepted",
        "q-ocr": "accepted",
        "q-brief": "accepted",
        "q-dog": "corrected",
        "q-detailed": "corrected",
        "q-ground": "corrected",
        "q-car": "rejected",
        "q-other": "rejected",
    }
    # the truth's dog, bird, OCR, region caption, brief caption and groundings nobody labelled are not drawn
    assert "added" not in set(result.decisions["decision"])
    assert set(result.decisions["auditor"]) == {"world-auditor"}
    out = {row["label_id"]: row for row in result.labels.iter_rows(named=True)}
    original = {row["label_id"]: row for row in labels.iter_rows(named=True)}
    for label_id in ("q-tree", "q-ocr", "q-brief"):
        assert decision[label_id]["new_label_id"] == label_id
        kept = out[label_id]
        assert (kept["source"], kept["status"]) == ("human-audit@world-auditor", "audited")
        assert {**kept, "status": "raw", "source": "noisy@1", "score": 0.5} == original[label_id]
    cat = out[decision["q-dog"]["new_label_id"]]
    assert (cat["replaces"], cat["category"], cat["text"], cat["box"]) == (
        "q-dog",
        "cat",
        "cat",
        [100.0, 20.0, 160.0, 80.0],
    )
    assert cat["source"] == "human-audit@world-auditor"
    caption = out[decision["q-detailed"]["new_label_id"]]
    assert (caption["replaces"], caption["task"], caption["text"]) == (
        "q-detailed",
        "detailed_caption",
        detailed,
    )
    grounding = out[decision["q-ground"]["new_label_id"]]
    assert (grounding["replaces"], grounding["category"]) == ("q-ground", "dog")
    assert (grounding["text"], grounding["phrase_start"], grounding["phrase_end"]) == (
        "a dog next to a cat",
        0,
        5,
    )
    assert decision["q-car"]["new_label_id"] is None and decision["q-other"]["new_label_id"] is None
    reasons = dict(result.quarantine.group_by("reason").len().iter_rows())
    assert reasons == {"corrected_in_audit": 3, "rejected_in_audit": 2}
    # a kept region is the prediction's own results, not redrawn
    (item,) = export
    predicted = {(r["id"], r["from_name"]): r for r in tasks[0]["predictions"][0]["result"]}
    submitted = {(r["id"], r["from_name"]): r for r in item["annotations"][0]["result"]}
    kept = [
        key for key, value in predicted.items() if value["meta"]["label_id"] in ("q-tree", "q-ocr", "q-brief")
    ]
    assert len(kept) == 4 and all(submitted[key] == predicted[key] for key in kept)


def test_the_truth_judge_accepts_every_label_it_is_not_told_is_wrong():
    labels = queue_labels()
    tasks = audit_tasks(images("img-w"), labels, url)
    export = judge_from_truth(tasks, truth_labels(), {"q-car": True, "q-dog": None})
    assert export == accept_all(tasks, "world-auditor")
    result = import_audit(tasks, export, labels)
    check_accounting(result, labels)
    assert counts(result) == {"accepted": labels.height}
    assert set(result.labels["source"]) == {"human-audit@world-auditor"}


def test_unreadable_edits_reject_the_label_and_say_why():
    labels = truth_labels().filter(pl.col("image_id") == "img-w")
    tasks = audit_tasks(images("img-w"), labels, url)
    export = accept_all(tasks)
    annotation = export[0]["annotations"][0]
    annotation["completed_by"] = {"id": 4, "email": "ann@example.org", "first_name": "", "last_name": ""}
    for result in annotation["result"]:
        if result["from_name"] == "phrase_grounding_text" and result["value"]["text"] == ["a dog"]:
            result["value"]["text"] = ["a zebra"]  # not in the caption
        if result["from_name"] == "ocr":
            result["value"]["rotation"] = 90
    result = import_audit(tasks, export, labels)
    check_accounting(result, labels)
    assert counts(result) == {"accepted": labels.height - 2, "rejected": 1, "corrected": 1}
    (problem,) = result.problems
    assert "'a zebra' is not in the caption 'a dog next to a cat'" in problem
    assert set(result.decisions["auditor"]) == {"ann@example.org"}
    reasons = sorted(result.quarantine["reason"])
    assert reasons == ["corrected_in_audit", "rejected_in_audit", "unreadable_audit_result"]
    # a text rectangle turned by 90 degrees about its top-left corner becomes a quad
    (ocr,) = result.labels.filter(pl.col("task") == "ocr").iter_rows(named=True)
    assert ocr["quad"] == [60.0, 60.0, 60.0, 90.0, 45.0, 90.0, 45.0, 60.0]
    assert ocr["box"] == [45.0, 60.0, 60.0, 90.0] and ocr["text"] == "EXIT"


def test_an_image_without_a_submitted_annotation_is_unaudited():
    labels = fixture_labels()
    tasks = audit_tasks(images("img-a", "img-b"), labels, url)
    result = import_audit(tasks, [], labels)
    check_accounting(result, labels)
    assert result.unaudited_images == ["img-a", "img-b"]
    assert result.unaudited.equals(labels) and result.labels.height == 0 and result.quarantine.height == 0


@pytest.mark.parametrize(
    ("export", "message"),
    [
        ({"tasks": []}, "expected a list of tasks"),
        ([{"annotations": []}], "has no 'data' object"),
        (json.loads((FIXTURES / "audit_export_min.json").read_text()), "JSON-MIN"),
        ([{"data": {"image": "x.png"}, "annotations": []}], "no image_id"),
        ([{"data": {"image_id": "img-a"}, "annotations": [{"completed_by": 1}]}], "no result list"),
        (
            [{"data": {"image_id": "img-a"}, "annotations": [{"completed_by": None, "result": []}]}],
            "names no auditor",
        ),
        ([{"data": {"image_id": "img-z"}, "annotations": []}], "has no audit task"),
    ],
)
def test_a_file_that_is_not_a_label_studio_export_of_the_tasks_is_refused(export, message):
    labels = fixture_labels()
    tasks = audit_tasks(images("img-a", "img-b"), labels, url)
    with pytest.raises(ValueError, match=message):
        import_audit(tasks, export, labels)


def test_json_is_byte_stable():
    truth, noisy = truth_labels(), noisy_labels()
    shuffled = noisy.sample(fraction=1.0, shuffle=True, seed=3)

    def dumped(labels):
        tasks = audit_tasks(images("img-w", "img-v"), labels, url)
        judged = judge_from_truth(tasks, truth, dict.fromkeys(labels["label_id"], False))
        return [
            json.dumps(part) for part in (tasks, accept_all(tasks), audit_from_truth(tasks, truth), judged)
        ]

    assert dumped(noisy) == dumped(noisy) == dumped(shuffled)
