"""relabel: the data engine from a terminal, through Dagster (runs show in the UI afterwards).

``relabel demo`` sets up the embedded world, runs two refinement iterations, exports the
result and prints what it made; ``relabel init PATH --images DIR [--coco ...]`` writes a project
on your own photos, where ``demo`` then runs without the world; ``relabel world`` / ``ingest`` / ``materialize PHASE
[--iteration K] [--shards ...]`` run one phase (``materialize`` is what each ``dvc.yaml`` stage
runs); ``relabel iterate`` runs whole iterations; ``relabel status`` shows the iterations, their
gates and counts; ``relabel export --format F`` writes an iteration's labels with a dataset
card; ``relabel unfreeze`` lifts the freeze of the evaluation split, recording who and why;
``relabel resume`` re-executes interrupted runs; ``relabel ui`` starts the Dagster and MLflow
UIs. ``--json`` prints any result as JSON; a failure exits non-zero with a one-line reason.
Runs go to the persistent instance in ``$DAGSTER_HOME`` (``data/dagster_home`` by default).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from dvc.repo import Repo

from pipelines.phases import EXPORT_JOBS, ITERATION_PHASES, LABEL_PHASES, PHASE_JOBS, SETUP_PHASES
from relabel.config import load_params, resolve
from pipelines.status import project_status, status_lines
from relabel.evaluation_split import frozen_dir, read_freeze, unfreeze
from relabel.shards import shard_keys
from relabel.versioning import commit_iterations

PHASES = tuple(PHASE_JOBS)
DEMO_ITERATIONS = 2
EXPORT_FORMATS = ("coco", "florence2", "hf-parquet", "yolo")


class CommandError(Exception):
    """A command cannot do what was asked; the message is the one line the user sees."""


def build_parser() -> argparse.ArgumentParser:
    """Every command and its options (``relabel COMMAND --help``)."""
    parser = argparse.ArgumentParser(prog="relabel", description=__doc__.splitlines()[0].removeprefix("relabel: "))
    parser.add_argument("--root", default=os.getcwd(), help="project root holding params.yaml (default: the working directory)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout (progress goes to stderr)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    init = commands.add_parser("init", help="write a project on your own photos (then run relabel demo or iterate in it)")
    init.add_argument("path", type=Path, help="the project folder to write (made if missing)")
    init.add_argument("--images", type=Path, required=True, help="the folder of photos")
    init.add_argument("--coco", type=Path, help="their COCO instances JSON (boxes, polygons, categories)")
    init.add_argument("--captions", type=Path, help="their COCO captions JSON")
    init.add_argument("--alt-text", type=Path, help="an alt-text sidecar of the photos (JSONL or CSV; README: sources)")
    init.add_argument("--shards", type=int, default=2, help="shards (Dagster partitions) of the collection (default 2)")
    init.add_argument("--force", action="store_true", help="overwrite the project's params.yaml and dvc.yaml")
    commands.add_parser("world", help="render the embedded demo world (the world phase)")
    commands.add_parser("ingest", help="catalog every source in params.yaml and ingest it shard by shard (the ingest phase)")
    materialize = commands.add_parser("materialize", help="run one phase through Dagster, for every shard or some")
    materialize.add_argument("phase", choices=PHASES)
    materialize.add_argument("--iteration", default="0", help="the iteration of an iteration phase (default: 0)")
    materialize.add_argument("--shards", nargs="+", metavar="SHARD", help="only these shards (e.g. shard-00 shard-02; default: all)")
    iterate = commands.add_parser("iterate", help="run whole refinement iterations after the annotate phase")
    iterate.add_argument("--iterations", type=int, default=1, help="models to train (default 1)")
    iterate.add_argument("--start", default=None, help="the first iteration (default: the next one to start)")
    demo = commands.add_parser("demo", help="set up, run two refinement iterations and summarise")
    demo.add_argument("--iterations", type=int, default=DEMO_ITERATIONS, help=f"models trained (default {DEMO_ITERATIONS})")
    commands.add_parser("status", help="iterations, gates passed and failed, counts, the frozen split and the runs")
    export = commands.add_parser("export", help="write an iteration's labels in a format other tools read, with a dataset card")
    export.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="coco, florence2 (JSONL), hf-parquet or yolo")
    export.add_argument("--iteration", default=None, help="default: the latest iteration whose gates all passed")
    export.add_argument("--min-score", type=float, default=None, help="leave out labels scored below this (default: export.min_score)")
    export.add_argument("--status", nargs="+", dest="statuses", metavar="STATUS", help="keep only labels of these statuses (default: export.statuses)")
    export.add_argument("--include-quarantined", action="store_true", default=None, help="also export the labels the filters quarantined")
    commands.add_parser("resume", help="re-execute, from where they stopped, the runs whose process died (killed, crashed)")
    unfreeze = commands.add_parser("unfreeze", help="lift the freeze of the evaluation split (logged); the next audit phase freezes it anew")
    unfreeze.add_argument("--by", required=True, help="who unfreezes it")
    unfreeze.add_argument("--reason", required=True, help="why")
    ui = commands.add_parser("ui", help="start the Dagster UI and the MLflow UI on this project (Ctrl-C stops both)")
    ui.add_argument("--dagster-port", type=int, default=3000)
    ui.add_argument("--mlflow-port", type=int, default=5000)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = Path(args.root).resolve()
    try:
        if args.command != "init" and not (root / "params.yaml").is_file():
            raise CommandError(f"no params.yaml in {root}: run relabel in a project root or pass --root")
        with _stdout_to_stderr(args.json):
            result = COMMANDS[args.command](args, root)
    except CommandError as error:
        print(f"relabel {args.command}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"relabel {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a one-line reason, not a traceback; the runs' own logs are in the UI
        print(f"relabel {args.command}: {_error_line(type(error).__name__, type(error).__module__, str(error))}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.payload, indent=2, default=str))
    elif result.text:
        print(result.text)
    return result.code


@contextmanager
def _stdout_to_stderr(active: bool) -> Iterator[None]:
    """With ``--json``, everything but the JSON goes to stderr: DVC, Dagster and the worker
    processes (which inherit the file descriptor) print progress to stdout."""
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _error_line(type_name: str, module: str, message: str) -> str:
    """An exception in one line: its type, marked as DVC's where DVC raised it (its message is
    then DVC's own), and the first line of its message."""
    first = next(iter(message.strip().splitlines()), "")
    kind = f"DVC {type_name}" if module.split(".")[0] == "dvc" else type_name
    return f"{kind}: {first}" if first else kind


