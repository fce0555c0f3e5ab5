"""Each label-store suite passes clean data and names the offending rows of bad data."""

from __future__ import annotations

import hashlib
import html
import re
from pathlib import Path

import polars as pl
import pytest

from data_checks.gates import GateResult, docs_url, validate, verdict_metadata
from data_checks.suites import (
    class_counts_frame,
    class_retention_suite,
    coverage_frame,
    coverage_suite,
    images_suite,
    labels_gate_frame,
    labels_suite,
    one_label_per_object_suite,
    quarantine_gate_frame,
    quarantine_suite,
    rare_class_guard_suite,
    same_object_frame,
)
from relabel.labels import frame, quarantine_row
from relabel.refine import PER_CLASS_SCHEMA, rare_class_changes

ONTOLOGY = ["cat", "dog"]

# the expectation types the tests look for in results
BETWEEN = "expect_column_values_to_be_between"
NOT_NULL = "expect_column_values_to_not_be_null"
IS_NULL = "expect_column_values_to_be_null"
UNIQUE = "expect_column_values_to_be_unique"
IN_SET = "expect_column_values_to_be_in_set"
MATCHES = "expect_column_values_to_match_regex"
JSON = "expect_column_values_to_be_json_parseable"
A_ABOVE_B = "expect_column_pair_values_a_to_be_greater_than_b"


def image_id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def image(name: str, **overrides) -> dict:
    return {
        "image_id": image_id(name),
        "uri": f"{name}.jpg",
        "width": 640,
        "height": 480,
        "dataset": "mini",
        "split": "train",
        **overrides,
    }


def label(label_id: str, kind: str, image_name: str = "a", **overrides) -> dict:
    """A complete label of one kind on image ``image_name``."""
    rows = {
        "caption": {"annotation_type": "text", "task": "brief_caption", "text": "a cat on a mat"},
        "object": {
            "annotation_type": "region_text",
            "task": "object",
            "region_kind": "object",
            "text": "cat",
            "category": "cat",
            "box": [10.0, 20.0, 200.0, 300.0],
        },
        "polygon": {
            "annotation_type": "region_text",
            "task": "object",
            "region_kind": "object",
            "text": "dog",
            "category": "dog",
            "polygon": [[10.0, 10.0, 50.0, 10.0, 50.0, 50.0]],
        },
        "ocr": {
            "annotation_type": "region_text",
            "task": "ocr",
            "region_kind": "text",
            "text": "STOP",
            "quad": [1.0, 1.0, 30.0, 1.0, 30.0, 10.0, 1.0, 10.0],
        },
        "phrase": {
            "annotation_type": "text_phrase_region",
            "task": "phrase_grounding",
            "text": "a cat on a mat",
            "phrase_start": 2,
            "phrase_end": 5,
            "box": [10.0, 20.0, 200.0, 300.0],
        },
    }
    return {
        "label_id": label_id,
        "image_id": image_id(image_name),
        "score": 1.0,
        "source": "human",
        "iteration": 0,
        "status": "accepted",
        **rows[kind],
        **overrides,
    }


IMAGES = frame("images", [image("a"), image("b", split="eval")])
CLEAN_LABELS = [
    label("caption", "caption"),
    label("object", "object", "b"),
    label("polygon", "polygon"),
    label("ocr", "ocr"),
    label("phrase", "phrase"),
]


def failed_names(result: GateResult) -> list[str]:
    """The expectation type of each failed line."""
    return [re.match(r"\w+", line).group() for line in result.failed]


def offending(result: GateResult, expectation: str, column: str) -> dict[str, str | None]:
    """index -> value of the unexpected rows of one expectation on one column."""
    rows = result.unexpected.filter((pl.col("expectation") == expectation) & (pl.col("column") == column))
    index_column = result.unexpected.columns[2]
    return dict(zip(rows[index_column], rows["value"], strict=True))


# images


