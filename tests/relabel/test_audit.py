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
    # a label is unaudited only where nobody submitted its image, or a problem says why
    for row in result.unaudited.iter_rows(named=True):
        assert row["image_id"] in result.unaudited_images or any(
            row["label_id"] in p for p in result.problems
        )


# the tags and attributes of Label Studio's labeling config language that the audit config uses
# (labelstud.io/tags: View, Style, Image, Header, Text, RectangleLabels, PolygonLabels, Label,
# TextArea)
LABEL_STUDIO_TAGS = {
    "View": {"visibleWhen", "whenTagName"},
    "Style": set(),
    "Image": {"name", "value", "zoom"},
    "Header": {"value", "size"},
    "Text": {"name", "value"},
    "RectangleLabels": {"name", "toName"},
    "PolygonLabels": {"name", "toName"},
    "Label": {"value"},
    "TextArea": {"name", "toName", "perRegion", "editable", "maxSubmissions"},
}


def two_captions() -> pl.DataFrame:
    """Two human brief captions of one image, as in the trial that hid the second."""
    return frame(
        "labels",
        [
            label("img-a", "brief_caption", label_id="cap-first-0001", text="a dog on grass", source="human"),
            label("img-a", "brief_caption", label_id="cap-second-002", text="a brown dog", source="human"),
            label("img-a", "object", label_id="obj-dog-000001", box=[1.0, 2.0, 30.0, 40.0], category="dog"),
        ],
    )


