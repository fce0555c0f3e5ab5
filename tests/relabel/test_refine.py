"""The merge policy of phase 4, the quality of an iteration's labels and the rare-class guard."""

import polars as pl
import pytest

from relabel.config import MergePolicyParams
from relabel.labels import check_schema, frame, label_id_for
from relabel.refine import (
    PER_CLASS_SCHEMA,
    iteration_quality,
    merge_reannotation,
    rare_class_changes,
    rare_classes,
    without_audited,
)

POLICY = MergePolicyParams()
MODEL = "florence2@iteration-0"


def label(source, category, box, *, task="object", score=1.0, text=None, agreement=1, image="img-1"):
    row = {
        "image_id": image,
        "annotation_type": "text" if task.endswith("caption") and box is None else "region_text",
        "task": task,
        "text": text if text is not None else category,
        "region_kind": None if box is None else "object",
        "box": box,
        "category": category,
        "score": score,
        "source": source,
        "iteration": 0,
        "status": "raw",
        "agreement": agreement,
    }
    return {**row, "label_id": label_id_for(row)}


def merged(existing, model, policy=POLICY, rare=()):
    result = merge_reannotation(
        frame("labels", existing), frame("labels", model), policy, rare=rare, iteration=1
    )
    check_schema(result.labels, "labels")
    # every row in is kept or quarantined, never lost and never doubled
    assert result.labels.height + result.quarantine.height == len(existing) + len(model)
    assert result.decisions.height == len(existing) + len(model)
    assert result.labels["label_id"].is_unique().all()
    return result


def decision_of(result, row):
    return result.decisions.filter(pl.col("label_id") == row["label_id"]).row(0, named=True)


def test_a_human_label_is_never_replaced_even_when_the_model_is_sure_and_supported():
    human = label("human", "dog", [10, 10, 50, 50])
    supporting = label("consensus@1", "cat", [11, 11, 50, 50], score=0.9)
    model = label(MODEL, "cat", [10, 10, 51, 51], score=0.99)
    result = merged([human, supporting], [model])
    assert human["label_id"] in result.labels["label_id"].to_list()
    assert (
        result.labels.filter(pl.col("label_id") == human["label_id"]).row(0, named=True)["category"] == "dog"
    )
    # the cat it agrees with stays, and so does the human dog it disagrees with
    assert decision_of(result, model)["decision"] == "confirmed"
    assert "protected source" in decision_of(result, model)["reason"]


def test_a_sure_model_label_supported_by_another_source_repairs_a_machine_label():
    wrong = label("tinydet@1", "dog", [10, 10, 50, 50], score=0.5)
    other_view = label("shapes@1", "cat", [12, 12, 50, 50], score=0.4)
    model = label(MODEL, "cat", [10, 10, 50, 50], score=0.95)
    result = merged([wrong, other_view], [model])
    assert decision_of(result, model)["decision"] == "repaired"
    assert decision_of(result, model)["support"] == 1
    assert decision_of(result, wrong)["decision"] == "replaced"
    assert decision_of(result, other_view)["decision"] == "kept"
    new = result.labels.filter(pl.col("label_id") == model["label_id"]).row(0, named=True)
    assert new["replaces"] == wrong["label_id"] and new["iteration"] == 1 and new["source"] == MODEL
    assert result.quarantine.filter(pl.col("label_id") == wrong["label_id"])["reason"].to_list() == [
        "replaced_by_model"
    ]


def test_without_support_or_score_the_model_does_not_repair():
    wrong = label("tinydet@1", "dog", [10, 10, 50, 50], score=0.5)
    elsewhere = label("shapes@1", "cat", [60, 60, 90, 90], score=0.5)
    model = label(MODEL, "cat", [10, 10, 50, 50], score=0.95)
    alone = merged([wrong, elsewhere], [model])
    assert decision_of(alone, model)["decision"] == "rejected"
    assert "support 0" in decision_of(alone, model)["reason"]
    unsure = merged([wrong, label("shapes@1", "cat", [12, 12, 50, 50])], [{**model, "score": 0.7}])
    assert decision_of(unsure, model)["decision"] == "confirmed"
    assert "repair_min_score" in decision_of(unsure, model)["reason"]
    # a policy that trusts the model alone repairs it
    trusting = merged([wrong, elsewhere], [model], policy=POLICY.model_copy(update={"repair_min_support": 0}))
    assert decision_of(trusting, model)["decision"] == "repaired"


