"""Fixtures of the asset tests: hand-made shards that start at the filter phase."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relabel.labels import frame
from relabel.shards import shard_of


def image_ids_of(shard: str, count: int, n: int = 2) -> list[str]:
    """``n`` content-hash-like ids that fall in ``shard``."""
    found, i = [], 0
    while len(found) < n:
        candidate = f"{i:08x}" + "ab" * 28
        if shard_of(candidate, count) == shard:
            found.append(candidate)
        i += 1
    return found


def write_shard(root: Path, shard: str, *, kites_score: float) -> None:
    """A shard of two images (one of the training split, one of the eval split): a ball, a
    cat and three kites (the rare class) on each, found by the consensus with ``kites_score``,
    plus a human caption."""
    data = root / "data"
    images = image_ids_of(shard, 2)
    frame("images", [{"image_id": i, "uri": f"world/images/{i[:8]}.png", "width": 100, "height": 80, "dataset": "world", "split": split} for i, split in zip(images, ("train", "eval"), strict=True)]).write_parquet(
        _path(data / "ingest" / "images" / f"{shard}.parquet")
    )
    rows = []
    for image in images:
        rows.append({"label_id": f"{image[:8]}-cap", "image_id": image, "annotation_type": "text", "task": "brief_caption", "text": "A red ball next to a cat.", "score": 1.0, "source": "human", "iteration": 0, "status": "raw"})
        for n, (category, box, score) in enumerate(
            [("ball", [5.0, 5.0, 30.0, 30.0], 0.9), ("cat", [40.0, 5.0, 70.0, 40.0], 0.8)]
            + [("kite", [10.0 + 25 * k, 50.0, 30.0 + 25 * k, 75.0], kites_score) for k in range(3)]
        ):
            rows.append({"label_id": f"{image[:8]}-{n}", "image_id": image, "annotation_type": "region_text", "task": "object", "region_kind": "object", "category": category, "text": category, "box": box, "score": score, "source": "consensus@1", "iteration": 0, "status": "raw", "agreement": 1})
    frame("labels", rows).write_parquet(_path(data / "annotate" / "initial_annotations" / f"{shard}.parquet"))


def _path(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def hand_made_shards(tiny_project: Path) -> Path:
    """The tiny project with hand-made initial annotations: shard-00 is sound, shard-01's rare
    class (kite) has only low-confidence labels, which the filters drop, so it collapses."""
    ontology = {"categories": [{"id": i, "name": name} for i, name in enumerate(("ball", "cat", "kite"), 1)]}
    _path(tiny_project / "data" / "world" / "ontology.json").write_text(json.dumps(ontology))
    write_shard(tiny_project, "shard-00", kites_score=0.9)
    write_shard(tiny_project, "shard-01", kites_score=0.05)
    return tiny_project