@dataclass(frozen=True)
class Outcome:
    """What a command returns: its exit code, what ``--json`` prints, what a person reads."""

    payload: dict
    text: str = ""
    code: int = 0


def _phase_command(phase: str):
    def run(args: argparse.Namespace, root: Path) -> Outcome:
        _point_dagster_at(root)
        started = time.monotonic()
        with _pool() as pool:
            runs = materialize_phase(phase, root, getattr(args, "iteration", "0"), pool, shards=getattr(args, "shards", None))
        seconds = time.monotonic() - started
        return Outcome({"phase": phase, "runs": runs, "seconds": round(seconds, 1)}, f"[relabel] {phase}: {len(runs)} run(s) succeeded in {seconds:.0f} s")

    return run


def _materialize(args: argparse.Namespace, root: Path) -> Outcome:
    return _phase_command(args.phase)(args, root)


def _iterations(args: argparse.Namespace, root: Path) -> Outcome:
    _point_dagster_at(root)
    started = time.monotonic()
    with _pool() as pool:
        timings = _run_iterations(args, root, pool)
    data = resolve(root, load_params(root / "params.yaml").data_dir)
    if args.command == "demo":
        text = demo_summary(root, time.monotonic() - started, timings)
    else:
        text = "\n".join(["", *_iteration_lines(data), *_timing_lines(timings)])
    return Outcome({"seconds": {name: round(value, 1) for name, value in timings.items()}, "status": project_status(root)}, text)


def _status(args: argparse.Namespace, root: Path) -> Outcome:
    _point_dagster_at(root)
    status = project_status(root)
    return Outcome(status, "\n".join(status_lines(status)))


def _resume(args: argparse.Namespace, root: Path) -> Outcome:
    _point_dagster_at(root)
    resumed = resume_interrupted()
    failed = [(run_id, outcome) for run_id, outcome in resumed.items() if not outcome.ok]
    if failed:
        raise CommandError(f"re-executing {len(failed)} of {len(resumed)} interrupted runs failed for {[run_id for run_id, _ in failed]}: {_reasons(failed)} ({_see_runs(len(failed))})")
    return Outcome({"resumed": {run_id: outcome.ok for run_id, outcome in resumed.items()}})


def _unfreeze(args: argparse.Namespace, root: Path) -> Outcome:
    folder = frozen_dir(resolve(root, load_params(root / "params.yaml").data_dir))
    try:
        entry = unfreeze(folder, by=args.by, reason=args.reason)
    except ValueError as error:
        raise CommandError(str(error)) from error
    return Outcome(entry, f"unfroze the evaluation split {entry['digest'][:12]} ({args.by}: {args.reason}); logged in {folder}. Run `relabel materialize audit` to audit and freeze it again.")


