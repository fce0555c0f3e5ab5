"""The audit phase through Dagster: the evaluation split goes out as Label Studio tasks, comes
back audited, is frozen, stays frozen to the byte, and no copy of it reaches a corpus."""

from __future__ import annotations

import io
import json

import polars as pl
import pytest
import yaml
from dagster import AssetCheckKey
from PIL import Image

from pipelines.cli import main
from pipelines.phases import AUDIT_SPLIT_JOB, CATALOG_JOB, CORPUS_SHARDS_JOB, INGEST_SHARDS_JOB
from relabel.evaluation_split import freeze_history, read_freeze
from relabel.labels import frame
from resources.layout import AUDITED_LABELS, CORPUS_EXAMPLES, FROZEN_SPLIT, files_dir
from tests.conftest import run_job

SPLIT_UNCHANGED = AssetCheckKey(FROZEN_SPLIT, "split_unchanged")


def check_passed(result, key: AssetCheckKey) -> bool:
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.asset_check_key == key]
    return evaluation.passed


def test_the_split_is_audited_through_label_studio_json_and_frozen(annotated_project):
    root, results, _ = annotated_project
    data = root / "data"
    images = pl.read_parquet(data / "ingest" / "images" / "*.parquet")
    held = images.filter(pl.col("split") == "eval")
    assert held.height >= 1

    tasks = json.loads((data / "audit" / "label_studio" / "tasks.json").read_text())
    assert sorted(task["data"]["image_id"] for task in tasks) == sorted(held["image_id"].to_list())
    assert all(task["data"]["image"].startswith("/data/local-files/?d=data/world/") for task in tasks)
    export = json.loads((data / "audit" / "label_studio" / "completed.json").read_text())
    assert {annotation["completed_by"] for item in export for annotation in item["annotations"]} == {
        "world-auditor"
    }

    audited = pl.read_parquet(data / "audit" / "audited_labels.parquet")
    assert set(audited["image_id"]) <= set(held["image_id"])
    assert set(audited["source"]) == {"human-audit@world-auditor"} and set(
        audited["status"].cast(pl.String)
    ) == {"audited"}
    # the world's auditor corrects the split to the truth: same objects, same categories
    truth = pl.read_parquet(data / "ground_truth" / "labels.parquet").filter(
        pl.col("image_id").is_in(held["image_id"].implode()), pl.col("task") == "object"
    )
    assert sorted(audited.filter(pl.col("task") == "object")["category"].to_list()) == sorted(
        truth["category"].to_list()
    )

    decisions = pl.read_parquet(data / "audit" / "label_studio" / "decisions.parquet")
    predicted = pl.read_parquet(data / "ingest" / "human_labels" / "*.parquet").filter(
        pl.col("image_id").is_in(held["image_id"].implode()),
        pl.col("task")
        .cast(pl.String)
        .is_in(
            [
                "object",
                "ocr",
                "brief_caption",
                "region_caption",
                "phrase_grounding",
                "detailed_caption",
                "more_detailed_caption",
            ]
        ),
    )
    by_decision = dict(decisions.group_by("decision").len().iter_rows())
    # every predicted label has one decision: rows in = accepted + corrected + rejected
    assert (
        by_decision.get("accepted", 0) + by_decision.get("corrected", 0) + by_decision.get("rejected", 0)
        == predicted.height
    )
    quarantined = dict(
        pl.read_parquet(data / "audit" / "label_studio" / "quarantine.parquet")
        .group_by("reason")
        .len()
        .iter_rows()
    )
    assert quarantined.get("rejected_in_audit", 0) == by_decision.get("rejected", 0)
    assert quarantined.get("corrected_in_audit", 0) == by_decision.get("corrected", 0)

    record = read_freeze(files_dir(FROZEN_SPLIT, data))
    assert record["images"] == held.height and record["labels"] == audited.height
    assert record["auditors"] == ["world-auditor"]
    assert check_passed(results["audit_split"], SPLIT_UNCHANGED)


@pytest.fixture
def frozen_project(tiny_project, materialize_all):
    """A tiny project ingested, audited (by the world) and frozen."""
    results = materialize_all(tiny_project, phases=("world", "ingest", "audit"))
    return tiny_project, results


def test_any_changed_byte_fails_the_check_until_an_explicit_logged_unfreeze(frozen_project, instance, capsys):
    root, _ = frozen_project
    data = root / "data"
    frozen = read_freeze(files_dir(FROZEN_SPLIT, data))
    assert run_job(root, instance, AUDIT_SPLIT_JOB).success  # re-running the phase changes nothing

    held = pl.read_parquet(data / "ingest" / "images" / "*.parquet").filter(pl.col("split") == "eval")
    path = data / held["uri"][0]
    original = path.read_bytes()
    changed = bytearray(original)
    changed[-30] ^= 0x01
    path.write_bytes(bytes(changed))
    result = run_job(root, instance, AUDIT_SPLIT_JOB)
    assert not check_passed(result, SPLIT_UNCHANGED)
    assert read_freeze(files_dir(FROZEN_SPLIT, data)) == frozen  # the freeze did not move
    path.write_bytes(original)
    assert check_passed(run_job(root, instance, AUDIT_SPLIT_JOB), SPLIT_UNCHANGED)

    # an audit that reads differently now: one audited label's text edited in the stored copy
    stored = pl.read_parquet(files_dir(FROZEN_SPLIT, data) / "labels.parquet")
    stored.with_columns(
        text=pl.when(pl.int_range(pl.len()) == 0).then(pl.col("text") + ".").otherwise(pl.col("text"))
    ).write_parquet(files_dir(FROZEN_SPLIT, data) / "labels.parquet")
    assert not check_passed(run_job(root, instance, AUDIT_SPLIT_JOB), SPLIT_UNCHANGED)

    assert main(["--root", str(root), "unfreeze", "--by", "maria", "--reason", "a caption typo"]) == 0
    assert "unfroze the evaluation split" in capsys.readouterr().out
    assert main(["--root", str(root), "unfreeze", "--by", "maria", "--reason", "again"]) == 1
    assert "not frozen" in capsys.readouterr().err
    refrozen = run_job(root, instance, AUDIT_SPLIT_JOB)
    assert check_passed(refrozen, SPLIT_UNCHANGED)
    history = freeze_history(files_dir(FROZEN_SPLIT, data))
    assert [(h["action"], h.get("by") or h.get("frozen_by")) for h in history] == [
        ("freeze", "relabel-demo"),
        ("unfreeze", "maria"),
        ("freeze", "relabel-demo"),
    ]
    assert history[1]["reason"] == "a caption typo"


