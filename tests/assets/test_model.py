"""The model phase through Dagster: an iteration's model is an MLflow run with a registered
version, and is scored on held-out images beside the trivial baseline."""

from __future__ import annotations

import polars as pl
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(iterated_project):
    return iterated_project


def _metadata(result, name: str) -> dict:
    (materialization,) = result.asset_materializations_for_node(f"model__{name}")
    return {name: getattr(value, "value", value) for name, value in materialization.metadata.items()}


def test_the_iteration_model_is_an_mlflow_run_with_its_curve_and_a_registered_version(trained):
    from mlflow import MlflowClient

    from models.florence2 import PRESETS, load_model
    from relabel.config import load_params

    root, results = trained
    params = load_params(root / "params.yaml")
    metadata = _metadata(results[("train_model", "0")], "florence2")
    client = MlflowClient(f"sqlite:///{root / 'data' / 'mlflow' / 'mlflow.db'}")
    run = client.get_run(metadata["mlflow_run_id"])
    assert metadata["mlflow_run"].endswith(f"/runs/{run.info.run_id}?workflowType=machine_learning")
    assert run.info.status == "FINISHED" and run.info.run_name == "iteration-0"
    assert client.get_experiment(run.info.experiment_id).name == "relabel/training"
    assert run.data.params["preset"] == "micro" and run.data.params["iteration"] == "0"
    corpus_files = sorted((root / "data" / "corpus" / "examples" / "iteration-0").glob("*.parquet"))
    assert {f"corpus.{path.stem}.md5" for path in corpus_files} <= set(run.data.params)  # the data version
    steps = params.model.train.steps
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(range(1, steps + 1))
    assert len(client.get_metric_history(run.info.run_id, "learning_rate")) == steps
    assert any(key.startswith("loss.") for key in run.data.metrics)  # per-task loss, e.g. loss.od

    version = client.get_model_version_by_alias(params.model.registered_name, "iteration-0")
    assert version.run_id == run.info.run_id
    assert "model/model.safetensors" in {a.path for a in client.list_artifacts(run.info.run_id, "model")}

    folder = root / "data" / "model" / "iteration-0"
    assert not (folder / "checkpoint").exists()  # a finished run leaves no resume point behind
    model, processor = load_model(folder / "model")
    assert processor.image_processor.size["height"] == PRESETS["micro"].image_size
    assert pl.read_parquet(folder / "training_curve.parquet")["step"].to_list() == list(range(1, steps + 1))


def test_every_iteration_is_evaluated_on_the_frozen_split_in_an_mlflow_run_with_its_report(trained):
    from mlflow import MlflowClient
    from PIL import Image

    from relabel.evaluation_split import frozen_manifest, read_freeze
    from resources.layout import FROZEN_SPLIT, files_dir

    root, results = trained
    data = root / "data"
    metadata = _metadata(results[("score_model", "0")], "heldout_scores")
    split = frozen_manifest(files_dir(FROZEN_SPLIT, data))
    images = pl.read_parquet(data / "ingest" / "images" / "*.parquet")
    assert sorted(images.filter(pl.col("split") == "eval")["image_id"].to_list()) == sorted(
        split["image_id"].to_list()
    )
    assert metadata["heldout_images"] == split.height > 0
    assert metadata["split_digest"] == read_freeze(files_dir(FROZEN_SPLIT, data))["digest"]
    audited = pl.read_parquet(files_dir(FROZEN_SPLIT, data) / "labels.parquet")
    boxes = audited.filter(pl.col("task") == "object").select("image_id", "box").unique().height
    groundings = (
        audited.filter(pl.col("task") == "phrase_grounding").select("image_id", "text").unique().height
    )
    # <OD>, <CAPTION> and <OCR_WITH_REGION> per image, <REGION_TO_CATEGORY> per audited box,
    # grounding per audited caption, segmentation per expression naming one polygon
    assert metadata["requests"] >= 3 * split.height + boxes + groundings

    summary = pl.read_parquet(data / "model" / "iteration-0" / "heldout" / "summary.parquet")
    assert summary["output"].to_list() == ["model", "baseline"]
    model = summary.filter(pl.col("output") == "model").row(0, named=True)
    baseline = summary.filter(pl.col("output") == "baseline").row(0, named=True)
    # a metric is measured wherever the split has audited labels to measure it on
    has = {
        "map": "object",
        "map50": "object",
        "region_naming_accuracy": "object",
        "caption_cider": "brief_caption",
        "grounding_recall_at_1": "phrase_grounding",
        "res_miou": "object",
        "ocr_cer": "ocr",
    }
    for metric, task in has.items():
        present = audited.filter(pl.col("task") == task).height > 0
        assert (model[metric] is not None) == present, metric
        assert model[metric] is None or model[metric] >= 0
    assert model["map"] <= model["map50"] <= 1 and baseline["map"] <= baseline["map50"] <= 1
    assert baseline["grounding_recall_at_1"] is None  # the baseline is not asked prompted tasks
    per_class = pl.read_parquet(data / "model" / "iteration-0" / "heldout" / "per_class.parquet")
    assert set(per_class["output"]) == {"model", "baseline"}
    truth_classes = set(audited.filter(pl.col("task") == "object")["category"])
    assert truth_classes <= set(
        per_class.filter(pl.col("output") == "model", pl.col("n_truth") > 0)["category"]
    )
    generated = pl.read_parquet(data / "model" / "iteration-0" / "heldout" / "generated_labels.parquet")
    problems = pl.read_parquet(data / "model" / "iteration-0" / "heldout" / "generation_problems.parquet")
    assert set(generated["image_id"]) | set(problems["image_id"]) <= set(split["image_id"])
    assert (generated["source"] == "florence2@iteration-0").all()

    client = MlflowClient(f"sqlite:///{data / 'mlflow' / 'mlflow.db'}")
    training_run = _metadata(results[("train_model", "0")], "florence2")["mlflow_run_id"]
    run = client.get_run(metadata["mlflow_run"].split("/runs/")[1].split("?")[0])
    assert run.info.run_name == "iteration-0" and run.data.tags["phase"] == "evaluation"
    assert client.get_experiment(run.info.experiment_id).name == "relabel/evaluation"
    assert run.data.tags["training_run_id"] == training_run  # in the training experiment
    assert metadata["training_run"].endswith(f"/runs/{training_run}?workflowType=machine_learning")
    assert run.data.metrics["map.model"] == pytest.approx(model["map"])
    assert next(iter(run.data.metrics)) == "map.model"  # what MLflow's Compare plots first
    assert run.data.metrics["caption_cider.baseline"] == pytest.approx(baseline["caption_cider"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation/report")}
    plots = ("metrics_by_iteration", "per_class_recall", "labels_by_source_status", "quarantine_by_reason")
    assert {f"evaluation/report/{name}.png" for name in plots} | {"evaluation/report/summary.md"} <= artifacts

    report = data / "model" / "iteration-0" / "heldout" / "report"
    for name in plots:
        assert Image.open(report / f"{name}.png").size[0] >= 600
    summary_md = (report / "summary.md").read_text()
    assert (
        summary_md.startswith("# Iteration 0 on the frozen split")
        or "Iteration 0 on the frozen split" in summary_md
    )
    assert f"{model['map50']:.3f}" in summary_md
    # the plots in the Dagster UI: inline, each once, no relative file name it cannot follow
    assert metadata["report"].count("](data:image/png;base64,") == len(plots)
    assert ".png)" not in metadata["report"]
