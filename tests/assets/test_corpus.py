"""The corpus phase through Dagster: gated, filtered training labels become Florence-2 examples."""

from __future__ import annotations

import polars as pl
from dagster import materialize

from models.corpus import CORPUS_SCHEMA
from models.tasks import CAPTION, OD, REGION_TO_CATEGORY
from pipelines.definitions import build_definitions
from pipelines.phases import CORPUS_SHARDS_JOB, FILTER_SHARDS_JOB, MERGE_SHARDS_JOB


def test_the_corpus_holds_training_images_only_and_refuses_a_blocked_shard(hand_made_shards, instance):
    defs = build_definitions(str(hand_made_shards))
    jobs = {job.name: job for job in defs.jobs}
    everything = [*defs.assets, *defs.asset_checks]

    instance.add_dynamic_partitions("iteration", ["0"])

    def run(job: str, shard: str):
        return materialize(
            everything,
            selection=jobs[job].selection,
            partition_key=f"0|{shard}",
            resources=defs.resources,
            instance=instance,
            raise_on_error=False,
        )

    assert run(MERGE_SHARDS_JOB, "shard-00").success and run(MERGE_SHARDS_JOB, "shard-01").success
    assert run(FILTER_SHARDS_JOB, "shard-00").success
    assert not run(FILTER_SHARDS_JOB, "shard-01").success  # its rare class collapsed: gate failed

    written = run(CORPUS_SHARDS_JOB, "shard-00")
    assert written.success
    examples = pl.read_parquet(
        hand_made_shards / "data" / "corpus" / "examples" / "iteration-0" / "shard-00.parquet"
    )
    assert examples.schema == CORPUS_SCHEMA
    images = pl.read_parquet(hand_made_shards / "data" / "ingest" / "images" / "shard-00.parquet")
    train_image = images.filter(pl.col("split") == "train")["image_id"].to_list()
    assert examples["image_id"].unique().to_list() == train_image  # the eval image never enters
    by_task = dict(examples.group_by("task").len().iter_rows())
    assert by_task[CAPTION] == 1 and by_task[OD] == 1 and by_task[REGION_TO_CATEGORY] == 5
    od = examples.filter(pl.col("task") == OD).row(0, named=True)
    assert od["target"].startswith("ball<loc_") and od["target"].count("kite<loc_") == 3
    assert examples["image_path"].str.starts_with("world/images/").all()  # relative: same bytes anywhere

    refused = run(CORPUS_SHARDS_JOB, "shard-01")
    assert not refused.success
    failure = next(event for event in refused.all_events if event.is_step_failure)
    assert "blocked by its failed gates" in str(failure.event_specific_data.error)