def _ui(args: argparse.Namespace, root: Path) -> Outcome:
    """The two UIs as child processes, until Ctrl-C."""
    _point_dagster_at(root)
    params = load_params(root / "params.yaml")
    binaries = Path(sys.executable).parent
    database = resolve(root, params.data_dir) / "mlflow" / "mlflow.db"
    commands = {
        f"Dagster UI  http://127.0.0.1:{args.dagster_port}": [str(binaries / "dagster"), "dev", "-w", str(root / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(args.dagster_port)],
        f"MLflow UI   http://127.0.0.1:{args.mlflow_port}": [str(binaries / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{database}", "-h", "127.0.0.1", "-p", str(args.mlflow_port)],
    }
    processes = [subprocess.Popen(command, cwd=root) for command in commands.values()]
    print("\n".join(commands) + "\n(Ctrl-C stops both)", file=sys.stderr, flush=True)
    try:
        codes = [process.wait() for process in processes]
    finally:
        for process in processes:
            process.terminate()
    return Outcome({"exit_codes": codes}, code=max(codes))


def _init(args: argparse.Namespace, root: Path) -> Outcome:
    from pipelines.init_project import InitError, Sources, init_project

    project = args.path.resolve()
    sources = Sources(*(path.resolve() if path is not None else None for path in (args.images, args.coco, args.captions, args.alt_text)))
    try:
        written = init_project(project, sources, shards=args.shards, force=args.force)
    except InitError as error:
        raise CommandError(str(error)) from error
    text = "\n".join([f"wrote the project {project}:", *(f"  {path.name}" for path in written), f"next: relabel --root {project} demo"])
    return Outcome({"project": str(project), "files": [str(path) for path in written]}, text)


def _export(args: argparse.Namespace, root: Path) -> Outcome:
    """One export job for one iteration (default: the latest whose gates all passed), with the
    command line's overrides as the run's config."""
    _point_dagster_at(root)
    status = project_status(root)
    iteration = args.iteration if args.iteration is not None else latest_passing_iteration(status)
    if iteration is None:
        raise CommandError("no iteration has filtered labels whose gates all passed: run relabel iterate (or relabel demo) first")
    if int(iteration) not in {it["iteration"] for it in status["iterations"] if it["filtered_labels"]}:
        raise CommandError(f"iteration {iteration} has no filtered labels to export (relabel status lists the iterations)")
    overrides = {key: value for key, value in (("min_score", args.min_score), ("statuses", args.statuses), ("include_quarantined", args.include_quarantined)) if value is not None}
    with _pool() as pool:
        folder, manifest = run_export(root, args.format, str(iteration), overrides, pool)
    counts = ", ".join(f"{task} {n}" for task, n in manifest["labels_by_task"].items())
    text = f"exported iteration {iteration} as {args.format}: {manifest['images']} images, {counts}\n  {folder}\n  dataset card: {folder / 'DATASET_CARD.md'}"
    return Outcome({"folder": str(folder), **manifest}, text)


def run_export(root: Path, fmt: str, iteration: str, overrides: dict, pool: ProcessPoolExecutor) -> tuple[Path, dict]:
    """Run the export job of ``fmt`` for ``iteration``; its folder and manifest."""
    from assets.export import EXPORT_ASSETS, MANIFEST_FILE, export_dir

    print(f"[relabel] export: {EXPORT_JOBS[fmt]} for iteration {iteration}", file=sys.stderr, flush=True)
    op_name = "__".join(EXPORT_ASSETS[fmt].path)
    (outcome,) = pool.map(_execute, [EXPORT_JOBS[fmt]], [iteration], [os.cpu_count() or 1], [{"ops": {op_name: {"config": overrides}}}])
    if not outcome.ok:
        raise CommandError(f"the {fmt} export of iteration {iteration} failed: {outcome.why} ({_see_runs(1)})")
    folder = export_dir(resolve(root, load_params(root / "params.yaml").data_dir), fmt, iteration)
    return folder, json.loads((folder / MANIFEST_FILE).read_text())


def latest_passing_iteration(status: dict) -> int | None:
    """The newest iteration with filtered labels on every shard and no failed gate."""
    ready = [it for it in status["iterations"] if it["filtered_labels"] and it["merged_shards"] == len(status["shards"]) and not it["gates_failed"]]
    return max((it["iteration"] for it in ready), default=None)


def _pool() -> ProcessPoolExecutor:
    # one pool for the whole command: its processes import the definitions once, and each
    # run of a phase goes to one of them (shards in parallel)
    return ProcessPoolExecutor(max_workers=os.cpu_count() or 1, mp_context=multiprocessing.get_context("spawn"))


def _run_iterations(args: argparse.Namespace, root: Path, pool: ProcessPoolExecutor) -> dict[str, float]:
    """The demo's set-up phases, then ``args.iterations`` iterations and the labels they end
    with; the wall time of each phase."""
    timings: dict[str, float] = {}
    if args.command == "demo":
        # a project on its own photos (relabel init) has no world to render
        has_world = load_params(root / "params.yaml").world is not None
        for phase in (p for p in SETUP_PHASES if has_world or p != "world"):
            timings[phase] = _timed(materialize_phase, phase, root, "0", pool)
    first = int(args.start) if getattr(args, "start", None) is not None else (0 if args.command == "demo" else _next_iteration(root))
    for k in range(first, first + args.iterations):
        for phase in ITERATION_PHASES:
            timings[f"{phase} {k}"] = _timed(materialize_phase, phase, root, str(k), pool)
    # the labels the last model made, filtered, gated and scored: the iterations' result
    last = str(first + args.iterations)
    for phase in LABEL_PHASES:
        timings[f"{phase} {last}"] = _timed(materialize_phase, phase, root, last, pool)
    if args.command == "demo":
        # the product: the last iteration's labels released as COCO, with their dataset card
        timings["export"] = _timed(run_export, root, "coco", last, {}, pool)
    data = resolve(root, load_params(root / "params.yaml").data_dir)
    stages = [*ITERATION_PHASES, *(["export"] if (data / "export").is_dir() else [])]
    commit_iterations(root, stages, push=load_params(root / "params.yaml").dvc.push)
    return timings


def _timed(function, *arguments) -> float:
    started = time.monotonic()
    function(*arguments)
    return time.monotonic() - started


def _next_iteration(root: Path) -> int:
    """The iteration ``relabel iterate`` starts: the newest one + 1 (0 when there is none);
    the newest one when it has not re-annotated every shard yet (it is finished first)."""
    from dagster import DagsterInstance

    from pipelines.automation import next_iteration
    from relabel.shards import shard_keys

    with DagsterInstance.get() as instance:
        found = next_iteration(instance, shard_keys(load_params(root / "params.yaml").shards.count))
        existing = [int(key) for key in instance.get_dynamic_partitions("iteration") if key.isdigit()]
    return int(found) if isinstance(found, str) else max(existing)


def _point_dagster_at(root: Path) -> None:
    # the job subprocesses re-import pipelines.definitions, which reads the root from here
    os.environ["RELABEL_ROOT"] = str(root)
    params = load_params(root / "params.yaml")
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(resolve(root, params.data_dir) / "dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")


def materialize_phase(phase: str, root: Path, iteration: str, pool: ProcessPoolExecutor, shards: list[str] | None = None, run_config: dict | None = None) -> list[str]:
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
            print(f"[relabel] {phase}: {job_name} skipped: it reads every shard (run the phase without --shards)", file=sys.stderr, flush=True)
            continue
        keys = _partition_keys(job.partitions_def, iteration, shards)
        print(f"[relabel] {phase}: {job_name} over {len(keys)} run(s)", file=sys.stderr, flush=True)
        # runs side by side share the cores: torch in each gets its share, since more threads
        # than free cores make it many times slower
        cores = os.cpu_count() or 1
        threads = max(1, cores // min(len(keys), cores))
        outcomes = list(pool.map(_execute, [job_name] * len(keys), keys, [threads] * len(keys), [run_config] * len(keys)))
        failed = [(key or job_name, outcome) for key, outcome in zip(keys, outcomes) if not outcome.ok]
        if failed:
            raise CommandError(f"{job_name} failed for {[key for key, _ in failed]}: {_reasons(failed)} ({_see_runs(len(failed))})")
        done += [f"{job_name} {key}" if key else job_name for key in keys]
    return done


def _by_shard(partitions) -> bool:
    """Whether a job's runs are per shard (shards, or iteration x shard)."""
    from dagster import MultiPartitionsDefinition, StaticPartitionsDefinition

    return isinstance(partitions, (StaticPartitionsDefinition, MultiPartitionsDefinition))


def _partition_keys(partitions, iteration: str, shards: list[str] | None = None) -> list[str | None]:
    from dagster import DagsterInstance, DynamicPartitionsDefinition, MultiPartitionsDefinition

    from assets.partitions import ITERATIONS, iteration_shard_key

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


def _reasons(failed: list[tuple[str, RunOutcome]]) -> str:
    """Why the runs failed: the reason once when they share it, else each run's by name."""
    reasons = {outcome.why for _, outcome in failed}
    return reasons.pop() if len(reasons) == 1 else "; ".join(f"{name}: {outcome.why}" for name, outcome in failed)


def _see_runs(count: int) -> str:
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
            reasons.append(f"gate {evaluation.check_name} failed" + (f": {why.value}" if why is not None else ""))
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE):
        error = entry.dagster_event.step_failure_data.error
        if error.cls_name == "DagsterAssetCheckFailedError":
            continue  # a gate's step: the gate's own verdict is above
        # Dagster wraps what user code raised (its DagsterExecution...Error): the cause says why
        raised = error.cause if error.cls_name.startswith("Dagster") and error.cause is not None else error
        said = _crash(instance, run_id, entry.step_key) if raised.cls_name == "ChildProcessCrashException" else _stored_error_line(raised.message)
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
    children = [line.split(": ", 1)[1] for line in data.error.message.splitlines() if line.startswith("In process ")]
    return "; ".join(_stored_error_line(child) for child in children) if children else _stored_error_line(data.error.message)


def _crash(instance, run_id: str, step_key: str) -> str:
    """How the process of a step died (killed, out of memory): the exit code the executor's
    engine event gives ("child process for step X unexpectedly exited with code 137")."""
    from dagster import DagsterEventType

    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        found = re.search(rf"for step {re.escape(step_key)} unexpectedly exited with code (-?\d+)", entry.dagster_event.message or "")
        if found:
            return f"its process died (exit code {found.group(1)})"
    return "its process died"


def _stored_error_line(message: str) -> str:
    """``_error_line`` of an error as Dagster stores it: "module.Type: message"."""
    qualified, _, text = message.partition(": ")
    module, _, type_name = qualified.strip().rpartition(".")
    return _error_line(type_name, module, text)


def _execute(job_name: str, partition_key: str | None, threads: int, run_config: dict | None = None) -> RunOutcome:
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
        running = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING]))
        dead = [run for run in running if not _process_alive(instance, run.run_id)]
        for run in dead:
            instance.report_run_failed(run, "its process is gone (killed or crashed): relabel resume re-executes it")
    if not dead:
        print("[relabel] nothing to resume: no run was interrupted", file=sys.stderr)
        return {}
    print(f"[relabel] resuming {len(dead)} interrupted run(s): " + ", ".join(f"{r.job_name} {r.tags.get('dagster/partition', '')}".strip() for r in dead), file=sys.stderr, flush=True)
    workers = min(len(dead), os.cpu_count() or 1)
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        outcomes = list(pool.map(_reexecute, [run.job_name for run in dead], [run.run_id for run in dead]))
    return {run.run_id: outcome for run, outcome in zip(dead, outcomes)}


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


