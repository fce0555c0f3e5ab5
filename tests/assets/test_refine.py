"""Phase 4 through Dagster: iteration k's model re-labels the training images, the merge makes
iteration k+1's labels (losing nothing), each iteration's label quality is an MLflow run, and
the rare-class guard stops a model from training on labels that lost a rare class."""

from __future__ import annotations

import polars as pl
import pytest
from dagster import materialize

from models.inference import PROMPT_FREE_TASKS
from pipelines.definitions import build_definitions
from pipelines.phases import FILTER_REPORT_JOB, FILTER_SHARDS_JOB, MERGE_SHARDS_JOB, TRAIN_MODEL_JOB
from relabel.config import load_params
from relabel.labels import frame, label_id_for
from resources.layout import LABEL_QUALITY

SHARDS = ("shard-00", "shard-01")


def _metadata(result, asset: str) -> dict:
    (materialization,) = [
        m.materialization
        for m in result.get_asset_materialization_events()
        if m.asset_key.to_user_string() == asset
    ]
    return {name: getattr(value, "value", value) for name, value in materialization.metadata.items()}


@pytest.mark.slow
def test_iteration_one_is_iteration_zero_merged_with_the_models_labels_and_loses_nothing(iterated_project):
    root, results = iterated_project
    data = root / "data"
    for shard in SHARDS:
        before = pl.read_parquet(data / "merge" / "labels" / "iteration-0" / f"{shard}.parquet")
        model = pl.read_parquet(data / "refine" / "reannotation" / "iteration-0" / f"{shard}.parquet")
        after = pl.read_parquet(data / "merge" / "labels" / "iteration-1" / f"{shard}.parquet")
        quarantined = pl.read_parquet(data / "merge" / "quarantine" / "iteration-1" / f"{shard}.parquet")
        decisions = pl.read_parquet(data / "merge" / "decisions" / "iteration-1" / f"{shard}.parquet")
        # iteration 0's review queue: its verdicts replace the labels they judged
        verdicts = pl.read_parquet(data / "review" / "verdicts" / "0.parquet").filter(
            pl.col("image_id").is_in(before["image_id"].implode())
        )
        judged = pl.read_parquet(data / "review" / "iteration-0" / "decisions.parquet").filter(
            pl.col("image_id").is_in(before["image_id"].implode()), pl.col("label_id").is_not_null()
        )
        written_by_audit = verdicts.filter(~pl.col("label_id").is_in(before["label_id"].implode()))
        # copies of an object a person audited are folded into the audited label
        folded = quarantined.filter(pl.col("phase") == "review", pl.col("reason") == "confirms_existing")
        # rows in = rows kept + rows quarantined, each decided once
        assert before.height + written_by_audit.height + model.height == after.height + quarantined.height
        assert (
            decisions.height == before.height - judged.height - folded.height + verdicts.height + model.height
        )
        assert decisions["label_id"].is_unique().all() and after["label_id"].is_unique().all()
        # every human label of iteration 0 the audit did not judge is in iteration 1 as the
        # person wrote it (a confirmation adds only its vote and id)
        wrote = ["label_id", "image_id", "task", "text", "box", "category", "score", "source", "status"]
        human = before.filter(
            pl.col("source") == "human", ~pl.col("label_id").is_in(judged["label_id"].implode())
        )
        assert human.height > 0
        assert (
            human.select(wrote)
            .sort("label_id")
            .equals(after.filter(pl.col("source") == "human").select(wrote).sort("label_id"))
        )
        assert verdicts.join(after, on="label_id", how="anti").height == 0
        # the model, and the self-trained detector for the images its fold model never saw
        assert set(model["source"]) <= {"florence2@iteration-0", "mobilenet-self-trained@iteration-0"}
        metadata = _metadata(results[(MERGE_SHARDS_JOB, f"1|{shard}")], "merge/labels")
        assert (
            "refine/reannotation 0|" in metadata["made_from"]
            and "florence2@iteration-0" in metadata["made_from"]
        )
        assert metadata["model_run"].startswith(load_params(root / "params.yaml").ui.mlflow_url + "/#/")
        images = pl.read_parquet(data / "ingest" / "images" / f"{shard}.parquet").filter(
            pl.col("split") == "train"
        )
        reannotated = _metadata(results[("reannotate_shards", f"0|{shard}")], "refine/reannotation")
        assert reannotated["images"] == images.height
        assert reannotated["requests"] >= len(PROMPT_FREE_TASKS) * images.height


@pytest.mark.slow
def test_the_self_trained_detector_trains_one_model_per_fold_of_the_iterations_labels(iterated_project):
    root, results = iterated_project
    folder = root / "data" / "refine" / "self_trained_specialists" / "iteration-0"
    import json

    report = json.loads((folder / "self_training.json").read_text())
    assert report["folds"] == 2 and [r["fold"] for r in report["reports"]] == [0, 1]
    assert all(r["specialist"] == "mobilenet" and r["epochs"] == 2 for r in report["reports"])
    for fold in (0, 1):
        assert (folder / "mobilenet" / f"fold-{fold}" / "backbone_head.pt").is_file()
    metadata = _metadata(results[("train_refine_specialists", "0")], "refine/self_trained_specialists")
    assert metadata["trained"] is True and metadata["folds"] == 2 and metadata["training_labels"] > 0


