"""Typed Dagster resources: the project (its root and params.yaml) and DVC.

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


class MlflowResource(ConfigurableResource):
    """MLflow tracking for training and evaluation runs: a sqlite store and local artifacts
    by default (params.yaml ``mlflow``), so runs compare side by side in the MLflow UI."""

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

    def experiment_id(self) -> str:
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        settings = self.project.params.mlflow
        existing = mlflow.get_experiment_by_name(settings.experiment)
        if existing is not None:
            return existing.experiment_id
        artifacts = self.project.path(settings.artifact_root)
        artifacts.mkdir(parents=True, exist_ok=True)
        return mlflow.create_experiment(settings.experiment, artifact_location=artifacts.as_uri())

    def log_report(
        self,
        run_name: str,
        tags: dict[str, str],
        params: dict[str, object],
        metrics: dict[str, float],
        report_dir: Path,
        artifact_path: str,
    ) -> str:
        """One MLflow run holding a phase's report: its tags, parameters, metrics (NaN and
        None left out: nothing was there to measure) and the report folder as artifacts.
        Returns the run's URL in the MLflow UI."""
        import mlflow

        with mlflow.start_run(experiment_id=self.experiment_id(), run_name=run_name) as run:
            mlflow.set_tags(tags)
            mlflow.log_params({key: str(value)[:250] for key, value in params.items()})
            mlflow.log_metrics(_measured(metrics))
            mlflow.log_artifacts(str(report_dir), artifact_path=artifact_path)
        return self.run_url(run.info.run_id)

    def run_url(self, run_id: str) -> str:
        """Where the run shows in `make mlflow` (the MLflow UI on 127.0.0.1:5000)."""
        return f"http://127.0.0.1:5000/#/experiments/{self.experiment_id()}/runs/{run_id}"

    @contextmanager
    def training_run(
        self, run_name: str, tags: dict[str, str], params: Mapping[str, object]
    ) -> Iterator[TrainingRun]:
        """An MLflow run open while a model trains: FINISHED when the block ends, FAILED (and
        the error re-raised) when it raises."""
        from mlflow import MlflowClient
        from mlflow.entities import Param

        client = MlflowClient(self.tracking_uri)
        run = client.create_run(self.experiment_id(), run_name=run_name, tags=tags)
        client.log_batch(
            run.info.run_id, params=[Param(key, str(value)[:6000]) for key, value in params.items()]
        )
        try:
            yield TrainingRun(client, run.info.run_id, run.info.artifact_uri, self.run_url(run.info.run_id))
        except BaseException:
            client.set_terminated(run.info.run_id, "FAILED")
            raise
        client.set_terminated(run.info.run_id, "FINISHED")

    def add_to_run(
        self, run_id: str, metrics: Mapping[str, float | None], report_dir: Path, artifact_path: str
    ) -> str:
        """Log more metrics (NaN and None left out) and a report folder to a finished run, e.g.
        a model's held-out scores to its training run, so one row of the MLflow UI holds both."""
        from mlflow import MlflowClient

        client = MlflowClient(self.tracking_uri)
        _log_metrics(client, run_id, metrics, step=0)
        client.log_artifacts(run_id, str(report_dir), artifact_path=artifact_path)
        return self.run_url(run_id)


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
