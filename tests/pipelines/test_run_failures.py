"""Why a run failed, in the one line the command line prints: a failed gate with what it
measured against its threshold, a failed step with the exception its code raised (DVC's
marked as such) or how its process died, a run that failed before its steps with what
was raised."""

from __future__ import annotations

import os

import polars as pl
from dagster import (
    AssetCheckResult,
    DagsterInstance,
    asset,
    asset_check,
    execute_job,
    job,
    materialize,
    op,
    reconstructable,
)
from dvc.exceptions import DvcException

from data_checks.gates import validate, verdict_metadata
from data_checks.suites import coverage_suite
from pipelines.runs import run_failure


@asset
def labels_per_image() -> pl.DataFrame:
    # two of four images labelled
    return pl.DataFrame({"image_id": ["a", "b", "c", "d"], "labels": [2, 0, 1, 0]})


@asset_check(asset=labels_per_image, blocking=True)
def labels_cover_images(labels_per_image: pl.DataFrame) -> AssetCheckResult:
    result = validate(coverage_suite(0.9), labels_per_image, index_column="image_id")
    return AssetCheckResult(passed=result.passed, metadata=verdict_metadata(result))


@asset(deps=[labels_per_image])
def downstream() -> None:
    """Never runs: the blocking gate stops it."""


@asset
def broken() -> None:
    raise ValueError("the shard has no images\nand a second line nobody needs")


@asset
def committed() -> None:
    raise DvcException("failed to commit dvc.yaml:annotate: output 'data/annotate' does not exist")


@op
def killed() -> None:
    os._exit(137)  # as the kernel's out-of-memory killer would end it


@job
def dies() -> None:
    killed()


def test_a_failed_gate_says_what_it_measured_against_its_threshold(instance):
    run = materialize(
        [labels_per_image, labels_cover_images, downstream], instance=instance, raise_on_error=False
    )
    assert not run.success
    assert run_failure(instance, run.run_id) == "gate labels_cover_images failed: labelled share 0.5 < 0.9"


def test_a_failed_step_says_what_its_code_raised(instance):
    run = materialize([broken], instance=instance, raise_on_error=False)
    assert run_failure(instance, run.run_id) == "step broken: ValueError: the shard has no images"


def test_a_dvc_error_is_marked_as_dvc_s_with_its_message(instance):
    run = materialize([committed], instance=instance, raise_on_error=False)
    assert run_failure(instance, run.run_id) == (
        "step committed: DVC DvcException: failed to commit "
        "dvc.yaml:annotate: output 'data/annotate' does not exist"
    )


def test_a_step_whose_process_died_says_how(tmp_path):
    # the multiprocess executor (the CLI's) needs a persistent instance
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        run = execute_job(reconstructable(dies), instance=instance)
        assert not run.success
        assert run_failure(instance, run.run_id) == "step killed: its process died (exit code 137)"


def test_a_run_that_fails_before_its_steps_says_what_was_raised(instance):
    # an ephemeral instance cannot run the multiprocess executor: the run fails before any step
    run = execute_job(reconstructable(dies), instance=instance)
    assert not run.success
    assert run_failure(instance, run.run_id).startswith("DagsterUnmetExecutorRequirementsError: ")
