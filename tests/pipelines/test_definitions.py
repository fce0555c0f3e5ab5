import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey

from pipelines.definitions import build_definitions
from pipelines.phases import FILTER_SHARDS_JOB, INGEST_SHARDS_JOB
from resources.layout import GATES


@pytest.mark.parametrize("package", ["relabel", "assets", "models", "data_checks", "pipelines", "resources"])
def test_the_generic_package_names_resolve_to_this_project(package, project_root):
    module = importlib.import_module(package)
    assert Path(module.__file__).resolve().parent == project_root / package


def test_dagster_definitions_validate_passes_on_the_workspace(project_root, tiny_project):
    dagster = Path(sys.executable).parent / "dagster"
    (tiny_project / "dh").mkdir()
    result = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=project_root,
        env={**os.environ, "RELABEL_ROOT": str(tiny_project), "DAGSTER_HOME": str(tiny_project / "dh")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful" in result.stdout + result.stderr


def test_shards_are_the_partitions_of_the_ingest_assets(tiny_project):
    defs = build_definitions(str(tiny_project))
    job = defs.resolve_job_def(INGEST_SHARDS_JOB)
    assert job.partitions_def.get_partition_keys() == ["shard-00", "shard-01"]
    graph = defs.resolve_asset_graph()
    for name in ("images", "human_labels", "ingest_quarantine"):
        assert graph.get(AssetKey(["ingest", name])).partitions_def == job.partitions_def
    assert graph.get(AssetKey(["world", "embedded_world"])).partitions_def is None
    # every gate is a blocking check per partition of the asset it gates (a shard for ingest,
    # an iteration and shard for the filters, an iteration for the rare-class guard)
    checks = {key: graph.get(key) for key in graph.asset_check_keys}
    assert {(key.asset_key, key.name) for key in checks} == {
        (asset, name) for asset, names in GATES.items() for name in names
    }
    assert all(
        check.blocking and check.partitions_def == graph.get(key.asset_key).partitions_def
        for key, check in checks.items()
    )
    iteration_shards = defs.resolve_job_def(FILTER_SHARDS_JOB).partitions_def
    assert graph.get(AssetKey(["filter", "filtered_labels"])).partitions_def == iteration_shards
    assert {d.name for d in iteration_shards.partitions_defs} == {"iteration", "shard"}
    filter_job = defs.resolve_job_def(FILTER_SHARDS_JOB)
    assert {key.name for key in filter_job.asset_layer.asset_graph.asset_check_keys} >= set(
        GATES[AssetKey(["filter", "filtered_labels"])]
    )