def demo_summary(root: Path, seconds: float, timings: dict[str, float]) -> str:
    """What the demo made, and where to look at it."""
    params = load_params(root / "params.yaml")
    data = resolve(root, params.data_dir)
    ingest = data / "ingest"
    images = pl.read_parquet(ingest / "images" / "*.parquet")
    labels = pl.read_parquet(ingest / "human_labels" / "*.parquet")
    quarantine = pl.concat(
        [pl.read_parquet(ingest / "ingest_quarantine" / "*.parquet"), pl.read_parquet(ingest / "catalog_quarantine.parquet")]
    )
    with Repo(str(root)) as repo:
        in_sync = not repo.status() and not repo.status(cloud=True)
    by_task = labels.group_by("task").len().sort("task")
    by_reason = quarantine.group_by("record_kind", "reason").len().sort("record_kind", "reason")
    lines = [
        "",
        f"relabel demo finished in {seconds:.0f} s",
        f"  world:      {data / 'world'} (ground truth apart in {data / 'ground_truth'})"
        if params.world is not None
        else f"  sources:    {', '.join(f'{source.name} ({source.kind})' for source in params.ingest.sources)}",
        f"  shards:     {params.shards.count} partitions under {data / 'ingest'}",
        f"  images:     {len(images)} kept ({images.filter(pl.col('split') == 'eval').height} in the eval split)",
        f"  labels:     {len(labels)} human labels kept: "
        + ", ".join(f"{row['task']} {row['len']}" for row in by_task.iter_rows(named=True)),
        f"  quarantine: {len(quarantine)} rows: "
        + ", ".join(f"{r['record_kind']}/{r['reason']} {r['len']}" for r in by_reason.iter_rows(named=True)),
        "",
        f"  dvc:        {'every output committed (dvc.lock) and pushed' if in_sync else 'OUT OF SYNC: run dvc status'}",
        *_annotation_lines(data),
        *_filter_lines(data),
        *_split_lines(data),
        *_corpus_lines(data),
        *_model_lines(data),
        *_iteration_lines(data),
        *_export_lines(data),
        *_timing_lines(timings),
        "",
        "Look at it:",
        "  .venv/bin/relabel ui             Dagster UI on http://127.0.0.1:3000 (runs, assets, metadata) and",
        "                                   MLflow UI on http://127.0.0.1:5000 (scores, training runs, registered models)",
        "  .venv/bin/relabel status         iterations, gates, counts (--json for scripts)",
        "  .venv/bin/relabel export --format coco|florence2|hf-parquet|yolo   the labels, with a dataset card",
        "  .venv/bin/dvc status             phase outputs against dvc.lock and the cache",
        f"  .venv/bin/dvc push / pull        remote: {params.dvc.remote_url}",
    ]
    return "\n".join(lines)


