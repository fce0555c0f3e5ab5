"""The training loop, the corpus stream and batched inference, on the micro preset (CPU)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from models.corpus import CORPUS_SCHEMA, corpus_examples
from models.florence2 import build_model, build_processor
from models.tasks import CAPTION, OCR, OD
from models.tokenizer import train_tokenizer
from models.training import CorpusStream, learning_rate_at, train
from relabel.config import GenerationParams, HumanNoiseParams, TrainParams, WorldParams
from relabel.world import render_world

# the memorisation test trains on every fourth of the 16 images, a batch holding all their
# examples (<CAPTION> and <OD> of each); measured (micro, no dropout, lr 1e-3) with seeds 0, 1
# and 2: the loss is below 1% of its start by step 75, and 100 steps decode all 4 captions
# and boxes exactly, in about 40 s on two cores (16 images, batch 16, 250 steps: about 190 s)
OVERFIT_IMAGES = 4
OVERFIT_STEPS = 100


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[pl.DataFrame, pl.DataFrame]:
    """16 rendered world images (``images``: id, uri = path, size) and their ground truth."""
    root = tmp_path_factory.mktemp("world")
    params = WorldParams(
        n_images=16, max_objects=3, text_probability=0.0, human=HumanNoiseParams(inject_defects=False)
    )
    render_world(params, root / "world", root / "truth", progress=False)
    paths = sorted([*(root / "world" / "images").glob("*.png"), *(root / "world" / "web").glob("*.png")])
    assert len(paths) == 16
    images = pl.DataFrame(
        {
            "image_id": [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths],
            "uri": [str(p) for p in paths],
            "width": [320] * len(paths),
            "height": [240] * len(paths),
        },
        schema={"image_id": pl.String, "uri": pl.String, "width": pl.Int32, "height": pl.Int32},
    )
    return images, pl.read_parquet(root / "truth" / "labels.parquet")


def write_corpus(world, folder: Path, tasks) -> tuple[list[Path], pl.DataFrame]:
    images, truth = world
    examples = corpus_examples(truth, images, lambda uri: uri, tasks)
    folder.mkdir(parents=True, exist_ok=True)
    halves = [examples.filter(pl.col("image_id").is_in(images["image_id"][i::2].implode())) for i in (0, 1)]
    files = []
    for index, half in enumerate(halves):
        files.append(folder / f"shard-{index:02d}.parquet")
        half.write_parquet(files[-1])
    return files, examples


def test_the_learning_rate_warms_up_then_decays_along_a_cosine():
    settings = TrainParams(steps=110, warmup_steps=10, learning_rate=1e-3, min_lr_ratio=0.1)
    assert learning_rate_at(0, settings) == pytest.approx(1e-4)
    assert learning_rate_at(9, settings) == pytest.approx(1e-3)
    assert learning_rate_at(60, settings) == pytest.approx(0.55e-3)
    assert learning_rate_at(110, settings) == pytest.approx(1e-4)


def test_teacher_forced_logits_are_the_models_own_and_the_loss_its_mean(world):
    from models.training import Collator, per_example_loss, teacher_forced_logits

    images, truth = world
    tokenizer = train_tokenizer(truth["text"].drop_nulls().to_list(), vocab_size=600)
    torch.manual_seed(0)
    model, processor = build_model("micro", tokenizer).eval(), build_processor(tokenizer, "micro")
    from PIL import Image

    batch = [
        {"image": Image.open(uri).convert("RGB"), "task": CAPTION, "prompt": CAPTION, "target": text}
        for uri, text in [
            (images["uri"][0], "a red ball"),
            (images["uri"][1], "two cats on a very long road"),
        ]
    ]
    inputs, _ = Collator(processor, 64)(batch)
    labels = inputs.pop("labels")
    with torch.no_grad():
        own = model(**inputs, labels=labels)
        logits = teacher_forced_logits(model, model.config, inputs, labels)
    assert torch.allclose(logits, own.logits, atol=1e-5)
    # the model's loss is the mean over all target tokens; ours weighs each example equally
    tokens = (labels != -100).sum(dim=1).float()
    assert torch.allclose(
        (per_example_loss(logits, labels) * tokens).sum() / tokens.sum(), own.loss, atol=1e-5
    )


def test_the_stream_splits_rows_over_consumers_and_follows_task_weights(world, tmp_path):
    files, examples = write_corpus(world, tmp_path, [OD, CAPTION])
    assert examples.schema == CORPUS_SCHEMA
    settings = TrainParams(shuffle_buffer=4, task_weights={OD: 1.0, CAPTION: 0.0})

    stream = CorpusStream(files, settings)
    split = [
        [row["target"] for path in stream.files for row in stream.rows_of(path, me, 3)] for me in range(3)
    ]
    assert sorted(split[0] + split[1] + split[2]) == sorted(examples["target"])  # no overlap, none missing
    assert all(split)
    drawn = iter(CorpusStream(files, settings, rank=1, world_size=2))
    assert {next(drawn)["task"] for _ in range(40)} == {OD}  # captions have weight 0


def test_training_resumes_from_its_checkpoint(world, tmp_path):
    files, examples = write_corpus(world, tmp_path / "corpus", [CAPTION])
    tokenizer = train_tokenizer(examples["target"].to_list(), vocab_size=600)
    model, processor = build_model("micro", tokenizer), build_processor(tokenizer, "micro")
    first = train(
        model,
        processor,
        files,
        TrainParams(steps=2, batch_size=2, checkpoint_every=2, num_workers=0),
        tmp_path / "run",
    )
    assert first.resumed_from == 0 and (tmp_path / "run" / "checkpoint" / "training_state.json").is_file()
    fresh = build_model("micro", tokenizer)
    loaded = train(
        fresh,
        processor,
        files,
        TrainParams(steps=2, batch_size=2, checkpoint_every=2, num_workers=0),
        tmp_path / "run",
    )
    # a resumed model holds the checkpoint's weights, not its own initialisation
    assert loaded.resumed_from == 2
    trained = dict(model.named_parameters())
    assert all(
        torch.equal(p.detach().cpu(), trained[name].detach().cpu()) for name, p in fresh.named_parameters()
    )
    steps = []
    again = train(
        fresh,
        processor,
        files,
        TrainParams(steps=3, batch_size=2, checkpoint_every=2, num_workers=0),
        tmp_path / "run",
        callback=lambda m: steps.append(m.step),
    )
    assert again.resumed_from == 2 and steps == [3]


@pytest.mark.slow
def test_images_are_decoded_in_spawned_worker_processes(world, tmp_path):
    files, examples = write_corpus(world, tmp_path / "corpus", [CAPTION])
    tokenizer = train_tokenizer(examples["target"].to_list(), vocab_size=600)
    model, processor = build_model("micro", tokenizer), build_processor(tokenizer, "micro")
    steps = []
    settings = TrainParams(steps=2, batch_size=2, num_workers=2, checkpoint_every=10)
    train(
        model,
        processor,
        files,
        settings,
        tmp_path / "run",
        callback=lambda m: steps.append((m.step, m.examples)),
    )
    assert steps == [(1, 2), (2, 2)]


@pytest.mark.slow
def test_torchrun_trains_with_distributed_data_parallel_over_two_processes(world, tmp_path):
    import json
    import os
    import subprocess
    import sys

    import yaml

    write_corpus(world, tmp_path / "corpus", [CAPTION])
    model = {
        "preset": "micro",
        "tokenizer": {"vocab_size": 600},
        "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 2, "num_workers": 0},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"model": model}))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "-m",
        "pipelines.train",
        "--params",
        str(tmp_path / "params.yaml"),
        "--corpus",
        str(tmp_path / "corpus"),
        "--out",
        str(tmp_path / "run"),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])  # rank 0 only
    assert result["steps"] == 2 and result["resumed_from"] == 0
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "run" / "checkpoint" / "training_state.json").read_text()) == {"step": 2}


def test_generation_turns_every_request_into_rows_or_a_stated_problem(world):
    from models.inference import generate_labels, requests_for

    images, truth = world
    tokenizer = train_tokenizer(truth["text"].drop_nulls().to_list(), vocab_size=600)
    torch.manual_seed(0)
    model, processor = build_model("micro", tokenizer), build_processor(tokenizer, "micro")
    requests = requests_for(images.head(3).rename({"uri": "image_path"}), [OD, CAPTION])
    assert requests.height == 6
    for beams in (1, 2):
        generated = generate_labels(
            model,
            processor,
            requests,
            GenerationParams(batch_size=4, max_new_tokens=8, num_beams=beams),
            source="model@iter0",
            iteration=0,
        )
        # an untrained model says nothing or nonsense: each request yields rows or a problem line
        answered = set(generated.labels["image_id"] + generated.labels["task"].cast(pl.String)) | set(
            generated.problems["image_id"]
            + generated.problems["task"].map_elements(
                lambda t: {OD: "object", CAPTION: "brief_caption"}[t], return_dtype=pl.String
            )
        )
        assert len(answered) == 6
        assert generated.labels["score"].is_between(0, 1).all() and set(generated.labels["source"]) <= {
            "model@iter0"
        }


def test_an_image_is_encoded_once_for_all_its_requests_whatever_the_batches(world):
    from models.inference import generate_labels, requests_for

    images, truth = world
    tokenizer = train_tokenizer(truth["text"].drop_nulls().to_list(), vocab_size=600)
    torch.manual_seed(0)
    model, processor = build_model("micro", tokenizer, dropout=0.0), build_processor(tokenizer, "micro")
    encoded = []
    model.model.vision_tower.register_forward_hook(lambda module, args, output: encoded.append(len(args[0])))
    # three images' requests, interleaved: sorted by task, as requests_for writes them
    requests = requests_for(images.head(3).rename({"uri": "image_path"}), [OD, CAPTION, OCR])
    results = []
    for batch_size in (2, 4, 9):
        encoded.clear()
        generated = generate_labels(
            model,
            processor,
            requests,
            GenerationParams(batch_size=batch_size, max_new_tokens=8),
            source="model",
            iteration=0,
        )
        assert sum(encoded) == 3  # one pass of the image encoder per image
        results.append(
            (
                generated.labels.sort("label_id").select("label_id", "text").rows(),
                generated.problems.sort("image_id", "task", "problem").rows(),
            )
        )
    assert results[0] == results[1] == results[2]


@pytest.mark.slow
def test_the_model_memorises_4_images_captions_exactly_and_boxes_within_quantisation(world, tmp_path):
    """Proof that the whole loop learns: the micro model, without dropout, trained on 4 of the
    world's images' <CAPTION> and <OD> examples, writes every caption back word for word and
    every box within a quantisation bin, through batched generation and parsing."""
    from models.inference import generate_labels, requests_for
    from models.tasks import LOC_BINS
    from models.tokenizer import corpus_texts

    images = world[0].gather_every(len(world[0]) // OVERFIT_IMAGES)
    truth = world[1].filter(pl.col("image_id").is_in(images["image_id"].implode()))
    assert images.height == OVERFIT_IMAGES and truth["image_id"].n_unique() == OVERFIT_IMAGES
    files, examples = write_corpus((images, truth), tmp_path / "corpus", [OD, CAPTION])
    tokenizer = train_tokenizer(corpus_texts(files), vocab_size=600)
    torch.manual_seed(0)
    model, processor = build_model("micro", tokenizer, dropout=0.0), build_processor(tokenizer, "micro")
    settings = TrainParams(
        steps=OVERFIT_STEPS,
        batch_size=examples.height,
        learning_rate=1e-3,
        warmup_steps=10,
        checkpoint_every=10**6,
        num_workers=0,
        shuffle_buffer=64,
        task_weights={},  # both tasks at weight 1
    )
    losses = []
    train(model, processor, files, settings, tmp_path / "run", callback=lambda step: losses.append(step.loss))
    assert losses[-1] < 0.05 * losses[0]

    requests = requests_for(images.rename({"uri": "image_path"}), [OD, CAPTION])
    generated = generate_labels(
        model,
        processor,
        requests,
        GenerationParams(batch_size=16, max_new_tokens=96),
        source="model",
        iteration=0,
    )
    assert generated.problems.height == 0

    def captions(frame: pl.DataFrame) -> dict[str, str]:
        return dict(frame.filter(pl.col("task") == "brief_caption").select("image_id", "text").iter_rows())

    assert captions(generated.labels) == captions(truth)

    def objects(frame: pl.DataFrame) -> dict[str, list[tuple[str, list[float]]]]:
        rows = frame.filter(pl.col("task") == "object").sort(
            "image_id", "category", pl.col("box").arr.get(0), pl.col("box").arr.get(1)
        )
        found: dict[str, list] = {}
        for image_id, category, box in rows.select("image_id", "category", "box").iter_rows():
            found.setdefault(image_id, []).append((category, list(box)))
        return found

    written, expected = objects(generated.labels), objects(truth)
    assert written.keys() == expected.keys()
    bin_size = np.array([320, 240, 320, 240]) / LOC_BINS
    for image_id, wanted in expected.items():
        assert [category for category, _ in written[image_id]] == [category for category, _ in wanted]
        for (_, box), (_, true_box) in zip(written[image_id], wanted, strict=True):
            assert (np.abs(np.array(box) - np.array(true_box)) <= bin_size).all(), (image_id, box, true_box)


def test_heldout_evaluation_scores_a_silent_model_at_its_worst_and_the_baseline_beside_it(world):
    from models.evaluation import evaluate_heldout

    images, truth = world
    tokenizer = train_tokenizer(truth["text"].drop_nulls().to_list(), vocab_size=600)
    torch.manual_seed(0)
    model, processor = (
        build_model("micro", tokenizer),
        build_processor(tokenizer, "micro"),
    )  # untrained: says nothing
    with_paths = images.rename({"uri": "image_path"})
    heldout, training = with_paths.head(4), with_paths.tail(12)
    evaluation = evaluate_heldout(
        model,
        processor,
        heldout,
        training,
        truth,
        truth,
        [OD, CAPTION],
        GenerationParams(batch_size=8, max_new_tokens=4),
        source="model",
        iteration=0,
    )
    truth_boxes = truth.filter(
        pl.col("task") == "object", pl.col("image_id").is_in(heldout["image_id"].implode())
    )
    assert evaluation.requests == 2 * heldout.height + truth_boxes.select("image_id", "box").unique().height
    scores = {row["output"]: row for row in evaluation.summary.iter_rows(named=True)}
    assert scores["model"]["f1"] == 0.0 and scores["model"]["caption_object_recall"] == 0.0
    assert scores["model"].get("ocr_cer") is None  # OCR was not asked (and the world has no text here)
    assert (
        0 < scores["baseline"]["region_naming_accuracy"] < 1
        and 0 <= scores["baseline"]["caption_object_recall"] <= 1
    )
    # the standard metrics: a silent model finds nothing and describes nothing
    assert (
        scores["model"]["map"] == 0.0
        and scores["model"]["map50"] == 0.0
        and scores["model"]["caption_cider"] == 0.0
    )
    assert (
        scores["baseline"]["map50"] is not None and scores["model"]["grounding_recall_at_1"] is None
    )  # not asked
    assert set(evaluation.per_class["output"]) == {"model", "baseline"}


def test_prompted_evaluation_tasks_ask_the_audited_captions_and_expressions(world):
    from models.evaluation import evaluate_heldout, segmentation_queries
    from models.tasks import CAPTION_TO_PHRASE_GROUNDING, REFERRING_EXPRESSION_SEGMENTATION

    images, truth = world
    tokenizer = train_tokenizer(truth["text"].drop_nulls().to_list(), vocab_size=600)
    torch.manual_seed(0)
    model, processor = build_model("micro", tokenizer), build_processor(tokenizer, "micro")
    heldout = images.rename({"uri": "image_path"}).head(2)
    tasks = [CAPTION_TO_PHRASE_GROUNDING, REFERRING_EXPRESSION_SEGMENTATION]
    evaluation = evaluate_heldout(
        model,
        processor,
        heldout,
        heldout,
        truth.clear(),
        truth,
        tasks,
        GenerationParams(batch_size=8, max_new_tokens=4),
        source="model",
        iteration=0,
    )
    own = truth.filter(pl.col("image_id").is_in(heldout["image_id"].implode()))
    captions = own.filter(pl.col("task") == "phrase_grounding").select("image_id", "text").unique().height
    expressions = segmentation_queries(own)
    assert expressions.height > 0 and (expressions["polygon"].is_not_null()).all()
    assert expressions.select("image_id", "text").is_unique().all()  # each names one region
    boxes = own.filter(pl.col("task") == "object").select("image_id", "box").unique().height
    assert evaluation.requests == boxes + captions + expressions.height  # no prompt-free task asked
    model_row = evaluation.summary.filter(pl.col("output") == "model").row(0, named=True)
    assert (
        model_row["grounding_recall_at_1"] == 0.0 and model_row["res_miou"] == 0.0
    )  # a silent model misses all
