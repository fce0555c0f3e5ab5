"""relabel: the data engine from a terminal, through Dagster (runs show in the UI afterwards).

``relabel demo`` sets up the embedded world, runs two refinement iterations, exports the
result and prints what it made; ``relabel init PATH --images DIR [--coco ...]`` writes a
project on your own photos, where ``demo`` then runs without the world; ``relabel world`` /
``ingest`` / ``materialize PHASE [--iteration K] [--shards ...]`` run one phase
(``materialize`` is what each ``dvc.yaml`` stage runs); ``relabel iterate`` runs whole
iterations; ``relabel status`` shows the iterations, their gates and counts; ``relabel export
--format F`` writes an iteration's labels with a dataset card; ``relabel unfreeze`` lifts the
freeze of the evaluation split, recording who and why; ``relabel resume`` re-executes
interrupted runs; ``relabel ui`` starts the Dagster and MLflow UIs and serves the gates' Data
Docs over HTTP. ``--json`` prints any result as JSON; a failure exits non-zero with a one-line
reason (``pipelines.runs``). Runs go to the persistent instance in ``$DAGSTER_HOME``
(``data/dagster_home`` by default).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipelines.phases import ITERATION_PHASES, LABEL_PHASES, PHASE_JOBS, SETUP_PHASES
from pipelines.runs import (
    CommandError,
    error_line,
    failure_reasons,
    latest_passing_iteration,
    materialize_phase,
    next_iteration_to_run,
    process_pool,
    resume_interrupted,
    run_export,
    see_runs,
)
from pipelines.status import project_status, status_lines
from pipelines.summary import demo_summary, iteration_lines, timing_lines
from relabel.config import load_params, resolve
from relabel.evaluation_split import unfreeze
from relabel.versioning import commit_iterations
from resources.layout import EXPORTS, FROZEN_SPLIT, files_dir, gate_docs_root
from resources.services import MlflowResource, ProjectResource, point_dagster_at

PHASES = tuple(PHASE_JOBS)
# Dagster's sensor that evaluates the iteration assets' eager automation conditions
AUTOMATION_SENSOR = "default_automation_condition_sensor"
DEMO_ITERATIONS = 2
EXPORT_FORMATS = tuple(EXPORTS)


def build_parser() -> argparse.ArgumentParser:
    """Every command and its options (``relabel COMMAND --help``)."""
    parser = argparse.ArgumentParser(
        prog="relabel", description=__doc__.splitlines()[0].removeprefix("relabel: ")
    )
    parser.add_argument(
        "--root",
        default=os.getcwd(),
        help="project root holding params.yaml (default: the working directory)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the result as JSON on stdout (progress goes to stderr)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    init = commands.add_parser(
        "init", help="write a project on your own photos (then run relabel demo or iterate in it)"
    )
    init.add_argument("path", type=Path, help="the project folder to write (made if missing)")
    init.add_argument("--images", type=Path, required=True, help="the folder of photos")
    init.add_argument("--coco", type=Path, help="their COCO instances JSON (boxes, polygons, categories)")
    init.add_argument("--captions", type=Path, help="their COCO captions JSON")
    init.add_argument(
        "--alt-text", type=Path, help="an alt-text sidecar of the photos (JSONL or CSV; README: sources)"
    )
    init.add_argument(
        "--shards", type=int, default=2, help="shards (Dagster partitions) of the collection (default 2)"
    )
    init.add_argument("--force", action="store_true", help="overwrite the project's params.yaml and dvc.yaml")
    commands.add_parser("world", help="render the embedded demo world (the world phase)")
    commands.add_parser(
        "ingest", help="catalog every source in params.yaml and ingest it shard by shard (the ingest phase)"
    )
    materialize = commands.add_parser(
        "materialize", help="run one phase through Dagster, for every shard or some"
    )
    materialize.add_argument("phase", choices=PHASES)
    materialize.add_argument(
        "--iteration", default="0", help="the iteration of an iteration phase (default: 0)"
    )
    materialize.add_argument(
        "--shards",
        nargs="+",
        metavar="SHARD",
        help="only these shards (e.g. shard-00 shard-02; default: all)",
    )
    iterate = commands.add_parser("iterate", help="run whole refinement iterations after the annotate phase")
    iterate.add_argument("--iterations", type=int, default=1, help="models to train (default 1)")
    iterate.add_argument("--start", default=None, help="the first iteration (default: the next one to start)")
    demo = commands.add_parser("demo", help="set up, run two refinement iterations and summarise")
    demo.add_argument(
        "--iterations", type=int, default=DEMO_ITERATIONS, help=f"models trained (default {DEMO_ITERATIONS})"
    )
    commands.add_parser(
        "status", help="iterations, gates passed and failed, counts, the frozen split and the runs"
    )
    export = commands.add_parser(
        "export", help="write an iteration's labels in a format other tools read, with a dataset card"
    )
    export.add_argument(
        "--format", required=True, choices=EXPORT_FORMATS, help="coco, florence2 (JSONL), hf-parquet or yolo"
    )
    export.add_argument(
        "--iteration", default=None, help="default: the latest iteration whose gates all passed"
    )
    export.add_argument(
        "--min-score",
        type=float,
        default=None,
        help="leave out labels scored below this (default: export.min_score)",
    )
    export.add_argument(
        "--status",
        nargs="+",
        dest="statuses",
        metavar="STATUS",
        help="keep only labels of these statuses (default: export.statuses)",
    )
    export.add_argument(
        "--include-quarantined",
        action="store_true",
        default=None,
        help="also export the labels the filters quarantined",
    )
    commands.add_parser(
        "resume", help="re-execute, from where they stopped, the runs whose process died (killed, crashed)"
    )
    unfreeze = commands.add_parser(
        "unfreeze",
        help="lift the freeze of the evaluation split (logged); the next audit phase freezes it anew",
    )
    unfreeze.add_argument("--by", required=True, help="who unfreezes it")
    unfreeze.add_argument("--reason", required=True, help="why")
    ui = commands.add_parser(
        "ui",
        help=(
            "start the Dagster UI, the MLflow UI and a server of the gates' Data Docs on this "
            "project (params.yaml ui; Ctrl-C stops them)"
        ),
    )
    ui.add_argument("--dagster-port", type=int, help="default: params.yaml ui.dagster_port")
    ui.add_argument("--mlflow-port", type=int, help="default: params.yaml ui.mlflow_port")
    only = ui.add_mutually_exclusive_group()
    only.add_argument(
        "--no-mlflow", action="store_true", help="leave the MLflow UI out (make mlflow starts it)"
    )
    only.add_argument(
        "--no-dagster", action="store_true", help="leave the Dagster UI out (make ui starts it)"
    )
    ui.add_argument(
        "--automation",
        action="store_true",
        help=(
            f"switch on {AUTOMATION_SENSOR} first, so an iteration started in the UI follows by "
            "itself (it stays on; do not run relabel iterate or materialize beside it)"
        ),
    )
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
        print(
            f"relabel {args.command}: {error_line(type(error).__name__, type(error).__module__, str(error))}",
            file=sys.stderr,
        )
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


@dataclass(frozen=True)
class Outcome:
    """What a command returns: its exit code, what ``--json`` prints, what a person reads."""

    payload: dict
    text: str = ""
    code: int = 0


def _phase_command(phase: str):
    def run(args: argparse.Namespace, root: Path) -> Outcome:
        point_dagster_at(root)
        started = time.monotonic()
        with process_pool() as pool:
            runs = materialize_phase(
                phase, root, getattr(args, "iteration", "0"), pool, shards=getattr(args, "shards", None)
            )
        seconds = time.monotonic() - started
        return Outcome(
            {"phase": phase, "runs": runs, "seconds": round(seconds, 1)},
            f"[relabel] {phase}: {len(runs)} run(s) succeeded in {seconds:.0f} s",
        )

    return run


def _materialize(args: argparse.Namespace, root: Path) -> Outcome:
    return _phase_command(args.phase)(args, root)


def _iterations(args: argparse.Namespace, root: Path) -> Outcome:
    point_dagster_at(root)
    started = time.monotonic()
    with process_pool() as pool:
        timings = _run_iterations(args, root, pool)
    data = resolve(root, load_params(root / "params.yaml").data_dir)
    if args.command == "demo":
        text = demo_summary(root, time.monotonic() - started, timings)
    else:
        text = "\n".join(["", *iteration_lines(data), *timing_lines(timings)])
    return Outcome(
        {
            "seconds": {name: round(value, 1) for name, value in timings.items()},
            "status": project_status(root),
        },
        text,
    )


def _status(args: argparse.Namespace, root: Path) -> Outcome:
    point_dagster_at(root)
    status = project_status(root)
    return Outcome(status, "\n".join(status_lines(status)))


def _resume(args: argparse.Namespace, root: Path) -> Outcome:
    point_dagster_at(root)
    resumed = resume_interrupted()
    failed = [(run_id, outcome) for run_id, outcome in resumed.items() if not outcome.ok]
    if failed:
        raise CommandError(
            f"re-executing {len(failed)} of {len(resumed)} interrupted runs failed for "
            f"{[run_id for run_id, _ in failed]}: {failure_reasons(failed)} ({see_runs(len(failed))})"
        )
    return Outcome({"resumed": {run_id: outcome.ok for run_id, outcome in resumed.items()}})


def _unfreeze(args: argparse.Namespace, root: Path) -> Outcome:
    folder = files_dir(FROZEN_SPLIT, resolve(root, load_params(root / "params.yaml").data_dir))
    try:
        entry = unfreeze(folder, by=args.by, reason=args.reason)
    except ValueError as error:
        raise CommandError(str(error)) from error
    return Outcome(
        entry,
        (
            f"unfroze the evaluation split {entry['digest'][:12]} ({args.by}: {args.reason}); "
            f"logged in {folder}. Run `relabel materialize audit` to audit and freeze it again."
        ),
    )


class _QuietDocsHandler(http.server.SimpleHTTPRequestHandler):
    # the UI's terminal is for Dagster's and MLflow's logs, not one line per page of docs
    def log_message(self, format: str, *args: object) -> None:
        pass


def serve_folder(folder: Path, host: str, port: int) -> http.server.ThreadingHTTPServer:
    """Serve ``folder``'s files over plain HTTP on ``host:port`` from a daemon thread (until
    ``shutdown``): how ``relabel ui`` serves the gates' Data Docs, which a browser does not
    open from the Dagster UI as ``file://`` links."""
    folder.mkdir(parents=True, exist_ok=True)
    handler = functools.partial(_QuietDocsHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer((host, port), handler)
    threading.Thread(target=server.serve_forever, name="data-docs", daemon=True).start()
    return server


def _stop_on_sigterm(signum: int, frame: object) -> None:
    # SIGTERM (a service manager, a test) stops the UIs as Ctrl-C does, children included
    raise KeyboardInterrupt


def switch_on_automation(root: Path) -> None:
    """Start the sensor that makes an iteration's assets follow by themselves in the project's
    Dagster instance, which keeps it on (the UI's Automation page switches it off again). Off by
    default, because the daemon would start, beside a command line running a phase, the very
    steps that command is about to run."""
    point_dagster_at(root)
    started = subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "sensor",
            "start",
            AUTOMATION_SENSOR,
            "-w",
            str(root / "workspace.yaml"),
        ],
        cwd=root,
        capture_output=True,
        text=True,
    )
    if started.returncode != 0:
        last = next(iter(started.stderr.strip().splitlines()[-1:]), f"exit code {started.returncode}")
        raise CommandError(f"could not switch on {AUTOMATION_SENSOR}: {last}")