def _annotation_lines(data: Path) -> list[str]:
    """The phase-1 scores against ground truth, one line per specialist and the consensus."""
    summary_path = data / "annotate" / "scores" / "summary.parquet"
    if not summary_path.is_file():
        return []
    return ["", "Initial annotation against the world's ground truth (boxes at IoU 0.5):", *_score_lines(summary_path, width=20)]


def _score_lines(summary_path: Path, width: int) -> list[str]:
    """One line per output of a ``relabel.annotate.score_against_truth`` summary."""
    lines = []
    for row in pl.read_parquet(summary_path).iter_rows(named=True):
        parts = [f"{row['output']:<{width}} {row['labels']:>6} labels"]
        if row.get("f1") is not None:
            parts.append(f"boxes P {row['precision']:.2f}  R {row['recall']:.2f}  F1 {row['f1']:.2f}")
        if row.get("ocr_cer") is not None:
            parts.append(f"OCR CER {row['ocr_cer']:.2f}")
        if row.get("caption_object_recall") is not None:
            parts.append(f"caption object recall {row['caption_object_recall']:.2f}")
        if row.get("region_naming_accuracy") is not None:
            parts.append(f"regions named right {row['region_naming_accuracy']:.2f}")
        lines.append("  " + "   ".join(parts))
    return lines