def test_clean_images_pass():
    result = validate(images_suite(), IMAGES, index_column="image_id")
    assert result.passed, result.failed
    assert (result.rows, result.failed, result.unexpected.height) == (2, (), 0)
    assert result.evaluated == len(images_suite().expectations)
    assert result.unexpected.columns == ["expectation", "column", "image_id", "value"]


def test_bad_images_are_named():
    images = frame(
        "images",
        [
            image("a"),
            image("a", uri="again.jpg"),
            image("c", image_id="not-a-sha"),
            image("d", width=0, uri="  "),
        ],
    )
    result = validate(images_suite(), images, index_column="image_id")
    assert not result.passed
    assert offending(result, UNIQUE, "image_id") == {image_id("a"): image_id("a")}
    assert offending(result, MATCHES, "image_id") == {"not-a-sha": "not-a-sha"}
    assert offending(result, BETWEEN, "width") == {image_id("d"): "0"}
    assert offending(result, MATCHES, "uri") == {image_id("d"): "  "}
    assert f"{BETWEEN}(width, 1..): 1 unexpected" in result.failed


def test_images_of_the_wrong_schema_fail_at_table_level():
    images = IMAGES.with_columns(pl.col("width").cast(pl.Float64)).drop("dataset")
    result = validate(images_suite(), images, index_column="image_id")
    assert not result.passed
    assert "expect_table_columns_to_match_ordered_list" in failed_names(result)
    assert any(line.startswith("expect_column_values_to_be_of_type(width)") for line in result.failed)
    # a missing column is an error of the expectations on it, not a crash
    assert any(line.startswith(f"{NOT_NULL}(dataset): error") for line in result.failed)
    # table-level failures have no unexpected rows
    assert result.unexpected.filter(pl.col("expectation").str.starts_with("expect_table")).is_empty()


# labels


def validate_labels(rows: list[dict], ontology=ONTOLOGY) -> GateResult:
    labels = frame("labels", rows)
    return validate(labels_suite(ontology), labels_gate_frame(labels, IMAGES), index_column="label_id")


def test_clean_labels_pass():
    result = validate_labels(CLEAN_LABELS)
    assert result.passed, result.failed
    assert result.rows == len(CLEAN_LABELS)


# a bad label, the expectation that must name it, on which column, with which value
BAD_LABELS = [
    (
        label("wide", "object", box=[10, 20, 700, 300]),
        A_ABOVE_B,
        "image_width, box_x1",
        "image_width=640, box_x1=700.0",
    ),
    (
        label("tall", "object", box=[10, 20, 60, 481]),
        A_ABOVE_B,
        "image_height, box_y1",
        "image_height=480, box_y1=481.0",
    ),
    (label("flat", "object", box=[10, 20, 10, 300]), A_ABOVE_B, "box_x1, box_x0", "box_x1=10.0, box_x0=10.0"),
    (label("left", "object", box=[-1, 20, 10, 300]), BETWEEN, "box_x0", "-1.0"),
    # pandas holds NaN as missing: the score is named, its value is null
    (label("nan", "caption", score=float("nan")), NOT_NULL, "score", None),
    (label("over", "caption", score=1.5), BETWEEN, "score", "1.5"),
    (label("line", "polygon", polygon=[[10.0, 10.0, 50.0, 10.0]]), BETWEEN, "polygon_min_points", "2"),
    (label("unboxed", "phrase", box=None), IS_NULL, "missing_fields", "box"),
    (label("overrun", "phrase", phrase_end=40), IS_NULL, "missing_fields", "phrase_span"),
    (
        label("nowhere", "object", box=None, region_kind=None),
        IS_NULL,
        "missing_fields",
        "region_kind,box|quad|polygon|mask_rle",
    ),
    (label("bird", "object", category="bird"), IN_SET, "category", "bird"),
    (label("blank", "caption", text=" \t"), MATCHES, "text", " \t"),
    (label("orphan", "caption", "unknown"), NOT_NULL, "image_width", None),
    (label("caption", "caption", text="again"), UNIQUE, "label_id", "caption"),
]


