"""The `relabel` command line, headless, as a script or a cron job drives it: every phase through
Dagster, status as JSON, exports that pycocotools and `datasets` load, one-line failures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import RELABEL, relabel

pytestmark = pytest.mark.slow


def as_json(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)  # stdout holds the JSON only: progress goes to stderr


def test_every_command_has_help():
    done = subprocess.run([RELABEL, "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    commands = (
        "world",
        "ingest",
        "materialize",
        "iterate",
        "demo",
        "status",
        "export",
        "resume",
        "unfreeze",
        "ui",
    )
    assert all(command in done.stdout for command in commands)
    for command in commands:
        sub = subprocess.run([RELABEL, command, "--help"], capture_output=True, text=True)
        assert sub.returncode == 0 and "usage: relabel" in sub.stdout, command


def test_the_engine_runs_headless_and_exports_what_other_tools_load(headless_project, tmp_path):
    from pycocotools.coco import COCO

    # the phases ran once for the session (``headless_project``: the other end-to-end tests
    # read their runs and take the project on); this test goes on in a copy as they left it
    _, done, root = headless_project
    assert as_json(done[("world",)])["runs"] == ["render_world"]
    ingested = as_json(done[("ingest",)])
    assert ingested["runs"] == ["catalog_sources", "ingest_shards shard-00", "ingest_shards shard-01"]
    for phase in ("audit", "annotate"):
        as_json(done[("materialize", phase)])
    as_json(done[("materialize", "merge", "--iteration", "0")])
    # one shard (the steps over every shard wait), then the whole phase
    first = done[("materialize", "filter", "--iteration", "0", "--shards", "shard-00")]
    assert as_json(first)["runs"] == ["filter_shards 0|shard-00"]
    assert "report_filtering skipped: it reads every shard" in first.stderr
    assert as_json(done[("materialize", "filter", "--iteration", "0")])["runs"] == [
        "filter_shards 0|shard-00",
        "filter_shards 0|shard-01",
        "report_filtering 0",
    ]

    status = as_json(relabel(root, "--json", "status"))
    (iteration,) = status["iterations"]
    data = root / "data"
    filtered = pl.read_parquet(data / "filter" / "filtered_labels" / "iteration-0" / "*.parquet")
    assert iteration["iteration"] == 0 and iteration["filtered_labels"] == filtered.height > 0
    assert (
        iteration["gates_passed"] > 0 and iteration["gates_failed"] == [] and not iteration["model_trained"]
    )
    assert iteration["review_queue"] is None  # queued after the model's re-annotation
    assert status["frozen_split"]["images"] == status["setup"]["eval_images"] > 0
    assert status["runs"]["SUCCESS"] >= 9 and status["runs"]["FAILURE"] == 0
    human = relabel(root, "status")
    assert human.returncode == 0 and "iteration 0:" in human.stdout and "frozen split:" in human.stdout

    # the default iteration is the latest whose gates passed: 0
    coco = as_json(relabel(root, "--json", "export", "--format", "coco"))
    folder = Path(coco["folder"])
    assert coco["iteration"] == 0 and folder == data / "export" / "coco" / "iteration-0"
    loaded = COCO(str(folder / "instances.json"))
    # the training images with the iteration's labels, the frozen split's with their audited ones
    audited = pl.read_parquet(data / "audit" / "frozen" / "labels.parquet")
    exported = pl.concat([filtered.filter(~pl.col("image_id").is_in(audited["image_id"].implode())), audited])
    assert (
        len(loaded.getAnnIds())
        == exported.filter(pl.col("task") == "object", pl.col("box").is_not_null()).height
    )
    card = (folder / "DATASET_CARD.md").read_text()
    assert card.startswith("---") and "iteration 0" in card and "CC0-1.0" in card
    assert set(coco["made_from"]) >= {
        f"filter/filtered_labels/iteration-0/{shard}.parquet" for shard in ("shard-00", "shard-01")
    }
    before = {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}
    as_json(relabel(root, "--json", "export", "--format", "coco", "--iteration", "0"))
    assert {
        path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()
    } == before  # same bytes

    hf = as_json(relabel(root, "--json", "export", "--format", "hf-parquet", "--min-score", "0.5"))
    import datasets

    labels = datasets.load_dataset(
        "parquet",
        data_files={"labels": str(Path(hf["folder"]) / "labels.parquet")},
        cache_dir=str(tmp_path / "hf"),
    )["labels"]
    assert labels.num_rows == sum(hf["labels_by_task"].values()) <= exported.height
    assert (
        min(
            score
            for score, source in zip(labels["score"], labels["source"], strict=True)
            if score is not None
        )
        >= 0.5
    )
    split_images = set(audited["image_id"])
    assert {
        source
        for image, source in zip(labels["image_id"], labels["source"], strict=True)
        if image in split_images
    } == {"human-audit@world-auditor"}

    # the DVC stage of the exports is committed: dvc status is clean for it
    dvc = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), "status", "--json", "dvc.yaml:export"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert dvc.returncode == 0 and json.loads(dvc.stdout) == {}, dvc.stdout


def test_failures_exit_non_zero_with_a_one_line_reason(tiny_project):
    unknown = relabel(tiny_project, "materialize", "filter", "--iteration", "0", "--shards", "shard-99")
    assert unknown.returncode == 1
    assert (
        unknown.stderr.strip()
        == "relabel materialize: unknown shards ['shard-99']; the project has ['shard-00', 'shard-01']"
    )
    nothing = relabel(tiny_project, "export", "--format", "yolo")
    assert nothing.returncode == 1 and len(nothing.stderr.strip().splitlines()) == 1
    assert "no iteration has filtered labels" in nothing.stderr
    elsewhere = relabel(tiny_project / "data", "status")
    assert elsewhere.returncode == 1 and "no params.yaml" in elsewhere.stderr


def test_a_failed_gate_is_named_with_what_it_measured_on_the_command_line_and_in_status(hand_made_shards):
    root = hand_made_shards
    as_json(relabel(root, "--json", "materialize", "merge", "--iteration", "0"))
    # shard-01's rare class (kite) has only low-confidence labels: the filters drop them all
    filtering = relabel(root, "materialize", "filter", "--iteration", "0")
    assert filtering.returncode == 1
    assert filtering.stderr.strip().splitlines()[-1] == (
        "relabel materialize: filter_shards failed for ['0|shard-01']: "
        "gate filtered_labels_keep_every_class failed: "
        "class retention 0 < 0.5 (category kite) (see the run in the Dagster UI: relabel ui)"
    )

    (iteration,) = as_json(relabel(root, "--json", "status"))["iterations"]
    assert iteration["gates_failed"] == [
        {
            "gate": "0|shard-01 filter/filtered_labels:filtered_labels_keep_every_class",
            "why": "class retention 0 < 0.5 (category kite)",
            "measured": 0.0,
            "threshold": 0.5,
        }
    ]
    human = relabel(root, "status")
    assert (
        "    failed gate: 0|shard-01 filter/filtered_labels:filtered_labels_keep_every_class: "
        "class retention 0 < 0.5 (category kite)\n"
    ) in human.stdout
