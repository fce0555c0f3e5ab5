"""Typed Dagster resources: the project (its root and params.yaml), DVC and MLflow.

Every setting comes from ``params.yaml`` through ``ProjectResource``; the DVC resource reads
its remote from there too, so the file stays the one home of configuration.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from pathlib import Path

from dagster import ConfigurableResource

from relabel import versioning
from relabel.config import Params, load_params, resolve

PROJECT_ROOT_ENV = "RELABEL_ROOT"


def default_root() -> str:
    """The project root: ``$RELABEL_ROOT`` if set, else the working directory (where
    ``dagster dev`` and ``make`` run)."""
    return os.environ.get(PROJECT_ROOT_ENV, os.getcwd())


class ProjectResource(ConfigurableResource):
    """The project on disk: its root folder and the validated ``params.yaml`` in it."""

    root: str
    params_file: str = "params.yaml"

    @cached_property
    def params(self) -> Params:
        return load_params(self.path(self.params_file))

    def path(self, relative: str) -> Path:
        return resolve(self.root, relative)

    @property
    def data_dir(self) -> Path:
        return self.path(self.params.data_dir)

    def ontology(self) -> tuple[str, ...]:
        """The category names of the seed ontology (``annotate.ontology``); empty while the
        file does not exist yet (before the world is rendered)."""
        path = self.path(self.params.annotate.ontology)
        if not path.is_file():
            return ()
        return tuple(category["name"] for category in json.loads(path.read_text())["categories"])


class DvcResource(ConfigurableResource):
    """Versions what the phases write: DVC commit + push after each materialization, and
    restore of any recorded version."""

    project: ProjectResource

    def setup_for_execution(self, context) -> None:  # noqa: ANN001 - dagster's signature
        dvc = self.project.params.dvc
        versioning.ensure_repo(Path(self.project.root), dvc.remote_name, dvc.remote_url)

    def commit(self, stage: str, written: Path) -> versioning.FileVersion:
        return versioning.commit_stage(
            Path(self.project.root), stage, written, push=self.project.params.dvc.push
        )

    def restore(self, md5: str, destination: Path) -> Path:
        return versioning.restore_file(Path(self.project.root), md5, destination)


# The MLflow experiments relabel logs to, one per kind of run, each named
# ``<params.yaml mlflow.experiment>/<kind>``: runs of one kind have the same metrics, so the
# chart view and Compare of an experiment show only what its runs share.
class Experiment(StrEnum):
    TRAINING = "training"
    EVALUATION = "evaluation"
    LABEL_QUALITY = "label-quality"
    FILTER = "filter"
    ANNOTATION_SCORES = "annotation-scores"


EXPERIMENTS: dict[Experiment, str] = {
    Experiment.TRAINING: (
        "The Florence-2 model of each iteration as it trains (model/florence2): one run per "
        "iteration, iteration-<k>, with the loss and learning rate per step, the loss per task, "
        "its settings and a registered model version."
    ),
    Experiment.EVALUATION: (
        "Each iteration's model on the frozen, human-audited evaluation split "
        "(model/heldout_scores): one run per iteration, iteration-<k>, the model's scores beside "
        "the trivial baseline's (baseline.*), with the iteration report as artifacts."
    ),
    Experiment.LABEL_QUALITY: (
        "How good each iteration's training labels are against the world's ground truth "
        "(filter/label_quality): one run per iteration, iteration-<k>."
    ),
    Experiment.FILTER: (
        "What the filters of each iteration kept and dropped (filter/filter_report): one run per "
        "iteration, iteration-<k>."
    ),
    Experiment.ANNOTATION_SCORES: (
        "The specialists and their consensus against the world's ground truth "
        "(annotate/annotation_scores): one run per materialization, initial-annotations."
    ),
}
# The MLflow UI (3.x) shows an experiment either as "GenAI apps & agents" (traces,
# evaluations) or as "Machine learning" (runs, charts, Compare). The experiment tag records
# the kind; the UI of MLflow 3.17 follows its own switch (stored in the browser, GenAI by
# default) unless the page's URL names the view, so every run URL relabel writes names it.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MACHINE_LEARNING_KIND = "custom_model_development"
MACHINE_LEARNING_VIEW = "workflowType=machine_learning"


class MlflowResource(ConfigurableResource):
    """MLflow tracking for training and evaluation runs: a sqlite store and local artifacts
    by default (params.yaml ``mlflow``), one experiment per kind of run (``EXPERIMENTS``), so
    the runs of one kind compare side by side in the MLflow UI."""

    project: ProjectResource

    @property
    def tracking_uri(self) -> str:
        uri = self.project.params.mlflow.tracking_uri
        prefix = "sqlite:///"
        if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
            # a relative sqlite path in params is relative to the project root
            database = self.project.path(uri[len(prefix) :])
            database.parent.mkdir(parents=True, exist_ok=True)
            return prefix + str(database)
        return uri

    def experiment_name(self, kind: Experiment) -> str:
        """``<mlflow.experiment>/<kind>``, e.g. ``relabel/training``."""
        if kind not in EXPERIMENTS:
            raise ValueError(
                f"no MLflow experiment of kind {kind!r}; the kinds: {list(map(str, Experiment))}"
            )
        return f"{self.project.params.mlflow.experiment}/{kind}"

    def experiment_id(self, kind: Experiment) -> str:
        """The experiment of ``kind``'s runs, created on first use (with its description and
        the machine-learning kind; a project with the single experiment of earlier versions
        keeps it, and new runs go to these)."""
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        client = MlflowClient(self.tracking_uri)
        name = self.experiment_name(kind)
        existing = client.get_experiment_by_name(name)
        if existing is not None:
            if existing.tags.get(EXPERIMENT_KIND_TAG) != MACHINE_LEARNING_KIND:
                client.set_experiment_tag(existing.experiment_id, EXPERIMENT_KIND_TAG, MACHINE_LEARNING_KIND)
            return existing.experiment_id
        artifacts = self.project.path(self.project.params.mlflow.artifact_root) / kind
        artifacts.mkdir(parents=True, exist_ok=True)
        tags = {EXPERIMENT_KIND_TAG: MACHINE_LEARNING_KIND, "mlflow.note.content": EXPERIMENTS[kind]}
        try:
            return client.create_experiment(name, artifact_location=artifacts.as_uri(), tags=tags)
        except MlflowException as error:  # another step process created it first
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return client.get_experiment_by_name(name).experiment_id

    def log_report(
        self,
        experiment: Experiment,
        run_name: str,
        tags: dict[str, str],
        params: dict[str, object],
        metrics: dict[str, float],
        report_dir: Path,
        artifact_path: str,
    ) -> str:
        """One MLflow run in the experiment of kind ``experiment`` holding a phase's report:
        its tags, parameters, metrics (NaN and None left out: nothing was there to measure)
        and the report folder as artifacts. Returns the run's URL in the MLflow UI."""
        from mlflow import MlflowClient
        from mlflow.entities import Param

        client = MlflowClient(self.tracking_uri)
        run = client.create_run(self.experiment_id(experiment), run_name=run_name, tags=tags)
        try:
            client.log_batch(
                run.info.run_id, params=[Param(key, str(value)[:250]) for key, value in params.items()]
            )
            _log_metrics(client, run.info.run_id, metrics, step=0)
            client.log_artifacts(run.info.run_id, str(report_dir), artifact_path=artifact_path)
        except BaseException:
            client.set_terminated(run.info.run_id, "FAILED")
            raise
        client.set_terminated(run.info.run_id, "FINISHED")
        return self._url(run.info.experiment_id, run.info.run_id)

    def run_url(self, run_id: str) -> str:
        """Where the run shows in `relabel ui` (the MLflow UI at params.yaml ui), in the
        machine-learning view of its experiment (also for runs of the single experiment of
        earlier versions). A run the store no longer has gets MLflow's route by run alone."""
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        try:
            experiment_id = MlflowClient(self.tracking_uri).get_run(run_id).info.experiment_id
        except MlflowException:
            return f"{self.project.params.ui.mlflow_url}/#/runs/{run_id}?{MACHINE_LEARNING_VIEW}"
        return self._url(experiment_id, run_id)

    def _url(self, experiment_id: str, run_id: str) -> str:
        base = self.project.params.ui.mlflow_url
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{MACHINE_LEARNING_VIEW}"

    @contextmanager
    def training_run(
        self, run_name: str, tags: dict[str, str], params: Mapping[str, object]
    ) -> Iterator[TrainingRun]:
        """An MLflow run of the training experiment open while a model trains: FINISHED when
        the block ends, FAILED (and the error re-raised) when it raises."""
        from mlflow import MlflowClient
        from mlflow.entities import Param

        client = MlflowClient(self.tracking_uri)
        run = client.create_run(self.experiment_id(Experiment.TRAINING), run_name=run_name, tags=tags)
        client.log_batch(
            run.info.run_id, params=[Param(key, str(value)[:6000]) for key, value in params.items()]
        )
        url = self._url(run.info.experiment_id, run.info.run_id)
        try:
            yield TrainingRun(client, run.info.run_id, run.info.artifact_uri, url)
        except BaseException:
            client.set_terminated(run.info.run_id, "FAILED")
            raise
        client.set_terminated(run.info.run_id, "FINISHED")