def test_a_rare_class_label_is_never_replaced_on_the_models_word_alone():
    rare = label("consensus@1", "kite", [10, 10, 50, 50], score=0.5)
    model = label(MODEL, "bird", [10, 10, 50, 50], score=0.99)
    lenient = POLICY.model_copy(update={"repair_min_support": 0})
    assert decision_of(merged([rare], [model], lenient), model)["decision"] == "repaired"
    result = merged([rare], [model], lenient, rare=["kite"])
    assert decision_of(result, model)["decision"] == "rejected"
    assert "rare class 'kite'" in decision_of(result, model)["reason"]
    assert rare["label_id"] in result.labels["label_id"].to_list()


def test_fill_needs_a_score_and_a_class():
    existing = [label("consensus@1", "dog", [10, 10, 50, 50])]
    sure = label(MODEL, "cat", [100, 100, 150, 150], score=0.9)
    unsure = label(MODEL, "cat", [200, 100, 250, 150], score=0.3)
    unnamed = {**label(MODEL, None, [0, 150, 40, 200], score=0.9), "text": None}
    caption = label(MODEL, None, None, task="detailed_caption", text="a dog to the left of a cat", score=0.9)
    result = merged(existing, [sure, unsure, unnamed, caption])
    assert [decision_of(result, row)["decision"] for row in (sure, unsure, unnamed, caption)] == [
        "filled",
        "rejected",
        "rejected",
        "filled",
    ]
    counts = result.counts()
    assert counts == {"kept": 1, "filled": 2, "rejected": 2}


def test_a_loose_box_is_refit_when_the_model_agrees_on_the_class():
    loose = label("consensus@1", "dog", [10, 10, 70, 70], score=0.5)
    model = label(MODEL, "dog", [10, 10, 50, 50], score=0.9)  # IoU 0.44 < match 0.5: not its counterpart
    assert decision_of(merged([loose], [model]), model)["decision"] == "filled"
    snug = label(MODEL, "dog", [10, 10, 60, 60], score=0.9)  # IoU 0.69: same thing, loose box
    result = merged([loose], [snug])
    assert decision_of(result, snug)["decision"] == "refit"
    assert result.labels.filter(pl.col("replaces") == loose["label_id"]).height == 1


def test_a_region_half_on_an_existing_label_fills_no_gap_under_fill_max_overlap():
    existing = [label("consensus@1", "dog", [10, 10, 70, 70], score=0.5)]
    half_on = label(MODEL, "cat", [40, 10, 100, 70], score=0.9)  # IoU 0.33 with the dog
    apart = label(MODEL, "cat", [150, 10, 210, 70], score=0.9)
    # by default a region is a gap when nothing of its task overlaps it by match_iou (0.5)
    assert decision_of(merged(existing, [half_on]), half_on)["decision"] == "filled"
    strict = POLICY.model_copy(update={"fill_max_overlap": 0.3})
    result = merged(existing, [half_on, apart], strict)
    refused = decision_of(result, half_on)
    assert refused["decision"] == "rejected" and "fill_max_overlap" in refused["reason"]
    assert "0.33" in refused["reason"]
    assert decision_of(result, apart)["decision"] == "filled"
    # an image-level text has no region: the overlap rule does not apply to it
    caption = label(MODEL, None, None, task="detailed_caption", text="a dog and a cat", score=0.9)
    assert decision_of(merged(existing, [caption], strict), caption)["decision"] == "filled"


def test_two_model_labels_never_replace_one_label_twice():
    wrong = label("consensus@1", "dog", [10, 10, 50, 50], score=0.5)
    first = label(MODEL, "cat", [10, 10, 50, 50], score=0.95)
    second = label(MODEL, "bird", [10, 10, 51, 50], score=0.9)
    result = merged([wrong], [first, second], POLICY.model_copy(update={"repair_min_support": 0}))
    assert decision_of(result, first)["decision"] == "repaired"
    assert decision_of(result, second)["decision"] == "rejected"