@pytest.mark.parametrize(
    ("bad_label", "expectation", "column", "value"),
    BAD_LABELS,
    ids=[case[0]["label_id"] for case in BAD_LABELS],
)
def test_bad_label_is_named(bad_label, expectation, column, value):
    result = validate_labels([*CLEAN_LABELS, bad_label])
    assert not result.passed
    assert expectation in failed_names(result)
    assert offending(result, expectation, column).get(bad_label["label_id"], "absent") == value
    # nothing but the bad label is blamed (a duplicate id blames both rows of that id)
    assert set(result.unexpected["label_id"]) == {bad_label["label_id"]}


def test_categories_are_not_judged_without_an_ontology():
    assert validate_labels([*CLEAN_LABELS, label("bird", "object", category="bird")], ontology=[]).passed


def test_gate_frame_keeps_labels_and_adds_flat_columns():
    labels = frame("labels", [*CLEAN_LABELS, label("empty", "polygon", polygon=[])])
    gate = labels_gate_frame(labels, frame("images", [image("a"), image("a", width=1)]))
    # a duplicated image does not duplicate its labels; the first row's size is used
    assert gate.height == labels.height
    assert gate.select(labels.columns).equals(labels)
    by_id = {row["label_id"]: row for row in gate.iter_rows(named=True)}
    assert by_id["caption"]["image_width"] == 640
    assert by_id["object"]["image_width"] is None  # image "b" is not among these images
    corners = [by_id["phrase"][corner] for corner in ("box_x0", "box_y0", "box_x1", "box_y1")]
    assert corners == [10.0, 20.0, 200.0, 300.0]
    assert by_id["polygon"]["polygon_min_points"] == 3
    assert by_id["empty"]["polygon_min_points"] == 0
    assert by_id["caption"]["polygon_min_points"] is None
    assert {row["missing_fields"] for row in by_id.values()} == {None}


# quarantine


def quarantine_rows() -> list[dict]:
    return [
        quarantine_row(
            record_kind="image", phase="ingest", reason="unreadable", detail="truncated", record={"uri": "x"}
        ),
        quarantine_row(
            record_kind="label",
            phase="filter",
            reason="low_score",
            detail="score 0.1 < 0.3",
            record={"score": 0.1},
            label_id="l9",
        ),
        # the raw text of an unreadable source file is kept as a JSON string
        quarantine_row(record_kind="source", phase="ingest", reason="bad_json", detail="line 3", record="{"),
    ]


def validate_quarantine(rows: list[dict]) -> GateResult:
    return validate(quarantine_suite(), quarantine_gate_frame(frame("quarantine", rows)), index_column="row")


def test_clean_quarantine_passes():
    result = validate_quarantine(quarantine_rows())
    assert result.passed, result.failed


def test_unexplained_quarantine_rows_are_named():
    rows = quarantine_rows()
    rows[0]["reason"] = "   "
    rows[1]["label_id"] = None
    rows[2]["record"] = "{not json"
    result = validate_quarantine(rows)
    assert not result.passed
    assert offending(result, MATCHES, "reason") == {"0": "   "}
    assert offending(result, NOT_NULL, "label_id") == {"1": None}
    assert offending(result, JSON, "record") == {"2": "{not json"}
    assert len(result.failed) == 3
    # a rule that names no measure counts the rows that broke it
    why = verdict_metadata(result)["why"]
    assert why.startswith("rows failing expect_column_values_to_") and why.endswith(
        " 1 > 0 (and 2 more failed rules)"
    )


# coverage


def test_coverage_counts_labels_per_image():
    labels = frame("labels", CLEAN_LABELS)
    counts = coverage_frame(labels, frame("images", [image("a"), image("b"), image("c")]))
    assert counts.rows() == [(image_id("a"), 4), (image_id("b"), 1), (image_id("c"), 0)]


