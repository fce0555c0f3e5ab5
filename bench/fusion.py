"""Benchmark: relabel.consensus.fuse_regions against ensemble_boxes.weighted_boxes_fusion.

Run from the repository root:

    python bench/fusion.py [--images 2000] [--repeats 5] [--seed 0]

Generates a seeded synthetic detection set (by default 2000 images, 3 specialist sources,
about 17 boxes per source and image: over 100k boxes), fuses it with both implementations
end to end (from the label-store frame to a frame of fused boxes, conversions included),
checks that they agree, prints a table and ends with ``ratio: X``, where X is the
ensemble_boxes time divided by the relabel time (best of ``--repeats`` runs each; higher
means relabel is faster).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ensemble_boxes import weighted_boxes_fusion  # noqa: E402

from relabel.consensus import fuse_regions  # noqa: E402
from relabel.labels import LABELS_SCHEMA  # noqa: E402

SOURCES = ("detr@1", "yolo@8", "dino@2")
CATEGORIES = (
    "person",
    "car",
    "dog",
    "cat",
    "bicycle",
    "chair",
    "cup",
    "bottle",
    "bus",
    "bird",
    "sign",
    "tree",
)
IOU_THRESHOLD = 0.55


def generate(n_images: int, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(labels, images): ground-truth objects seen by each source with jitter, misses, class
    confusions and false positives; every box lies inside its image and has area."""
    rng = np.random.default_rng(seed)
    widths = rng.integers(480, 1281, n_images)
    heights = rng.integers(360, 961, n_images)
    boxes_all, images, sources, categories, scores = [], [], [], [], []
    for i in range(n_images):
        w, h = widths[i], heights[i]
        n_obj = rng.poisson(17)
        size = rng.uniform(0.04, 0.35, (n_obj, 2)) * (w, h)
        centre = rng.uniform(0, 1, (n_obj, 2)) * (w, h)
        truth = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
        truth_class = rng.integers(0, len(CATEGORIES), n_obj)
        for s in range(len(SOURCES)):
            seen = rng.random(n_obj) < 0.88
            box = truth[seen] + rng.normal(0, 0.05, (seen.sum(), 4)) * np.tile(size[seen], 2)
            cls = truth_class[seen].copy()
            confused = rng.random(len(cls)) < 0.05
            cls[confused] = rng.integers(0, len(CATEGORIES), confused.sum())
            score = rng.beta(5, 2, len(cls))
            n_fp = rng.poisson(2)
            fp_size = rng.uniform(0.03, 0.2, (n_fp, 2)) * (w, h)
            fp_centre = rng.uniform(0, 1, (n_fp, 2)) * (w, h)
            fp = np.concatenate([fp_centre - fp_size / 2, fp_centre + fp_size / 2], axis=1)
            box = np.concatenate([box, fp])
            cls = np.concatenate([cls, rng.integers(0, len(CATEGORIES), n_fp)])
            score = np.concatenate([score, rng.beta(2, 5, n_fp)])
            box = np.clip(box, 0, (w, h, w, h))
            keep = (box[:, 2] - box[:, 0] >= 2) & (box[:, 3] - box[:, 1] >= 2) & (score > 0)
            boxes_all.append(box[keep])
            images.extend([f"img{i:05d}"] * keep.sum())
            sources.extend([SOURCES[s]] * keep.sum())
            categories.extend(CATEGORIES[c] for c in cls[keep])
            scores.append(score[keep])
    boxes = np.concatenate(boxes_all)
    n = len(boxes)
    labels = pl.DataFrame(
        {
            "label_id": [f"l{j:07d}" for j in range(n)],
            "image_id": images,
            "annotation_type": ["region_text"] * n,
            "task": ["object"] * n,
            "text": categories,
            "region_kind": ["object"] * n,
            "box": pl.Series(boxes, dtype=pl.Array(pl.Float64, 4)),
            "category": categories,
            "score": np.concatenate(scores),
            "source": sources,
            "iteration": np.zeros(n, dtype=np.int32),
            "status": ["raw"] * n,
        }
    )
    labels = labels.select(
        pl.col(name).cast(dtype) if name in labels.columns else pl.lit(None, dtype=dtype).alias(name)
        for name, dtype in LABELS_SCHEMA.items()
    )
    images_frame = pl.DataFrame(
        {"image_id": [f"img{i:05d}" for i in range(n_images)], "width": widths, "height": heights}
    )
    return labels, images_frame


