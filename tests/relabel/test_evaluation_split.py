import io
import json

import numpy as np
import polars as pl
import pytest
from PIL import Image, ImageDraw

from relabel.evaluation_split import (
    EVAL,
    category_targets,
    draw_split,
    freeze,
    freeze_history,
    frozen_manifest,
    leaks,
    manifest_changes,
    manifest_digest,
    near_duplicate_groups,
    perceptual_hash,
    read_freeze,
    split_manifest,
    stratified_groups,
    unfreeze,
)
from relabel.files import hash_file
from relabel.labels import frame


def picture(seed: int, size=(320, 240)) -> Image.Image:
    """A distinct picture: a few coloured shapes on a noisy background."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, (size[1], size[0], 3), dtype=np.uint8) + np.uint8(rng.integers(0, 150))
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = rng.integers(0, size[0] - 60), rng.integers(0, size[1] - 60)
        draw.ellipse(
            [x0, y0, x0 + rng.integers(30, 120), y0 + rng.integers(30, 120)],
            fill=tuple(int(v) for v in rng.integers(0, 255, 3)),
        )
    return image


def resized_jpeg_copy(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").resize((image.width * 3 // 4, image.height * 3 // 4)).save(
        buffer, "JPEG", quality=55
    )
    return buffer.getvalue()


@pytest.fixture
def pictures(tmp_path):
    """Ten distinct PNGs and a resized, re-compressed JPEG copy of the first."""
    paths = []
    for seed in range(10):
        path = tmp_path / f"p{seed}.png"
        picture(seed).save(path)
        paths.append(path)
    copy = tmp_path / "copy-of-p0.jpg"
    copy.write_bytes(resized_jpeg_copy(Image.open(paths[0])))
    return paths, copy


def test_a_resized_recompressed_copy_is_a_near_duplicate_and_distinct_pictures_are_not(pictures):
    paths, copy = pictures
    hashes = [perceptual_hash(p) for p in paths]
    copy_hash = perceptual_hash(copy)
    assert hash_file(copy) != hash_file(paths[0])  # a different file, so a different image id
    ids = [f"id{i}" for i in range(10)] + ["copy"]
    groups = near_duplicate_groups(ids, [*hashes, copy_hash], max_distance=8)
    assert groups[-1] == groups[0] == "copy"  # the group is named by its smallest id
    assert len(set(groups[1:10])) == 9 and groups[0] not in groups[1:10]


def test_a_file_that_does_not_decode_has_no_hash_and_stays_alone(tmp_path, pictures):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    assert perceptual_hash(broken) is None
    assert near_duplicate_groups(["a", "b"], [None, None], 64) == ["a", "b"]


def test_the_split_is_stratified_rare_classes_included():
    # 100 images: "common" on all, "rare" on 3, "once" on 1 image
    ids = [f"{i:064x}" for i in range(100)]
    categories = {image_id: {"common"} for image_id in ids}
    for image_id in ids[40:43]:
        categories[image_id].add("rare")
    categories[ids[90]].add("once")
    split = draw_split(ids, [None] * 100, categories, 0.1, 8)
    held = [i for i in ids if split[i] == EVAL]
    assert len(held) == 10
    assert sum("rare" in categories[i] for i in held) == 1  # its share rounds to 0; at least one
    # a class on one image only cannot be both evaluated and trained on: it is not forced in
    assert category_targets({"once": 1, "rare": 3, "common": 100}, 0.1) == {
        "once": 0,
        "rare": 1,
        "common": 10,
    }
    assert draw_split(ids, [None] * 100, categories, 0.1, 8) == split  # deterministic
    assert set(draw_split(ids, [None] * 100, categories, 0.0, 8).values()) == {"train"}


def test_stratification_reaches_every_category_target():
    groups = {f"g{i:03d}": ({"a"} if i % 2 else {"b"}) | ({"c"} if i % 7 == 0 else set()) for i in range(200)}
    chosen = stratified_groups(groups, 0.2)
    counts = {c: sum(c in groups[g] for g in groups) for c in "abc"}
    targets = category_targets(counts, 0.2)
    for category in "abc":
        assert sum(category in groups[g] for g in chosen) >= targets[category]
    assert len(chosen) == 40


def test_the_split_keeps_its_share_and_serves_rare_classes_first():
    # 20 groups of three common classes, two rare classes on two groups each: a 10% split has
    # room for 2 groups; the rare classes are served first, by the group holding both
    groups = {f"g{i:02d}": {f"common{i % 3}"} for i in range(20)}
    groups["g03"] |= {"rare1"}
    groups["g05"] |= {"rare2"}
    groups["g19"] |= {"rare1", "rare2"}
    chosen = stratified_groups(groups, 0.1)
    assert len(chosen) == 2 and "g19" in chosen
    # the share is a cap: ten classes on two groups each do not make a 10-group split
    many = {f"g{i:02d}": {f"c{i // 2}"} for i in range(20)}
    assert len(stratified_groups(many, 0.1)) == 2


def test_near_duplicates_land_in_the_same_split(pictures):
    paths, copy = pictures
    ids = [f"{i:064x}" for i in range(10)] + ["f" * 64]
    hashes = [perceptual_hash(p) for p in [*paths, copy]]
    for fraction in (0.1, 0.3, 0.5):
        split = draw_split(ids, hashes, {}, fraction, 8)
        assert split[ids[0]] == split[ids[-1]]


def test_a_frozen_split_keeps_its_images_catches_their_copies_and_takes_no_new_ones(pictures):
    paths, copy = pictures
    ids = [f"{i:064x}" for i in range(10)]
    hashes = [perceptual_hash(p) for p in paths]
    frozen = pl.DataFrame({"image_id": [ids[0], ids[5]], "phash": [hashes[0], hashes[5]]})
    new_ids = [*ids, "e" * 64, "f" * 64]  # new data: an unrelated picture and a copy of ids[0]
    unrelated = paths[0].with_name("unrelated.png")
    picture(42).save(unrelated)
    new_hashes = [*hashes, perceptual_hash(unrelated), perceptual_hash(copy)]
    split = draw_split(new_ids, new_hashes, {}, 0.5, 8, frozen)
    assert {i for i, s in split.items() if s == EVAL} == {ids[0], ids[5], "f" * 64}


def test_leaks_by_content_hash_and_by_near_duplicate(pictures):
    paths, copy = pictures
    split = pl.DataFrame(
        {"image_id": ["s0", "s1"], "phash": [perceptual_hash(paths[0]), perceptual_hash(paths[1])]}
    )
    candidates = pl.DataFrame(
        {
            "image_id": ["s1", "copy", "other"],
            "phash": [perceptual_hash(paths[1]), perceptual_hash(copy), perceptual_hash(paths[7])],
        }
    )
    found = leaks(candidates, split, max_distance=8)
    assert found.select("image_id", "split_image_id", "kind").rows() == [
        ("s1", "s1", "same_content"),
        ("copy", "s0", "near_duplicate"),
    ]
    assert found.filter(pl.col("kind") == "near_duplicate")["distance"][0] <= 8
    assert leaks(candidates.filter(pl.col("image_id") == "other"), split, 8).is_empty()


def labels_of(image_id: str, text: str) -> pl.DataFrame:
    return frame(
        "labels",
        [
            {
                "label_id": f"{image_id}-{text}",
                "image_id": image_id,
                "annotation_type": "text",
                "task": "brief_caption",
                "text": text,
                "score": 1.0,
                "source": "human-audit@ann",
                "iteration": 0,
                "status": "audited",
            }
        ],
    )


def test_the_manifest_shows_a_change_of_any_byte_of_an_image_or_a_label(tmp_path, pictures):
    paths, _ = pictures
    images = pl.DataFrame({"image_id": ["a", "b"], "uri": [str(paths[0]), str(paths[1])]})
    labels = pl.concat([labels_of("a", "a red fish"), labels_of("b", "a cat")])
    frozen = split_manifest(images, labels, tmp_path)
    assert frozen["labels"].to_list() == [1, 1]
    assert manifest_changes(frozen, split_manifest(images, labels, tmp_path)).is_empty()
    assert manifest_digest(frozen) == manifest_digest(split_manifest(images, labels, tmp_path))

    data = bytearray(paths[1].read_bytes())
    data[-20] ^= 1  # one bit of one byte
    paths[1].write_bytes(bytes(data))
    edited = pl.concat([labels_of("a", "a red fish."), labels_of("b", "a cat")])
    changes = manifest_changes(frozen, split_manifest(images, edited, tmp_path))
    assert changes.select("image_id", "change").rows() == [
        ("a", "labels_changed"),
        ("b", "image_bytes_changed"),
    ]
    assert manifest_digest(frozen) != manifest_digest(split_manifest(images, edited, tmp_path))

    fewer = manifest_changes(frozen, split_manifest(images.head(1), labels, tmp_path))
    assert fewer.select("image_id", "change").rows() == [("b", "image_left_split")]


def test_freeze_and_an_explicit_logged_unfreeze(tmp_path, pictures):
    paths, _ = pictures
    folder = tmp_path / "frozen"
    manifest = split_manifest(
        pl.DataFrame({"image_id": ["a"], "uri": [str(paths[0])]}), labels_of("a", "x"), tmp_path
    )
    assert read_freeze(folder) is None and frozen_manifest(folder) is None
    record = freeze(folder, manifest, by="ci", reason="audited", auditors={"ann"})
    assert record["digest"] == manifest_digest(manifest) and record["auditors"] == ["ann"]
    assert frozen_manifest(folder).equals(manifest)
    with pytest.raises(ValueError, match="who"):
        unfreeze(folder, by="", reason="x")
    entry = unfreeze(folder, by="maria", reason="two labels were wrong")
    assert read_freeze(folder) is None and frozen_manifest(folder) is None
    with pytest.raises(ValueError, match="not frozen"):
        unfreeze(folder, by="maria", reason="again")
    history = freeze_history(folder)
    assert [h["action"] for h in history] == ["freeze", "unfreeze"]
    assert (
        history[1] == json.loads(json.dumps(entry))
        and history[1]["by"] == "maria"
        and history[1]["reason"] == "two labels were wrong"
    )
