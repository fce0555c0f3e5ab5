"""The review queue: signals per label, suspicion, the stratified queue, verdicts applied."""

from __future__ import annotations

import polars as pl
import pytest

from relabel import audit
from relabel.audit_simulated import judge_from_truth
from relabel.audit_tasks import audit_tasks
from relabel.config import RegionFilterParams, ReviewParams
from relabel.labels import frame
from relabel.review_queue import (
    Evidence,
    apply_verdicts,
    auditable,
    queue_reasons,
    select_queue,
    suspicion_scores,
)
from relabel.scoring import label_correctness

IMAGE = "img-a"
CATEGORIES = ("cat", "dog", "kite", "tree")
PARAMS = ReviewParams()
FILTER = RegionFilterParams(min_score={"default": 0.0, "consensus": 0.2})


def region(
    label_id: str, category: str, box: list[float], source: str = "human", score: float = 1.0, **extra
) -> dict:
    return {
        "label_id": label_id,
        "image_id": extra.pop("image_id", IMAGE),
        "annotation_type": "region_text",
        "task": extra.pop("task", "object"),
        "region_kind": "object",
        "category": category,
        "text": category,
        "box": box,
        "score": score,
        "source": source,
        "iteration": 0,
        "status": "raw",
        **extra,
    }


def caption(label_id: str, text: str, source: str = "human", image_id: str = IMAGE) -> dict:
    return {
        "label_id": label_id,
        "image_id": image_id,
        "annotation_type": "text",
        "task": "brief_caption",
        "text": text,
        "score": 1.0,
        "source": source,
        "iteration": 0,
        "status": "raw",
    }


CAT_BOX, DOG_BOX, EMPTY_BOX = [10.0, 10.0, 50.0, 50.0], [60.0, 10.0, 100.0, 50.0], [10.0, 60.0, 40.0, 90.0]


def predictions() -> pl.DataFrame:
    """Two specialists and the model see a cat and a dog; nothing sees the empty corner."""
    rows = []
    for source, score in (("shapes@1", 0.8), ("tinydet@1", 0.7), ("florence2@iteration-0", 0.6)):
        rows.append(region(f"{source}-cat", "cat", [11.0, 10.0, 50.0, 51.0], source, score))
        rows.append(region(f"{source}-dog", "dog", [60.0, 11.0, 99.0, 50.0], source, score))
    rows.append(caption("model-cap", "a cat next to a dog", source="florence2@iteration-0"))
    return frame("labels", rows)


def evidence(**overrides) -> Evidence:
    return Evidence(
        **{
            "predictions": predictions(),
            "region_filter": FILTER,
            "protected_sources": ("human", "human-audit"),
            "rare": ("kite",),
            "categories": CATEGORIES,
            "model_source": "florence2@iteration-0",
            **overrides,
        }
    )


def scored_by_id(labels: pl.DataFrame, **overrides) -> dict[str, dict]:
    return {
        row["label_id"]: row
        for row in suspicion_scores(labels, evidence(**overrides), PARAMS).iter_rows(named=True)
    }


def test_a_label_every_source_contradicts_is_the_most_suspicious():
    labels = frame(
        "labels",
        [
            region("right-cat", "cat", CAT_BOX),
            region("wrong-dog", "cat", DOG_BOX),  # a human called the dog a cat
            region("nothing-there", "tree", EMPTY_BOX, "consensus@1", 0.25),
        ],
    )
    scored = suspicion_scores(labels, evidence(), PARAMS)
    rows = {row["label_id"]: row for row in scored.iter_rows(named=True)}
    right, wrong, nothing = rows["right-cat"], rows["wrong-dog"], rows["nothing-there"]
    # the right cat: all three sources agree, the box fits, the model is fairly sure
    assert right["category_votes"] == 0.0 and right["support"] == 0.0
    assert right["box_fit"] == pytest.approx(1 - 1560 / (1600 + 1599 - 1560))
    assert right["model_confidence"] == pytest.approx(0.4)
    # the dog called cat: every vote there is against it, no source saw a cat there
    assert wrong["category_votes"] == 1.0 and wrong["support"] == 1.0 and wrong["model_confidence"] == 1.0
    assert wrong["box_fit"] is None  # no cat prediction touches it
    # the tree on empty ground: nothing voted, nobody saw it, its score is near its threshold
    assert nothing["category_votes"] is None and nothing["support"] == 1.0
    assert nothing["filter_margin"] == pytest.approx(1 - 0.05 / PARAMS.margin_scale)
    assert right["filter_margin"] is None  # human labels are not thresholded
    assert scored["label_id"].to_list()[-1] == "right-cat"
    # the weighted mean of the signals that apply: votes, support, model, history, rarity
    w = PARAMS.weights
    assert wrong["suspicion"] == pytest.approx(
        (w.category_votes + w.support + w.model_confidence)
        / (w.category_votes + w.support + w.model_confidence + w.history + w.rarity)
    )
    assert right["suspicion"] < 0.15


