"""A run killed in the middle of an iteration is resumed from where it stopped by `relabel
resume`: its finished steps are kept, the others run again, and no label is lost or doubled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter

pytestmark = pytest.mark.slow

RELABEL = str(Path(sys.executable).with_name("relabel"))
FILTERED_LABELS = AssetKey(["filter", "filtered_labels"])
TEXT_PARSES = AssetKey(["filter", "text_parses"])


def test_a_killed_filter_run_resumes_from_failure_with_no_label_lost_or_doubled(guard_project):
    root = guard_project
    env = {**os.environ, "RELABEL_ROOT": str(root), "DAGSTER_HOME": str(root / "data" / "dagster_home")}
    merged = subprocess.run(
        [RELABEL, "--root", str(root), "materialize", "merge", "--iteration", "0"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert merged.returncode == 0, merged.stdout + merged.stderr

    filtering = subprocess.Popen(
        [RELABEL, "--root", str(root), "materialize", "filter", "--iteration", "0"],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        # kill everything the moment one shard's filtered labels are written: its gates (which
        # import Great Expectations, seconds) and the other shard are still to come
        deadline = time.monotonic() + 120
        while not instance.fetch_materializations(FILTERED_LABELS, limit=1).records:
            assert filtering.poll() is None and time.monotonic() < deadline, (
                "the filter run ended before it could be killed"
            )
            time.sleep(0.05)
        os.killpg(filtering.pid, signal.SIGKILL)
        filtering.wait()
        interrupted = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED]))
        assert interrupted, "the kill left no run in the middle"
        parses_before = {
            r.asset_materialization.partition
            for r in instance.fetch_materializations(TEXT_PARSES, limit=10).records
        }

    resumed = subprocess.run(
        [RELABEL, "--root", str(root), "resume"], env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming {len(interrupted)} interrupted run(s)" in resumed.stderr  # progress goes to stderr

    with DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        for run in interrupted:
            assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
            (child,) = [other for other in instance.get_runs() if other.parent_run_id == run.run_id]
            assert child.tags["dagster/partition"] == run.tags["dagster/partition"]
            assert child.status == DagsterRunStatus.SUCCESS
        # every shard's text parses were made exactly once: a step that finished before the
        # kill was not run again, one that had not was run by the resumed run
        assert parses_before, "no step had finished before the kill"
        parses = [
            r.asset_materialization.partition
            for r in instance.fetch_materializations(TEXT_PARSES, limit=10).records
        ]
        assert sorted(parses) == ["0|shard-00", "0|shard-01"]
    data = root / "data"
    for shard in ("shard-00", "shard-01"):
        labels = pl.read_parquet(data / "merge" / "labels" / "iteration-0" / f"{shard}.parquet")
        kept = pl.read_parquet(data / "filter" / "filtered_labels" / "iteration-0" / f"{shard}.parquet")
        quarantined = pl.read_parquet(
            data / "filter" / "filter_quarantine" / "iteration-0" / f"{shard}.parquet"
        )
        assert labels.height == kept.height + quarantined.height
        assert kept["label_id"].is_unique().all()
        assert set(kept["label_id"]) | set(quarantined["label_id"]) == set(labels["label_id"])
    assert not list(data.rglob("*.partial")), "a half-written file was left behind"
