"""Where the steps of a run execute, as ``params.yaml``'s ``executor`` section says.

``multiprocess`` (the default): child processes of the run on this machine, at most
``max_concurrent`` at once. ``celery``: tasks on an existing Celery cluster through
dagster-celery (the ``celery`` extra); its workers must reach the same broker, the same Dagster
instance (``$DAGSTER_HOME``) and the same project folder (``$RELABEL_ROOT``) as the run.

A worker for a project is started with::

    python -m pipelines.executors --root PROJECT [-- CELERY WORKER ARGS]

which writes the worker's config (the broker and backend of the params file) under
``$DAGSTER_HOME`` and runs ``worker_command``'s ``dagster-celery worker start``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml
from dagster import ExecutorDefinition, multiprocess_executor

from relabel.config import ExecutorParams, load_params
from resources.services import point_dagster_at

# the module the Celery CLI loads the dagster-celery app (and its tasks) from
CELERY_APP = "dagster_celery.app"
# the queue dagster-celery routes every step to unless a step is tagged otherwise
CELERY_QUEUE = "dagster"
INSTALL_CELERY = (
    "pip install -e '.[celery]' and pip install --no-deps dagster-celery==0.29.27 (make install does both)"
)
MISSING_CELERY = (
    f"params.yaml sets executor.kind: celery, but dagster-celery is not installed; {INSTALL_CELERY}"
)


def executor_for(params: ExecutorParams) -> ExecutorDefinition:
    """The executor of the jobs that do not pin their own: ``params.kind`` configured with
    ``params``' settings."""
    if params.kind == "multiprocess":
        return multiprocess_executor.configured({"max_concurrent": params.max_concurrent})
    if params.kind == "celery":
        try:
            from dagster_celery import celery_executor
        except ImportError as error:
            raise ImportError(MISSING_CELERY) from error
        return celery_executor.configured(celery_executor_config(params))
    raise ValueError(f"unknown executor kind {params.kind!r}")


def celery_executor_config(params: ExecutorParams) -> dict:
    """The ``celery_executor`` config of ``params``: its broker and result backend."""
    return {"broker": params.celery.broker, "backend": params.celery.backend}


def write_worker_config(params: ExecutorParams, path: str | Path) -> Path:
    """Write the YAML that ``dagster-celery worker start -y`` reads (the executor's config
    under ``execution.config``), so the workers listen where the runs send their steps."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        yaml.safe_dump({"execution": {"config": celery_executor_config(params)}}, sort_keys=False)
    )
    return path


def worker_command(config_yaml: str | Path, *celery_args: str, name: str | None = None) -> list[str]:
    """The command line that starts a dagster-celery worker with the config at
    ``config_yaml`` (see ``write_worker_config``) on the queue the celery executor uses;
    ``celery_args`` go on to ``celery worker`` (e.g. ``--concurrency 4``)."""
    command = [
        "dagster-celery",
        "worker",
        "start",
        "-A",
        CELERY_APP,
        "-y",
        str(config_yaml),
        "-q",
        CELERY_QUEUE,
    ]
    if name is not None:
        command += ["--name", name]
    # after `--`, so that dagster-celery's click passes them on instead of parsing them
    return [*command, "--", *celery_args] if celery_args else command


def worker_command_for(params_file: str | Path, *celery_args: str, name: str | None = None) -> list[str]:
    """``worker_command`` for a project's params file: writes its worker config into
    ``$DAGSTER_HOME/dagster_celery/relabel-worker.yaml`` and returns the command line."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        raise RuntimeError("DAGSTER_HOME must name the Dagster instance the runs use")
    config = write_worker_config(
        load_params(params_file).executor, Path(home) / "dagster_celery" / "relabel-worker.yaml"
    )
    return worker_command(config, *celery_args, name=name)


def main(argv: list[str] | None = None) -> int:
    """Start a Celery worker for the project at ``--root``, with the same ``$RELABEL_ROOT``
    and ``$DAGSTER_HOME`` as ``relabel`` would use there."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.executors",
        description="Start a dagster-celery worker for a relabel project.",
    )
    parser.add_argument("--root", default=os.getcwd(), help="project root holding params.yaml")
    parser.add_argument("--name", default=None, help="the worker's name (default: dagster-XXXXXX)")
    parser.add_argument("celery_args", nargs="*", help="more `celery worker` arguments, after --")
    args = parser.parse_args(argv)
    try:
        import dagster_celery  # noqa: F401
    except ImportError:
        raise SystemExit(f"dagster-celery is not installed; {INSTALL_CELERY}") from None
    root = Path(args.root).resolve()
    point_dagster_at(root)
    command = worker_command_for(root / "params.yaml", *args.celery_args, name=args.name)
    # dagster-celery runs `celery` from PATH: the one beside this interpreter
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    print(f"[relabel] {' '.join(command)}", flush=True)
    os.execvp(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
