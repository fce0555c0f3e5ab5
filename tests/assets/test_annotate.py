"""End to end, phase 1: every specialist per shard, their consensus, the merge with the
human labels and the scores, materialized with `dagster.materialize` on a tiny world."""

import logging

import mlflow
import polars as pl
import pytest

from relabel.config import load_params
from relabel.labels import check_schema
from relabel.merge import same_object_overlaps

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def annotated(annotated_project):
    root, results, _ = annotated_project
    return root, results


def _all(root, *key):
    return pl.read_parquet(root.joinpath("data", *key, "*.parquet"))


def test_each_specialist_labels_each_shard_with_counts_and_timing(annotated):
    root, results = annotated
    params = load_params(root / "params.yaml").annotate
    for shard in ("shard-00", "shard-01"):
        materialized = {
            m.asset_key.path[-1]: m
            for m in results[("annotate_shards", shard)].get_asset_materialization_events()
            for m in [m.materialization]
        }
        for spec in (*params.perception, *params.language):
            if not spec.enabled:
                continue
            metadata = materialized[spec.name].metadata
            assert metadata["images"].value > 0
            assert metadata["seconds_per_100_images"].value >= 0
            check_schema(
                pl.read_parquet(root / "data" / "annotate" / spec.name / f"{shard}.parquet"), "labels"
            )


def test_every_human_label_is_kept_as_written_and_every_object_once(annotated):
    root, _ = annotated
    human = _all(root, "ingest", "human_labels").sort("label_id")
    initial = _all(root, "annotate", "initial_annotations")
    kept = initial.filter(pl.col("source") == "human").sort("label_id")
    # what a person wrote is kept; specialists that confirm it add provenance and agreement,
    # and a traced polygon where the person drew none
    wrote = [
        "label_id",
        "image_id",
        "annotation_type",
        "task",
        "text",
        "box",
        "quad",
        "category",
        "score",
        "source",
        "status",
    ]
    assert kept.select(wrote).equals(human.select(wrote))
    drawn = human.filter(pl.col("polygon").is_not_null())
    assert (
        kept.filter(pl.col("label_id").is_in(drawn["label_id"].implode()))["polygon"].to_list()
        == drawn["polygon"].to_list()
    )
    confirmed = kept.filter(pl.col("agreement") > 1)
    assert confirmed.height > 0 and confirmed["provenance"].list.len().min() >= 1
    machine = initial.filter(pl.col("source") != "human")
    assert machine.height > 0
    assert set(machine["annotation_type"]) == {"text", "region_text", "text_phrase_region"}
    # one object, one label: no machine copy of an object beside its label
    assert same_object_overlaps(initial)["same_object_iou"].max() < 0.5
    assert (
        initial.filter(
            pl.col("task") == "object",
            ~pl.col("source").str.starts_with("human"),
            ~pl.col("source").str.starts_with("consensus"),
        ).height
        == 0
    )


def test_rows_in_equal_initial_annotations_plus_what_was_folded(annotated):
    root, _ = annotated
    initial = _all(root, "annotate", "initial_annotations")
    folded = _all(root, "annotate", "initial_quarantine")
    assert set(folded["reason"]) == {"confirms_existing"}
    language = pl.concat([_all(root, "annotate", name) for name in ("segmenter", "captioner", "grounding")])
    inputs = pl.concat(
        [_all(root, "ingest", "human_labels"), _all(root, "annotate", "consensus_regions"), language]
    )
    # texts the merge found near-identical are merged into one (consensus.merge_texts); every
    # other input row is a label or a folded row, once
    outputs = set(initial["label_id"]) | set(folded["label_id"])
    regions = inputs.filter(pl.col("annotation_type") != "text")
    assert set(regions["label_id"]) <= outputs
    assert not set(initial["label_id"]) & set(folded["label_id"])
    # every folded row names the label it went into, and that label is there
    into = folded["detail"].str.extract(r"folded into label (\w+)")
    assert set(into.to_list()) <= set(initial["label_id"])