def _filter_lines(data: Path) -> list[str]:
    """Phase 2: what the filters kept and dropped, table 3, and how right each filter was."""
    kept_dir, report = data / "filter" / "filtered_labels" / "iteration-0", data / "filter" / "report" / "iteration-0"
    if not kept_dir.is_dir():
        return []
    kept = pl.read_parquet(kept_dir / "*.parquet")
    dropped = pl.read_parquet(data / "filter" / "filter_quarantine" / "iteration-0" / "*.parquet")
    by_reason = dropped.group_by("reason").len().sort("len", descending=True)
    lines = [
        "",
        f"Filtering (iteration 0): {kept.height} labels kept, {dropped.height} quarantined: "
        + ", ".join(f"{r['reason']} {r['len']}" for r in by_reason.iter_rows(named=True)),
    ]
    if (report / "text_statistics.parquet").is_file():
        statistics = pl.read_parquet(report / "text_statistics.parquet")
        lines.append("  table 3 (per text)        texts  tokens  objects  attributes  actions  object cx  action cx")
        for row in statistics.iter_rows(named=True):
            lines.append(
                f"  {row['task']:<24} {row['texts']:>6} {row['avg_tokens']:>7.2f} {row['avg_objects']:>8.2f}"
                f" {row['avg_attributes']:>11.2f} {row['avg_actions']:>8.2f} {row['avg_object_complexity'] or 0:>10.2f}"
                f" {row['avg_action_complexity'] or 0:>10.2f}"
            )
    if (report / "filter_quality.parquet").is_file():
        quality = pl.read_parquet(report / "filter_quality.parquet").filter(pl.col("dropped") > 0)
        lines.append("  against the world's ground truth: share of dropped labels that were wrong / of kept that are right")
        for row in quality.iter_rows(named=True):
            lines.append(
                f"  {row['filter']:<24} dropped {row['dropped']:>5}  wrong {row['drop_precision']:.2f}   kept right {row['keep_precision']:.2f}"
            )
    return lines