@pytest.mark.slow
def test_each_iteration_has_its_label_quality_in_mlflow_and_the_guard_compares_them(iterated_project):
    from mlflow import MlflowClient

    root, results = iterated_project
    data = root / "data"
    client = MlflowClient(f"sqlite:///{data / 'mlflow' / 'mlflow.db'}")
    runs = client.search_runs(client.get_experiment_by_name("relabel/label-quality").experiment_id)
    assert sorted(run.data.tags["iteration"] for run in runs) == ["0", "1"]
    assert sorted(run.info.run_name for run in runs) == ["iteration-0", "iteration-1"]
    for run in runs:  # box F1 first, what MLflow's Compare plots first; no constant count of rare classes
        assert next(iter(run.data.metrics)) == "box_f1" and "rare_classes" not in run.data.metrics
    for iteration in ("0", "1"):
        summary = pl.read_parquet(
            data / "filter" / "quality" / f"iteration-{iteration}" / "summary.parquet"
        ).row(0, named=True)
        assert 0 <= summary["box_f1"] <= 1 and summary["labels"] > 0
        per_class = pl.read_parquet(data / "filter" / "label_quality" / f"{iteration}.parquet")
        kept = pl.read_parquet(data / "filter" / "filtered_labels" / f"iteration-{iteration}" / "*.parquet")
        training = (
            pl.read_parquet(data / "ingest" / "images" / "*.parquet")
            .filter(pl.col("split") == "train")["image_id"]
            .implode()
        )
        objects = kept.filter(
            pl.col("task") == "object", pl.col("image_id").is_in(training), pl.col("category").is_not_null()
        )
        assert per_class["labels"].sum() == objects.height
    # iteration 1 says what the merge repaired and broke; iteration 0 had nothing before it
    second = pl.read_parquet(data / "filter" / "quality" / "iteration-1" / "summary.parquet").row(
        0, named=True
    )
    assert second["wrong_labels_before"] >= 0 and second["right_labels_before"] > 0
    guard = {e.check_name: e for e in results[(FILTER_REPORT_JOB, "1")].get_asset_check_evaluations()}[
        "rare_classes_kept"
    ]
    assert guard.passed and guard.metadata["compared_with"].value == "iteration 0"


@pytest.mark.slow
def test_the_guard_stops_the_next_model_when_a_confident_model_erases_a_rare_class(guard_project, instance):
    defs = build_definitions(str(guard_project))
    jobs = {job.name: job for job in defs.jobs}
    everything = [*defs.assets, *defs.asset_checks]
    instance.add_dynamic_partitions("iteration", ["0", "1"])

    def run(job: str, key: str):
        return materialize(
            everything,
            selection=jobs[job].selection,
            partition_key=key,
            resources=defs.resources,
            instance=instance,
            raise_on_error=False,
        )

    def label_quality(iteration: str):
        # the label quality alone: these hand-made shards have no earlier phase's quarantine
        return materialize(
            everything,
            selection=[LABEL_QUALITY],
            partition_key=iteration,
            resources=defs.resources,
            instance=instance,
            raise_on_error=False,
        )

    for shard in SHARDS:
        assert run(MERGE_SHARDS_JOB, f"0|{shard}").success and run(FILTER_SHARDS_JOB, f"0|{shard}").success
    assert label_quality("0").success
    # iteration 0's model, sure of itself, sees a ball where every kite is (the shape
    # detector agrees): the merge lets it repair them, supported
    data = guard_project / "data"
    for shard in SHARDS:
        labels = pl.read_parquet(data / "merge" / "labels" / "iteration-0" / f"{shard}.parquet")
        balls = []
        for row in labels.filter(pl.col("category") == "kite").iter_rows(named=True):
            ball = {
                **row,
                "category": "ball",
                "text": "ball",
                "score": 0.95,
                "source": "florence2@iteration-0",
                "agreement": None,
            }
            balls.append({**ball, "label_id": label_id_for(ball)})
        path = data / "refine" / "reannotation" / "iteration-0" / f"{shard}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame("labels", balls).write_parquet(path)
    for shard in SHARDS:
        merged = run(MERGE_SHARDS_JOB, f"1|{shard}")
        assert merged.success and run(FILTER_SHARDS_JOB, f"1|{shard}").success
        assert _metadata(merged, "merge/labels")["decision/repaired"] == 6
    report = label_quality("1")
    assert not report.success
    guard = {e.check_name: e for e in report.get_asset_check_evaluations()}["rare_classes_kept"]
    assert not guard.passed and "kite" in guard.metadata["changes"].value
    # a later run of the model refuses the iteration, naming the guard
    refused = run(TRAIN_MODEL_JOB, "1")
    assert not refused.success
    failure = next(event for event in refused.all_events if event.is_step_failure)
    assert "failed the rare-class guard ['rare_classes_kept']" in str(failure.event_specific_data.error)