def test_a_caption_naming_what_no_region_shows_is_suspicious():
    labels = frame(
        "labels",
        [
            region("cat", "cat", CAT_BOX),
            caption("shown", "A cat sits by a dog."),
            caption("unshown", "A kite above a tree."),
            caption("nameless", "Something is here."),
        ],
    )
    rows = scored_by_id(labels)
    # the cat is a person's region (sure); the dog only the specialists' (at best 0.8)
    assert rows["shown"]["caption_regions"] == pytest.approx((0.0 + 0.2) / 2)
    assert rows["unshown"]["caption_regions"] == 1.0
    assert rows["nameless"]["caption_regions"] == 0.5
    # the model's own caption says what "shown" says, not what "unshown" says
    assert rows["shown"]["model_confidence"] < rows["unshown"]["model_confidence"]
    assert rows["unshown"]["suspicion"] > rows["shown"]["suspicion"]


def test_a_fused_label_is_not_judged_by_the_predictions_it_was_fused_from():
    made_of = ["shapes@1-cat", "tinydet@1-cat"]
    fused = region("fused", "cat", [11.0, 10.0, 50.0, 51.0], "consensus@1", 0.7, provenance=made_of)
    caption_of_it = {
        **region("described", "cat", [11.0, 10.0, 50.0, 51.0], "grounding@1", 0.7, task="region_caption"),
        "linked_label_id": "fused",
    }
    rows = scored_by_id(frame("labels", [fused, caption_of_it]))
    # its box is judged against the model's cat (the same box) only, not the two it was made from
    assert rows["fused"]["box_fit"] == pytest.approx(0.0)
    without_model = scored_by_id(
        frame("labels", [fused]),
        predictions=predictions().filter(pl.col("source") != "florence2@iteration-0"),
    )
    assert without_model["fused"]["box_fit"] is None
    # ... but they still vote and support it; a region caption's box is its region's: not judged
    assert rows["fused"]["support"] == 0.0 and rows["described"]["box_fit"] is None


def test_history_and_rarity_raise_suspicion():
    labels = frame(
        "labels",
        [
            region("plain", "cat", CAT_BOX, "consensus@1", 0.9),
            region("flipped", "cat", CAT_BOX, "consensus@1", 0.9, replaces="older"),
            region("rare", "kite", CAT_BOX, "consensus@1", 0.9, image_id="img-b"),
        ],
    )
    rows = scored_by_id(labels)
    assert rows["plain"]["history"] == 0.0 and rows["flipped"]["history"] == 1.0
    assert rows["rare"]["rarity"] == 1.0 and rows["plain"]["rarity"] == 0.0
    assert rows["flipped"]["suspicion"] > rows["plain"]["suspicion"]


def test_only_labels_an_audit_can_show_and_nobody_audited_are_scored():
    labels = frame(
        "labels",
        [
            region("audited", "cat", CAT_BOX, "human-audit@maria"),
            {**caption("alt", "a photo"), "task": "alt_text"},
            region("open", "cat", CAT_BOX),
        ],
    )
    assert auditable(labels)["label_id"].to_list() == ["open"]
    assert list(scored_by_id(labels)) == ["open"]


def scored_frame(rows: list[tuple[str, str, str | None, float]]) -> pl.DataFrame:
    """A SCORED_SCHEMA frame of (label_id, annotation_type, category, suspicion) rows."""
    from relabel.review_queue import SCORED_SCHEMA

    return pl.DataFrame(
        [
            {
                "label_id": i,
                "image_id": IMAGE,
                "annotation_type": t,
                "task": "object" if t != "text" else "brief_caption",
                "category": c,
                "source": "human",
                "suspicion": s,
            }
            for i, t, c, s in rows
        ],
        schema=SCORED_SCHEMA,
    )


def test_the_queue_keeps_places_for_rare_classes_and_every_type_within_the_budget():
    scored = scored_frame(
        [(f"obj{i}", "region_text", "cat", 0.9 - i / 100) for i in range(10)]
        + [
            ("kite-low", "region_text", "kite", 0.1),
            ("cap-low", "text", None, 0.05),
            ("ground", "text_phrase_region", "dog", 0.2),
        ]
    )
    queue = select_queue(scored, 5, min_per_type=1, min_per_rare_class=1, rare=["kite"])
    assert queue.height == 5
    why = dict(queue.select("label_id", "why").iter_rows())
    assert why == {
        "kite-low": "rare class 'kite'",
        "obj0": "annotation type region_text",
        "cap-low": "annotation type text",
        "ground": "annotation type text_phrase_region",
        "obj1": "suspicion",
    }
    # ranked by suspicion, whatever brought them in
    assert queue["label_id"].to_list() == ["obj0", "obj1", "ground", "kite-low", "cap-low"]
    assert queue["rank"].to_list() == [1, 2, 3, 4, 5]
    # no places kept: the budget goes by suspicion alone; a budget of 0 queues nothing
    plain = select_queue(scored, 3, min_per_type=0, min_per_rare_class=0, rare=["kite"])
    assert plain["label_id"].to_list() == ["obj0", "obj1", "obj2"]
    assert select_queue(scored, 0, min_per_type=1, min_per_rare_class=1, rare=["kite"]).height == 0


