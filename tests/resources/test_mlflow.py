"""The MLflow resource against a real sqlite store: one experiment per kind of run, named from
params.yaml ``mlflow.experiment``, of the machine-learning kind; runs named by iteration; and
run URLs that open the run in the machine-learning view of the MLflow UI."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from mlflow import MlflowClient

from resources.services import (
    EXPERIMENTS,
    Experiment,
    MlflowResource,
    ProjectResource,
)

URL = re.compile(
    r"^http://127\.0\.0\.1:5000/#/experiments/(?P<experiment>[0-9]+)/runs/(?P<run>[0-9a-f]{32})"
    r"\?workflowType=machine_learning$"
)


def _project(root: Path, prefix: str = "relabel") -> MlflowResource:
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(f"mlflow:\n  experiment: {prefix}\n")
    return MlflowResource(project=ProjectResource(root=str(root)))


def _client(root: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{root / 'data' / 'mlflow' / 'mlflow.db'}")


def _report(tmp_path: Path) -> Path:
    folder = tmp_path / "report"
    folder.mkdir(exist_ok=True)
    (folder / "summary.md").write_text("# scores\n")
    return folder


def test_every_kind_of_run_has_its_experiment_named_from_the_prefix_of_the_machine_learning_kind(tmp_path):
    root = tmp_path / "project"
    mlflow_tracking = _project(root, prefix="birds")
    ids = {kind: mlflow_tracking.experiment_id(kind) for kind in Experiment}
    assert mlflow_tracking.experiment_id(Experiment.TRAINING) == ids[Experiment.TRAINING]  # created once

    client = _client(root)
    experiments = {e.name: e for e in client.search_experiments() if e.name != "Default"}
    assert set(experiments) == {
        "birds/training",
        "birds/evaluation",
        "birds/label-quality",
        "birds/filter",
        "birds/annotation-scores",
    }
    for kind, experiment_id in ids.items():
        experiment = experiments[f"birds/{kind}"]
        assert experiment.experiment_id == experiment_id
        # the classic view of runs, charts and Compare, not the GenAI view of traces
        assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
        assert experiment.tags["mlflow.note.content"] == EXPERIMENTS[kind]  # its description
        assert experiment.artifact_location == (root / "data" / "mlflow" / "artifacts" / kind).as_uri()
    with pytest.raises(ValueError, match="no MLflow experiment of kind 'heldout'"):
        mlflow_tracking.experiment_name("heldout")


def test_a_report_is_a_finished_run_of_its_experiment_named_by_iteration_and_linked_in_the_ml_view(tmp_path):
    root = tmp_path / "project"
    mlflow_tracking = _project(root)
    url = mlflow_tracking.log_report(
        experiment=Experiment.LABEL_QUALITY,
        run_name="iteration-2",
        tags={"phase": "label_quality", "iteration": "2"},
        params={"iteration": "2", "rare_classes": "kite, umbrella"},
        metrics={"box_f1": 0.75, "ocr_cer": math.nan, "caption_object_recall": None, "added_precision": 0.0},
        report_dir=_report(tmp_path),
        artifact_path="label_quality",
    )

    client = _client(root)
    match = URL.match(url)
    assert match, url
    run = client.get_run(match["run"])
    experiment = client.get_experiment(match["experiment"])
    assert experiment.name == "relabel/label-quality" == client.get_experiment(run.info.experiment_id).name
    assert run.info.run_name == "iteration-2" and run.info.status == "FINISHED"
    assert run.data.tags["iteration"] == "2" and run.data.params["rare_classes"] == "kite, umbrella"
    assert run.data.metrics == {"box_f1": 0.75, "added_precision": 0.0}  # NaN, None: nothing measured
    # in the order logged, which the MLflow UI keeps: Compare's parallel-coordinates plot shows
    # the first metric the runs share by default, so the important one goes first
    assert list(run.data.metrics) == ["box_f1", "added_precision"]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "label_quality")] == [
        "label_quality/summary.md"
    ]
    assert mlflow_tracking.run_url(run.info.run_id) == url


def test_a_training_run_is_in_the_training_experiment_and_fails_with_its_block(tmp_path):
    root = tmp_path / "project"
    mlflow_tracking = _project(root)
    with mlflow_tracking.training_run(
        "iteration-0", tags={"iteration": "0"}, params={"preset": "micro"}
    ) as run:
        run.log_metrics({"loss": 2.5, "learning_rate": None}, step=1)
    with pytest.raises(RuntimeError, match="out of memory"):
        with mlflow_tracking.training_run("iteration-1", tags={"iteration": "1"}, params={}) as failed:
            raise RuntimeError("out of memory")

    client = _client(root)
    training = client.get_experiment_by_name("relabel/training")
    runs = {r.info.run_name: r for r in client.search_runs([training.experiment_id])}
    assert runs["iteration-0"].info.status == "FINISHED" and runs["iteration-1"].info.status == "FAILED"
    assert runs["iteration-0"].data.metrics == {"loss": 2.5}
    assert URL.match(run.url)["experiment"] == training.experiment_id
    assert URL.match(run.url)["run"] == run.run_id and URL.match(failed.url)["run"] == failed.run_id


def test_a_project_with_the_single_experiment_of_earlier_versions_keeps_it_and_logs_new_runs_apart(tmp_path):
    root = tmp_path / "project"
    mlflow_tracking = _project(root)
    client = _client(root)
    (root / "data" / "mlflow" / "artifacts").mkdir(parents=True)
    old_experiment = client.create_experiment(
        "relabel", artifact_location=(root / "data" / "mlflow" / "artifacts").as_uri()
    )
    old_run = client.create_run(old_experiment, run_name="florence2-iteration-0")
    client.set_terminated(old_run.info.run_id)

    url = mlflow_tracking.log_report(
        experiment=Experiment.EVALUATION,
        run_name="iteration-1",
        tags={"training_run_id": old_run.info.run_id},
        params={},
        metrics={"map": 0.1},
        report_dir=_report(tmp_path),
        artifact_path="evaluation",
    )
    assert client.get_experiment(URL.match(url)["experiment"]).name == "relabel/evaluation"
    assert [r.info.run_name for r in client.search_runs([old_experiment])] == ["florence2-iteration-0"]
    # a link to an old run (e.g. an earlier model's training run) opens it where it is
    old_url = URL.match(mlflow_tracking.run_url(old_run.info.run_id))
    assert (old_url["experiment"], old_url["run"]) == (old_experiment, old_run.info.run_id)
    # one the store lost (data/mlflow deleted, the Dagster metadata kept): MLflow's route by run
    assert (
        mlflow_tracking.run_url("0" * 32)
        == f"http://127.0.0.1:5000/#/runs/{'0' * 32}?workflowType=machine_learning"
    )


def test_an_experiment_made_without_the_kind_tag_gets_it(tmp_path):
    root = tmp_path / "project"
    mlflow_tracking = _project(root)
    client = _client(root)
    made = client.create_experiment("relabel/filter")
    assert mlflow_tracking.experiment_id(Experiment.FILTER) == made
    assert client.get_experiment(made).tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_installed_mlflow_ui_takes_the_view_and_the_run_page_from_the_url():
    """The URL form relabel writes is the one the installed MLflow UI reads: a hash route
    ``#/experiments/<id>/runs/<run>``, and the ``workflowType`` query parameter, which
    overrides the UI's GenAI/machine-learning switch (stored in the browser, GenAI by
    default) that decides the experiment's kind in MLflow 3.17."""
    import mlflow

    bundles = sorted(
        (Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js").glob("main.*.js")
    )
    if not bundles:
        pytest.skip("this MLflow has no UI bundle (mlflow-skinny)")
    ui = bundles[0].read_text(encoding="utf-8")
    assert "createHashRouter" in ui
    assert '"/experiments/:experimentId/runs/:runUuid"' in ui
    assert 'e.MACHINE_LEARNING="machine_learning"' in ui and 'get("workflowType")' in ui
    assert 'key:"mlflow.workflowType"' in ui  # the switch the URL overrides
