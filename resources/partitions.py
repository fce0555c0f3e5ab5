"""The partitions of the data engine: shards, iterations, and iteration x shard.

Images live in shards (a static partition each, ``relabel.shards``); what is learnt and
relabelled lives in iterations (a dynamic partition: "0", "1", ...; a new one is added by the
CLI, the schedule, the sensor or from the UI). Every asset of an iteration that works shard by
shard is partitioned by both, so the UI shows each iteration's labels, filters, gates, corpus
and re-annotation per shard, and any (iteration, shard) can be re-materialized alone.
"""

import warnings

from dagster import (
    AutomationCondition,
    BetaWarning,
    DynamicPartitionsDefinition,
    MultiPartitionsDefinition,
    MultiToSingleDimensionPartitionMapping,
    PartitionsDefinition,
)

# the mapping between an iteration x shard asset and a shard or iteration asset is a Dagster
# beta; it is what lets one graph hold both, so the warning is known and accepted
warnings.filterwarnings(
    "ignore", message="Class `MultiToSingleDimensionPartitionMapping`", category=BetaWarning
)

ITERATION, SHARD = "iteration", "shard"
ITERATIONS = DynamicPartitionsDefinition(name=ITERATION)
# an (iteration, shard) asset reads the shard of a shard asset, or feeds every shard of an
# iteration to an iteration asset
SAME_SHARD = MultiToSingleDimensionPartitionMapping(partition_dimension_name=SHARD)
SAME_ITERATION = MultiToSingleDimensionPartitionMapping(partition_dimension_name=ITERATION)


# the assets of an iteration after its merge follow by themselves once what they read is
# there (the Dagster daemon evaluates this: `make ui` runs one); starting an iteration is the
# merge, a deliberate act (relabel iterate, the schedule, the sensor, or the UI)
FOLLOWS_INPUTS = AutomationCondition.eager()


def iteration_shards(shards: PartitionsDefinition) -> MultiPartitionsDefinition:
    """Iteration x shard; keys read ``"<iteration>|<shard>"``."""
    return MultiPartitionsDefinition({ITERATION: ITERATIONS, SHARD: shards})


def iteration_number(key: str) -> int:
    """The iteration a partition key names: "0", "1", ... (a key added in the UI must be one)."""
    if not key.isdigit():
        raise ValueError(f"iteration partition keys are 0, 1, 2, ...; got {key!r}")
    return int(key)


def split_key(key: str) -> tuple[str, str]:
    """(iteration, shard) of an iteration x shard partition key."""
    iteration, shard = str(key).split("|")
    iteration_number(iteration)
    return iteration, shard


def iteration_shard_key(iteration: str, shard: str) -> str:
    return f"{iteration}|{shard}"
