"""Running the phases' Dagster jobs for the command line: each run in a process of a spawned
pool (shards in parallel), against the project's persistent instance, and, when a run fails,
the cause in one line (the failed gate with its measured value and threshold, the step's
exception, the DVC error); also the re-execution of interrupted runs."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pipelines.phases import EXPORT_JOBS, PHASE_JOBS
from relabel.config import load_params, resolve
from relabel.shards import shard_keys


class CommandError(Exception):
    """A command cannot do what was asked; the message is the one line the user sees."""


def error_line(type_name: str, module: str, message: str) -> str:
    """An exception in one line: its type, marked as DVC's where DVC raised it (its message is
    then DVC's own), and the first line of its message."""
    first = next(iter(message.strip().splitlines()), "")
    kind = f"DVC {type_name}" if module.split(".")[0] == "dvc" else type_name
    return f"{kind}: {first}" if first else kind


def run_export(
    root: Path, fmt: str, iteration: str, overrides: dict, pool: ProcessPoolExecutor
) -> tuple[Path, dict]:
    """Run the export job of ``fmt`` for ``iteration``; its folder and manifest."""
    from assets.export import MANIFEST_FILE
    from resources.layout import EXPORTS, files_dir

    print(f"[relabel] export: {EXPORT_JOBS[fmt]} for iteration {iteration}", file=sys.stderr, flush=True)
    op_name = "__".join(EXPORTS[fmt].path)
    (outcome,) = pool.map(
        _execute,
        [EXPORT_JOBS[fmt]],
        [iteration],
        [os.cpu_count() or 1],
        [{"ops": {op_name: {"config": overrides}}}],
    )
    if not outcome.ok:
        raise CommandError(f"the {fmt} export of iteration {iteration} failed: {outcome.why} ({see_runs(1)})")
    folder = files_dir(EXPORTS[fmt], resolve(root, load_params(root / "params.yaml").data_dir), iteration)
    return folder, json.loads((folder / MANIFEST_FILE).read_text())


def latest_passing_iteration(status: dict) -> int | None:
    """The newest iteration with filtered labels on every shard and no failed gate."""
    ready = [
        it
        for it in status["iterations"]
        if it["filtered_labels"] and it["merged_shards"] == len(status["shards"]) and not it["gates_failed"]
    ]
    return max((it["iteration"] for it in ready), default=None)


def process_pool() -> ProcessPoolExecutor:
    # one pool for the whole command: its processes import the definitions once, and each
    # run of a phase goes to one of them (shards in parallel)
    return ProcessPoolExecutor(
        max_workers=os.cpu_count() or 1, mp_context=multiprocessing.get_context("spawn")
    )


def next_iteration_to_run(root: Path) -> int:
    """The iteration ``relabel iterate`` starts: the newest one + 1 (0 when there is none);
    the newest one when it has not re-annotated every shard yet (it is finished first)."""
    from dagster import DagsterInstance

    from pipelines.automation import next_iteration
    from relabel.shards import shard_keys

    with DagsterInstance.get() as instance:
        found = next_iteration(instance, shard_keys(load_params(root / "params.yaml").shards.count))
        existing = [int(key) for key in instance.get_dynamic_partitions("iteration") if key.isdigit()]
    return int(found) if isinstance(found, str) else max(existing)


