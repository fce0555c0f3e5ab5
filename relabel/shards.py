"""Deterministic assignment of images to shards.

It depends only on the image's content hash, so the same image lands in the same shard on
every machine and in every iteration, whichever source it came from. (The evaluation split is
drawn over all images at once: ``relabel.evaluation_split``.)
"""

from __future__ import annotations

import polars as pl


def shard_keys(count: int) -> list[str]:
    """The partition keys of ``count`` shards: ``shard-00``, ``shard-01``, ..."""
    width = max(2, len(str(count - 1)))
    return [f"shard-{index:0{width}d}" for index in range(count)]


def shard_of(image_id: str, count: int) -> str:
    """The shard key of one image."""
    return shard_keys(count)[_bucket(image_id, 0) % count]


def in_shard(frame: pl.DataFrame, shard: str, count: int) -> pl.DataFrame:
    """The rows of ``frame`` (with an ``image_id`` column) that belong to ``shard``."""
    keys = shard_keys(count)
    buckets = frame["image_id"].str.slice(0, 8).str.to_integer(base=16)
    return frame.filter((buckets % count) == keys.index(shard))


def _bucket(image_id: str, offset: int) -> int:
    return int(image_id[offset : offset + 8], 16)
