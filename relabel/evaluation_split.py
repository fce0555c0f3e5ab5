"""The evaluation split: drawn stratified by category, near-duplicates kept together, frozen after audit.

Evaluation is only ever against a frozen, human-audited split that training never sees. This
module holds the plain functions behind that promise:

``perceptual_hash`` / ``hash_distances`` / ``near_duplicate_groups``
    A 64-bit DCT perceptual hash (``imagehash.phash``) per image, and groups of images within
    a Hamming distance of each other. A resized or re-compressed copy of a picture has a
    different content hash but lands within a few bits of the original, so the split is
    drawn over groups: a copy can never sit in training while its original is evaluated.
``draw_split``
    The split itself, drawn once over every catalogued image (``relabel.ingest.catalog``):
    rarest categories first, each gets its share of groups (at least one where it has two or
    more), then the rest is filled to the overall fraction. Images of a frozen split stay in
    it, with their near-duplicates, whatever new data arrives.
``split_manifest`` / ``manifest_digest`` / ``manifest_changes``
    What a freeze pins: the SHA-256 of every image file (recomputed from the bytes) and of
    every image's audited labels, so a change of any byte shows.
``leaks``
    Training candidates that are a split image or a near-duplicate of one.
``read_freeze`` / ``freeze`` / ``unfreeze``
    The freeze record beside the manifest; unfreezing is explicit and logged with who and why.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from relabel.files import hash_file, path_of_uri

TRAIN, EVAL = "train", "eval"
FREEZE_FILE = "freeze.json"
FREEZE_LOG = "freeze_log.jsonl"
MANIFEST_FILE = "manifest.parquet"
LABELS_FILE = "labels.parquet"

MANIFEST_SCHEMA = pl.Schema(
    {
        "image_id": pl.String,
        "uri": pl.String,
        "sha256": pl.String,  # of the file's bytes as they are now (the image id is what ingest saw)
        "phash": pl.String,
        "labels": pl.Int64,
        "labels_sha256": pl.String,
    }
)

LEAKS_SCHEMA = pl.Schema(
    {"image_id": pl.String, "split_image_id": pl.String, "kind": pl.String, "distance": pl.Int64}
)

CHANGES_SCHEMA = pl.Schema({"image_id": pl.String, "change": pl.String, "detail": pl.String})


# ------------------------------------------------------------------ perceptual hashing


def perceptual_hash(path: Path) -> str | None:
    """The 64-bit perceptual hash of an image file as 16 hex digits; None if it cannot be decoded
    (ingest quarantines such files with the reason, so the split need not)."""
    import imagehash
    from PIL import Image

    try:
        with Image.open(path) as image:
            return str(imagehash.phash(image))
    except (OSError, ValueError, SyntaxError):
        return None


def hash_distances(a: Sequence[str], b: Sequence[str]) -> np.ndarray:
    """Hamming distances between two lists of hex perceptual hashes, ``len(a) x len(b)``."""
    left = np.array([int(h, 16) for h in a], dtype=np.uint64)
    right = np.array([int(h, 16) for h in b], dtype=np.uint64)
    return np.bitwise_count(left[:, None] ^ right[None, :]).astype(np.int64)


def near_duplicate_groups(
    image_ids: Sequence[str], hashes: Sequence[str | None], max_distance: int
) -> list[str]:
    """The group of each image: the smallest image id among those it is linked to through
    hashes within ``max_distance`` bits (transitively). An image without a hash is alone."""
    parent = list(range(len(image_ids)))

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    hashed = [index for index, value in enumerate(hashes) if value is not None]
    if hashed:
        close = hash_distances([hashes[i] for i in hashed], [hashes[i] for i in hashed]) <= max_distance
        for a, b in zip(*np.nonzero(np.triu(close, 1)), strict=True):
            parent[root(hashed[a])] = root(hashed[b])
    members: dict[int, list[str]] = {}
    for index, image_id in enumerate(image_ids):
        members.setdefault(root(index), []).append(image_id)
    name = {group: min(ids) for group, ids in members.items()}
    return [name[root(index)] for index in range(len(image_ids))]


# ------------------------------------------------------------------ drawing the split


def category_targets(counts: Mapping[str, int], fraction: float) -> dict[str, int]:
    """How many groups of each category the split should hold: its share, and at least one
    for a category with two groups or more (so a rare class is evaluated and still trained on)."""
    if fraction <= 0:
        return {category: 0 for category in counts}
    return {category: max(1, round(fraction * n)) if n >= 2 else 0 for category, n in counts.items()}


def stratified_groups(group_categories: Mapping[str, Collection[str]], fraction: float) -> set[str]:
    """The groups drawn into the split, ``fraction`` of them (rounded), stratified by category.

    Categories are served rarest first, each up to its target (``category_targets``), so a
    rare class is in the split before a common one takes the room; among a category's groups
    the one that serves most categories still under target is taken (ties: id order, a fixed
    pseudo-random order since ids are content hashes). The split never exceeds its share:
    when it is full, the categories not yet served are not in it. What room is left after
    every category is filled in id order.
    """
    total = math.floor(fraction * len(group_categories) + 0.5)
    counts: dict[str, int] = {}
    for categories in group_categories.values():
        for category in set(categories):
            counts[category] = counts.get(category, 0) + 1
    targets = category_targets(counts, fraction)
    have = dict.fromkeys(counts, 0)
    chosen: set[str] = set()
    ordered = sorted(group_categories)
    for category in sorted(counts, key=lambda c: (counts[c], c)):
        while have[category] < targets[category] and len(chosen) < total:
            candidates = [
                group for group in ordered if group not in chosen and category in group_categories[group]
            ]
            best = max(
                candidates, key=lambda group: sum(have[c] < targets[c] for c in set(group_categories[group]))
            )
            chosen.add(best)
            for served in set(group_categories[best]):
                have[served] += 1
    for group in ordered:
        if len(chosen) >= total:
            break
        chosen.add(group)
    return chosen


def draw_split(
    image_ids: Sequence[str],
    hashes: Sequence[str | None],
    categories: Mapping[str, Collection[str]],
    fraction: float,
    max_distance: int,
    frozen: pl.DataFrame | None = None,
) -> dict[str, str]:
    """``train`` or ``eval`` for every image id (duplicates of an id allowed).

    ``categories`` maps an image id to the categories of its labels (an image without labels
    may be missing). ``frozen`` is a frozen split's manifest (``image_id``, ``phash``): then
    the split is its images and any image within ``max_distance`` bits of one, and nothing else.
    """
    distinct: dict[str, str | None] = {}
    for image_id, value in zip(image_ids, hashes, strict=True):
        distinct.setdefault(image_id, value)
    ids, values = list(distinct), list(distinct.values())
    groups = near_duplicate_groups(ids, values, max_distance)
    group_categories: dict[str, set[str]] = {group: set() for group in groups}
    for image_id, group in zip(ids, groups, strict=True):
        group_categories[group].update(categories.get(image_id, ()))
    forced: set[str] = set()
    if frozen is not None:
        in_split = set(frozen["image_id"].to_list())
        forced = {group for image_id, group in zip(ids, groups, strict=True) if image_id in in_split}
        copies = leaks(
            pl.DataFrame(
                {"image_id": ids, "phash": values}, schema={"image_id": pl.String, "phash": pl.String}
            ),
            frozen,
            max_distance,
        )
        group_of = dict(zip(ids, groups, strict=True))
        forced |= {group_of[image_id] for image_id in copies["image_id"].to_list()}
    # a frozen split takes no new image: new data goes to training (near-duplicates aside)
    chosen = forced if frozen is not None else stratified_groups(group_categories, fraction)
    return {image_id: EVAL if group in chosen else TRAIN for image_id, group in zip(ids, groups, strict=True)}


def leaks(candidates: pl.DataFrame, split: pl.DataFrame, max_distance: int) -> pl.DataFrame:
    """The ``candidates`` (``image_id``, ``phash``) that are a ``split`` image (same content
    hash) or a near-duplicate of one (perceptual hash within ``max_distance`` bits), each
    with the split image it matches (``LEAKS_SCHEMA``)."""
    rows: list[dict[str, Any]] = []
    in_split = set(split["image_id"].to_list())
    for image_id in candidates["image_id"].unique(maintain_order=True).to_list():
        if image_id in in_split:
            rows.append(
                {"image_id": image_id, "split_image_id": image_id, "kind": "same_content", "distance": 0}
            )
    hashed = candidates.filter(
        pl.col("phash").is_not_null(), ~pl.col("image_id").is_in(list(in_split))
    ).unique("image_id", maintain_order=True)
    split_hashed = split.filter(pl.col("phash").is_not_null())
    if hashed.height and split_hashed.height:
        distances = hash_distances(hashed["phash"].to_list(), split_hashed["phash"].to_list())
        nearest = distances.argmin(axis=1)
        for row, image_id in enumerate(hashed["image_id"].to_list()):
            distance = int(distances[row, nearest[row]])
            if distance <= max_distance:
                rows.append(
                    {
                        "image_id": image_id,
                        "split_image_id": split_hashed["image_id"][int(nearest[row])],
                        "kind": "near_duplicate",
                        "distance": distance,
                    }
                )
    return pl.DataFrame(rows, schema=LEAKS_SCHEMA)


# ------------------------------------------------------------------ what a freeze pins


def labels_digest(labels: pl.DataFrame) -> str:
    """SHA-256 of label rows in a canonical form (rows by ``label_id``, keys sorted)."""
    rows = labels.sort("label_id").to_dicts()
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()


def split_manifest(images: pl.DataFrame, labels: pl.DataFrame, data_dir: Path) -> pl.DataFrame:
    """One row per split image (``images``: ``image_id``, ``uri``) with the SHA-256 of its file's
    bytes as they are on disk now, its perceptual hash, and the number and digest of its
    audited ``labels`` (``MANIFEST_SCHEMA``, ordered by image id)."""
    rows = []
    for image_id, uri in images.select("image_id", "uri").sort("image_id").iter_rows():
        path = path_of_uri(uri, data_dir)
        rows.append(
            {
                "image_id": image_id,
                "uri": uri,
                "sha256": hash_file(path) if path.is_file() else None,
                "phash": perceptual_hash(path) if path.is_file() else None,
            }
        )
    return with_labels(
        pl.DataFrame(
            rows, schema={name: MANIFEST_SCHEMA[name] for name in ("image_id", "uri", "sha256", "phash")}
        ),
        labels,
    )


def with_labels(manifest: pl.DataFrame, labels: pl.DataFrame) -> pl.DataFrame:
    """``manifest`` with the number and digest of each image's ``labels`` (re)computed: the same
    images compared against other labels without hashing their files again."""
    counts, digests = [], []
    for image_id in manifest["image_id"].to_list():
        own = labels.filter(pl.col("image_id") == image_id)
        counts.append(own.height)
        digests.append(labels_digest(own))
    return manifest.with_columns(
        labels=pl.Series(counts, dtype=pl.Int64), labels_sha256=pl.Series(digests, dtype=pl.String)
    ).select(list(MANIFEST_SCHEMA))


def manifest_digest(manifest: pl.DataFrame) -> str:
    """One SHA-256 over the whole manifest: equal digests, byte-identical split and labels."""
    rows = manifest.select(list(MANIFEST_SCHEMA)).sort("image_id").to_dicts()
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def manifest_changes(frozen: pl.DataFrame, current: pl.DataFrame) -> pl.DataFrame:
    """Every difference between a frozen manifest and the one computed now (``CHANGES_SCHEMA``):
    an image that left or joined the split, a file whose bytes changed, labels that changed."""
    rows: list[dict[str, str]] = []
    before = {row["image_id"]: row for row in frozen.iter_rows(named=True)}
    after = {row["image_id"]: row for row in current.iter_rows(named=True)}
    for image_id in sorted(before.keys() - after.keys()):
        rows.append({"image_id": image_id, "change": "image_left_split", "detail": before[image_id]["uri"]})
    for image_id in sorted(after.keys() - before.keys()):
        rows.append({"image_id": image_id, "change": "image_joined_split", "detail": after[image_id]["uri"]})
    for image_id in sorted(before.keys() & after.keys()):
        old, new = before[image_id], after[image_id]
        if old["sha256"] != new["sha256"]:
            rows.append(
                {
                    "image_id": image_id,
                    "change": "image_bytes_changed",
                    "detail": f"{old['uri']}: sha256 {old['sha256']} -> {new['sha256']}",
                }
            )
        if old["labels_sha256"] != new["labels_sha256"]:
            rows.append(
                {
                    "image_id": image_id,
                    "change": "labels_changed",
                    "detail": (
                        f"{old['labels']} -> {new['labels']} audited labels, digest "
                        f"{old['labels_sha256'][:12]} -> {new['labels_sha256'][:12]}"
                    ),
                }
            )
    return pl.DataFrame(rows, schema=CHANGES_SCHEMA)


# ------------------------------------------------------------------ freezing and unfreezing


def frozen_manifest(folder: Path) -> pl.DataFrame | None:
    """The manifest of the split frozen in ``folder``, or None when it is not frozen."""
    return pl.read_parquet(folder / MANIFEST_FILE) if read_freeze(folder) is not None else None


def read_freeze(folder: Path) -> dict[str, Any] | None:
    """The freeze record in ``folder``, or None when the split is not frozen."""
    path = folder / FREEZE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def freeze(
    folder: Path, manifest: pl.DataFrame, *, by: str, reason: str, auditors: Collection[str]
) -> dict[str, Any]:
    """Write ``manifest`` and its freeze record into ``folder`` (and log it); return the record."""
    record = {
        "digest": manifest_digest(manifest),
        "images": manifest.height,
        "labels": int(manifest["labels"].sum()),
        "auditors": sorted(auditors),
        "frozen_by": by,
        "reason": reason,
        "frozen_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    folder.mkdir(parents=True, exist_ok=True)
    manifest.write_parquet(folder / MANIFEST_FILE)
    (folder / FREEZE_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    _log(folder, {"action": "freeze", **record})
    return record


def unfreeze(folder: Path, *, by: str, reason: str) -> dict[str, Any]:
    """Lift the freeze in ``folder``, logging who and why; the next freeze pins the split anew.

    Raises ``ValueError`` when the split is not frozen or ``by`` / ``reason`` is empty.
    """
    if not by.strip() or not reason.strip():
        raise ValueError("unfreezing the evaluation split needs who (--by) and why (--reason)")
    record = read_freeze(folder)
    if record is None:
        raise ValueError(f"the evaluation split in {folder} is not frozen")
    entry = {
        "action": "unfreeze",
        "by": by,
        "reason": reason,
        "digest": record["digest"],
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    _log(folder, entry)
    (folder / FREEZE_FILE).unlink()
    return entry


def freeze_history(folder: Path) -> list[dict[str, Any]]:
    """Every freeze and unfreeze of the split in ``folder``, oldest first."""
    path = folder / FREEZE_LOG
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    )


def _log(folder: Path, entry: Mapping[str, Any]) -> None:
    with open(folder / FREEZE_LOG, "a") as handle:
        handle.write(json.dumps(entry, sort_keys=True) + "\n")