def test_an_export_with_an_unreadable_edit_fails_naming_the_task_and_auditors_are_named(
    frozen_project, instance
):
    root, _ = frozen_project
    data = root / "data"
    # a person's export: Label Studio user 7, whom params.yaml names
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["audit"] |= {"auditor": "label-studio", "auditors": {7: "alice@example.com"}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    export_path = data / "audit" / "label_studio" / "completed.json"
    export = json.loads(export_path.read_text())
    for position, item in enumerate(export):
        item["id"] = 900 + position  # Label Studio's task ids
        for annotation in item["annotations"]:
            annotation["completed_by"] = 7
    readable = json.dumps(export)
    # one predicted region's result garbled: its label must not read as deleted
    (garbled, *_) = [
        (position, result)
        for position, item in enumerate(export)
        for result in item["annotations"][0]["result"]
        if result["from_name"] in ("object", "object_polygon")
    ]
    garbled[1]["type"] = "choices"
    export_path.write_text(json.dumps(export))

    result = run_job(root, instance, AUDIT_SPLIT_JOB)
    assert not result.success
    (failure,) = [event for event in result.all_events if event.is_step_failure]
    message = failure.step_failure_data.user_failure_data.description
    assert (
        f"Label Studio task {900 + garbled[0]}, annotation" in message and "by alice@example.com" in message
    )
    assert "could not be read: fix them in Label Studio and export again" in message

    export_path.write_text(readable)
    result = run_job(root, instance, AUDIT_SPLIT_JOB)
    (materialization,) = [
        m for m in result.get_asset_materialization_events() if m.asset_key == AUDITED_LABELS
    ]
    audited = pl.read_parquet(data / "audit" / "audited_labels.parquet")
    assert set(audited["source"]) == {"human-audit@alice@example.com"}
    metadata = materialization.materialization.metadata
    assert "auditor/alice@example.com" in metadata and "unnamed_auditors" not in metadata


def test_a_resized_recompressed_copy_of_a_split_image_is_caught(frozen_project, instance):
    root, _ = frozen_project
    data = root / "data"
    held = pl.read_parquet(data / "ingest" / "images" / "*.parquet").filter(pl.col("split") == "eval")
    original = Image.open(data / held["uri"][0]).convert("RGB")
    buffer = io.BytesIO()
    original.resize((original.width * 3 // 4, original.height * 3 // 4)).save(buffer, "JPEG", quality=60)
    copy = data / "world" / "web" / "copy-of-a-split-image.jpg"
    copy.write_bytes(buffer.getvalue())

    # new data arrives: the catalog keeps the copy with its original, in the frozen split
    assert run_job(root, instance, CATALOG_JOB).success
    catalog = pl.read_parquet(data / "ingest" / "source_catalog.parquet")
    row = catalog.filter(pl.col("path").str.ends_with("copy-of-a-split-image.jpg")).row(0, named=True)
    assert row["split"] == "eval"
    assert set(catalog.filter(pl.col("image_id").is_in(held["image_id"].implode()))["split"]) == {"eval"}

    # a training shard that holds it anyway (written before the split was frozen, say) gives
    # a corpus that fails the blocking leakage check, which names the copy and its original
    shard = row["shard"]
    assert run_job(root, instance, INGEST_SHARDS_JOB, shard).success
    images_path = data / "ingest" / "images" / f"{shard}.parquet"
    stale = pl.read_parquet(images_path)
    stale.with_columns(
        split=pl.when(pl.col("image_id") == row["image_id"])
        .then(pl.lit("train"))
        .otherwise(pl.col("split"))
        .cast(stale.schema["split"])
    ).write_parquet(images_path)
    caption = frame(
        "labels",
        [
            {
                "label_id": "copy-caption",
                "image_id": row["image_id"],
                "annotation_type": "text",
                "task": "brief_caption",
                "text": "A bird and a fish.",
                "score": 1.0,
                "source": "human",
                "iteration": 0,
                "status": "accepted",
            }
        ],
    )
    filtered = data / "filter" / "filtered_labels" / "iteration-0" / f"{shard}.parquet"
    filtered.parent.mkdir(parents=True, exist_ok=True)
    caption.write_parquet(filtered)
    instance.add_dynamic_partitions("iteration", ["0"])
    result = run_job(root, instance, CORPUS_SHARDS_JOB, f"0|{shard}")
    assert not result.success  # blocking: nothing downstream of the shard runs
    (evaluation,) = [
        e
        for e in result.get_asset_check_evaluations()
        if e.asset_check_key == AssetCheckKey(CORPUS_EXAMPLES, "no_eval_leakage")
    ]
    assert not evaluation.passed
    assert evaluation.metadata["near_duplicates"].value == 1
    assert held["image_id"][0][:12] in evaluation.metadata["leaks"].value
