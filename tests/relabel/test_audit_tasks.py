"""relabel.audit_tasks: the Label Studio tasks and labeling config an audit writes."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import polars as pl
import pytest

from relabel.audit import CONTROLS
from relabel.audit_tasks import audit_tasks, label_config
from relabel.labels import frame
from tests.relabel.test_audit import FIXTURES, fixture_labels, images, label, two_captions, url

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


def test_a_review_task_says_why_each_label_is_queued():
    labels = fixture_labels().filter(pl.col("image_id") == "img-a")
    why = {"lbl-cat-0002-aaaa": "the model does not believe it (0.90)"}
    (task,) = audit_tasks(images("img-a"), labels, url, why)
    cat = [r for r in task["predictions"][0]["result"] if r["id"] == "lbl-cat-0002"][0]
    line = "object 'cat': from noisy@1, score 0.80; queued because the model does not believe it (0.90)"
    assert cat["meta"]["text"] == [line] and line in task["data"]["summary"].splitlines()
