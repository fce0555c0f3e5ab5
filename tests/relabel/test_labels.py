import json
import math

import polars as pl
import pytest

from relabel.labels import (
    LABELS_SCHEMA,
    SchemaError,
    check_schema,
    empty,
    frame,
    label_id_for,
    quarantine_row,
)


def _label(**overrides):
    row = {
        "label_id": "l1",
        "image_id": "i1",
        "annotation_type": "region_text",
        "task": "object",
        "text": "ball",
        "region_kind": "object",
        "box": [1.0, 2.0, 30.0, 40.0],
        "polygon": [[1.0, 2.0, 30.0, 2.0, 30.0, 40.0]],
        "category": "ball",
        "score": 1.0,
        "source": "human",
        "iteration": 0,
        "status": "raw",
    }
    return {**row, **overrides}


def test_frame_builds_every_column_of_the_schema_and_round_trips_parquet(tmp_path):
    labels = frame(
        "labels", [_label(), _label(label_id="l2", annotation_type="text", task="brief_caption", box=None)]
    )
    assert labels.schema == LABELS_SCHEMA
    assert labels["box"].to_list()[0] == [1.0, 2.0, 30.0, 40.0]
    assert labels["box"].to_list()[1] is None
    labels.write_parquet(tmp_path / "labels.parquet")
    back = check_schema(pl.read_parquet(tmp_path / "labels.parquet"), "labels")
    assert back.equals(labels)


def test_unknown_enum_value_is_an_error_not_a_silent_null():
    with pytest.raises(SchemaError, match="task"):
        frame("labels", [_label(task="caption_of_the_day")])


def test_box_of_the_wrong_length_is_an_error():
    with pytest.raises(SchemaError):
        frame("labels", [_label(box=[1.0, 2.0, 3.0])])


def test_check_schema_names_missing_and_mistyped_columns():
    labels = frame("labels", [_label()])
    with pytest.raises(SchemaError, match="missing=\\['status'\\]"):
        check_schema(labels.drop("status"), "labels")
    with pytest.raises(SchemaError, match="score"):
        check_schema(labels.with_columns(pl.col("score").cast(pl.Float32)), "labels")
    with pytest.raises(SchemaError, match="null label_id"):
        check_schema(labels.with_columns(pl.lit(None, pl.String).alias("label_id")), "labels")
    assert check_schema(empty("quarantine"), "quarantine").is_empty()


def test_label_id_is_stable_and_separates_identical_labels_by_ordinal():
    row = _label()
    assert label_id_for(row) == label_id_for(dict(row))
    assert label_id_for(row, ordinal=1) != label_id_for(row)
    assert label_id_for({**row, "text": "cup"}) != label_id_for(row)


def test_quarantine_row_keeps_the_raw_record_as_json_even_with_nan_and_bytes():
    row = quarantine_row(
        record_kind="label",
        phase="ingest",
        reason="invalid_score",
        detail="score nan is not in [0, 1]",
        record={"score": math.nan, "raw": b"\xffabc"},
        image_id="i1",
    )
    table = frame("quarantine", [row])
    assert table["reason"].to_list() == ["invalid_score"]
    assert json.loads(table["record"][0]) == {"raw": "\\xffabc", "score": "nan"}


def test_quarantine_row_keeps_undecodable_text_visible():
    text = b"caf\xe9".decode("utf-8", errors="surrogateescape")
    row = quarantine_row(
        record_kind="label", phase="ingest", reason="non_utf8_text", detail="d", record={"text": text}
    )
    assert json.loads(row["record"]) == {"text": "caf\\xe9"}


def test_a_label_refused_before_it_had_an_id_gets_one_from_its_record():
    def refused(text: str) -> dict:
        return quarantine_row(
            record_kind="label",
            phase="ingest",
            reason="non_utf8_text",
            detail="d",
            record={"text": text},
            image_id="i1",
        )

    assert refused("a")["label_id"] == refused("a")["label_id"] != refused("b")["label_id"]
    assert (
        quarantine_row(record_kind="image", phase="ingest", reason="r", detail="d", record={})["label_id"]
        is None
    )
    given = quarantine_row(
        record_kind="label", phase="filter", reason="r", detail="d", record={}, label_id="L1"
    )
    assert given["label_id"] == "L1"
