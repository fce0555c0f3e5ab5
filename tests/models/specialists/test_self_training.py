"""models.self_training: specialists re-trained per fold, each image labelled by the fold model
that never saw it, and training that goes on from the previous iteration's folds."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from models.self_training import detect_held_out, fold_dir, fold_of, train_folds
from models.specialists.tiny_detector import CONFIG_FILE, WEIGHTS_FILE
from relabel.config import WorldParams
from relabel.world import render_world

SETTINGS = {"epochs": 15, "seed": 0, "copy_paste": False}


def resolve(uri: str) -> Path:
    return Path(uri)


@pytest.fixture(scope="module")
def world(tmp_path_factory, world_eval):
    base = tmp_path_factory.mktemp("self_training_world")
    render_world(WorldParams(n_images=24, max_objects=4), base / "world", base / "truth", progress=False)
    images, human = world_eval.human_frames(base / "world")
    return images.filter(pl.col("split") == "train"), human


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    images, labels = world
    out = tmp_path_factory.mktemp("folds")
    return out, train_folds(
        "trained_detector", images, labels, resolve, out, SETTINGS, folds=2, progress=False
    )


def test_every_image_has_one_fold_from_its_id_and_every_fold_trains_on_the_others(world, trained):
    images, _ = world
    out, reports = trained
    folds = images.select(fold_of(2))["image_id"].to_list()
    assert set(folds) == {0, 1}
    assert [r["fold"] for r in reports] == [0, 1]
    # each fold's model saw the images of the other fold only, and holds its own out
    with_fold = images.with_columns(fold=fold_of(2))
    for report in reports:
        assert report["held_out_images"] == with_fold.filter(pl.col("fold") == report["fold"]).height
        assert report["n_images"] <= with_fold.filter(pl.col("fold") != report["fold"]).height
        assert (fold_dir(out, report["fold"]) / WEIGHTS_FILE).is_file()
        assert report["went_on_from"] is None


def test_each_image_is_labelled_once_by_the_model_that_never_saw_it(world, trained, monkeypatch):
    images, _ = world
    out, _ = trained
    import models.self_training as self_training

    seen = []
    original = self_training.build_specialist

    def recording(kind, name, settings, context):
        seen.append(Path(context.workdir).name)
        return original(kind, name, settings, context)

    monkeypatch.setattr(self_training, "build_specialist", recording)
    labels, quarantine = detect_held_out(
        "trained_detector", "tinydet", images, resolve, out, {"min_score": 0.01}, 2, progress=False
    )
    assert seen == ["fold-0", "fold-1"]
    assert quarantine.height == 0
    assert labels.height > 0 and set(labels["task"]) == {"object"}
    assert set(labels["image_id"]) <= set(images["image_id"])
    # an image's labels come from its own fold's model: the source names those weights
    fold_of_image = dict(images.select("image_id", fold_of(2).alias("fold")).iter_rows())
    versions = (
        labels.select("image_id", "source")
        .unique()
        .with_columns(fold=pl.col("image_id").replace_strict(fold_of_image))
    )
    assert (
        versions.group_by("fold").agg(pl.col("source").n_unique())["source"].to_list()
        == [1] * versions["fold"].n_unique()
    )


def _one_epoch_then_two_going_on(world, out: Path, go_on_from: Path) -> list[dict]:
    images, labels = world
    return train_folds(
        "trained_detector",
        images,
        labels,
        resolve,
        out,
        {**SETTINGS, "epochs": 1},
        folds=2,
        go_on_from=go_on_from,
        warm_settings={"epochs": 2},
        progress=False,
    )


def test_the_next_iteration_goes_on_from_each_folds_weights_with_its_warm_settings(world, trained, tmp_path):
    before, _ = trained
    reports = _one_epoch_then_two_going_on(world, tmp_path, before)
    assert [r["went_on_from"] for r in reports] == [str(fold_dir(before, 0)), str(fold_dir(before, 1))]
    assert [r["epochs"] for r in reports] == [2, 2]
    config = json.loads((fold_dir(tmp_path, 0) / CONFIG_FILE).read_text())
    assert config["train_settings"]["init_from"] == str(fold_dir(before, 0))
    assert config["train_settings"]["epochs"] == 2


def test_warm_settings_are_not_used_when_there_is_nothing_to_go_on_from(world, tmp_path):
    reports = _one_epoch_then_two_going_on(world, tmp_path, tmp_path / "no-earlier-iteration")
    assert [(r["epochs"], r["went_on_from"]) for r in reports] == [(1, None), (1, None)]


def test_a_kind_that_cannot_be_trained_and_one_fold_are_refused(world, tmp_path):
    images, labels = world
    with pytest.raises(ValueError, match="not trainable"):
        train_folds("rapidocr", images, labels, resolve, tmp_path, {}, folds=2)
    with pytest.raises(ValueError, match="at least 2 folds"):
        train_folds("trained_detector", images, labels, resolve, tmp_path, SETTINGS, folds=1)