def run_relabel(labels: pl.DataFrame) -> pl.DataFrame:
    # lone_min_score=0: promote every cluster, as ensemble_boxes does
    fused = fuse_regions(labels, iou_threshold=IOU_THRESHOLD, lone_min_score=0.0).fused
    return fused.select("image_id", "category", "box", "score")


def run_ensemble_boxes(labels: pl.DataFrame, images: pl.DataFrame) -> pl.DataFrame:
    """The same fusion with ensemble_boxes: normalise, one call per image with one list per
    source, denormalise, back to a frame."""
    codes = {c: k for k, c in enumerate(sorted(labels["category"].unique().to_list()))}
    names = np.array(sorted(codes, key=codes.get))
    source_code = {s: k for k, s in enumerate(sorted(labels["source"].unique().to_list()))}
    rows = (
        labels.select("image_id", "source", "category", "box", "score")
        .join(images, on="image_id", how="left")
        .with_columns(
            _src=pl.col("source").replace_strict(source_code, return_dtype=pl.Int64),
            _cls=pl.col("category").replace_strict(codes, return_dtype=pl.Int64),
        )
        .sort("image_id", "_src", maintain_order=True)
    )
    scale = np.stack([rows["width"], rows["height"], rows["width"], rows["height"]], axis=1).astype(
        np.float64
    )
    boxes = rows["box"].to_numpy().reshape(-1, 4) / scale
    scores = rows["score"].to_numpy()
    classes = rows["_cls"].to_numpy()
    image_ids, starts = np.unique(rows["image_id"].to_numpy(), return_index=True)
    bounds = np.append(starts, len(rows))
    src = rows["_src"].to_numpy()
    out_boxes, out_scores, out_classes, out_images = [], [], [], []
    n_sources = len(source_code)
    for k, image_id in enumerate(image_ids):
        lo, hi = bounds[k], bounds[k + 1]
        cuts = lo + np.searchsorted(src[lo:hi], np.arange(n_sources + 1))
        box_list = [boxes[cuts[t] : cuts[t + 1]] for t in range(n_sources)]
        score_list = [scores[cuts[t] : cuts[t + 1]] for t in range(n_sources)]
        class_list = [classes[cuts[t] : cuts[t + 1]] for t in range(n_sources)]
        fused, fused_scores, fused_classes = weighted_boxes_fusion(
            box_list, score_list, class_list, iou_thr=IOU_THRESHOLD, skip_box_thr=0.0
        )
        out_boxes.append(fused * scale[lo])
        out_scores.append(fused_scores)
        out_classes.append(fused_classes.astype(np.int64))
        out_images.append(np.full(len(fused_scores), image_id))
    return pl.DataFrame(
        {
            "image_id": np.concatenate(out_images),
            "category": names[np.concatenate(out_classes)],
            "box": pl.Series(np.concatenate(out_boxes), dtype=pl.Array(pl.Float64, 4)),
            "score": np.concatenate(out_scores),
        }
    )


def timed_pair(labels: pl.DataFrame, images: pl.DataFrame, repeats: int):
    """Best-of-``repeats`` seconds of each implementation, runs interleaved so that a burst
    of load on the machine hits both alike."""
    best = {"ensemble_boxes": np.inf, "relabel": np.inf}
    results = {}
    for _ in range(repeats):
        for name, run in (
            ("ensemble_boxes", lambda: run_ensemble_boxes(labels, images)),
            ("relabel", lambda: run_relabel(labels)),
        ):
            start = time.perf_counter()
            results[name] = run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best, results


