"""The classical OpenCV shape detector finds the embedded world's objects, scored against its
ground truth (used here only, never by the detector)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from models.specialists.base import Specialist
from models.specialists.registry import BuildContext, build_specialist
from models.specialists.shapes import PROTOTYPES_FILE, ShapeDetector, fit_shape_prototypes

# ----------------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def fitted(world_eval, world, tmp_path_factory):
    world_dir, _ = world
    images, human = world_eval.human_frames(world_dir)
    workdir = tmp_path_factory.mktemp("shapes_workdir")
    report = fit_shape_prototypes(images, human, lambda uri: Path(uri), workdir, {}, False)
    return workdir, report


def test_without_prototypes_generic_rules_still_give_valid_rows(world_eval, world, tmp_path):
    world_dir, truth_dir = world
    refs, _ = world_eval.truth_objects(world_dir, truth_dir)
    detector = build_specialist("opencv_shapes", "shapes", {}, BuildContext(workdir=tmp_path))
    assert isinstance(detector, Specialist) and detector.version.endswith("+rules")
    outputs = detector.annotate(refs[:10], None)
    assert len(outputs) == 10
    world_eval.check_rows(outputs, refs[:10], "shapes@" + detector.version)


def test_prototypes_are_fitted_on_the_human_train_boxes_only(world_eval, fitted, world):
    workdir, report = fitted
    assert (workdir / PROTOTYPES_FILE).is_file()
    images, human = world_eval.human_frames(world[0])
    train = images.filter(pl.col("split") == "train")["image_id"]
    labelled_train = human.filter(pl.col("image_id").is_in(train))["image_id"].n_unique()
    assert report["n_images"] == labelled_train
    assert report["examples_per_class"]["background"] > 0
    assert report["n_examples"] > report["n_boxes"]


def test_fitted_detector_finds_the_objects(world_eval, fitted, world):
    world_dir, truth_dir = world
    workdir, _ = fitted
    refs, truth = world_eval.truth_objects(world_dir, truth_dir)
    detector = ShapeDetector("shapes", {}, BuildContext(workdir=workdir, categories=("ball", "tree", "bird")))
    # a detector restricted to some categories names only those
    restricted = detector.annotate(refs[:8], None)
    assert {row["category"] for rows in restricted for row in rows} <= {"ball", "tree", "bird"}

    detector = ShapeDetector("shapes", {}, BuildContext(workdir=workdir))
    outputs = detector.annotate(refs, None)
    world_eval.check_rows(outputs, refs, "shapes@" + detector.version)
    precision, recall = world_eval.precision_recall(outputs, refs, truth)
    # measured on this 40-image world (23 labelled train images): precision 0.65, recall 0.37;
    # class-agnostic 0.77 / 0.43. On the 240-image default world: 0.78 / 0.55.
    assert recall >= 0.25 and precision >= 0.45
    agnostic_precision, agnostic_recall = world_eval.precision_recall(outputs, refs, truth, class_aware=False)
    assert agnostic_recall >= 0.35 and agnostic_precision >= 0.6


def test_refitted_prototypes_are_a_new_version(world_eval, fitted, world, tmp_path):
    workdir, _ = fitted
    images, human = world_eval.human_frames(world[0])
    first = ShapeDetector("shapes", {}, BuildContext(workdir=workdir)).version
    # the three-argument form, on fewer labels
    fit_shape_prototypes(images, human.head(human.height // 2), tmp_path)
    second = ShapeDetector("shapes", {}, BuildContext(workdir=tmp_path)).version
    assert first.startswith("1.0+p") and second.startswith("1.0+p") and first != second


def test_unknown_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown settings"):
        ShapeDetector("shapes", {"treshold": 3}, BuildContext(workdir=tmp_path))
