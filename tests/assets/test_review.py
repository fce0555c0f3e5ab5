"""The review queue through Dagster: iteration 0's most suspicious labels go out as Label Studio
tasks, the verdicts come back as human-audit labels, and iteration 1 trusts them."""

from __future__ import annotations

import json

import polars as pl
import pytest

from pipelines.phases import QUEUE_REVIEW_JOB, READ_VERDICTS_JOB
from relabel.config import load_params
from relabel.review_queue import QUEUE_SCHEMA, SIGNALS
from relabel.scoring import label_correctness


def _metadata(result, asset: str) -> dict:
    (materialization,) = [
        m.materialization
        for m in result.get_asset_materialization_events()
        if m.asset_key.to_user_string() == asset
    ]
    return {name: getattr(value, "value", value) for name, value in materialization.metadata.items()}


@pytest.mark.slow
def test_the_queue_sends_the_most_suspicious_labels_and_the_next_iteration_trusts_the_verdicts(
    iterated_project,
):
    root, results = iterated_project
    data, review = root / "data", load_params(root / "params.yaml").review
    scored = pl.read_parquet(data / "review" / "iteration-0" / "scores.parquet")
    queue = pl.read_parquet(data / "review" / "queue" / "0.parquet")
    filtered = pl.read_parquet(data / "filter" / "filtered_labels" / "iteration-0" / "*.parquet")
    training = pl.read_parquet(data / "ingest" / "images" / "*.parquet").filter(pl.col("split") == "train")
    assert queue.schema == QUEUE_SCHEMA
    # every auditable training label is scored; the queue is the budget, from training images only
    assert scored.height > review.budget and queue.height == review.budget
    assert set(scored["image_id"]) <= set(training["image_id"])
    assert set(queue["label_id"]) <= set(scored["label_id"]) <= set(filtered["label_id"])
    assert scored.select(*SIGNALS, "suspicion").null_count().row(0)[-1] == 0
    # places kept for every annotation type, the rest by suspicion
    assert set(queue["annotation_type"]) == set(scored["annotation_type"])
    by_suspicion = queue.filter(pl.col("why") == "suspicion")
    assert (
        by_suspicion["suspicion"].min()
        >= scored.filter(~pl.col("label_id").is_in(queue["label_id"].implode()))["suspicion"].max()
    )
    # the tasks for Label Studio show exactly the queued labels
    tasks = json.loads((data / "review" / "iteration-0" / "tasks.json").read_text())
    shown = {result["meta"]["label_id"] for task in tasks for result in task["predictions"][0]["result"]}
    assert shown == set(queue["label_id"])
    metadata = _metadata(results[(QUEUE_REVIEW_JOB, "0")], "review/queue")
    assert metadata["queued"] == review.budget and metadata["truth/judged_labels"] > 0
    # the world's truth judged them (review.reviewer: world-truth); every queued label is decided once
    decisions = pl.read_parquet(data / "review" / "iteration-0" / "decisions.parquet")
    assert sorted(decisions.filter(pl.col("label_id").is_not_null())["label_id"]) == sorted(queue["label_id"])
    assert "added" not in decisions["decision"].to_list()
    truth = pl.read_parquet(data / "ground_truth" / "labels.parquet")
    queued = filtered.filter(pl.col("label_id").is_in(queue["label_id"].implode()))
    correct = dict(label_correctness(queued, truth).select("label_id", "correct").iter_rows())
    for label_id, decision in decisions.select("label_id", "decision").iter_rows():
        assert (
            decision == "accepted"
            if correct[label_id] in (True, None)
            else decision in ("corrected", "rejected")
        )
    verdicts = pl.read_parquet(data / "review" / "verdicts" / "0.parquet")
    assert verdicts.height == decisions.filter(pl.col("decision") != "rejected").height
    assert (
        verdicts["source"].str.starts_with("human-audit@").all() and (verdicts["status"] == "audited").all()
    )
    read_back = _metadata(results[(READ_VERDICTS_JOB, "0")], "review/verdicts")
    assert read_back["queued"] == review.budget
    # iteration 1 holds every verdict, none of the labels they replaced or rejected
    iteration_1 = pl.read_parquet(data / "merge" / "labels" / "iteration-1" / "*.parquet")
    assert verdicts.join(iteration_1, on="label_id", how="anti").height == 0
    gone = decisions.filter(pl.col("decision").is_in(["corrected", "rejected"]))["label_id"]
    assert not iteration_1["label_id"].is_in(gone.implode()).any()
    audit_quarantine = pl.read_parquet(data / "merge" / "quarantine" / "iteration-1" / "*.parquet").filter(
        pl.col("phase") == "audit"
    )
    assert sorted(audit_quarantine["label_id"]) == sorted(gone)
