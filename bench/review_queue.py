"""Benchmark: relabel's review queue against cleanlab's object-detection label-issue ranking and a
random queue, on the same labels and predictions of the embedded world (whose errors are known).

Run from the repository root:

    .venv/bin/python bench/review_queue.py [--iteration 0] [--budgets 30,100]

It reads what the engine wrote for iteration ``--iteration`` (``make demo`` writes iterations 0
to 2; without them it runs ``relabel demo --iterations K+1`` first, about 15 minutes on 2
cores): the suspicion of every auditable training label (``data/review/iteration-<k>/
scores.parquet``, the asset ``review/queue``), the filtered labels themselves, and the
predictions the queue had as evidence (the perception specialists' raw detections and the
iteration's model's re-annotation). The world's ground truth says which labels are wrong
(``relabel.scoring.label_correctness``).

Three rankings of the same object labels (cleanlab's object detection scores only boxes with a
class) are measured at each budget k: precision@k (the share of the first k labels that are
wrong) and recall@k (the share of all wrong labels among them):

* relabel: the labels by decreasing suspicion (``relabel.review_queue.suspicion_scores``);
* cleanlab: ``cleanlab.object_detection.rank``'s per-box badly-located and swapped-class scores
  (``bench/audit_ranking.py``), lowest first, with cleanlab's default probability cut-offs
  (0.5 / 0.95); with the cut-offs at the same ranks of these detectors' scores (their median
  and 90th percentile: the detectors' scores are not calibrated probabilities, and few pass
  0.95); and with the cut-offs of a small grid that suit it best on the truth (an upper bound
  no user could reach: it reads the answers);
* random: the expected precision and recall of a random queue.

Then relabel's ranking of every annotation type (captions, OCR, groundings too) and the queue
the engine actually sent (stratified, ``review.budget`` labels) against random. The last line is

    ratio: X

where X = relabel's precision@k / the better of cleanlab's default and quantile cut-offs, at the
first budget (the line before it gives the ratio to the upper bound too).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from audit_ranking import cleanlab_label_scores, expected_random_metrics, ranking_metrics  # noqa: E402

from assets.review import SCORES_FILE  # noqa: E402
from relabel.config import load_params, resolve  # noqa: E402
from relabel.scoring import label_correctness  # noqa: E402
from resources.layout import (  # noqa: E402
    FILTERED_LABELS,
    GROUND_TRUTH_LABELS,
    REANNOTATION,
    REVIEW_QUEUE,
    files_dir,
    frames_dir,
    partition_path,
    specialist,
)

# cleanlab's cut-offs tried for the upper bound: (low for badly located, high for swapped)
CUTOFFS = [(low, high) for low in (0.1, 0.3, 0.5) for high in (0.3, 0.5, 0.7, 0.95)]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--iteration", type=int, default=0, help="the iteration whose labels are ranked (default 0)"
    )
    parser.add_argument(
        "--budgets", default="30,100", help="comma-separated audit budgets k (default 30,100)"
    )
    parser.add_argument("--repeats", type=int, default=200, help="random queues averaged (default 200)")
    return parser.parse_args()


def ensure_engine_ran(root: Path, data: Path, iteration: int) -> Path:
    """The iteration's scores file, running the engine first when it is missing."""
    scores = files_dir(REVIEW_QUEUE, data, iteration) / SCORES_FILE
    if not scores.is_file():
        relabel = shutil.which("relabel", path=str(Path(sys.executable).parent)) or "relabel"
        print(
            f"no review queue at {scores}: running `relabel demo --iterations {iteration + 1}` first",
            file=sys.stderr,
            flush=True,
        )
        subprocess.run([relabel, "demo", "--iterations", str(iteration + 1)], cwd=root, check=True)
    return scores


def read_shards(folder: Path) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(path) for path in sorted(folder.glob("*.parquet"))], how="vertical")


