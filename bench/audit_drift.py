"""Benchmark: label drift over refinement iterations with a small audit budget and with none.

Run from the repository root:

    .venv/bin/python bench/audit_drift.py [--iterations 3] [--budget 30] [--workdir /tmp/relabel-drift]
                                          [--set refine.merge.fill_min_score=0.3 ...]

Two projects are made in ``--workdir`` from this checkout's ``params.yaml`` and ``dvc.yaml``:
``audit`` (``review.budget`` = ``--budget``: each iteration, the most suspicious labels go to the
auditor, here the world's ground truth standing in for a person) and ``none`` (``review.budget``
0: nobody looks). The set-up (world, ingest, the frozen split, the initial annotation) runs once
and is copied to the second project, so both start from the same labels; then each runs
``relabel iterate --iterations N`` (iterations 0 to N-1 trained and re-annotated, iteration N's
labels filtered and scored). On 2 CPU cores the whole takes about 30 minutes with the demo's
model budget.

It prints, per iteration and project, the quality of the training labels as
``filter/label_quality`` measured it against the world's ground truth: the share of judged
labels that are wrong, box F1 (all classes and rare ones), caption object recall, OCR CER, and
how many labels a person had audited by then. The last line is

    ratio: X

where X = the wrong-label share of the last iteration without audit / with audit (above 1:
the audit kept the labels cleaner).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import yaml

from resources.layout import LABEL_QUALITY, files_dir

ROOT = Path(__file__).resolve().parents[1]
SETUP = (["world"], ["ingest"], ["materialize", "audit"], ["materialize", "annotate"])
COLUMNS = (
    "wrong_share",
    "box_f1",
    "box_f1_rare",
    "caption_object_recall",
    "ocr_cer",
    "audited_labels",
    "labels",
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--iterations", type=int, default=3, help="refinement iterations per project (default 3)"
    )
    parser.add_argument(
        "--budget",
        type=int,
        default=30,
        help="labels audited per iteration in the audit project (default 30)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/relabel-drift"),
        help="where the two projects are made (emptied first)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a params.yaml setting for both projects, e.g. refine.merge.fill_min_score=0.3 (repeatable)",
    )
    return parser.parse_args()


def overridden(params: dict, settings: list[str]) -> dict:
    """``params`` with each ``dotted.key=value`` of ``settings`` set (values read as YAML)."""
    for setting in settings:
        key, _, value = setting.partition("=")
        *parents, name = key.split(".")
        node = params
        for parent in parents:
            node = node[parent]
        if name not in node:
            raise SystemExit(f"--set {setting}: params.yaml has no {key}")
        node[name] = yaml.safe_load(value)
    return params


def make_project(folder: Path, budget: int, settings: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    params = overridden(yaml.safe_load((ROOT / "params.yaml").read_text()), settings)
    params["review"]["budget"] = budget
    params["dvc"]["push"] = False
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(ROOT / "dvc.yaml", folder / "dvc.yaml")
    return folder


def relabel(project: Path, *command: str) -> None:
    # each project has its own Dagster instance (data/dagster_home), not the caller's
    environment = {
        key: value for key, value in os.environ.items() if key not in ("DAGSTER_HOME", "RELABEL_ROOT")
    }
    executable = shutil.which("relabel", path=str(Path(sys.executable).parent)) or "relabel"
    started = time.monotonic()
    subprocess.run(
        [executable, "--root", str(project), *command], env=environment, check=True, stdout=subprocess.DEVNULL
    )
    print(
        f"  {project.name}: relabel {' '.join(command)} ({time.monotonic() - started:.0f} s)",
        file=sys.stderr,
        flush=True,
    )


def quality(project: Path, iterations: int) -> pl.DataFrame:
    rows = [
        pl.read_parquet(files_dir(LABEL_QUALITY, project / "data", k) / "summary.parquet")
        for k in range(iterations + 1)
    ]
    history = pl.concat(rows, how="diagonal_relaxed")
    return history.select(
        "iteration", *[pl.col(c) if c in history.columns else pl.lit(None).alias(c) for c in COLUMNS]
    ).with_columns(project=pl.lit(project.name))


def main() -> None:
    args = parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    audited = make_project(args.workdir / "audit", args.budget, args.set)
    unaudited = make_project(args.workdir / "none", 0, args.set)
    print(f"set-up in {audited}", file=sys.stderr)
    for command in SETUP:
        relabel(audited, *command)
    shutil.copytree(audited / "data", unaudited / "data")
    for project in (audited, unaudited):
        relabel(project, "iterate", "--iterations", str(args.iterations))
    table = pl.concat([quality(project, args.iterations) for project in (unaudited, audited)]).sort(
        "iteration", "project"
    )
    print(
        (
            f"\nlabel quality per iteration: review.budget {args.budget} "
            f"('audit') against 0 ('none'), {args.iterations} iterations"
        )
        + (f"; {', '.join(args.set)}" if args.set else "")
    )
    with pl.Config(
        tbl_rows=50, tbl_cols=-1, tbl_width_chars=200, tbl_hide_dataframe_shape=True, float_precision=3
    ):
        print(table.select("iteration", "project", *COLUMNS))
    last = table.filter(pl.col("iteration") == args.iterations)
    share = dict(last.select("project", "wrong_share").iter_rows())
    print(
        f"\nwrong-label share after {args.iterations} iterations: {share['none']:.4f} "
        f"without audit, {share['audit']:.4f} with {args.budget} audited labels per iteration"
    )
    print(f"ratio: {share['none'] / share['audit']:.3f}")


if __name__ == "__main__":
    main()
