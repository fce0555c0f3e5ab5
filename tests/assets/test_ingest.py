"""End to end: the embedded world and every shard materialized with `dagster.materialize`
into a real (temporary) Dagster instance, versioned in a real DVC repository."""

import json
from contextlib import chdir

import polars as pl
import pytest
import yaml
from dvc.repo import Repo

from relabel.labels import check_schema
from relabel.versioning import file_md5
from tests.conftest import materialize_project, write_tiny_project

SHARD_OUTPUTS = ("images", "human_labels", "ingest_quarantine")


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """A tiny project's world and every shard materialized once, for the tests that only
    read them: ``(root, results)``."""
    from dagster import DagsterInstance

    root = write_tiny_project(tmp_path_factory.mktemp("ingested") / "project")
    with (
        pytest.MonkeyPatch.context() as patch,
        DagsterInstance.ephemeral(tempdir=str(root.parent / "dagster_home")) as instance,
    ):
        patch.setenv("RELABEL_ROOT", str(root))
        yield root, materialize_project(root, instance)


def _read_all(root, name):
    return pl.concat(
        [pl.read_parquet(p) for p in sorted((root / "data" / "ingest" / name).glob("*.parquet"))]
    )


def test_every_shard_materializes_with_its_tables_checks_and_dvc_version(ingested):
    tiny_project, results = ingested
    for key in ("shard-00", "shard-01"):
        result = results[("ingest_shards", key)]
        for name in SHARD_OUTPUTS:
            path = tiny_project / "data" / "ingest" / name / f"{key}.parquet"
            check_schema(
                pl.read_parquet(path), {"images": "images", "human_labels": "labels"}.get(name, "quarantine")
            )
            (materialization,) = [
                m
                for m in result.asset_materializations_for_node("ingested_shard")
                if m.asset_key.path[-1] == name
            ]
            assert materialization.partition == key
            assert materialization.metadata["dvc_md5"].value == file_md5(path)
        evaluations = result.get_asset_check_evaluations()
        assert {e.check_name for e in evaluations} == {
            "images_valid",
            "human_labels_valid",
            "ingest_quarantine_explained",
        }
        assert all(e.passed for e in evaluations)
    stages = ["dvc.yaml:world", "dvc.yaml:ingest"]  # the phases this test materialized
    with chdir(tiny_project), Repo(str(tiny_project)) as repo:
        assert repo.status(targets=stages) == {}, "dvc.lock does not match what Dagster wrote"
        assert repo.status(targets=stages, cloud=True) == {}, "a materialization was not pushed to the remote"


def test_no_human_label_is_lost_between_the_world_and_the_label_store(ingested):
    tiny_project, _ = ingested
    human = tiny_project / "data" / "world" / "human"
    instances = json.loads((human / "instances.json").read_text())
    captions = json.loads((human / "captions.json").read_text())
    detailed = json.loads((human / "detailed_captions.json").read_text())
    alt_lines = (tiny_project / "data" / "world" / "web" / "alt_text.jsonl").read_bytes().splitlines()
    raw_labels = (
        len(instances["annotations"])
        + len(captions["annotations"])
        + len(detailed["annotations"])
        + sum(1 for line in alt_lines if line.strip())
    )

    labels = _read_all(tiny_project, "human_labels")
    quarantine = pl.concat(
        [
            _read_all(tiny_project, "ingest_quarantine"),
            pl.read_parquet(tiny_project / "data" / "ingest" / "catalog_quarantine.parquet"),
        ]
    )
    assert len(labels) + quarantine.filter(pl.col("record_kind") == "label").height == raw_labels
    images = _read_all(tiny_project, "images")
    raw_images = len(instances["images"]) + len(list((tiny_project / "data" / "world" / "web").glob("*.png")))
    assert len(images) + quarantine.filter(pl.col("record_kind") == "image").height == raw_images
    # the world injects its defects by default; each must be in quarantine with its reason
    reasons = set(quarantine["reason"])
    assert {
        "truncated_image",
        "duplicate_image",
        "missing_file",
        "box_outside_image",
        "zero_area_box",
        "non_utf8_text",
    } <= reasons
    # the engine never reads ground truth: it is not among the catalogued sources
    catalog = pl.read_parquet(tiny_project / "data" / "ingest" / "source_catalog.parquet")
    assert not catalog.filter(pl.col("uri").str.contains("ground_truth")).height


def test_an_earlier_version_of_a_shard_is_restored_byte_for_byte(tiny_project, materialize_all):
    first = materialize_all(tiny_project)[("ingest_shards", "shard-00")]
    (meta,) = [
        m
        for m in first.asset_materializations_for_node("ingested_shard")
        if m.asset_key.path[-1] == "human_labels"
    ]
    path = tiny_project / "data" / "ingest" / "human_labels" / "shard-00.parquet"
    first_bytes = path.read_bytes()

    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["world"]["seed"] += 1
    (tiny_project / "params.yaml").write_text(yaml.safe_dump(params))
    materialize_all(tiny_project)
    assert path.read_bytes() != first_bytes

    from resources.services import DvcResource, ProjectResource

    dvc = DvcResource(project=ProjectResource(root=str(tiny_project)))
    restored = dvc.restore(meta.metadata["dvc_md5"].value, tiny_project / "restored.parquet")
    assert restored.read_bytes() == first_bytes