def _ui(args: argparse.Namespace, root: Path) -> Outcome:
    """The Dagster UI (and its daemon), the MLflow UI and the gates' Data Docs, until Ctrl-C."""
    point_dagster_at(root)
    params = load_params(root / "params.yaml")
    ui = params.ui
    binaries = Path(sys.executable).parent
    data_dir = resolve(root, params.data_dir)
    dagster_port = args.dagster_port or ui.dagster_port
    mlflow_port = args.mlflow_port or ui.mlflow_port
    commands = {}
    if not args.no_dagster:
        commands[f"Dagster UI  http://{ui.host}:{dagster_port}"] = [
            str(binaries / "dagster"),
            "dev",
            "-w",
            str(root / "workspace.yaml"),
            "-h",
            ui.host,
            "-p",
            str(dagster_port),
        ]
    if not args.no_mlflow:
        commands[f"MLflow UI   http://{ui.host}:{mlflow_port}"] = [
            str(binaries / "mlflow"),
            "ui",
            "--backend-store-uri",
            # the store the runs are logged to (params.yaml mlflow.tracking_uri)
            MlflowResource(project=ProjectResource(root=str(root))).tracking_uri,
            "-h",
            ui.host,
            "-p",
            str(mlflow_port),
        ]
    if args.automation:
        switch_on_automation(root)
        print(f"{AUTOMATION_SENSOR} is on: an iteration's assets follow by themselves", file=sys.stderr)
    # the checks' data_docs links point here (params.yaml ui: one home for the port)
    docs = serve_folder(gate_docs_root(data_dir), ui.host, ui.docs_port)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    processes = [subprocess.Popen(command, cwd=root) for command in commands.values()]
    lines = [*commands, f"Data Docs   {ui.docs_url}/ (the gates' Great Expectations pages)"]
    print("\n".join(lines) + "\n(Ctrl-C stops them)", file=sys.stderr, flush=True)
    try:
        codes = [process.wait() for process in processes]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        docs.shutdown()
        docs.server_close()
    return Outcome({"exit_codes": codes}, code=max(codes))


