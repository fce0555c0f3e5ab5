"""`relabel ui`'s pieces that need no running UI: the Data Docs server and its options."""

import socket

import requests

from pipelines.cli import build_parser, serve_folder


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_docs_folder_is_served_over_http(tmp_path):
    page = tmp_path / "gx_docs" / "filtered_labels_valid" / "0" / "shard-00" / "index.html"
    page.parent.mkdir(parents=True)
    page.write_text("<html><title>Data Docs</title></html>")
    port = _free_port()
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
    port = _free_port()
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
