"""The evaluation on real photos: a COCO-format set (../shared/data/coco-mini) is ingested, its
split drawn by category, its human labels taken as audited (Label Studio's format, accepted
as they are), frozen, and a model is evaluated on it with the same code as the demo's."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch
import yaml

from models.evaluation import evaluate_heldout
from models.florence2 import build_model, build_processor
from models.tasks import CAPTION, CAPTION_TO_PHRASE_GROUNDING, OD, REFERRING_EXPRESSION_SEGMENTATION
from models.tokenizer import train_tokenizer
from relabel.config import GenerationParams
from relabel.evaluation_split import frozen_manifest, read_freeze
from relabel.files import path_of_uri
from relabel.metrics import detection_map
from resources.layout import FROZEN_SPLIT, files_dir


@pytest.fixture
def coco_project(tiny_project, coco_mini_dir):
    """The tiny project reading coco-mini instead of the world, audited by accept-all."""
    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["ingest"]["sources"] = [
        {
            "name": "coco-mini",
            "kind": "coco",
            "images": str(coco_mini_dir / "images"),
            "instances": str(coco_mini_dir / "annotations" / "instances.json"),
            "captions": str(coco_mini_dir / "annotations" / "captions.json"),
        }
    ]
    params["ingest"]["eval_fraction"] = 0.15
    params["audit"]["auditor"] = "accept-all"
    (tiny_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    instances = json.loads((coco_mini_dir / "annotations" / "instances.json").read_text())
    ontology = tiny_project / "data" / "world" / "ontology.json"
    ontology.parent.mkdir(parents=True, exist_ok=True)
    ontology.write_text(json.dumps({"categories": instances["categories"]}))
    return tiny_project


def test_a_coco_set_is_audited_frozen_and_evaluated_like_the_world(coco_project, materialize_all):
    materialize_all(coco_project, phases=("ingest", "audit"))
    data = coco_project / "data"
    images = pl.read_parquet(data / "ingest" / "images" / "*.parquet")
    human = pl.read_parquet(data / "ingest" / "human_labels" / "*.parquet")
    split = frozen_manifest(files_dir(FROZEN_SPLIT, data))
    held = images.filter(pl.col("image_id").is_in(split["image_id"].implode()))
    assert 8 <= held.height <= 16 and sorted(held["image_id"]) == sorted(
        images.filter(pl.col("split") == "eval")["image_id"]
    )
    assert read_freeze(files_dir(FROZEN_SPLIT, data))["auditors"] == ["accept-all"]

    # accept-all: the split's human labels, as they are, are the audited labels
    audited = pl.read_parquet(files_dir(FROZEN_SPLIT, data) / "labels.parquet")
    own = human.filter(
        pl.col("image_id").is_in(held["image_id"].implode()),
        pl.col("task").cast(pl.String).is_in(["object", "brief_caption"]),
    )
    assert audited.height == own.height and set(audited["label_id"]) == set(own["label_id"])
    assert (audited["source"] == "human-audit@accept-all").all()
    # stratified: the split holds objects of several categories, the person class among them
    assert audited.filter(pl.col("task") == "object")["category"].n_unique() >= 5

    # the metrics on real polygons and crowd regions: the audited labels score 1 against themselves
    perfect = detection_map(
        audited.with_columns(score=pl.lit(1.0)).filter(~pl.col("is_crowd").fill_null(False)), audited, held
    )
    assert perfect.map == pytest.approx(1.0) and perfect.map50 == pytest.approx(1.0)

    # the same evaluation as the demo's, with a small untrained model (it finds nothing)
    tokenizer = train_tokenizer(human["text"].drop_nulls().to_list(), vocab_size=600)
    torch.manual_seed(0)
    model, processor = build_model("micro", tokenizer), build_processor(tokenizer, "micro")
    with_paths = images.with_columns(
        image_path=pl.col("uri").map_elements(lambda uri: str(path_of_uri(uri, data)), return_dtype=pl.String)
    )
    training = with_paths.filter(pl.col("split") == "train")
    evaluation = evaluate_heldout(
        model,
        processor,
        with_paths.filter(pl.col("image_id").is_in(held["image_id"].implode())),
        training,
        human,
        audited,
        [OD, CAPTION, CAPTION_TO_PHRASE_GROUNDING, REFERRING_EXPRESSION_SEGMENTATION],
        GenerationParams(batch_size=16, max_new_tokens=4),
        source="model",
        iteration=0,
    )
    scores = {row["output"]: row for row in evaluation.summary.iter_rows(named=True)}
    assert scores["model"]["map"] == 0.0 and scores["model"]["caption_cider"] == 0.0
    assert 0.0 <= scores["baseline"]["map50"] < 0.5 and scores["baseline"]["caption_cider"] >= 0.0
    assert scores["model"]["res_miou"] == 0.0  # expressions from categories that occur once per photo
    per_class = evaluation.per_class.filter(pl.col("output") == "model", pl.col("n_truth") > 0)
    assert set(per_class["category"]) == set(
        audited.filter(pl.col("task") == "object", ~pl.col("is_crowd").fill_null(False))["category"]
    )