def test_consensus_keeps_provenance_and_quarantines_lone_low_boxes(annotated):
    root, _ = annotated
    fused = _all(root, "annotate", "consensus_regions")
    members = pl.concat([_all(root, "annotate", name) for name in ("shapes", "tinydet", "ocr")])
    assert fused.height > 0
    provenance = set(fused["provenance"].explode().drop_nulls())
    assert provenance <= set(members["label_id"]), "a fused region names labels no specialist produced"
    assert (fused["agreement"] >= 1).all()
    quarantine = _all(root, "annotate", "consensus_quarantine")
    assert set(quarantine["reason"]) <= {"lone_low_score"}


def test_scores_are_an_mlflow_run_and_in_the_asset_metadata(annotated):
    root, results = annotated
    (event,) = results["score_annotations"].get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert "consensus_regions" in metadata["summary"].value
    assert metadata["f1_by_class"].value.startswith("![")
    url = metadata["mlflow_run"].value
    assert url.endswith("?workflowType=machine_learning")  # the machine-learning view of the run
    experiment_id, run_id = url.split("#/experiments/")[1].split("?")[0].split("/runs/")
    mlflow.set_tracking_uri(f"sqlite:///{root / 'data' / 'mlflow' / 'mlflow.db'}")
    run = mlflow.get_run(run_id)
    assert run.info.experiment_id == experiment_id and run.info.run_name == "initial-annotations"
    assert mlflow.get_experiment(experiment_id).name == "relabel/annotation-scores"
    assert "f1.consensus_regions" in run.data.metrics
    assert next(iter(run.data.metrics)) == "f1.initial_annotations"  # what MLflow's Compare plots first
    assert 0 <= run.data.metrics["f1.consensus_regions"] <= 1


def test_without_human_boxes_the_trained_specialists_are_left_out_with_a_warning(
    tiny_project, instance, materialize_all
):
    """A collection with captions but no human box: the specialists trained on boxes are
    skipped (said in their metadata and the run's log), the others annotate it."""
    import yaml
    from dagster import AssetKey

    from assets.annotate import NO_HUMAN_BOXES

    root = tiny_project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["world"]["human"].update(missing_object_rate=1.0, inject_defects=False)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    results = materialize_all(root, phases=("world", "ingest", "annotate"))

    human = _all(root, "ingest", "human_labels")
    assert (
        human.filter(pl.col("box").is_not_null()).height == 0
        and human.filter(pl.col("task") == "brief_caption").height > 0
    )
    training = results["train_specialists"]
    for name in ("shapes", "tinydet"):
        (event,) = [
            e
            for e in training.get_asset_materialization_events()
            if e.asset_key == AssetKey(["annotate", f"{name}_model"])
        ]
        assert event.materialization.metadata["skipped"].value == NO_HUMAN_BOXES
        assert (root / "data" / "annotate" / f"{name}_model" / "training_skipped.json").is_file()
    warnings = [e.user_message for e in instance.all_logs(training.run_id) if e.level == logging.WARNING]
    assert sum(f"not trained: {NO_HUMAN_BOXES}" in message for message in warnings) == 2

    for shard in ("shard-00", "shard-01"):
        run = results[("annotate_shards", shard)]
        metadata = {
            m.asset_key.path[-1]: m.materialization.metadata for m in run.get_asset_materialization_events()
        }
        for name in ("shapes", "tinydet"):
            assert metadata[name]["skipped"].value == f"not trained: {NO_HUMAN_BOXES}"
            assert pl.read_parquet(root / "data" / "annotate" / name / f"{shard}.parquet").height == 0
        assert metadata["ocr"]["images"].value > 0
        left_out = [
            e.user_message
            for e in instance.all_logs(run.run_id)
            if e.level == logging.WARNING and "left out" in e.user_message
        ]
        assert len(left_out) == 2
    # annotation went on: the human captions kept, the other specialists' labels beside them
    initial = _all(root, "annotate", "initial_annotations")
    assert initial.filter(pl.col("source") == "human").height == human.height
    assert initial.filter(pl.col("source") != "human").height > 0