def test_one_new_object_is_filled_once_and_a_confirmation_is_evidence_not_a_copy():
    kept = label("consensus@1", "dog", [100, 100, 140, 140], score=0.5, agreement=2)
    confirming = label("tinydet-self-trained@iteration-0", "dog", [101, 100, 140, 141], score=0.7)
    new = label(MODEL, "cat", [10, 10, 50, 50], score=0.9)
    again = label("tinydet-self-trained@iteration-0", "cat", [11, 10, 50, 51], score=0.8)
    result = merged([kept], [confirming, new, again])
    assert decision_of(result, new)["decision"] == "filled"
    assert decision_of(result, again)["decision"] == "confirmed"
    assert result.labels.filter(pl.col("category") == "cat").height == 1
    # the confirmation adds its vote and its id to the label it confirms
    dog = result.labels.filter(pl.col("label_id") == kept["label_id"]).row(0, named=True)
    assert dog["agreement"] == 3 and dog["provenance"] == [confirming["label_id"]]
    assert dog["box"] == kept["box"]


def test_rare_classes_are_the_least_labelled():
    rows = [label("human", "dog", [i, i, i + 20, i + 20]) for i in range(18)] + [
        label("human", "kite", [0, 0, 9, 9])
    ]
    assert rare_classes(frame("labels", rows), ["dog", "kite", "zebra"], 0.1) == ["kite", "zebra"]


def test_quality_counts_repairs_and_breakages_against_the_truth():
    truth = frame(
        "labels", [label("truth", "cat", [10, 10, 50, 50]), label("truth", "dog", [100, 100, 150, 150])]
    )
    wrong = label("consensus@1", "dog", [10, 10, 50, 50], score=0.5)
    right = label("consensus@1", "dog", [100, 100, 150, 150], score=0.5)
    previous = frame("labels", [wrong, right])
    fix = {**label(MODEL, "cat", [10, 10, 50, 50], score=0.9), "replaces": wrong["label_id"]}
    current = frame("labels", [right, fix])
    quality = iteration_quality(current, truth, ["cat", "dog"], ["cat"], previous=previous)
    assert quality.summary["repaired_share"] == 1.0
    assert quality.summary["broken_share"] == 0.0
    assert quality.summary["box_f1"] == 1.0 and quality.summary["box_f1_rare"] == 1.0
    assert quality.per_class.filter(pl.col("category") == "cat").row(0, named=True)["labels"] == 1
    # dropping the right label breaks it
    broken = iteration_quality(frame("labels", [fix]), truth, ["cat", "dog"], ["cat"], previous=previous)
    assert broken.summary["broken_share"] == 1.0


def test_rare_class_changes_measure_what_a_rare_class_lost():
    before = pl.DataFrame(
        {
            "category": ["kite", "dog"],
            "labels": [8, 100],
            "recall": [0.8, 0.9],
            "f1": [0.8, 0.9],
            "rare": [True, False],
        }
    )
    now = before.with_columns(labels=pl.Series([3, 40]), recall=pl.Series([0.5, 0.2]))
    changes = rare_class_changes(now, before)
    # only the rare class is compared: the common one may move
    assert changes["category"].to_list() == ["kite"]
    row = changes.row(0, named=True)
    assert row["labels_before"] == 8 and row["labels_now"] == 3
    assert row["count_drop"] == pytest.approx(5 / 8) and row["recall_drop"] == pytest.approx(0.3)
    gone = rare_class_changes(now.filter(pl.col("category") == "dog"), before)
    assert gone.row(0, named=True)["count_drop"] == 1.0


@pytest.mark.parametrize("score", [float("nan"), None])
def test_a_model_label_without_a_usable_score_never_fills(score):
    model = label(MODEL, "cat", [100, 100, 150, 150], score=0.9)
    result = merged([], [{**model, "score": score}])
    assert decision_of(result, model)["decision"] == "rejected"


def test_labels_a_person_took_out_are_not_counted_as_lost_by_the_guard():
    before = pl.DataFrame(
        [
            {"category": "kite", "labels": 4, "recall": 0.5, "f1": 0.5, "rare": True},
            {"category": "cat", "labels": 10, "recall": 0.8, "f1": 0.8, "rare": True},
        ],
        schema=PER_CLASS_SCHEMA,
    )
    now = before.with_columns(labels=pl.Series([3, 10]))
    # a kite lost on its own is a quarter of the class: the guard's limit
    assert rare_class_changes(now, before).filter(pl.col("category") == "kite")["count_drop"].item() == 0.25
    # the same kite rejected by a person is not a loss: the baseline is what they left
    baseline = without_audited(before, pl.DataFrame({"category": ["kite"]}))
    assert baseline.schema == PER_CLASS_SCHEMA and dict(
        baseline.select("category", "labels").iter_rows()
    ) == {"kite": 3, "cat": 10}
    assert rare_class_changes(now, baseline)["count_drop"].to_list() == [0.0, 0.0]