def compare(ours: pl.DataFrame, theirs: pl.DataFrame, images: pl.DataFrame) -> dict[str, float]:
    """Per (image, category): same number of fused boxes; boxes (sorted by coordinates)
    equal in normalised coordinates and scores equal, within 1e-6."""

    def prepared(data: pl.DataFrame) -> pl.DataFrame:
        return (
            data.join(images, on="image_id")
            .with_columns(
                x0=pl.col("box").arr.get(0) / pl.col("width"),
                y0=pl.col("box").arr.get(1) / pl.col("height"),
                x1=pl.col("box").arr.get(2) / pl.col("width"),
                y1=pl.col("box").arr.get(3) / pl.col("height"),
            )
            .sort("image_id", "category", "x0", "y0", "x1", "y1")
        )

    a, b = prepared(ours), prepared(theirs)
    count_a = a.group_by("image_id", "category").len()
    count_b = b.group_by("image_id", "category").len()
    counts = count_a.join(count_b, on=["image_id", "category"], how="full", coalesce=True).fill_null(0)
    mismatched = counts.filter(pl.col("len") != pl.col("len_right"))
    same = counts.filter(pl.col("len") == pl.col("len_right")).select("image_id", "category")
    a_same = a.join(same, on=["image_id", "category"]).sort("image_id", "category", "x0", "y0", "x1", "y1")
    b_same = b.join(same, on=["image_id", "category"]).sort("image_id", "category", "x0", "y0", "x1", "y1")
    coords_a = a_same.select("x0", "y0", "x1", "y1").to_numpy()
    coords_b = b_same.select("x0", "y0", "x1", "y1").to_numpy()
    coord_diff = np.abs(coords_a - coords_b)
    score_diff = np.abs(a_same["score"].to_numpy() - b_same["score"].to_numpy())
    relative = coord_diff / np.maximum(np.abs(coords_b), 1e-12)
    close = np.isclose(coords_a, coords_b, rtol=1e-6, atol=1e-6).all(axis=1) & np.isclose(
        a_same["score"].to_numpy(), b_same["score"].to_numpy(), rtol=1e-6, atol=1e-6
    )
    return {
        "groups": counts.height,
        "count_mismatches": mismatched.height,
        "boxes_compared": len(coords_a),
        "boxes_not_close": int((~close).sum()),
        "max_abs_coord": float(coord_diff.max()) if len(coord_diff) else 0.0,
        "max_rel_coord": float(relative.max()) if len(relative) else 0.0,
        "max_abs_score": float(score_diff.max()) if len(score_diff) else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    labels, images = generate(args.images, args.seed)
    print(
        f"{labels.height:,} boxes: {args.images} images x {len(SOURCES)} sources, "
        f"{labels.height / args.images / len(SOURCES):.1f} boxes per source and image, "
        f"{labels['category'].n_unique()} categories, iou_thr {IOU_THRESHOLD}"
    )
    run_relabel(labels.head(1000))  # warm-up (imports, polars thread pool)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ensemble_boxes warns when it has to alter a box
        seconds, results = timed_pair(labels, images, args.repeats)
    ensemble_seconds, theirs = seconds["ensemble_boxes"], results["ensemble_boxes"]
    relabel_seconds, ours = seconds["relabel"], results["relabel"]
    check = compare(ours, theirs, images)

    print()
    print(f"{'implementation':<34}{'seconds':>10}{'boxes/s':>14}{'fused boxes':>14}")
    print(
        f"{'ensemble_boxes.weighted_boxes_fusion':<34}{ensemble_seconds:>10.3f}"
        f"{labels.height / ensemble_seconds:>14,.0f}{theirs.height:>14,}"
    )
    print(
        f"{'relabel.consensus.fuse_regions':<34}{relabel_seconds:>10.3f}"
        f"{labels.height / relabel_seconds:>14,.0f}{ours.height:>14,}"
    )
    print()
    print(
        f"agreement: {check['groups']:,} (image, category) groups, {check['count_mismatches']} with a "
        f"different number of fused boxes; {check['boxes_compared']:,} fused boxes compared, "
        f"{check['boxes_not_close']} not within 1e-6"
    )
    print(
        f"max |difference|: coordinate {check['max_abs_coord']:.2e} (normalised, relative "
        f"{check['max_rel_coord']:.2e}), score {check['max_abs_score']:.2e} "
        f"(ensemble_boxes accumulates fused boxes in float32, relabel in float64)"
    )
    print(f"ratio: {ensemble_seconds / relabel_seconds:.2f}")


if __name__ == "__main__":
    main()
