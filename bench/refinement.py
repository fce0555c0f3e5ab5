"""Benchmark: do the refinement iterations repair and fill labels? Measured against the truth.

Run from the repository root:

    .venv/bin/python bench/refinement.py [--seeds 7,11] [--iterations 3] [--workdir /tmp/relabel-refinement]
                                         [--set refine.merge.fill_min_score=0.5 ...]

For each world seed (the default world's, 7, and one no setting was chosen on, 11) a project is
made in ``--workdir`` from this checkout's ``params.yaml`` and ``dvc.yaml`` with only
``world.seed`` changed; it runs the set-up (world, ingest, the frozen split, the initial
annotation) and ``relabel iterate --iterations N``: iterations 0 to N-1 are trained and
re-annotated, iteration N's labels are filtered and scored. On 2 idle CPU cores a seed takes
about 15 minutes with the demo's budget.

It prints, per seed and iteration, what ``filter/label_quality`` measured on the training images
against the world's ground truth (the training labels after the filters, one label per object):
labels, object-box precision / recall / F1 at IoU 0.5 (all classes and the rare ones), the share
of judged labels that are wrong, caption object recall, OCR CER, the labels the machines filled
and repaired since the iteration before with the share of them that is right, and the right
labels broken; then the iteration's model on the frozen split beside the trivial baseline
(``<OD>`` box F1, ``<REGION_TO_CATEGORY>`` accuracy, mAP@0.5, caption CIDEr). The last line is

    ratio: X

where X = the wrong-label share of iteration 0 / that of the last iteration, over the seeds
(above 1: the iterations left fewer wrong labels than they started with).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import polars as pl
import yaml
from audit_drift import SETUP, make_project, relabel

from resources.layout import HELDOUT_SCORES, LABEL_QUALITY, files_dir

ROOT = Path(__file__).resolve().parents[1]
QUALITY_COLUMNS = (
    "labels",
    "box_precision",
    "box_recall",
    "box_f1",
    "box_precision_rare",
    "box_recall_rare",
    "box_f1_rare",
    "wrong_share",
    "caption_object_recall",
    "ocr_cer",
)
CHANGE_COLUMNS = (
    "filled_labels",
    "filled_precision",
    "repaired_labels",
    "repaired_precision",
    "broken_labels",
    "audited_labels",
)
LABEL_COLUMNS = (*QUALITY_COLUMNS, *CHANGE_COLUMNS)
MODEL_COLUMNS = {
    "f1": "OD F1",
    "region_naming_accuracy": "region naming",
    "map50": "mAP@0.5",
    "caption_cider": "CIDEr",
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seeds",
        default="7,11",
        help=(
            "world seeds, comma-separated (default 7,11: the default world and one no setting was chosen on)"
        ),
    )
    parser.add_argument(
        "--iterations", type=int, default=3, help="refinement iterations per seed (default 3)"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/relabel-refinement"),
        help="where the projects are made (emptied first)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a params.yaml setting for every project (repeatable)",
    )
    return parser.parse_args()


def label_quality(project: Path, iterations: int) -> pl.DataFrame:
    """``filter/label_quality``'s summary of each iteration, one row each."""
    rows = [
        pl.read_parquet(files_dir(LABEL_QUALITY, project / "data", k) / "summary.parquet")
        for k in range(iterations + 1)
    ]
    history = pl.concat(rows, how="diagonal_relaxed")
    return history.select(
        "iteration",
        *[pl.col(c) if c in history.columns else pl.lit(None, pl.Float64).alias(c) for c in LABEL_COLUMNS],
    )


def model_scores(project: Path, iterations: int) -> pl.DataFrame:
    """Each trained iteration's model and the trivial baseline on the frozen split."""
    rows = []
    for k in range(iterations):
        path = files_dir(HELDOUT_SCORES, project / "data", k) / "summary.parquet"
        if path.is_file():
            scores = pl.read_parquet(path)
            for row in scores.iter_rows(named=True):
                rows.append(
                    {
                        "iteration": k,
                        "output": row["output"],
                        **{name: row.get(metric) for metric, name in MODEL_COLUMNS.items()},
                    }
                )
    return pl.DataFrame(
        rows,
        schema={
            "iteration": pl.Int64,
            "output": pl.String,
            **dict.fromkeys(MODEL_COLUMNS.values(), pl.Float64),
        },
    )


def main() -> None:
    args = parse_args()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    budget = yaml.safe_load((ROOT / "params.yaml").read_text())["review"][
        "budget"
    ]  # the review queue as configured
    shutil.rmtree(args.workdir, ignore_errors=True)
    tables, first, last = [], [], []
    for seed in seeds:
        project = make_project(args.workdir / f"seed-{seed}", budget, [*args.set, f"world.seed={seed}"])
        started = time.monotonic()
        for command in (*SETUP, ["iterate", "--iterations", str(args.iterations)]):
            relabel(project, *command)
        seconds = time.monotonic() - started
        quality = label_quality(project, args.iterations)
        models = model_scores(project, args.iterations)
        tables.append(quality.with_columns(seed=pl.lit(seed)))
        first.append(quality["wrong_share"][0])
        last.append(quality["wrong_share"][-1])
        with pl.Config(
            tbl_rows=50, tbl_cols=-1, tbl_width_chars=250, tbl_hide_dataframe_shape=True, float_precision=3
        ):
            print(
                (
                    f"\nworld seed {seed} ({seconds / 60:.1f} min): "
                    "training labels per iteration against the truth"
                )
                + (f"; {', '.join(args.set)}" if args.set else "")
            )
            print(quality.select("iteration", *QUALITY_COLUMNS))
            print(
                f"world seed {seed}: what the machines changed since the "
                "iteration before (and the labels a person audited so far)"
            )
            print(quality.select("iteration", *CHANGE_COLUMNS))
            print(
                f"world seed {seed}: the model of each iteration "
                "on the frozen split, beside the trivial baseline"
            )
            print(models)
    print(
        f"\nwrong-label share, iteration 0 -> {args.iterations}: "
        + ", ".join(f"seed {seed} {a:.4f} -> {b:.4f}" for seed, a, b in zip(seeds, first, last, strict=True))
    )
    print(f"ratio: {sum(first) / sum(last):.3f}")


if __name__ == "__main__":
    sys.exit(main())