def materialize_phase(
    phase: str,
    root: Path,
    iteration: str,
    pool: ProcessPoolExecutor,
    shards: list[str] | None = None,
    run_config: dict | None = None,
) -> list[str]:
    """Run the jobs of ``phase`` in ``pool``'s processes: unpartitioned ones once, shard jobs
    once per shard (of ``shards``, default all), in parallel, iteration jobs for ``iteration``
    (added to the instance's iterations if new). Returns the runs as ``job [partition]``;
    raises ``CommandError`` naming the runs that failed and why."""
    from pipelines import definitions

    done = []
    for job_name in PHASE_JOBS[phase]:
        job = definitions.defs.resolve_job_def(job_name)
        if shards is not None and not _by_shard(job.partitions_def):
            # a step over every shard (a report, a model) waits for a run of the whole phase
            print(
                f"[relabel] {phase}: {job_name} skipped: it reads "
                "every shard (run the phase without --shards)",
                file=sys.stderr,
                flush=True,
            )
            continue
        keys = _partition_keys(job.partitions_def, iteration, shards)
        print(f"[relabel] {phase}: {job_name} over {len(keys)} run(s)", file=sys.stderr, flush=True)
        # runs side by side share the cores: torch in each gets its share, since more threads
        # than free cores make it many times slower
        cores = os.cpu_count() or 1
        threads = max(1, cores // min(len(keys), cores))
        outcomes = list(
            pool.map(_execute, [job_name] * len(keys), keys, [threads] * len(keys), [run_config] * len(keys))
        )
        failed = [
            (key or job_name, outcome) for key, outcome in zip(keys, outcomes, strict=True) if not outcome.ok
        ]
        if failed:
            raise CommandError(
                f"{job_name} failed for {[key for key, _ in failed]}: "
                f"{failure_reasons(failed)} ({see_runs(len(failed))})"
            )
        done += [f"{job_name} {key}" if key else job_name for key in keys]
    return done


def _by_shard(partitions) -> bool:
    """Whether a job's runs are per shard (shards, or iteration x shard)."""
    from dagster import MultiPartitionsDefinition, StaticPartitionsDefinition

    return isinstance(partitions, (StaticPartitionsDefinition, MultiPartitionsDefinition))


def _partition_keys(partitions, iteration: str, shards: list[str] | None = None) -> list[str | None]:
    from dagster import (
        DagsterInstance,
        DynamicPartitionsDefinition,
        MultiPartitionsDefinition,
    )

    from resources.partitions import ITERATIONS, iteration_shard_key

    if partitions is None:
        return [None]
    every_shard = shard_keys(load_params(Path(os.environ["RELABEL_ROOT"]) / "params.yaml").shards.count)
    unknown = sorted(set(shards or ()) - set(every_shard))
    if unknown:
        raise CommandError(f"unknown shards {unknown}; the project has {every_shard}")
    chosen = [shard for shard in every_shard if shards is None or shard in shards]
    if isinstance(partitions, (DynamicPartitionsDefinition, MultiPartitionsDefinition)):
        with DagsterInstance.get() as instance:
            if not instance.has_dynamic_partition(ITERATIONS.name, iteration):
                instance.add_dynamic_partitions(ITERATIONS.name, [iteration])
    if isinstance(partitions, DynamicPartitionsDefinition):
        return [iteration]
    if isinstance(partitions, MultiPartitionsDefinition):
        return [iteration_shard_key(iteration, shard) for shard in chosen]
    return chosen


@dataclass(frozen=True)
class RunOutcome:
    """How one run ended, as a worker process hands it back: whether it succeeded and, when
    not, why in one line (``run_failure``)."""

    ok: bool
    why: str = ""


def failure_reasons(failed: list[tuple[str, RunOutcome]]) -> str:
    """Why the runs failed: the reason once when they share it, else each run's by name."""
    reasons = {outcome.why for _, outcome in failed}
    return (
        reasons.pop()
        if len(reasons) == 1
        else "; ".join(f"{name}: {outcome.why}" for name, outcome in failed)
    )


def see_runs(count: int) -> str:
    return f"see the {'run' if count == 1 else 'runs'} in the Dagster UI: relabel ui"


def run_failure(instance, run_id: str) -> str:
    """Why a run failed, in one line: its failed gates (blocking checks) with what each
    measured against its threshold (their ``why``, ``data_checks.gates.verdict_metadata``),
    then its failed steps with the exception their code raised or how their process died;
    else what the run's own failure says."""
    from dagster import DagsterEventType

    reasons = []
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION):
        evaluation = entry.asset_check_evaluation
        if evaluation.blocking and not evaluation.passed:
            why = evaluation.metadata.get("why")
            reasons.append(
                f"gate {evaluation.check_name} failed" + (f": {why.value}" if why is not None else "")
            )
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE):
        error = entry.dagster_event.step_failure_data.error
        if error.cls_name == "DagsterAssetCheckFailedError":
            continue  # a gate's step: the gate's own verdict is above
        # Dagster wraps what user code raised (its DagsterExecution...Error): the cause says why
        raised = error.cause if error.cls_name.startswith("Dagster") and error.cause is not None else error
        said = (
            _crash(instance, run_id, entry.step_key)
            if raised.cls_name == "ChildProcessCrashException"
            else _storederror_line(raised.message)
        )
        reasons.append(f"step {entry.step_key}: {said}")
    if reasons:
        return "; ".join(reasons)
    failures = instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE)
    if not failures:
        return f"run {run_id} failed and recorded no reason"
    data = failures[-1].dagster_event.event_specific_data
    if data is None or data.error is None:
        return failures[-1].dagster_event.message
    # a step process that failed before its step began (its definitions did not load, say):
    # the multiprocess executor lists each as "In process <pid>: module.Type: message"
    children = [
        line.split(": ", 1)[1] for line in data.error.message.splitlines() if line.startswith("In process ")
    ]
    return (
        "; ".join(_storederror_line(child) for child in children)
        if children
        else _storederror_line(data.error.message)
    )


