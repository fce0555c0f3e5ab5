"""The shard-partitioned parquet IO manager: stores each asset partition as one parquet file,
checks it against the label-store schema on the way in and out, and versions it with DVC.

Layout: ``<data_dir>/<phase>/<asset>/<shard>.parquet`` for shard assets,
``<data_dir>/<phase>/<asset>/iteration-<k>/<shard>.parquet`` for iteration x shard assets and
``<data_dir>/<phase>/<asset>.parquet`` otherwise, where ``<phase>`` is the asset key's prefix
and also the name of the DVC stage in ``dvc.yaml`` whose output holds the file.

Reading a gated asset (``data_checks.shards.GATES``) honours its gates across runs: a shard
whose latest gate failed is never handed to a consumer.
"""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
from dagster import AssetKey, ConfigurableIOManager, Failure, InputContext, MetadataValue, OutputContext

from assets.partitions import split_key
from data_checks.shards import GATES, blocked_shards
from pipelines.resources import DvcResource, ProjectResource
from relabel.labels import check_schema

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


def partition_path(data_dir: Path, asset: AssetKey, partition: str | None) -> Path:
    """Where the IO manager keeps ``asset``'s ``partition`` (see the module's layout); also
    how an iteration reads the previous iteration's files, which no asset dependency can name
    (a dynamic partition cannot depend on an earlier one of itself)."""
    base = Path(data_dir, *asset.path)
    if partition is None:
        return base.with_suffix(".parquet")
    if "|" in str(partition):
        iteration, shard = split_key(partition)
        return base / f"iteration-{iteration}" / f"{shard}.parquet"
    return base / f"{partition}.parquet"