def _corpus_lines(data: Path) -> list[str]:
    """Phase 3's input: the (prompt, target) examples written per task, per iteration."""
    lines = []
    for folder in sorted((data / "corpus" / "examples").glob("iteration-*")):
        examples = pl.read_parquet(folder / "*.parquet")
        by_task = examples.group_by("task").len().sort("len", descending=True)
        lines += [
            "",
            f"Corpus {folder.name}: {examples.height} Florence-2 examples from {examples['image_id'].n_unique()} training images: "
            + ", ".join(f"{row['task']} {row['len']}" for row in by_task.iter_rows(named=True)),
        ]
    return lines


def _model_lines(data: Path) -> list[str]:
    """Phase 3: each iteration's training and its held-out scores beside the baseline."""
    lines = []
    for folder in sorted((data / "model").glob("iteration-*")):
        curve_path, summary_path = folder / "training_curve.parquet", folder / "heldout" / "summary.parquet"
        if not curve_path.is_file():
            continue
        curve = pl.read_parquet(curve_path)
        lines += [
            "",
            f"Model {folder.name}: {curve.height} steps in {curve['seconds'].sum():.0f} s "
            f"({curve['examples'].sum() / curve['seconds'].sum():.1f} examples/s), loss {curve['loss'][0]:.2f} -> {curve['loss'].tail(10).mean():.2f}",
        ]
        if summary_path.is_file():
            lines += ["  on the frozen audited split:", *_score_lines(summary_path, width=9)]
    return lines + _frozen_split_metric_lines(data)


def _export_lines(data: Path) -> list[str]:
    """The exports written, with their dataset cards."""
    cards = sorted((data / "export").glob("*/iteration-*/DATASET_CARD.md"))
    return ["", "Exports:", *(f"  {card.parent.parent.name} iteration {card.parent.name.split('-')[1]}: {card.parent} (card: DATASET_CARD.md)" for card in cards)] if cards else []


def _split_lines(data: Path) -> list[str]:
    """The frozen evaluation split: what was audited, how, and its freeze."""
    folder = frozen_dir(data)
    record = read_freeze(folder)
    if record is None:
        return []
    decisions_path = data / "audit" / "label_studio" / "decisions.parquet"
    counts = pl.read_parquet(decisions_path).group_by("decision").len().sort("decision") if decisions_path.is_file() else pl.DataFrame()
    return [
        "",
        f"Evaluation split: {record['images']} images, {record['labels']} audited labels, frozen by {record['frozen_by']} ({record['reason']}), digest {record['digest'][:12]}",
        "  audit decisions: " + ", ".join(f"{r['decision']} {r['len']}" for r in counts.iter_rows(named=True)),
    ]


def _frozen_split_metric_lines(data: Path) -> list[str]:
    """The model's standard metrics on the frozen split, one line per iteration."""
    from assets.model import frozen_split_scores

    folders = sorted((data / "model").glob("iteration-*"), key=lambda p: int(p.name.split("-")[1]))
    scored = [(folder.name.split("-")[1], scores) for folder in folders if (scores := frozen_split_scores(data, folder.name.split("-")[1]))]
    if not scored:
        return []
    lines = ["", "Frozen-split metrics by iteration (report: data/model/iteration-<k>/heldout/report/summary.md):",
             "  iteration     mAP  mAP@0.5   CIDEr  grounding R@1  RES mIoU  OCR CER"]
    for iteration, row in scored:
        cell = lambda name, width=7: f"{row[name]:>{width}.3f}" if row.get(name) is not None else f"{'-':>{width}}"  # noqa: E731
        lines.append(f"  {iteration:>9} {cell('map')}  {cell('map50')} {cell('caption_cider')}  {cell('grounding_recall_at_1', 13)}  {cell('res_miou', 8)}  {cell('ocr_cer')}")
    return lines