def test_a_queued_label_says_why_in_its_strongest_signals():
    labels = frame(
        "labels",
        [
            region("wrong-dog", "cat", DOG_BOX),
            region("kite", "kite", EMPTY_BOX, "consensus@1", 0.25),
        ],
    )
    scored = suspicion_scores(labels, evidence(), PARAMS)
    queued = select_queue(scored, 2, min_per_type=0, min_per_rare_class=1, rare=["kite"])
    reasons = queue_reasons(queued, PARAMS.weights)
    dog = queued.filter(pl.col("label_id") == "wrong-dog").row(0, named=True)
    # every source sees a dog where it says cat: the votes and the support come first, in words
    assert reasons["wrong-dog"] == (
        f"suspicion {dog['suspicion']:.2f} (rank {dog['rank']}): "
        "the predictions about its region vote against it (1.00), few of the sources saw it (1.00), "
        "the model does not believe it (1.00)"
    )
    assert reasons["kite"].endswith("; a place kept for rare class 'kite'")
    # nothing saw the kite and its score is near its filter's: those outweigh its rarity
    assert "few of the sources saw it (1.00)" in reasons["kite"] and "rare (" not in reasons["kite"]
    # the auditor reads them with each label of the review task
    images = pl.DataFrame({"image_id": [IMAGE], "uri": ["a.png"], "width": [120], "height": [100]})
    (task,) = audit_tasks(images, labels, lambda uri: uri, reasons)
    assert all(
        f"queued because {reasons[result['meta']['label_id']]}" in result["meta"]["text"][0]
        for result in task["predictions"][0]["result"]
    )


def test_verdicts_replace_the_labels_they_judged_and_account_for_every_row():
    labels = frame(
        "labels",
        [
            region("right-cat", "cat", CAT_BOX),
            region("wrong-dog", "cat", DOG_BOX),
            region("nothing-there", "tree", EMPTY_BOX, "consensus@1", 0.25),
            region("unqueued", "cat", CAT_BOX, "consensus@1", 0.9),
            region("elsewhere", "cat", CAT_BOX, image_id="img-b"),
        ],
    )
    truth = frame(
        "labels", [region("t-cat", "cat", CAT_BOX, "truth"), region("t-dog", "dog", DOG_BOX, "truth")]
    )
    queued = labels.filter(pl.col("label_id").is_in(["right-cat", "wrong-dog", "nothing-there"]))
    images = pl.DataFrame({"image_id": [IMAGE], "uri": ["a.png"], "width": [120], "height": [100]})
    tasks = audit_tasks(images, queued, lambda uri: uri)
    correct = dict(label_correctness(queued, truth).select("label_id", "correct").iter_rows())
    verdicts = audit.import_audit(tasks, judge_from_truth(tasks, truth, correct), queued)
    assert dict(verdicts.decisions.select("label_id", "decision").iter_rows()) == {
        "right-cat": "accepted",
        "wrong-dog": "corrected",
        "nothing-there": "rejected",
    }

    applied = apply_verdicts(labels, verdicts.labels, verdicts.decisions)
    after = applied.labels
    by_source = dict(after.group_by("source").len().iter_rows())
    assert by_source == {"human-audit@world-auditor": 2, "human": 1}
    corrected = after.filter(pl.col("replaces") == "wrong-dog").row(0, named=True)
    assert corrected["category"] == "dog" and corrected["status"] == "audited"
    assert "right-cat" in after["label_id"].to_list() and "wrong-dog" not in after["label_id"].to_list()
    # one object, one label: the unqueued machine copy of the cat a person accepted is folded
    # into the audited label, as evidence
    assert applied.folded["label_id"].to_list() == ["unqueued"]
    assert applied.folded["linked_label_id"].to_list() == ["right-cat"]
    assert "unqueued" in after.filter(pl.col("label_id") == "right-cat")["provenance"][0].to_list()
    # rows in (labels, plus the corrections the audit wrote) = rows out + quarantined + folded
    new_rows = verdicts.decisions.filter(pl.col("decision") == "corrected").height
    assert labels.height + new_rows == after.height + verdicts.quarantine.height + applied.folded.height
    # a shard without the audited image is untouched
    other = labels.filter(pl.col("image_id") == "img-b")
    untouched = apply_verdicts(other, verdicts.labels, verdicts.decisions)
    assert untouched.labels.equals(other) and untouched.folded.height == 0
