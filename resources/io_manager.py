"""The shard-partitioned parquet IO manager: stores each asset partition as one parquet file,
checks it against the label-store schema on the way in and out, and versions it with DVC.

Where each partition goes is ``resources.layout.partition_path``. Reading a gated asset
(``resources.layout.GATES``) honours its gates across runs: a shard whose latest gate failed
is never handed to a consumer.
"""

from __future__ import annotations

import os

import polars as pl
from dagster import (
    AssetCheckKey,
    AssetKey,
    ConfigurableIOManager,
    DagsterInstance,
    Failure,
    InputContext,
    MetadataValue,
    OutputContext,
)

from relabel.labels import check_schema
from resources.layout import GATES, partition_path
from resources.partitions import split_key
from resources.services import DvcResource, ProjectResource

# asset metadata key naming the label-store table ("images", "labels", "quarantine") that an
# asset's frames belong to; frames of such assets are schema-checked on write and read
TABLE_METADATA_KEY = "relabel/table"


class ShardParquetIOManager(ConfigurableIOManager):
    """Parquet per shard partition, schema-checked, committed to DVC after every write."""

    project: ProjectResource
    dvc: DvcResource

    def handle_output(self, context: OutputContext, obj: pl.DataFrame) -> None:
        table = context.definition_metadata.get(TABLE_METADATA_KEY)
        if table:
            check_schema(obj, table)
        path = partition_path(
            self.project.data_dir,
            context.asset_key,
            context.partition_key if context.has_partition_key else None,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        # write beside and rename, so a failed write never leaves a half-written shard
        partial = path.with_suffix(".parquet.partial")
        obj.write_parquet(partial, compression="zstd", statistics=True)
        os.replace(partial, path)
        version = self.dvc.commit(stage=context.asset_key.path[0], written=path)
        context.add_output_metadata(
            {
                "rows": len(obj),
                "path": MetadataValue.path(str(path)),
                "dvc_md5": version.md5,
                "dvc_stage": version.stage,
                "dvc_stage_hash": version.stage_hash or "(committed by dvc repro)",
                "preview": MetadataValue.md(f"```\n{obj.head(5)}\n```"),
            }
        )

    def load_input(self, context: InputContext) -> pl.DataFrame:
        upstream = context.upstream_output
        key_path = upstream.asset_key.path if upstream else context.asset_key.path
        if context.has_asset_partitions:
            keys = self._unblocked(context, AssetKey(key_path), context.asset_partition_keys)
            frames = [
                pl.read_parquet(partition_path(self.project.data_dir, AssetKey(key_path), key))
                for key in keys
            ]
            loaded = pl.concat(frames, how="vertical") if frames else pl.DataFrame()
        else:
            loaded = pl.read_parquet(partition_path(self.project.data_dir, AssetKey(key_path), None))
        table = upstream.definition_metadata.get(TABLE_METADATA_KEY) if upstream else None
        return check_schema(loaded, table) if table else loaded

    def _unblocked(self, context: InputContext, asset: AssetKey, keys: list[str]) -> list[str]:
        """The shards of ``keys`` whose gates passed. A consumer of one shard whose gate failed
        (in any run) fails with the reason; a consumer of many shards reads the others."""
        if asset not in GATES:
            return keys
        blocked = blocked_shards(context.instance, asset, this_run=context.step_context.run_id)
        refused = {key: blocked[key] for key in keys if key in blocked}
        if refused and len(keys) == 1:
            raise Failure(
                f"{asset.to_user_string()} {keys[0]} is blocked by its failed gates {refused[keys[0]]}"
            )
        if refused:
            context.log.warning(
                f"leaving out shards of {asset.to_user_string()} blocked by their gates: {refused}"
            )
        return [key for key in keys if key not in refused]


def blocked_shards(
    instance: DagsterInstance, asset: AssetKey, this_run: str | None = None
) -> dict[str, list[str]]:
    """The shards of ``asset`` whose latest gate evaluation failed, with the failed gates: what
    a consumer in a later run must not read. Failures in ``this_run`` are left to Dagster: in
    the run of a gate, the blocking check itself stops what is downstream, while the asset's
    other gates still read it and report."""
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

    keys = [AssetCheckKey(asset, name) for name in GATES[asset]]
    blocked: dict[str, list[str]] = {}
    for info in instance.event_log_storage.get_asset_check_partition_info(keys):
        if (
            info.partition_key is not None
            and info.latest_execution_status == AssetCheckExecutionRecordStatus.FAILED
            and info.latest_planned_run_id != this_run
        ):
            blocked.setdefault(info.partition_key, []).append(info.check_key.name)
    return blocked


def blocked_in_iteration(instance: DagsterInstance, asset: AssetKey, iteration: str) -> dict[str, list[str]]:
    """The shards of ``iteration`` whose latest gates on the iteration x shard ``asset``
    failed, with the failed gates (``blocked_shards``, for one iteration)."""
    return {
        shard: checks
        for key, checks in blocked_shards(instance, asset).items()
        for key_iteration, shard in [split_key(key)]
        if key_iteration == iteration
    }