def _iteration_lines(data: Path) -> list[str]:
    """Phase 4: what each merge decided, each iteration's label quality, and the guard."""
    lines = []
    decisions = sorted((data / "merge" / "decisions").glob("iteration-*"), key=lambda p: int(p.name.split("-")[1]))
    for folder in decisions:
        if folder.name == "iteration-0":
            continue
        decided = pl.read_parquet(folder / "*.parquet").filter(pl.col("decision") != "kept")
        by_source = decided.with_columns(origin=pl.col("source").str.split("@").list.first()).group_by("origin", "decision").len().sort("origin", "decision")
        protected = decided.filter(pl.col("reason").str.contains("rare class")).height
        said = "; ".join(
            f"{origin}: " + ", ".join(f"{r['decision']} {r['len']}" for r in rows.iter_rows(named=True))
            for (origin,), rows in by_source.group_by("origin", maintain_order=True)
        )
        lines.append(f"  merge into {folder.name}: {said}; {protected} labels refused to protect a rare-class label")
    summaries = sorted((data / "filter" / "quality").glob("iteration-*/summary.parquet"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not summaries:
        return lines
    history = pl.concat([pl.read_parquet(p) for p in summaries], how="diagonal_relaxed")
    lines = ["", "Refinement: the model's labels merged into the next iteration's (merge policy: refine.merge)", *lines]
    lines.append("  label quality on the training images against the world's ground truth (filtered labels):")
    lines.append("  (filled, repaired: labels the machines added since the iteration before, in no label's place or in a label's; right: their share the truth calls right;")
    lines.append("   broken: right labels of the iteration before replaced by a wrong one or gone; wrong fixed: share of its wrong labels replaced by a right one)")
    lines.append("  iteration  labels  audited  wrong  box F1  rare F1  caption recall  OCR CER  filled  repaired  right  broken  wrong fixed")
    for row in history.iter_rows(named=True):
        cell = lambda name, width=7: f"{row[name]:>{width}.3f}" if row.get(name) is not None else f"{'-':>{width}}"  # noqa: E731
        count = lambda name, width: f"{row[name]:>{width}}" if row.get(name) is not None else f"{'-':>{width}}"  # noqa: E731
        lines.append(
            f"  {row['iteration']:>9}  {row['labels']:>6}  {row.get('audited_labels') or 0:>7}  {cell('wrong_share', 5)} {cell('box_f1')}  {cell('box_f1_rare')}"
            f"  {cell('caption_object_recall', 14)}  {cell('ocr_cer')}  {count('filled_labels', 6)}  {count('repaired_labels', 8)}  {cell('added_precision', 5)}"
            f"  {count('broken_labels', 6)}  {cell('repaired_share', 11)}"
        )
    return lines + _review_lines(data) + _guard_lines(data, [int(row["iteration"]) for row in history.iter_rows(named=True)])


def _review_lines(data: Path) -> list[str]:
    """Each iteration's audit queue: its size, how many of it the world's truth calls wrong,
    and the verdicts."""
    lines = []
    for folder in sorted((data / "review").glob("iteration-*"), key=lambda p: int(p.name.split("-")[1])):
        queue_path = data / "review" / "queue" / f"{folder.name.split('-')[1]}.parquet"
        if not queue_path.is_file():
            continue
        queued = pl.read_parquet(queue_path)
        decisions = pl.read_parquet(folder / "decisions.parquet") if (folder / "decisions.parquet").is_file() else None
        verdicts = ", ".join(f"{d} {n}" for d, n in sorted(decisions.group_by("decision").len().iter_rows())) if decisions is not None else "no verdicts yet"
        lines.append(f"  audit queue of {folder.name}: {queued.height} labels (review.budget) -> {verdicts}")
    return lines


def _guard_lines(data: Path, iterations: list[int]) -> list[str]:
    """The rare-class guard of each iteration after the first: its verdict and the rare
    classes' training labels and recall against the iteration before."""
    from dagster import AssetCheckKey, DagsterInstance

    from data_checks.shards import LABEL_QUALITY
    from relabel.refine import rare_class_changes

    with DagsterInstance.get() as instance:
        infos = instance.event_log_storage.get_asset_check_partition_info([AssetCheckKey(LABEL_QUALITY, "rare_classes_kept")])
        verdicts = {info.partition_key: info.latest_execution_status.value for info in infos}
    lines = []
    for k in iterations[1:]:
        before, now = (pl.read_parquet(data / "filter" / "label_quality" / f"{i}.parquet") for i in (k - 1, k))
        changes = rare_class_changes(now, before)
        shown = ", ".join(
            f"{r['category']} {r['labels_before']}->{r['labels_now']}"
            + (f" (recall {r['recall_before']:.2f}->{r['recall_now']:.2f})" if r["recall_now"] is not None and r["recall_before"] is not None else "")
            for r in changes.iter_rows(named=True)
        )
        lines.append(f"  rare-class guard, iteration {k} vs {k - 1}: {verdicts.get(str(k), 'not run')}; {shown}")
    return lines


def _timing_lines(timings: dict[str, float]) -> list[str]:
    if not timings:
        return []
    return ["", "Wall time by phase: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items())]


COMMANDS = {
    "init": _init,
    "world": _phase_command("world"),
    "ingest": _phase_command("ingest"),
    "materialize": _materialize,
    "iterate": _iterations,
    "demo": _iterations,
    "status": _status,
    "export": _export,
    "resume": _resume,
    "unfreeze": _unfreeze,
    "ui": _ui,
}


if __name__ == "__main__":
    sys.exit(main())
