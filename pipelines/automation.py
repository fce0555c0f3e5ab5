"""How a new iteration starts without the command line: on a schedule, or when new shards
arrive (a sensor); from the UI, by adding an iteration partition and materializing its
``merge/labels``. Either way the start is the merge of every shard of the new iteration; the
rest of the iteration follows by itself (the iteration's assets carry an eager automation
condition, which the Dagster daemon evaluates: ``make ui`` runs one).
"""

from __future__ import annotations

from dataclasses import dataclass

from dagster import (
    DagsterInstance,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    PartitionsDefinition,
    RunRequest,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    schedule,
    sensor,
)

from pipelines.phases import MERGE_SHARDS_JOB
from resources.layout import INITIAL_ANNOTATIONS, REANNOTATION, REVIEW_VERDICTS
from resources.partitions import ITERATIONS, iteration_shard_key


@dataclass(frozen=True)
class Automation:
    schedules: list
    sensors: list


def next_iteration(instance: DagsterInstance, shards: list[str]) -> str | SkipReason:
    """The iteration to start: "0" when there is none; k+1 when iteration k (the newest) has
    re-annotated every shard and its review queue has its verdicts; otherwise why not."""
    existing = sorted(int(key) for key in instance.get_dynamic_partitions(ITERATIONS.name) if key.isdigit())
    if not existing:
        return "0"
    newest = str(existing[-1])
    done = instance.get_materialized_partitions(REANNOTATION)
    missing = [shard for shard in shards if iteration_shard_key(newest, shard) not in done]
    if missing:
        return SkipReason(f"iteration {newest} has not re-annotated {missing} yet")
    if newest not in instance.get_materialized_partitions(REVIEW_VERDICTS):
        # the next iteration trusts the verdicts: it must not start before a person gave them
        return SkipReason(f"iteration {newest}'s review queue has no verdicts yet (review/verdicts {newest})")
    return str(existing[-1] + 1)


def start_requests(iteration: str, shards: list[str]) -> list[RunRequest]:
    """One merge run per shard of ``iteration``: the start of the iteration."""
    return [
        RunRequest(
            run_key=f"iteration-{iteration}-{shard}",
            job_name=MERGE_SHARDS_JOB,
            partition_key=iteration_shard_key(iteration, shard),
        )
        for shard in shards
    ]


def build_automation(cron: str, shards: PartitionsDefinition) -> Automation:
    """The schedule (``cron``: refine.schedule) and the new-shards sensor, both stopped until
    someone turns them on in the UI."""
    shard_keys = shards.get_partition_keys()

    @schedule(
        name="next_iteration_schedule",
        cron_schedule=cron,
        job_name=MERGE_SHARDS_JOB,
        default_status=DefaultScheduleStatus.STOPPED,
        description=(
            "Start the next refinement iteration (refine.schedule), once the newest "
            "one has re-annotated every shard and its review queue has its verdicts."
        ),
    )
    def next_iteration_schedule(context: ScheduleEvaluationContext):
        iteration = next_iteration(context.instance, shard_keys)
        if isinstance(iteration, SkipReason):
            return iteration
        # a schedule cannot return partition requests: it adds the iteration itself
        context.instance.add_dynamic_partitions(ITERATIONS.name, [iteration])
        return start_requests(iteration, shard_keys)

    @sensor(
        name="new_shards_sensor",
        job_name=MERGE_SHARDS_JOB,
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.STOPPED,
        description=(
            "Start a refinement iteration when shards arrive or change: "
            "a new materialization of a shard's initial annotations."
        ),
    )
    def new_shards_sensor(context: SensorEvaluationContext):
        records = context.instance.fetch_materializations(INITIAL_ANNOTATIONS, limit=1).records
        if not records:
            return SkipReason("no shard has been annotated yet")
        newest = records[0].storage_id
        seen = int(context.cursor) if context.cursor else None
        if seen is not None and newest <= seen:
            return SkipReason("no new shard since the last iteration started")
        iteration = next_iteration(context.instance, shard_keys)
        if isinstance(iteration, SkipReason):
            # the shards stay new: the next tick looks again
            return iteration
        return SensorResult(
            run_requests=start_requests(iteration, shard_keys),
            dynamic_partitions_requests=[ITERATIONS.build_add_request([iteration])],
            cursor=str(newest),
        )

    return Automation(schedules=[next_iteration_schedule], sensors=[new_shards_sensor])