def _init(args: argparse.Namespace, root: Path) -> Outcome:
    from pipelines.init_project import InitError, Sources, init_project

    project = args.path.resolve()
    sources = Sources(
        *(
            path.resolve() if path is not None else None
            for path in (args.images, args.coco, args.captions, args.alt_text)
        )
    )
    try:
        written = init_project(project, sources, shards=args.shards, force=args.force)
    except InitError as error:
        raise CommandError(str(error)) from error
    text = "\n".join(
        [
            f"wrote the project {project}:",
            *(f"  {path.name}" for path in written),
            f"next: relabel --root {project} demo",
        ]
    )
    return Outcome({"project": str(project), "files": [str(path) for path in written]}, text)


def _export(args: argparse.Namespace, root: Path) -> Outcome:
    """One export job for one iteration (default: the latest whose gates all passed), with the
    command line's overrides as the run's config."""
    point_dagster_at(root)
    status = project_status(root)
    iteration = args.iteration if args.iteration is not None else latest_passing_iteration(status)
    if iteration is None:
        raise CommandError(
            "no iteration has filtered labels whose gates all "
            "passed: run relabel iterate (or relabel demo) first"
        )
    if int(iteration) not in {it["iteration"] for it in status["iterations"] if it["filtered_labels"]}:
        raise CommandError(
            f"iteration {iteration} has no filtered labels to export (relabel status lists the iterations)"
        )
    overrides = {
        key: value
        for key, value in (
            ("min_score", args.min_score),
            ("statuses", args.statuses),
            ("include_quarantined", args.include_quarantined),
        )
        if value is not None
    }
    with process_pool() as pool:
        folder, manifest = run_export(root, args.format, str(iteration), overrides, pool)
    counts = ", ".join(f"{task} {n}" for task, n in manifest["labels_by_task"].items())
    text = (
        f"exported iteration {iteration} as {args.format}: {manifest['images']} "
        f"images, {counts}\n  {folder}\n  dataset card: {folder / 'DATASET_CARD.md'}"
    )
    return Outcome({"folder": str(folder), **manifest}, text)


def _run_iterations(args: argparse.Namespace, root: Path, pool: ProcessPoolExecutor) -> dict[str, float]:
    """The demo's set-up phases, then ``args.iterations`` iterations and the labels they end
    with; the wall time of each phase."""
    timings: dict[str, float] = {}
    if args.command == "demo":
        # a project on its own photos (relabel init) has no world to render
        has_world = load_params(root / "params.yaml").world is not None
        for phase in (p for p in SETUP_PHASES if has_world or p != "world"):
            timings[phase] = _timed(materialize_phase, phase, root, "0", pool)
    first = (
        int(args.start)
        if getattr(args, "start", None) is not None
        else (0 if args.command == "demo" else next_iteration_to_run(root))
    )
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
    exported = any(files_dir(key, data).is_dir() for key in EXPORTS.values())
    stages = [*ITERATION_PHASES, *(["export"] if exported else [])]
    commit_iterations(root, stages, push=load_params(root / "params.yaml").dvc.push)
    return timings


def _timed(function, *arguments) -> float:
    started = time.monotonic()
    function(*arguments)
    return time.monotonic() - started


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
