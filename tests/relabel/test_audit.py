"""relabel.audit: a Label Studio JSON export of an audit read back into verdicts; also the labels,
images and checks the audit tests share (test_audit_tasks.py, test_audit_simulated.py)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from relabel.audit import DECISIONS_SCHEMA, import_audit
from relabel.audit_simulated import accept_all
from relabel.audit_tasks import audit_tasks
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