def test_label_config_parses_and_names_every_control_and_category():
    categories = ["dog", "cat & mouse", 'a "quoted" <thing>', "dog"]
    tasks = audit_tasks(images("img-a", "img-b"), two_captions(), url)
    root = ET.fromstring(label_config(categories, tasks))
    controls = {element.get("name"): element for element in root.iter() if element.get("toName") == "image"}
    # every caption a task shows has a text box of its own: img-a has two brief captions
    caption_boxes = {"brief_caption_1", "brief_caption_2", "detailed_caption_1", "more_detailed_caption_1"}
    assert set(controls) == set(CONTROLS) | caption_boxes
    expected = ["dog", "cat & mouse", 'a "quoted" <thing>']  # escaped, deduplicated, in order
    for name in ("object", "object_polygon", "region_caption", "phrase_grounding"):
        assert [label.get("value") for label in controls[name]] == expected
    assert (controls["object"].tag, controls["object_polygon"].tag) == ("RectangleLabels", "PolygonLabels")
    assert [label.get("value") for label in controls["ocr"]] == ["text"]
    for name in ("ocr_text", "region_caption_text", "phrase_grounding_text"):
        assert (controls[name].tag, controls[name].get("perRegion")) == ("TextArea", "true")
    for name in caption_boxes:
        assert controls[name].tag == "TextArea" and controls[name].get("perRegion") is None
    assert root.find("Image").attrib == {"name": "image", "value": "$image", "zoom": "true"}
    # only Label Studio's own tags and attributes
    for element in root.iter():
        assert element.tag in LABEL_STUDIO_TAGS and set(element.attrib) <= LABEL_STUDIO_TAGS[element.tag]
    # every section is headed, and each caption box by what is in it: every task has its text
    headers = [element.get("value") for element in root.iter("Header")]
    assert {"Objects: a polygon where the object has one, else a box", "$brief_caption_2_about"} <= set(
        headers
    )
    fields = {
        element.get("value")[1:] for element in root.iter() if (element.get("value") or "").startswith("$")
    }
    for task in tasks:
        assert fields <= set(task["data"])
    assert tasks[0]["data"]["brief_caption_2_about"] == "brief caption 2: from human, score 0.50"
    assert tasks[1]["data"]["brief_caption_1_about"] == "brief caption 1: empty (type one to add it)"
    # the text of the selected region's task only
    (ocr_view,) = [view for view in root.iter("View") if view.get("whenTagName") == "ocr"]
    assert (
        ocr_view.get("visibleWhen") == "region-selected"
        and ocr_view.find("TextArea").get("name") == "ocr_text"
    )
    with pytest.raises(ValueError, match="non-empty strings"):
        label_config(["dog", ""], tasks)


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
    # one region per label: the dog is its polygon only; the caption is in its own text box
    assert sorted(by_id) == [
        ("lbl-cap-0004", "brief_caption_1"),
        ("lbl-car-0003", "object"),
        ("lbl-cat-0002", "object"),
        ("lbl-dog-0001", "object_polygon"),
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
    # the region says where its label came from
    assert cat["score"] == 0.8 and cat["meta"] == {
        "source": "noisy@1",
        "label_id": "lbl-cat-0002-aaaa",
        "text": ["object 'cat': from noisy@1, score 0.80"],
    }
    assert first["data"]["summary"].splitlines() == [
        "object 'car': from noisy@1, score 0.40",
        "object 'cat': from noisy@1, score 0.80",
        "object 'dog' (polygon): from noisy@1, score 0.90",
        "ocr 'STOP': from noisy@1, score 0.60",
        "brief caption 1: from noisy@1, score 0.70",
    ]
    assert by_id["lbl-dog-0001", "object_polygon"]["value"]["points"] == [
        [10.0, 10.0],
        [30.0, 10.0],
        [20.0, 30.0],
    ]
    assert by_id["lbl-ocr-0005", "ocr"]["value"]["rectanglelabels"] == ["text"]
    assert by_id["lbl-ocr-0005", "ocr_text"]["value"] == {"text": ["STOP"]}
    assert by_id["lbl-cap-0004", "brief_caption_1"]["value"] == {"text": ["a dog and a cat"]}
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
    # the export names users by id only; params.yaml's audit.auditors names them
    result = import_audit(tasks, export, labels, {1: "alice@example.com"})
    check_accounting(result, labels)
    # the latest submitted annotation (58, by user 1, alice) is read; 57 is older, 61 and 62 cancelled
    assert counts(result) == {"accepted": 2, "corrected": 2, "rejected": 1, "added": 1}
    assert set(result.decisions["auditor"]) == {"alice@example.com"}
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
    assert (dog["status"], dog["source"], dog["score"]) == ("audited", "human-audit@alice@example.com", 1.0)

    (cat,) = [row for row in out.values() if row["replaces"] == "lbl-cat-0002-aaaa"]
    assert cat["box"] == [353.0, 239.0, 513.0, 359.0]  # x 55.15625 % of 640, y 49.7916.. % of 480
    assert (cat["category"], cat["text"], cat["source"], cat["status"]) == (
        "cat",
        "cat",
        "human-audit@alice@example.com",
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
    assert reasons == {"rejected_in_audit": 1, "corrected_in_audit": 2}
    rejected = result.quarantine.filter(pl.col("reason") == "rejected_in_audit").row(0, named=True)
    assert (rejected["label_id"], rejected["phase"], rejected["record_kind"]) == (
        "lbl-car-0003-aaaa",
        "audit",
        "label",
    )
    assert json.loads(rejected["record"])["category"] == "car"
    assert rejected["detail"] == "deleted in Label Studio task 101, annotation 58 by alice@example.com"
    # a result of a control the audit config does not have is a problem, with its task, not a label
    (problem,) = result.problems
    assert problem.startswith("Label Studio task 101, annotation 58 by alice@example.com (image img-a)")
    assert "'Qw8-Hn2pLc'" in problem and "image_quality" in problem


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


def results_of(item: dict) -> dict[tuple[str, str], dict]:
    """An export item's submitted results by (region id, control)."""
    return {(result["id"], result["from_name"]): result for result in item["annotations"][0]["result"]}


def test_an_edit_that_cannot_be_read_leaves_its_label_unjudged_and_names_the_task():
    labels = truth_labels().filter(pl.col("image_id") == "img-w")
    tasks = audit_tasks(images("img-w"), labels, url)
    export = accept_all(tasks)
    export[0]["id"] = 4711  # Label Studio's task id
    annotation = export[0]["annotations"][0]
    annotation["completed_by"] = {"id": 4, "email": "ann@example.org", "first_name": "", "last_name": ""}
    grounding = None
    for result in annotation["result"]:
        if result["from_name"] == "phrase_grounding_text" and result["value"]["text"] == ["a dog"]:
            result["value"]["text"] = ["a zebra"]  # not in the caption
            grounding = result["meta"]["label_id"]
        if result["from_name"] == "ocr":
            result["value"]["rotation"] = 90
    result = import_audit(tasks, export, labels)
    check_accounting(result, labels)
    # not a rejection: the grounding is unjudged, and the problem says which task to fix
    assert counts(result) == {"accepted": labels.height - 2, "corrected": 1}
    assert result.unaudited["label_id"].to_list() == [grounding] and result.unaudited_images == []
    (problem,) = result.problems
    assert problem.startswith("Label Studio task 4711, annotation 1 by ann@example.org (image img-w)")
    assert "'a zebra' is not in the caption 'a dog next to a cat'" in problem
    assert f"label {grounding} is left unjudged" in problem
    assert set(result.decisions["auditor"]) == {"ann@example.org"}
    assert sorted(result.quarantine["reason"]) == ["corrected_in_audit"]
    # a text rectangle turned by 90 degrees about its top-left corner becomes a quad
    (ocr,) = result.labels.filter(pl.col("task") == "ocr").iter_rows(named=True)
    assert ocr["quad"] == [60.0, 60.0, 60.0, 90.0, 45.0, 90.0, 45.0, 60.0]
    assert ocr["box"] == [45.0, 60.0, 60.0, 90.0] and ocr["text"] == "EXIT"


def test_a_region_with_a_garbled_result_is_unjudged_not_deleted():
    labels = fixture_labels().filter(pl.col("image_id") == "img-a")
    tasks = audit_tasks(images("img-a"), labels, url)
    export = accept_all(tasks)
    for result in export[0]["annotations"][0]["result"]:
        if result["id"] == "lbl-cat-0002":
            result["type"] = "polygonlabels"  # its only result cannot be read: it must not look deleted
    result = import_audit(tasks, export, labels)
    check_accounting(result, labels)
    assert result.unaudited["label_id"].to_list() == ["lbl-cat-0002-aaaa"]
    assert "rejected" not in counts(result) and result.quarantine.height == 0
    (problem,) = result.problems
    assert "Label Studio task 1," in problem and "'lbl-cat-0002'" in problem and "unjudged" in problem


def test_every_caption_has_its_own_box_and_only_a_cleared_one_is_rejected():
    labels = two_captions()
    tasks = audit_tasks(images("img-a"), labels, url)
    predicted = {(r["id"], r["from_name"]) for r in tasks[0]["predictions"][0]["result"]}
    assert {("cap-first-00", "brief_caption_1"), ("cap-second-0", "brief_caption_2")} <= predicted
    # the plain Submit of the trial: both captions come back, both are accepted
    result = import_audit(tasks, accept_all(tasks, "alice"), labels)
    assert counts(result) == {"accepted": 3}
    # the auditor empties the second box and edits the first (Label Studio drops an emptied text box)
    export = accept_all(tasks, "alice")
    annotation = export[0]["annotations"][0]
    annotation["result"] = [r for r in annotation["result"] if r["from_name"] != "brief_caption_2"]
    results_of(export[0])["cap-first-00", "brief_caption_1"]["value"]["text"] = ["a dog on green grass"]
    result = import_audit(tasks, export, labels)
    check_accounting(result, labels)
    decision = dict(zip(result.decisions["label_id"], result.decisions["decision"], strict=True))
    assert decision == {
        "cap-first-0001": "corrected",
        "cap-second-002": "rejected",
        "obj-dog-000001": "accepted",
    }
    assert "a dog on green grass" in result.labels["text"].to_list()
    # a box emptied but kept (blank text) is cleared too; spacing alone changes nothing
    export = accept_all(tasks, "alice")
    results_of(export[0])["cap-second-0", "brief_caption_2"]["value"]["text"] = ["  "]
    results_of(export[0])["cap-first-00", "brief_caption_1"]["value"]["text"] = [" a dog  on grass\n"]
    decision = dict(import_audit(tasks, export, labels).decisions.select("label_id", "decision").iter_rows())
    assert (decision["cap-first-0001"], decision["cap-second-002"]) == ("accepted", "rejected")


def test_a_caption_typed_into_an_empty_box_is_added():
    labels = two_captions().filter(pl.col("task") == "object")
    tasks = audit_tasks(images("img-a"), labels, url)
    export = accept_all(tasks, "alice")
    export[0]["annotations"][0]["result"].append(
        {
            "id": "Zx81kLmq0a",
            "from_name": "detailed_caption_1",
            "to_name": "image",
            "type": "textarea",
            "value": {"text": ["a brown dog lying on short grass"]},
            "origin": "manual",
        }
    )
    result = import_audit(tasks, export, labels)
    check_accounting(result, labels)
    assert counts(result) == {"accepted": 1, "added": 1}
    (added,) = result.labels.filter(pl.col("task") == "detailed_caption").iter_rows(named=True)
    assert added["text"] == "a brown dog lying on short grass" and added["source"] == "human-audit@alice"


def grounded_dog() -> pl.DataFrame:
    caption = "A black dog next to a black umbrella."
    return frame(
        "labels",
        [
            label(
                "img-w",
                "phrase_grounding",
                label_id="pg-umbrella-01",
                box=[10.0, 10.0, 50.0, 50.0],
                category="umbrella",
                text=caption,
                span=(20, 36),
            )
        ],
    )


@pytest.mark.parametrize(
    ("phrase", "span"),
    [
        ("a black dog", (0, 11)),  # the trial's relabelling: the caption starts with "A"
        ("A  BLACK\ndog", (0, 11)),
        ("black umbrella", (22, 36)),
    ],
)
def test_a_grounded_phrase_is_found_in_any_case_and_spacing(phrase, span):
    labels = grounded_dog()
    tasks = audit_tasks(images("img-w"), labels, url)
    export = accept_all(tasks)
    results_of(export[0])["pg-umbrella-", "phrase_grounding_text"]["value"]["text"] = [phrase]
    result = import_audit(tasks, export, labels)
    check_accounting(result, labels)
    assert result.problems == [] and counts(result) == {"corrected": 1}
    (row,) = result.labels.iter_rows(named=True)
    assert (row["phrase_start"], row["phrase_end"]) == span


def test_a_phrase_in_another_case_is_the_same_phrase_and_a_partial_word_is_none():
    labels = grounded_dog()
    tasks = audit_tasks(images("img-w"), labels, url)
    export = accept_all(tasks)
    results_of(export[0])["pg-umbrella-", "phrase_grounding_text"]["value"]["text"] = ["a Black  Umbrella"]
    assert counts(import_audit(tasks, export, labels)) == {"accepted": 1}
    results_of(export[0])["pg-umbrella-", "phrase_grounding_text"]["value"]["text"] = ["black umbrel"]
    result = import_audit(tasks, export, labels)
    assert result.unaudited.height == 1 and "not in the caption" in result.problems[0]


def test_an_object_is_one_region_and_deleting_it_rejects_it():
    labels = fixture_labels().filter(pl.col("image_id") == "img-a", pl.col("task") == "object")
    tasks = audit_tasks(images("img-a"), labels, url)
    shown = [(r["id"], r["from_name"]) for r in tasks[0]["predictions"][0]["result"]]
    # the dog has a polygon: it is shown as that alone; the others as their boxes
    assert shown == [
        ("lbl-car-0003", "object"),
        ("lbl-cat-0002", "object"),
        ("lbl-dog-0001", "object_polygon"),
    ]
    export = accept_all(tasks)
    annotation = export[0]["annotations"][0]
    annotation["result"] = [r for r in annotation["result"] if r["id"] != "lbl-dog-0001"]
    result = import_audit(tasks, export, labels)
    check_accounting(result, labels)
    decision = dict(zip(result.decisions["label_id"], result.decisions["decision"], strict=True))
    assert decision["lbl-dog-0001-aaaa"] == "rejected"
    # a moved polygon is the object's new outline, and its box their bounds
    export = accept_all(tasks)
    results_of(export[0])["lbl-dog-0001", "object_polygon"]["value"]["points"] = [
        [10, 10],
        [40, 10],
        [20, 50],
    ]
    result = import_audit(tasks, export, labels)
    (dog,) = result.labels.filter(pl.col("replaces") == "lbl-dog-0001-aaaa").iter_rows(named=True)
    assert dog["polygon"] == [[64.0, 48.0, 256.0, 48.0, 128.0, 240.0]]
    assert dog["box"] == [64.0, 48.0, 256.0, 240.0] and dog["mask_rle"] is None


def test_clearing_a_regions_text_rejects_it():
    labels = fixture_labels().filter(pl.col("label_id") == "lbl-ocr-0005-aaaa")
    tasks = audit_tasks(images("img-a"), labels, url)
    export = accept_all(tasks)
    annotation = export[0]["annotations"][0]
    annotation["result"] = [r for r in annotation["result"] if r["from_name"] != "ocr_text"]
    result = import_audit(tasks, export, labels)
    check_accounting(result, labels)
    assert counts(result) == {"rejected": 1}
    assert "its text (ocr_text) cleared in Label Studio task 1" in result.quarantine["detail"][0]


@pytest.mark.parametrize(
    ("annotation", "auditors", "name"),
    [
        # Label Studio's JSON export: a user id (its tasks API adds the user in words beside it)
        ({"completed_by": 1, "created_username": " alice@example.com, 1"}, {}, "alice@example.com"),
        (
            {"completed_by": 1, "created_username": "Alice Smith alice@example.com, 1"},
            {},
            "alice@example.com",
        ),
        ({"completed_by": 1, "created_username": "Alice Smith , 1"}, {}, "Alice Smith"),
        # an export with the users expanded (completed_by: id, email, first_name, last_name)
        ({"completed_by": {"id": 3, "email": "bob@example.com", "first_name": "Bob"}}, {}, "bob@example.com"),
        ({"completed_by": {"id": 3, "email": "", "first_name": "Bob", "last_name": "Lee"}}, {}, "Bob Lee"),
        # a configured name wins (audit.auditors), by id in whatever form
        ({"completed_by": 1, "created_username": " a@x.org, 1"}, {1: "alice"}, "alice"),
        ({"completed_by": {"id": 1, "email": "a@x.org"}}, {"1": "alice"}, "alice"),
        # an id and nothing else: never a bare number
        ({"completed_by": 7}, {}, "label-studio-user-7"),
        ({"completed_by": "carol@example.com"}, {}, "carol@example.com"),
    ],
)
def test_auditors_are_named(annotation, auditors, name):
    labels = fixture_labels().filter(pl.col("image_id") == "img-b")
    tasks = audit_tasks(images("img-b"), labels, url)
    export = accept_all(tasks)
    export[0]["annotations"][0].update(annotation)
    result = import_audit(tasks, export, labels, auditors)
    assert result.decisions["auditor"].to_list() == [name]
    assert result.labels["source"].to_list() == [f"human-audit@{name}"]


def test_a_review_task_says_why_each_label_is_queued():
    labels = fixture_labels().filter(pl.col("image_id") == "img-a")
    why = {"lbl-cat-0002-aaaa": "the model does not believe it (0.90)"}
    (task,) = audit_tasks(images("img-a"), labels, url, why)
    cat = [r for r in task["predictions"][0]["result"] if r["id"] == "lbl-cat-0002"][0]
    line = "object 'cat': from noisy@1, score 0.80; queued because the model does not believe it (0.90)"
    assert cat["meta"]["text"] == [line] and line in task["data"]["summary"].splitlines()


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