def _measured(metrics: Mapping[str, float | None]) -> dict[str, float]:
    """The metrics that hold a number: NaN and None mean nothing was there to measure."""
    return {
        key: float(value)
        for key, value in metrics.items()
        if value is not None and not math.isnan(float(value))
    }


def _log_metrics(client, run_id: str, metrics: Mapping[str, float | None], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(
        run_id, metrics=[Metric(key, value, now, step) for key, value in _measured(metrics).items()]
    )


@dataclass(frozen=True)
class TrainingRun:
    """An open MLflow run: what a training loop's callback logs to, and the registration of
    the model it made."""

    client: object  # mlflow.MlflowClient, imported lazily (mlflow takes seconds to import)
    run_id: str
    artifact_uri: str
    url: str

    def log_metrics(self, metrics: Mapping[str, float | None], step: int) -> None:
        """One batch of metrics at ``step``; NaN and None are left out (nothing to measure)."""
        _log_metrics(self.client, self.run_id, metrics, step)

    def register_model(self, folder: Path, name: str, alias: str, tags: dict[str, str]) -> str:
        """Log ``folder`` as the run's ``model`` artifact and register it as a new version of
        the registered model ``name``, reachable as ``models:/<name>@<alias>``. Returns the
        version number."""
        from mlflow.exceptions import MlflowException

        self.client.log_artifacts(self.run_id, str(folder), artifact_path="model")
        try:
            self.client.create_registered_model(
                name, description="The unified Florence-2 model of relabel, one version per iteration."
            )
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        version = self.client.create_model_version(
            name, source=f"{self.artifact_uri}/model", run_id=self.run_id, tags=tags
        )
        self.client.set_registered_model_alias(name, alias, version.version)
        return str(version.version)


def point_dagster_at(root: Path) -> None:
    """Make the project at ``root`` the one this process and its job subprocesses work on, and
    its instance (``$DAGSTER_HOME``, by default under the data directory) the Dagster
    instance: the subprocesses re-import ``pipelines.definitions``, which reads the root from
    ``$RELABEL_ROOT``."""
    os.environ["RELABEL_ROOT"] = str(root)
    params = load_params(root / "params.yaml")
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(resolve(root, params.data_dir) / "dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