def main() -> None:
    args = parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    root = Path.cwd()
    params = load_params(root / "params.yaml")
    data = resolve(root, params.data_dir)
    scored = pl.read_parquet(ensure_engine_ran(root, data, args.iteration))
    truth_path = data / GROUND_TRUTH_LABELS
    if not truth_path.is_file():
        sys.exit(
            f"no ground truth at {truth_path}: the benchmark needs the embedded world, whose errors are known"
        )
    categories = [
        c["name"] for c in json.loads(resolve(root, params.annotate.ontology).read_text())["categories"]
    ]

    k = str(args.iteration)
    labels = read_shards(frames_dir(FILTERED_LABELS, data, k)).filter(
        pl.col("label_id").is_in(scored["label_id"].implode())
    )
    training = scored["image_id"].unique().implode()
    perception = [spec.name for spec in params.annotate.perception if spec.enabled]
    predictions = pl.concat(
        [read_shards(frames_dir(specialist(name), data)) for name in perception]
        + [read_shards(frames_dir(REANNOTATION, data, k))],
        how="vertical",
    ).filter(pl.col("image_id").is_in(training))
    judged = label_correctness(labels, pl.read_parquet(truth_path), categories=categories).filter(
        pl.col("correct").is_not_null()
    )
    wrong = judged.select("label_id", wrong=~pl.col("correct"))
    objects = labels.filter(
        pl.col("task") == "object",
        pl.col("box").is_not_null(),
        pl.col("category").is_not_null(),
        pl.col("label_id").is_in(wrong["label_id"].implode()),
    )
    object_wrong = wrong.filter(pl.col("label_id").is_in(objects["label_id"].implode()))
    print(
        f"iteration {k}: {scored.height} auditable training labels, {judged.height} judged "
        f"by the truth, {wrong['wrong'].sum()} wrong; {objects.height} object labels "
        f"({object_wrong['wrong'].sum()} wrong) on {objects['image_id'].n_unique()} images; "
        f"{predictions.height} predictions from {sorted(set(predictions['source']))}"
    )

    def by_suspicion(ids: pl.Series) -> list[str]:
        return (
            scored.filter(pl.col("label_id").is_in(ids.implode()))
            .sort(["suspicion", "label_id"], descending=[True, False])["label_id"]
            .to_list()
        )

    def by_cleanlab(low: float | None, high: float | None) -> list[str]:
        scores = cleanlab_label_scores(
            objects, predictions, categories, low_probability_threshold=low, high_probability_threshold=high
        )
        return scores.sort(["cleanlab_score", "label_id"])["label_id"].to_list()

    first = budgets[0]
    # cleanlab's cut-offs (0.5: a real detection, 0.95: a confident one) assume calibrated
    # probabilities; the same ranks of these detectors' scores, read without the truth
    scores = predictions.filter(pl.col("task") == "object", pl.col("score").is_finite())["score"]
    adapted = (round(scores.quantile(0.5), 3), round(scores.quantile(0.9), 3))
    best_cutoffs = max(
        CUTOFFS, key=lambda pair: ranking_metrics(by_cleanlab(*pair), object_wrong, [first])["precision"][0]
    )
    rows = [
        ("relabel", ranking_metrics(by_suspicion(objects["label_id"]), object_wrong, budgets)),
        ("cleanlab (default cut-offs)", ranking_metrics(by_cleanlab(None, None), object_wrong, budgets)),
        (
            f"cleanlab (cut-offs {adapted[0]}/{adapted[1]}: score quantiles)",
            ranking_metrics(by_cleanlab(*adapted), object_wrong, budgets),
        ),
        (
            f"cleanlab (cut-offs {best_cutoffs[0]}/{best_cutoffs[1]}: best on the truth)",
            ranking_metrics(by_cleanlab(*best_cutoffs), object_wrong, budgets),
        ),
        ("random (expected)", expected_random_metrics(object_wrong, budgets, repeats=args.repeats)),
    ]
    print(
        "\nobject labels (the labels cleanlab's object detection "
        f"can score): base rate {object_wrong['wrong'].mean():.3f}"
    )
    table = pl.concat(
        [
            metrics.select(
                pl.lit(name).alias("ranking"), "budget", "precision", "recall", "found", "wrong_total"
            ).cast({"found": pl.Float64})
            for name, metrics in rows
        ]
    )
    with pl.Config(
        tbl_rows=50, tbl_width_chars=140, fmt_str_lengths=60, tbl_hide_dataframe_shape=True, float_precision=3
    ):
        print(table)
        every_type = [
            (
                "relabel, every annotation type",
                ranking_metrics(by_suspicion(wrong["label_id"]), wrong, budgets),
            ),
            (
                "random, every annotation type (expected)",
                expected_random_metrics(wrong, budgets, repeats=args.repeats),
            ),
        ]
        print(f"\nevery auditable label: base rate {wrong['wrong'].mean():.3f}")
        print(
            pl.concat(
                [
                    m.select(
                        pl.lit(name).alias("ranking"), "budget", "precision", "recall", "found", "wrong_total"
                    ).cast({"found": pl.Float64})
                    for name, m in every_type
                ]
            )
        )
        queue = pl.read_parquet(partition_path(data, REVIEW_QUEUE, k)).join(wrong, on="label_id", how="left")
        print(
            f"\nthe queue the engine sent (review.budget {params.review.budget}, places kept for "
            f"rare classes and types): {queue.height} labels, {queue['wrong'].sum()} wrong of "
            f"{queue['wrong'].is_not_null().sum()} judged (precision {queue['wrong'].mean():.3f})"
        )
        print(
            queue.group_by("annotation_type")
            .agg(queued=pl.len(), wrong=pl.col("wrong").sum())
            .sort("annotation_type")
        )
    relabel_precision = rows[0][1]["precision"][0]
    cleanlab_precision = max(rows[1][1]["precision"][0], rows[2][1]["precision"][0])
    oracle_precision = rows[3][1]["precision"][0]
    print(
        f"\nprecision@{first}: relabel {relabel_precision:.3f}, cleanlab "
        f"{cleanlab_precision:.3f} (the better of its default and quantile cut-offs), "
        f"{oracle_precision:.3f} with the cut-offs chosen on the truth (relabel / that: "
        f"{relabel_precision / oracle_precision if oracle_precision else float('inf'):.2f})"
    )
    print(f"ratio: {relabel_precision / cleanlab_precision if cleanlab_precision else float('inf'):.2f}")


if __name__ == "__main__":
    main()
