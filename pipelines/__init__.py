"""Dagster wiring: Definitions, partitions, resources and the shard IO manager."""
