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
    assert metadata["mlflow_run"].endswith(f"/runs/{run.info.run_id}") and run.info.status == "FINISHED"
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


def test_heldout_scores_compare_the_model_with_the_baseline_on_eval_images_only(trained):
    from mlflow import MlflowClient

    root, results = trained
    data = root / "data"
    metadata = _metadata(results[("score_model", "0")], "heldout_scores")
    images = pl.read_parquet(data / "ingest" / "images" / "*.parquet")
    heldout = images.filter(pl.col("split") == "eval")
    assert metadata["heldout_images"] == heldout.height > 0
    truth = pl.read_parquet(data / "ground_truth" / "labels.parquet").filter(pl.col("image_id").is_in(heldout["image_id"].implode()))
    boxes = truth.filter(pl.col("task") == "object").select("image_id", "box").unique().height
    # <OD>, <CAPTION> and <OCR_WITH_REGION> per image, <REGION_TO_CATEGORY> per true box
    assert metadata["requests"] == 3 * heldout.height + boxes

    summary = pl.read_parquet(data / "model" / "iteration-0" / "heldout" / "summary.parquet")
    assert summary["output"].to_list() == ["model", "baseline"]
    assert summary["region_naming_accuracy"].is_between(0, 1).all()
    baseline = summary.filter(pl.col("output") == "baseline").row(0, named=True)
    assert baseline["labels"] >= heldout.height  # at least its object on every held-out image
    generated = pl.read_parquet(data / "model" / "iteration-0" / "heldout" / "generated_labels.parquet")
    problems = pl.read_parquet(data / "model" / "iteration-0" / "heldout" / "generation_problems.parquet")
    assert set(generated["image_id"]) | set(problems["image_id"]) <= set(heldout["image_id"])
    assert (generated["source"] == "florence2@iteration-0").all()

    model_run = _metadata(results[("train_model", "0")], "florence2")["mlflow_run_id"]
    run = MlflowClient(f"sqlite:///{data / 'mlflow' / 'mlflow.db'}").get_run(model_run)
    assert run.data.metrics["heldout.f1.baseline"] == pytest.approx(baseline["f1"])
    assert run.data.metrics["heldout.region_naming_accuracy.baseline"] == pytest.approx(baseline["region_naming_accuracy"])
    assert metadata["mlflow_run"].endswith(model_run)