def validate_coverage(labelled_images: int, share: float) -> GateResult:
    """Coverage of 10 images of which the first ``labelled_images`` have a caption."""
    images = frame("images", [image(str(i)) for i in range(10)])
    labels = frame("labels", [label(f"l{i}", "caption", str(i)) for i in range(labelled_images)])
    return validate(coverage_suite(share), coverage_frame(labels, images), index_column="image_id")


def test_coverage_passes_at_and_fails_below_the_share():
    assert validate_coverage(9, share=0.9).passed

    result = validate_coverage(7, share=0.9)
    assert not result.passed
    assert result.failed == (f"{BETWEEN}(labels, 1..): 3 unexpected (30.0% of 10, mostly 0.9)",)
    assert offending(result, BETWEEN, "labels") == {image_id(str(i)): "0" for i in (7, 8, 9)}
    # the gate's verdict names what it measured and the threshold it fell short of
    assert verdict_metadata(result) == {
        "why": "labelled share 0.7 < 0.9",
        "measured": pytest.approx(0.7),
        "threshold": 0.9,
    }
    assert verdict_metadata(validate_coverage(9, share=0.9)) == {}


# one object, one label


def test_one_label_per_object_fails_a_machine_copy_and_passes_two_people_boxes():
    rows = [
        label("person-1", "object", source="human"),
        label(
            "person-2", "object", source="human", box=[12.0, 20.0, 200.0, 300.0]
        ),  # two people's boxes: allowed
        label("elsewhere", "object", source="consensus@1", box=[300.0, 300.0, 400.0, 400.0]),
        label("a-dog-there", "object", source="consensus@1", category="dog", text="dog"),  # another class
    ]
    suite = one_label_per_object_suite(0.5)
    assert validate(suite, same_object_frame(frame("labels", rows)), index_column="label_id").passed
    copy = label("copy", "object", source="consensus@1", box=[10.0, 22.0, 200.0, 300.0])
    result = validate(suite, same_object_frame(frame("labels", [*rows, copy])), index_column="label_id")
    assert not result.passed
    # the copy, and the two person boxes it overlaps, each name their largest overlap
    assert set(offending(result, BETWEEN, "same_object_iou")) == {"copy", "person-1", "person-2"}
    measured = verdict_metadata(result)
    assert measured["threshold"] == 0.5 and measured["measured"] >= 0.5
    assert measured["why"].startswith(f"same-object IoU {measured['measured']:.3g} >= 0.5 (label_id ")


# class retention


def objects(counts: dict[str, int]) -> pl.DataFrame:
    rows = [
        label(f"{category}{i}", "object", category=category)
        for category, count in counts.items()
        for i in range(count)
    ]
    # a caption and an OCR row carry no class and are not counted
    return frame("labels", [*rows, label("caption", "caption"), label("ocr", "ocr")])


def test_class_counts_against_the_reference():
    counts = class_counts_frame(objects({"cat": 8, "fox": 1}), objects({"cat": 10, "dog": 3}))
    assert counts.rows() == [("cat", 8, 10, 0.8), ("dog", 0, 3, 0.0)]
    # a class with fewer labels than asked in the reference is not counted
    assert class_counts_frame(objects({"cat": 8}), objects({"cat": 10, "dog": 3}), min_reference_count=5)[
        "category"
    ].to_list() == ["cat"]
    # only labels scored at least min_score count, and a person's unscored label does
    guesses = objects({"cat": 4}).with_columns(score=pl.lit(0.1))
    confident = pl.concat(
        [
            objects({"cat": 2}).with_columns(score=pl.lit(0.9)),
            objects({"cat": 1}).with_columns(score=pl.lit(None, pl.Float64)),
        ]
    )
    counts = class_counts_frame(confident, pl.concat([guesses, confident]), min_score=0.5)
    assert counts.rows() == [("cat", 3, 3, 1.0)]


