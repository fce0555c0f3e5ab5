"""Fixtures shared by every test package."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    # `make test`'s workers share the cores: each gets its share of threads (torch's OpenMP,
    # BLAS, polars), set before those libraries start (their subprocesses inherit it);
    # otherwise each worker starts a thread per core and the spinning threads of two workers
    # slow torch-bound tests three- to four-fold
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "POLARS_MAX_THREADS"):
        os.environ.setdefault(_variable, _threads)

import polars as pl
import pytest

from relabel.labels import frame
from relabel.shards import shard_of
from resources.layout import FROZEN_SPLIT, files_dir

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
RELABEL = str(Path(sys.executable).parent / "relabel")
# the session's materialized projects: `make test` runs its tests in two pytest-xdist workers,
# and every test that reads one of these runs in the same worker (one xdist group), so each
# project is materialized once per run, not once per worker
SESSION_PROJECTS = frozenset({"headless_project", "annotated_project", "iterated_project"})


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups off the items
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SESSION_PROJECTS.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("session-projects"))


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


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def default_sigint() -> None:
    """``preexec_fn`` of a server a test starts: a process a shell starts in the background
    (CI, nohup, `make test &`) inherits SIGINT ignored, and so would ``dagster dev``, which
    stops on SIGTERM by treating it as SIGINT; it would then be killed only after the wait."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    """The data of a GraphQL query to a Dagster UI at ``url``; the test fails on any error."""
    import requests

    response = requests.post(url, json={"query": query, "variables": variables or {}}, timeout=30)
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


def write_tiny_project(root: Path, **world: object) -> Path:
    """A project folder with this checkout's dvc.yaml and a params.yaml for a tiny world
    (16 images, 2 shards), so end-to-end tests run in seconds and never touch ./data. Its UIs
    (``relabel ui``) are on free ports, so tests in parallel workers never share one."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["shards"]["count"] = 2
    params["world"].update({"n_images": 16, "max_objects": 4, **world})
    for spec in params["annotate"]["perception"]:
        if spec["kind"] == "trained_detector":
            spec["settings"] = {**spec.get("settings", {}), "epochs": 3}
    # self-training on, at a test budget, so the iterations exercise it
    # (the backbone's features cached in the project: no test writes to the user's cache)
    params["refine"]["self_training"].update(
        specialists=["mobilenet"], settings={"epochs": 2, "feature_cache": str(root / "backbone-features")}
    )
    # the caption specialist fine-tuned for a few steps too (the model trains for 4)
    params["refine"]["caption_specialist"]["steps"] = 2
    # the model phase: the micro preset for a few steps, short answers
    params["model"].update(preset="micro", tokenizer={"vocab_size": 600, "min_frequency": 2})
    params["model"]["train"].update(steps=4, batch_size=4, warmup_steps=1, checkpoint_every=2, num_workers=0)
    params["model"]["generation"].update(batch_size=8, max_new_tokens=16)
    params["ui"].update(dagster_port=free_port(), docs_port=free_port(), mlflow_port=free_port())
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name in ("dvc.yaml", "workspace.yaml"):
        shutil.copy(PROJECT_ROOT / name, root / name)
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
    iteration: str = "0",
) -> dict:
    """Materialize ``phases`` of the project at ``root`` with ``dagster.materialize`` into
    ``instance``, job by job as the CLI runs them (each job's own asset selection), a shard job
    once per shard of ``shards``, an iteration job for ``iteration``, an iteration x shard job
    once per shard of it. Returns the result of each partitioned run by ``(job name,
    partition)`` and of each unpartitioned run by job name."""
    from dagster import DynamicPartitionsDefinition, MultiPartitionsDefinition, materialize

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
            if isinstance(job.partitions_def, (DynamicPartitionsDefinition, MultiPartitionsDefinition)):
                instance.add_dynamic_partitions("iteration", [iteration])
                keys = (
                    (iteration,)
                    if isinstance(job.partitions_def, DynamicPartitionsDefinition)
                    else tuple(f"{iteration}|{s}" for s in shards)
                )
            for key in keys:
                result = materialize(
                    everything,
                    selection=job.selection,
                    partition_key=key,
                    resources=defs.resources,
                    instance=instance,
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


def run_job(root: Path, instance, job_name: str, partition: str | None = None):
    """Run the project's job ``job_name`` (its own asset selection) for ``partition`` with
    ``dagster.materialize`` into ``instance``, a failure returned, not raised."""
    from dagster import materialize

    from pipelines.definitions import build_definitions

    defs = build_definitions(str(root))
    job = next(job for job in defs.jobs if job.name == job_name)
    return materialize(
        [*defs.assets, *defs.asset_checks],
        selection=job.selection,
        partition_key=partition,
        resources=defs.resources,
        instance=instance,
        raise_on_error=False,
    )


def relabel(root: Path, *arguments: str) -> subprocess.CompletedProcess:
    """``relabel --root ROOT ARGUMENTS`` as a script runs it, with the project's own Dagster
    home (``data/dagster_home``)."""
    env = {**os.environ, "RELABEL_ROOT": str(root), "DAGSTER_HOME": str(root / "data" / "dagster_home")}
    return subprocess.run([RELABEL, "--root", str(root), *arguments], env=env, capture_output=True, text=True)


# what `headless_project` runs, in order: every setup phase, then iteration 0's merge and its
# filter, first for one shard (the steps over every shard wait), then for the whole phase
HEADLESS_COMMANDS = (
    ("world",),
    ("ingest",),
    ("materialize", "audit"),
    ("materialize", "annotate"),
    ("materialize", "merge", "--iteration", "0"),
    ("materialize", "filter", "--iteration", "0", "--shards", "shard-00"),
    ("materialize", "filter", "--iteration", "0"),
)


@pytest.fixture(scope="session")
def headless_project(tmp_path_factory: pytest.TempPathFactory):
    """A tiny project taken through the setup phases and iteration 0's labels (merged and
    filtered) by the ``relabel`` command line (``--json``), headless as a script drives it,
    once per test session: ``(root, done, copy)``, ``done`` each command's completed process
    by its arguments (``HEADLESS_COMMANDS``), ``copy`` a copy of the project (its data, DVC
    cache and Dagster home) as these commands left it. In a session that asks for both,
    ``annotated_project`` reads the runs at ``root`` and takes the project on; the command
    line test goes on in ``copy``."""
    root = write_tiny_project(tmp_path_factory.mktemp("headless") / "project")
    done = {}
    for arguments in HEADLESS_COMMANDS:
        done[arguments] = relabel(root, "--json", *arguments)
        assert done[arguments].returncode == 0, (arguments, done[arguments].stderr[-2000:])
    copy = root.parent / "copy"
    shutil.copytree(root, copy, symlinks=True)
    return root, done, copy


def recorded_results(root: Path, instance) -> dict:
    """The latest run of each job in ``instance`` (a command line's), as ``materialize_project``
    returns them: by ``(job name, partition)`` or job name, each with the events the run
    recorded in the instance's event log."""
    from dagster import ExecuteInProcessResult

    from pipelines.definitions import build_definitions

    defs = build_definitions(str(root))
    results = {}
    for record in sorted(instance.get_run_records(), key=lambda record: record.create_timestamp):
        run = record.dagster_run
        events = [entry.dagster_event for entry in instance.all_logs(run.run_id) if entry.is_dagster_event]
        partition = run.tags.get("dagster/partition")
        results[(run.job_name, partition) if partition else run.job_name] = ExecuteInProcessResult(
            events, run, None, defs.resolve_job_def(run.job_name)
        )
    return results


@pytest.fixture(scope="session")
def annotated_project(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A tiny project materialized through initial annotation and filtering, once per test
    session: ``(root, results, materialize_more)``, the results as ``materialize_project``
    returns them; ``materialize_more(phases=...)`` runs later phases into the same instance
    with ``dagster.materialize`` (they write only those phases' outputs).

    Where the session runs the command line test too, this is ``headless_project``'s project,
    its runs read back from its Dagster instance (the same jobs are not run twice); else the
    phases are materialized here, in-process (faster than the command line)."""
    from dagster import DagsterInstance

    headless = any("headless_project" in item.fixturenames for item in request.session.items)
    if headless:
        root, _, _ = request.getfixturevalue("headless_project")
        instance = DagsterInstance.from_config(str(root / "data" / "dagster_home"))
    else:
        root = write_tiny_project(tmp_path_factory.mktemp("annotated") / "project")
        instance = DagsterInstance.ephemeral(tempdir=str(root.parent / "dh"))
    with pytest.MonkeyPatch.context() as patch, instance:
        patch.setenv("RELABEL_ROOT", str(root))
        if headless:
            results = recorded_results(root, instance)
            assert all(result.success for result in results.values())
        else:
            results = materialize_project(
                root, instance, phases=("world", "ingest", "audit", "annotate", "merge", "filter")
            )
        yield root, results, functools.partial(materialize_project, root, instance)


@pytest.fixture(scope="session")
def iterated_project(annotated_project):
    """``annotated_project`` taken through iteration 0 (corpus, model, re-annotation, audit
    queue and its verdicts) and into iteration 1 (its merged labels, filtered, gated and
    scored): ``(root, results)``."""
    root, results, materialize_more = annotated_project
    results = {**results, **materialize_more(phases=("corpus", "model", "refine", "review"))}
    results.update(materialize_more(phases=("merge", "filter"), iteration="1"))
    return root, results


# hand-made shards that start at the merge phase, for fast asset and pipeline tests
def image_ids_of(shard: str, count: int, n: int = 2) -> list[str]:
    """``n`` content-hash-like ids that fall in ``shard``."""
    found, i = [], 0
    while len(found) < n:
        candidate = f"{i:08x}" + "ab" * 28
        if shard_of(candidate, count) == shard:
            found.append(candidate)
        i += 1
    return found


def write_shard(root: Path, shard: str, *, kites_score: float) -> None:
    """A shard of two images (one of the training split, one of the eval split): a ball, a
    cat and three kites (the rare class) on each, found by the consensus with ``kites_score``,
    plus a human caption."""
    data = root / "data"
    images = image_ids_of(shard, 2)
    frame(
        "images",
        [
            {
                "image_id": i,
                "uri": f"world/images/{i[:8]}.png",
                "width": 100,
                "height": 80,
                "dataset": "world",
                "split": split,
            }
            for i, split in zip(images, ("train", "eval"), strict=True)
        ],
    ).write_parquet(_path(data / "ingest" / "images" / f"{shard}.parquet"))
    rows = []
    for image in images:
        rows.append(
            {
                "label_id": f"{image[:8]}-cap",
                "image_id": image,
                "annotation_type": "text",
                "task": "brief_caption",
                "text": "A red ball next to a cat.",
                "score": 1.0,
                "source": "human",
                "iteration": 0,
                "status": "raw",
            }
        )
        for n, (category, box, score) in enumerate(
            [("ball", [5.0, 5.0, 30.0, 30.0], 0.9), ("cat", [40.0, 5.0, 70.0, 40.0], 0.8)]
            + [("kite", [10.0 + 25 * k, 50.0, 30.0 + 25 * k, 75.0], kites_score) for k in range(3)]
        ):
            rows.append(
                {
                    "label_id": f"{image[:8]}-{n}",
                    "image_id": image,
                    "annotation_type": "region_text",
                    "task": "object",
                    "region_kind": "object",
                    "category": category,
                    "text": category,
                    "box": box,
                    "score": score,
                    "source": "consensus@1",
                    "iteration": 0,
                    "status": "raw",
                    "agreement": 1,
                }
            )
    frame("labels", rows).write_parquet(_path(data / "annotate" / "initial_annotations" / f"{shard}.parquet"))


def write_catalog_and_freeze(root: Path) -> None:
    """The source catalog and a frozen evaluation split of the hand-made shards' images, as the
    ingest and audit phases would leave them (no image files: no perceptual hashes)."""
    from relabel.evaluation_split import freeze, split_manifest
    from relabel.ingest.catalog import FILES_SCHEMA

    data = root / "data"
    images = pl.read_parquet(data / "ingest" / "images" / "*.parquet")
    catalog = images.select("image_id", "uri", "dataset", split=pl.col("split").cast(pl.String))
    pl.concat([pl.DataFrame(schema=FILES_SCHEMA), catalog], how="diagonal_relaxed").write_parquet(
        _path(data / "ingest" / "source_catalog.parquet")
    )
    held = images.filter(pl.col("split") == "eval")
    labels = pl.read_parquet(data / "annotate" / "initial_annotations" / "*.parquet").clear()
    freeze(
        files_dir(FROZEN_SPLIT, data),
        split_manifest(held, labels, data),
        by="conftest",
        reason="hand-made",
        auditors=(),
    )
    labels.write_parquet(files_dir(FROZEN_SPLIT, data) / "labels.parquet")


def _path(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def hand_made_shards(tiny_project: Path) -> Path:
    """The tiny project with hand-made initial annotations: shard-00 is sound, shard-01's rare
    class (kite) has only low-confidence labels, which the filters drop, so it collapses."""
    ontology = {"categories": [{"id": i, "name": name} for i, name in enumerate(("ball", "cat", "kite"), 1)]}
    _path(tiny_project / "data" / "world" / "ontology.json").write_text(json.dumps(ontology))
    write_shard(tiny_project, "shard-00", kites_score=0.9)
    write_shard(tiny_project, "shard-01", kites_score=0.05)
    write_catalog_and_freeze(tiny_project)
    return tiny_project


@pytest.fixture
def guard_project(tiny_project: Path) -> Path:
    """The tiny project with hand-made initial annotations on which a confident model can
    erase a class: on every image three kites, each also seen as a ball by the shape
    detector (weakly), beside a real ball and a cat. Every class is rare here
    (refine.guard.rare_share 0.9), so the rare-class guard watches them all."""
    import yaml

    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["refine"]["guard"]["rare_share"] = 0.9
    (tiny_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ontology = {"categories": [{"id": i, "name": name} for i, name in enumerate(("ball", "cat", "kite"), 1)]}
    _path(tiny_project / "data" / "world" / "ontology.json").write_text(json.dumps(ontology))
    for shard in ("shard-00", "shard-01"):
        write_shard(tiny_project, shard, kites_score=0.9)
        path = tiny_project / "data" / "annotate" / "initial_annotations" / f"{shard}.parquet"
        labels = pl.read_parquet(path)
        kites = labels.filter(pl.col("category") == "kite")
        seen_as_balls = kites.with_columns(
            label_id=pl.col("label_id") + "-ball",
            category=pl.lit("ball"),
            text=pl.lit("ball"),
            score=pl.lit(0.3),
            source=pl.lit("shapes@1"),
        )
        pl.concat([labels, seen_as_balls], how="vertical").write_parquet(path)
    write_catalog_and_freeze(tiny_project)
    return tiny_project
