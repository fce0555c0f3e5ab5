"""relabel.audit_simulated: the simulated auditors' Label Studio exports, read back by
relabel.audit.import_audit as a real one."""

from __future__ import annotations

import json

import polars as pl

from relabel.audit import import_audit
from relabel.audit_simulated import accept_all, audit_from_truth, judge_from_truth
from relabel.audit_tasks import audit_tasks
from relabel.labels import frame
from tests.relabel.test_audit import (
    check_accounting,
    counts,
    fixture_labels,
    images,
    label,
    truth_labels,
    url,
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
