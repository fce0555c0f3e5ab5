"""`relabel ui`'s pieces that need no running UI: the Data Docs server and its options."""

import pytest
import requests

from pipelines.cli import AUTOMATION_SENSOR, build_parser, serve_folder, switch_on_automation
from tests.conftest import free_port


def test_the_docs_folder_is_served_over_http(tmp_path):
    page = tmp_path / "gx_docs" / "filtered_labels_valid" / "0" / "shard-00" / "index.html"
    page.parent.mkdir(parents=True)
    page.write_text("<html><title>Data Docs</title></html>")
    port = free_port()
    server = serve_folder(tmp_path / "gx_docs", "127.0.0.1", port)
    try:
        base = f"http://127.0.0.1:{port}"
        found = requests.get(f"{base}/filtered_labels_valid/0/shard-00/index.html", timeout=5)
        assert found.status_code == 200 and "Data Docs" in found.text
        assert requests.get(f"{base}/no_such_check/index.html", timeout=5).status_code == 404
    finally:
        server.shutdown()
        server.server_close()


def test_a_missing_docs_folder_is_made_so_the_server_starts(tmp_path):
    port = free_port()
    server = serve_folder(tmp_path / "gx_docs", "127.0.0.1", port)
    try:
        assert (tmp_path / "gx_docs").is_dir()
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
    finally:
        server.shutdown()
        server.server_close()


def test_the_dagster_port_defaults_to_params_and_automation_is_opt_in():
    args = build_parser().parse_args(["ui"])
    assert args.dagster_port is None  # params.yaml ui.dagster_port
    assert not args.automation and not args.no_mlflow


def test_the_ui_leaves_out_one_of_the_two_uis_at_most():
    assert build_parser().parse_args(["ui", "--no-dagster"]).no_dagster
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ui", "--no-dagster", "--no-mlflow"])


@pytest.mark.slow
def test_relabel_ui_automation_switches_the_sensor_on_in_the_projects_instance(tiny_project, monkeypatch):
    from dagster import DagsterInstance
    from dagster._core.scheduler.instigation import InstigatorStatus

    home = tiny_project / "data" / "dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    switch_on_automation(tiny_project)
    with DagsterInstance.from_config(str(home)) as instance:
        states = {state.name: state.status for state in instance.all_instigator_state()}
    assert states == {AUTOMATION_SENSOR: InstigatorStatus.RUNNING}
