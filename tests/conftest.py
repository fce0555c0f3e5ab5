"""Fixtures shared by every test package."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def project_root() -> Path:
    """The root of this checkout (params.yaml, dvc.yaml, workspace.yaml)."""
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def coco_mini_dir() -> Path:
    """The 80 real COCO photos in ../shared/data/coco-mini; the test skips where it is absent."""
    path = SHARED_DATA / "coco-mini"
    if not (path / "annotations" / "instances.json").is_file():
        pytest.skip(f"coco-mini is not present at {path}")
    return path


def write_tiny_project(root: Path, **world: object) -> Path:
    """A project folder with this checkout's dvc.yaml and a params.yaml for a tiny world
    (16 images, 2 shards), so end-to-end tests run in seconds and never touch ./data."""
    import shutil

    import yaml

    root.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["shards"]["count"] = 2
    params["world"].update({"n_images": 16, "max_objects": 4, **world})
    for spec in params["annotate"]["perception"]:
        if spec["kind"] == "trained_detector":
            spec["settings"] = {**spec.get("settings", {}), "epochs": 3}
    # the model phase: the micro preset for a few steps, short answers
    params["model"].update(preset="micro", tokenizer={"vocab_size": 600, "min_frequency": 2})
    params["model"]["train"].update(steps=4, batch_size=4, warmup_steps=1, checkpoint_every=2, num_workers=0)
    params["model"]["generation"].update(batch_size=8, max_new_tokens=16)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(PROJECT_ROOT / "dvc.yaml", root / "dvc.yaml")
    return root


@pytest.fixture
def tiny_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny project in a temporary folder, made the project root for Dagster code."""
    root = write_tiny_project(tmp_path / "project")
    monkeypatch.setenv("RELABEL_ROOT", str(root))
    return root


def materialize_project(
    root: Path,
    instance,
    shards: tuple[str, ...] = ("shard-00", "shard-01"),
    phases: tuple[str, ...] = ("world", "ingest"),
) -> dict:
    """Materialize ``phases`` of the project at ``root`` with ``dagster.materialize`` into
    ``instance``, job by job as the CLI runs them (each job's own asset selection), a shard job
    once per shard of ``shards``, an iteration job for iteration 0. Returns the result of each
    partitioned run by ``(job name, partition)`` and of each unpartitioned run by job name."""
    from dagster import DynamicPartitionsDefinition, materialize

    from pipelines.definitions import build_definitions
    from pipelines.phases import PHASE_JOBS

    defs = build_definitions(str(root))
    everything = [*defs.assets, *defs.asset_checks]
    jobs = {job.name: job for job in defs.jobs}
    results = {}
    for phase in phases:
        for name in PHASE_JOBS[phase]:
            job = jobs[name]
            keys = shards if job.partitions_def else (None,)
            if isinstance(job.partitions_def, DynamicPartitionsDefinition):
                instance.add_dynamic_partitions(job.partitions_def.name, ["0"])
                keys = ("0",)
            for key in keys:
                result = materialize(
                    everything, selection=job.selection, partition_key=key, resources=defs.resources, instance=instance
                )
                assert result.success, f"{name} {key or ''} failed"
                results[(name, key) if key else name] = result
    return results


@pytest.fixture
def instance(tmp_path: Path):
    """A real Dagster instance (sqlite storage) in a temporary folder."""
    from dagster import DagsterInstance

    with DagsterInstance.ephemeral(tempdir=str(tmp_path / "dagster_home")) as dagster_instance:
        yield dagster_instance


@pytest.fixture
def materialize_all(instance):
    """``materialize_project`` bound to the test's Dagster instance."""
    return lambda root, **options: materialize_project(root, instance, **options)


@pytest.fixture(scope="session")
def annotated_project(tmp_path_factory: pytest.TempPathFactory):
    """A tiny project materialized through initial annotation and filtering, once per test
    session: ``(root, results, materialize_more)``, the results as ``materialize_project``
    returns them; ``materialize_more(phases=...)`` runs later phases into the same instance
    (they write only those phases' outputs)."""
    from dagster import DagsterInstance

    root = write_tiny_project(tmp_path_factory.mktemp("annotated") / "project")
    with pytest.MonkeyPatch.context() as patch, DagsterInstance.ephemeral(tempdir=str(root.parent / "dh")) as instance:
        patch.setenv("RELABEL_ROOT", str(root))
        results = materialize_project(root, instance, phases=("world", "ingest", "annotate", "filter"))
        yield root, results, functools.partial(materialize_project, root, instance)
