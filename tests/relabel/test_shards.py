import hashlib

import polars as pl

from relabel.shards import in_shard, shard_keys, shard_of

IMAGE_IDS = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(2000)]


def test_shard_keys_are_sorted_and_zero_padded():
    assert shard_keys(3) == ["shard-00", "shard-01", "shard-02"]
    assert shard_keys(120)[-1] == "shard-119"


def test_every_image_lands_in_exactly_one_shard_and_shards_are_balanced():
    images = pl.DataFrame({"image_id": IMAGE_IDS})
    parts = [in_shard(images, key, 4) for key in shard_keys(4)]
    assert sum(len(p) for p in parts) == len(IMAGE_IDS)
    assert all(400 < len(p) < 600 for p in parts)
    for key, part in zip(shard_keys(4), parts, strict=True):
        assert {shard_of(i, 4) for i in part["image_id"]} == {key}
