"""How iterations start without the CLI: the schedule, the new-shards sensor, and the eager
conditions that carry an iteration on once its merge is there."""

from __future__ import annotations

import pytest
from dagster import (
    AssetKey,
    AssetMaterialization,
    SensorResult,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
    evaluate_automation_conditions,
    instance_for_test,
)

from pipelines.automation import next_iteration
from pipelines.definitions import build_definitions

SHARDS = ["shard-00", "shard-01"]
REANNOTATION = AssetKey(["refine", "reannotation"])
AUDIT_VERDICTS = AssetKey(["review", "verdicts"])
INITIAL_ANNOTATIONS = AssetKey(["annotate", "initial_annotations"])


@pytest.fixture
def instance(tmp_path):
    """A persistent instance (schedules and sensors need one they can refer to)."""
    with instance_for_test(temp_dir=str(tmp_path)) as persistent:
        yield persistent


def _materialized(instance, key: AssetKey, partition: str) -> None:
    instance.report_runless_asset_event(AssetMaterialization(asset_key=key, partition=partition))


def test_the_next_iteration_waits_for_the_newest_to_reannotate_every_shard_and_its_audit(instance):
    assert next_iteration(instance, SHARDS) == "0"
    instance.add_dynamic_partitions("iteration", ["0"])
    _materialized(instance, REANNOTATION, "0|shard-00")
    waiting = next_iteration(instance, SHARDS)
    assert isinstance(waiting, SkipReason) and "['shard-01']" in waiting.skip_message
    _materialized(instance, REANNOTATION, "0|shard-01")
    waiting = next_iteration(instance, SHARDS)
    assert isinstance(waiting, SkipReason) and "review queue has no verdicts" in waiting.skip_message
    _materialized(instance, AUDIT_VERDICTS, "0")
    assert next_iteration(instance, SHARDS) == "1"


def test_the_schedule_adds_the_iteration_and_merges_every_shard(tiny_project, instance):
    defs = build_definitions(str(tiny_project))
    schedule = defs.resolve_schedule_def("next_iteration_schedule")
    assert schedule.cron_schedule == "0 3 * * 1"  # refine.schedule
    requests = schedule(build_schedule_context(instance=instance))
    assert [r.partition_key for r in requests] == ["0|shard-00", "0|shard-01"]
    assert {r.job_name for r in requests} == {"merge_shards"}
    assert instance.get_dynamic_partitions("iteration") == ["0"]
    # iteration 0 has not re-annotated anything: no new iteration
    assert schedule(build_schedule_context(instance=instance)).skip_message.startswith("iteration 0 has not")


def test_new_shards_start_an_iteration_once(tiny_project, instance):
    defs = build_definitions(str(tiny_project))
    sensor = defs.resolve_sensor_def("new_shards_sensor")
    assert sensor(build_sensor_context(instance=instance)).skip_message == "no shard has been annotated yet"
    _materialized(instance, INITIAL_ANNOTATIONS, "shard-00")
    started = sensor(build_sensor_context(instance=instance))
    assert isinstance(started, SensorResult)
    assert [r.partition_key for r in started.run_requests] == ["0|shard-00", "0|shard-01"]
    assert started.dynamic_partitions_requests[0].partition_keys == ["0"]
    # the same shards again: nothing new
    again = sensor(build_sensor_context(instance=instance, cursor=started.cursor))
    assert "no new shard" in again.skip_message


def test_an_iterations_assets_follow_its_merge_by_themselves(tiny_project, instance):
    defs = build_definitions(str(tiny_project))
    instance.add_dynamic_partitions("iteration", ["0"])
    # the shards' inputs, then the merge of shard-00 for iteration 0
    for shard in SHARDS:
        _materialized(instance, AssetKey(["ingest", "images"]), shard)
        _materialized(instance, INITIAL_ANNOTATIONS, shard)
    before = evaluate_automation_conditions(defs=defs, instance=instance)
    _materialized(instance, AssetKey(["merge", "labels"]), "0|shard-00")
    result = evaluate_automation_conditions(defs=defs, instance=instance, cursor=before.cursor)
    requested = {
        (key.to_user_string(), partition)
        for key in defs.resolve_asset_graph().get_all_asset_keys()
        for partition in result.get_requested_partitions(key)
    }
    assert ("filter/text_parses", "0|shard-00") in requested
    # nothing of shard-01 (its merge is not there) and no model (its corpus is not there)
    assert not any(partition == "0|shard-01" for _, partition in requested)
    assert not any(key == "model/florence2" for key, _ in requested)
