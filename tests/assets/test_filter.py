"""Phase 2 through Dagster: the filter assets, their blocking gates, the report and the
quarantine index, on hand-made shards (fast) and on the tiny world (slow)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from dagster import AssetIn, AssetKey, AssetSelection, asset, materialize, mem_io_manager

from pipelines.definitions import build_definitions
from pipelines.phases import FILTER_REPORT_JOB, FILTER_SHARDS_JOB, MERGE_SHARDS_JOB
from relabel.config import load_params
from resources.io_manager import blocked_shards
from resources.layout import FILTERED_LABELS, GATES

SHARDS = ("shard-00", "shard-01")


def test_a_shard_whose_rare_class_collapses_is_blocked_in_its_run_and_in_later_ones(
    hand_made_shards, instance
):
    defs = build_definitions(str(hand_made_shards))
    shards = defs.resolve_job_def(FILTER_SHARDS_JOB).partitions_def
    instance.add_dynamic_partitions("iteration", ["0"])

    @asset(
        key=["test", "downstream_of_filtered_labels"],
        ins={"labels": AssetIn(FILTERED_LABELS)},
        partitions_def=shards,
        io_manager_key="memory",
    )
    def downstream(labels: pl.DataFrame) -> int:
        return labels.height

    jobs = {job.name: job for job in defs.jobs}
    everything = [*defs.assets, *defs.asset_checks, downstream]
    resources = {**defs.resources, "memory": mem_io_manager}
    selection = (
        jobs[MERGE_SHARDS_JOB].selection
        | jobs[FILTER_SHARDS_JOB].selection
        | AssetSelection.assets(downstream)
    )
    runs = {
        shard: materialize(
            everything,
            selection=selection,
            partition_key=f"0|{shard}",
            resources=resources,
            instance=instance,
            raise_on_error=False,
        )
        for shard in SHARDS
    }
    assert runs["shard-00"].success
    assert not runs["shard-01"].success

    evaluations = {e.check_name: e for e in runs["shard-01"].get_asset_check_evaluations()}
    collapse = evaluations["filtered_labels_keep_every_class"]
    assert not collapse.passed
    assert (
        "kite" in collapse.metadata["unexpected"].value
        and "ball" not in collapse.metadata["unexpected"].value
    )
    docs = Path(collapse.metadata["data_docs_path"].value)
    # served over http by `relabel ui` (params.yaml ui.docs_port), not a file:// link
    served = load_params(hand_made_shards / "params.yaml").ui.docs_url
    assert collapse.metadata["data_docs"].value == (
        f"{served}/" + docs.relative_to(docs.parents[3]).as_posix()
    )
    assert docs.is_file() and "class_retention" in "".join(p.read_text() for p in docs.parent.rglob("*.html"))
    assert all(e.passed for name, e in evaluations.items() if name != "filtered_labels_keep_every_class")

    # in the same run, what is downstream of the failing shard did not run; shard-00's did
    def materialized(result) -> set:
        return {event.asset_key for event in result.get_asset_materialization_events()}

    assert AssetKey(["test", "downstream_of_filtered_labels"]) in materialized(runs["shard-00"])
    assert AssetKey(["test", "downstream_of_filtered_labels"]) not in materialized(runs["shard-01"])
    # in a later run, the gate still holds: the shard is refused by name, with its reason
    assert blocked_shards(instance, FILTERED_LABELS) == {"0|shard-01": ["filtered_labels_keep_every_class"]}
    later = materialize(
        everything,
        selection=AssetSelection.assets(downstream),
        partition_key="0|shard-01",
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )
    assert not later.success
    failure = next(e for e in later.all_events if e.is_step_failure)
    assert "blocked by its failed gates ['filtered_labels_keep_every_class']" in str(
        failure.event_specific_data.error
    )

    # the report over every shard leaves the blocked one out and says so
    report = materialize(
        everything,
        selection=[AssetKey(["filter", "filter_report"])],
        partition_key="0",
        resources=resources,
        instance=instance,
    )
    (metadata,) = [m.metadata for m in report.asset_materializations_for_node("filter__filter_report")]
    assert metadata["shards_blocked"].value == "shard-01 (filtered_labels_keep_every_class)"
    kept_00 = pl.read_parquet(
        hand_made_shards / "data" / "filter" / "filtered_labels" / "iteration-0" / "shard-00.parquet"
    )
    assert metadata["corpus_labels"].value == kept_00.height == 12
    kites = pl.read_parquet(
        hand_made_shards / "data" / "filter" / "filter_quarantine" / "iteration-0" / "shard-01.parquet"
    )
    assert kites.height == 6 and set(kites["reason"]) == {"low_confidence"}


@pytest.mark.slow
def test_filtering_the_tiny_world_loses_nothing_and_reports_table_3_and_filter_precision(annotated_project):
    root, results, _ = annotated_project
    data = root / "data"
    for shard in SHARDS:
        labels_in = pl.read_parquet(data / "annotate" / "initial_annotations" / f"{shard}.parquet").height
        # iteration 0's labels are the initial annotations, every one
        assert (
            pl.read_parquet(data / "merge" / "labels" / "iteration-0" / f"{shard}.parquet").height
            == labels_in
        )
        kept = pl.read_parquet(data / "filter" / "filtered_labels" / "iteration-0" / f"{shard}.parquet")
        quarantined = pl.read_parquet(
            data / "filter" / "filter_quarantine" / "iteration-0" / f"{shard}.parquet"
        )
        assert labels_in == kept.height + quarantined.height
        evaluations = results[(FILTER_SHARDS_JOB, f"0|{shard}")].get_asset_check_evaluations()
        assert {e.check_name for e in evaluations} == {
            n for names in GATES.values() for n in names if n.startswith("filter")
        }
        assert all(e.passed for e in evaluations)
    (metadata,) = [
        m.metadata
        for m in results[(FILTER_REPORT_JOB, "0")].asset_materializations_for_node("filter__filter_report")
    ]
    assert (
        "brief_caption" in metadata["text_statistics"].value
        and "avg_object_complexity" in metadata["text_statistics"].value
    )
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'data' / 'mlflow' / 'mlflow.db'}")
    experiment_id, run_id = (
        metadata["mlflow_run"].value.split("#/experiments/")[1].split("?")[0].split("/runs/")
    )
    run = mlflow.get_run(run_id)
    assert run.info.experiment_id == experiment_id and run.info.run_name == "iteration-0"
    assert mlflow.get_experiment(experiment_id).name == "relabel/filter"
    assert run.data.tags["phase"] == "filter" and run.data.params["shards_blocked"] == "none"
    assert 0 <= run.data.metrics["all.keep_precision"] <= 1 and run.data.metrics["corpus_labels"] > 0
    quality = pl.read_parquet(data / "filter" / "report" / "iteration-0" / "filter_quality.parquet")
    overall = quality.filter(pl.col("filter") == "all").row(0, named=True)
    assert overall["judged"] == sum(
        pl.read_parquet(data / "annotate" / "initial_annotations" / f"{s}.parquet").height for s in SHARDS
    )
    assert 0 <= overall["keep_precision"] <= 1
    # the quarantine index holds every quarantined row of every phase on the way to the corpus,
    # with where it came from (the audit's quarantine is of the evaluation split: kept apart)
    index = pl.read_parquet(data / "filter" / "quarantine_index" / "0.parquet")
    every = [
        p
        for p in data.rglob("*.parquet")
        if p.relative_to(data).parts[0] != "audit"
        and "quarantine" in str(p.relative_to(data))
        and "quarantine_index" not in str(p)
        and "iteration-" not in str(p.parent.name)
        or "iteration-0" in str(p.parent.name)
        and "quarantine" in str(p)
    ]
    assert index.height == sum(pl.read_parquet(p).height for p in every) > 0
    assert {"ingest/ingest_quarantine", "filter/filter_quarantine"} <= set(index["asset"])
    (index_metadata,) = [
        m.metadata
        for m in results[(FILTER_REPORT_JOB, "0")].asset_materializations_for_node("filter__quarantine_index")
    ]
    assert index_metadata["quarantined"].value == index.height