def test_a_collapsing_class_fails_while_a_shrinking_one_passes():
    reference = objects({"cat": 10, "dog": 3})

    def validate_retention(current: pl.DataFrame) -> GateResult:
        counts = class_counts_frame(current, reference)
        return validate(class_retention_suite(0.5), counts, index_column="category")

    result = validate_retention(objects({"cat": 8, "dog": 3}))
    assert result.passed, result.failed

    result = validate_retention(objects({"cat": 8}))
    assert not result.passed
    assert offending(result, BETWEEN, "retention") == {"dog": "0.0"}
    # the worst class, by name
    assert verdict_metadata(result) == {
        "why": "class retention 0 < 0.5 (category dog)",
        "measured": 0.0,
        "threshold": 0.5,
    }


def test_the_rare_class_guard_fails_a_rare_class_that_loses_labels_or_recall():
    before = pl.DataFrame(
        {
            "category": ["kite", "zebra", "dog"],
            "labels": [8, 4, 100],
            "recall": [0.8, 0.5, 0.9],
            "f1": [0.8, 0.5, 0.9],
            "rare": [True, True, False],
        },
        schema=PER_CLASS_SCHEMA,
    )

    def guard(now: pl.DataFrame) -> GateResult:
        return validate(
            rare_class_guard_suite(0.25, 0.1), rare_class_changes(now, before), index_column="category"
        )

    # a common class may move; a rare one may lose a quarter of its labels and 0.1 recall
    steady = before.with_columns(labels=pl.Series([6, 4, 10]), recall=pl.Series([0.75, 0.5, 0.1]))
    assert guard(steady).passed
    collapsed = before.with_columns(labels=pl.Series([3, 4, 100]))
    assert offending(guard(collapsed), BETWEEN, "count_drop") == {"kite": "0.625"}
    assert verdict_metadata(guard(collapsed))["why"] == "rare-class count drop 0.625 > 0.25 (category kite)"
    forgotten = before.with_columns(recall=pl.Series([0.8, 0.3, 0.9]))
    result = guard(forgotten)
    assert not result.passed and set(offending(result, BETWEEN, "recall_drop")) == {"zebra"}
    assert verdict_metadata(result) == {
        "why": "rare-class recall drop 0.2 > 0.1 (category zebra)",
        "measured": pytest.approx(0.2),
        "threshold": 0.1,
    }


# Data Docs


def test_data_docs_show_the_validation(tmp_path: Path):
    labels = frame("labels", [*CLEAN_LABELS, label("over", "caption", score=1.5)])
    gate = labels_gate_frame(labels, IMAGES)
    result = validate(labels_suite(ONTOLOGY), gate, index_column="label_id", docs_dir=tmp_path)
    assert result.docs == tmp_path / "index.html"
    index = result.docs.read_text()
    assert "Failed" in index
    # the index links this validation's page (under the suite's name), which shows the
    # failed expectation and its offending value
    page_path = tmp_path / re.search(r"validations/labels/[^'\"]+\.html", index).group()
    page = visible_text(page_path.read_text())
    assert "Expectation Suite: labels" in page
    assert "values must be greater than or equal to 0.0 and less than or equal to 1.0" in page
    assert "Unexpected Value Count label_id 1.5 1 over" in page


def test_a_data_docs_link_is_http_under_the_served_docs_folder(tmp_path: Path):
    """The Dagster UI is a web page: a browser refuses its file:// links, so a gate links its
    Data Docs page where `relabel ui` serves the docs folder."""
    docs = tmp_path / "gx_docs" / "filtered_labels_keep_every_class" / "0" / "shard 01" / "index.html"
    url = docs_url(docs, tmp_path / "gx_docs", "http://127.0.0.1:3003/")
    assert url == "http://127.0.0.1:3003/filtered_labels_keep_every_class/0/shard%2001/index.html"
    with pytest.raises(ValueError):
        docs_url(tmp_path / "elsewhere" / "index.html", tmp_path / "gx_docs", "http://127.0.0.1:3003")


def visible_text(page: str) -> str:
    """The words of an HTML page as a browser shows them, whitespace collapsed."""
    page = re.sub(r"<(script|style).*?</\1>", "", page, flags=re.DOTALL)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())