def _crash(instance, run_id: str, step_key: str) -> str:
    """How the process of a step died (killed, out of memory): the exit code the executor's
    engine event gives ("child process for step X unexpectedly exited with code 137")."""
    from dagster import DagsterEventType

    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        found = re.search(
            rf"for step {re.escape(step_key)} unexpectedly exited with code (-?\d+)",
            entry.dagster_event.message or "",
        )
        if found:
            return f"its process died (exit code {found.group(1)})"
    return "its process died"


def _storederror_line(message: str) -> str:
    """``_error_line`` of an error as Dagster stores it: "module.Type: message"."""
    qualified, _, text = message.partition(": ")
    module, _, type_name = qualified.strip().rpartition(".")
    return error_line(type_name, module, text)


def _execute(
    job_name: str, partition_key: str | None, threads: int, run_config: dict | None = None
) -> RunOutcome:
    import torch
    from dagster import DagsterInstance, execute_job

    from pipelines import definitions

    torch.set_num_threads(threads)
    # and so do the step processes a run starts (the multiprocess executor's), and the other
    # thread pools in them (OpenMP, onnxruntime's OCR)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    tags = {"dagster/partition": partition_key} if partition_key else None
    if partition_key and "|" in partition_key:
        # a multi-partition run names each dimension's key too, as the UI's launches do
        iteration, shard = partition_key.split("|")
        tags.update({"dagster/partition/iteration": iteration, "dagster/partition/shard": shard})
    with DagsterInstance.get() as instance:
        result = execute_job(
            definitions.reconstructable_job(job_name),
            instance=instance,
            tags=tags,
            # the full event stream is in the UI; the terminal gets the phases' own messages
            run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}, **(run_config or {})},
        )
        return RunOutcome(True) if result.success else RunOutcome(False, run_failure(instance, result.run_id))


def resume_interrupted() -> dict[str, RunOutcome]:
    """Re-execute from failure every run still marked as running whose process is gone: its
    finished steps are kept (their outputs were written whole: the IO manager writes beside
    and renames), the others run again. Returns how each re-execution ended, by run id."""
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    with DagsterInstance.get() as instance:
        running = instance.get_runs(
            RunsFilter(statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING])
        )
        dead = [run for run in running if not _process_alive(instance, run.run_id)]
        for run in dead:
            instance.report_run_failed(
                run, "its process is gone (killed or crashed): relabel resume re-executes it"
            )
    if not dead:
        print("[relabel] nothing to resume: no run was interrupted", file=sys.stderr)
        return {}
    print(
        f"[relabel] resuming {len(dead)} interrupted run(s): "
        + ", ".join(f"{r.job_name} {r.tags.get('dagster/partition', '')}".strip() for r in dead),
        file=sys.stderr,
        flush=True,
    )
    workers = min(len(dead), os.cpu_count() or 1)
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        outcomes = list(pool.map(_reexecute, [run.job_name for run in dead], [run.run_id for run in dead]))
    return {run.run_id: outcome for run, outcome in zip(dead, outcomes, strict=True)}


def _process_alive(instance, run_id: str) -> bool:
    """Whether the process that executes ``run_id``'s steps still runs (its engine event says
    which: "Executing steps in process (pid: N)")."""
    import psutil
    from dagster import DagsterEventType

    for record in instance.get_records_for_run(run_id, of_type=DagsterEventType.ENGINE_EVENT).records:
        pid = record.event_log_entry.dagster_event.event_specific_data.metadata.get("pid")
        if pid is not None:
            try:
                # a killed process whose parent died too can linger as a zombie: it is gone
                return psutil.Process(int(pid.value)).status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False
    return False


def _reexecute(job_name: str, run_id: str) -> RunOutcome:
    from dagster import DagsterInstance, ReexecutionOptions, execute_job

    from pipelines import definitions

    with DagsterInstance.get() as instance:
        parent = instance.get_run_by_id(run_id)
        result = execute_job(
            definitions.reconstructable_job(job_name),
            instance=instance,
            # the re-execution is of the same partition: its tags say which
            tags={key: value for key, value in parent.tags.items() if key.startswith("dagster/partition")},
            reexecution_options=ReexecutionOptions.from_failure(run_id, instance),
            run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
        )
        return RunOutcome(True) if result.success else RunOutcome(False, run_failure(instance, result.run_id))
