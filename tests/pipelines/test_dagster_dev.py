"""The UI path: `dagster dev` serves the workspace, and a shard's materialization launched
through its GraphQL API (the mutation the UI's Materialize button sends) succeeds."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import default_sigint, free_port, graphql

LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""
RUN_STATUS = "query Status($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"


@pytest.mark.slow
def test_a_shard_launched_from_the_dagster_ui_api_succeeds(
    project_root, tiny_project, tmp_path, materialize_all
):
    # the shard reads the catalog; materialize the unpartitioned assets first, in-process
    materialize_all(tiny_project, shards=())
    port = free_port()
    home = tmp_path / "dagster_home_dev"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "RELABEL_ROOT": str(tiny_project), "DAGSTER_HOME": str(home)}
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster"),
            "dev",
            "-w",
            "workspace.yaml",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=project_root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=default_sigint,
    )
    url = f"http://127.0.0.1:{port}/graphql"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/server_info", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "dagster dev did not come up in 120 s"
            assert server.poll() is None, "dagster dev exited"
            time.sleep(1)
        params = {
            "selector": {
                "repositoryLocationName": "relabel",
                "repositoryName": "__repository__",
                "jobName": "__ASSET_JOB",
                "assetSelection": [
                    {"path": ["ingest", name]} for name in ("images", "human_labels", "ingest_quarantine")
                ],
                "assetCheckSelection": [],
            },
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "shard-01"}]},
            "runConfigData": {},
        }
        launched = None
        while launched is None:
            # the code location may still be loading right after the server answers
            result = graphql(url, LAUNCH, {"params": params})["launchRun"]
            if result["__typename"] == "LaunchRunSuccess":
                launched = result["run"]["runId"]
            else:
                assert time.monotonic() < deadline, result
                time.sleep(2)
        status = None
        while status not in ("SUCCESS", "FAILURE", "CANCELED"):
            assert time.monotonic() < deadline + 120, f"run {launched} still {status}"
            time.sleep(2)
            status = graphql(url, RUN_STATUS, {"id": launched})["runOrError"]["status"]
        assert status == "SUCCESS"
        assert (tiny_project / "data" / "ingest" / "human_labels" / "shard-01.parquet").is_file()
        assert not (tiny_project / "data" / "ingest" / "human_labels" / "shard-00.parquet").exists()
    finally:
        # dagster dev stops its webserver, daemon and code server on SIGTERM (in seconds); if
        # it has not within a minute, the whole group is killed
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
