"""Self-training with cross-fitting: perception specialists re-trained on an iteration's labels.

The SAM data engine's lesson (and the Florence-2 engine's, section 4.2): a specialist trained on
the labels the engine has made so far finds what the first human labels missed. The iteration's
filtered labels hold more objects, and fewer wrong ones, than the human labels the specialist
first learned from, so a detector re-trained on them sees objects it was taught were background.

Its proposals must be about images it did not train on: a detector that saw an image's labels
has learned that the objects missing from them are background, and would confirm the labels
rather than fill them (Cleanlab's docs ask for out-of-sample predictions for the same reason).
So the training images are split into ``folds`` by their id; the model of fold ``f`` trains on
every other fold and labels only fold ``f`` (k-fold cross-fitting). Every training image is
labelled exactly once, by a model that never saw it.

Plain functions: the caller (``assets.refine``) chooses the specialist and where the weights go.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from models.specialists.registry import TRAINERS, BuildContext, build_specialist, train_specialist
from models.specialists.runner import image_refs, run_specialist
from relabel.labels import empty


def fold_of(folds: int) -> pl.Expr:
    """The fold of each image, from its id: a content hash, so an image keeps its fold across
    iterations and machines. (Its first eight hex digits choose its shard; the next eight its
    fold, so every shard has every fold.)"""
    return (pl.col("image_id").str.slice(8, 8).str.to_integer(base=16) % folds).cast(pl.Int32)


def fold_dir(out_dir: Path, fold: int) -> Path:
    return Path(out_dir) / f"fold-{fold}"


def train_folds(
    kind: str,
    images: pl.DataFrame,
    labels: pl.DataFrame,
    resolve_path: Callable[[str], Path],
    out_dir: Path,
    settings: dict[str, Any],
    folds: int,
    go_on_from: Path | None = None,
    warm_settings: dict[str, Any] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train one ``kind`` specialist per fold on the ``labels`` of the images of every other
    fold (``images``: the training images); write each into ``fold_dir(out_dir, f)``; return
    the trainers' reports, each with its ``fold`` and ``held_out_images``.

    ``go_on_from``: the folder of an earlier ``train_folds`` with the same folds (the previous
    iteration's): each fold's model goes on from that fold's weights (setting ``init_from``),
    so training accumulates over iterations while every model still never sees its own fold;
    ``warm_settings`` then go over ``settings`` (a model that goes on needs fewer epochs).
    """
    if kind not in TRAINERS:
        raise ValueError(f"specialist kind {kind!r} is not trainable; trainable kinds: {sorted(TRAINERS)}")
    if folds < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, got {folds}")
    assigned = images.with_columns(_fold=fold_of(folds))
    reports = []
    for fold in range(folds):
        fitted = assigned.filter(pl.col("_fold") != fold).drop("_fold")
        earlier = fold_dir(go_on_from, fold) if go_on_from is not None else None
        fold_settings = (
            {**settings, **(warm_settings or {}), "init_from": str(earlier)}
            if earlier is not None and earlier.is_dir()
            else settings
        )
        report = train_specialist(
            kind,
            fitted,
            labels.filter(pl.col("image_id").is_in(fitted["image_id"].implode())),
            resolve_path,
            fold_dir(out_dir, fold),
            fold_settings,
            progress,
        )
        held_out = assigned.filter(pl.col("_fold") == fold).height
        reports.append(
            {
                **report,
                "fold": fold,
                "held_out_images": held_out,
                "went_on_from": fold_settings.get("init_from"),
            }
        )
    return reports


def detect_held_out(
    kind: str,
    name: str,
    images: pl.DataFrame,
    resolve_path: Callable[[str], Path],
    out_dir: Path,
    settings: dict[str, Any],
    folds: int,
    *,
    categories: tuple[str, ...] = (),
    device: str = "cpu",
    iteration: int = 0,
    progress: bool = True,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Label each of ``images`` with the model of its own fold, which never trained on it.

    Returns (labels, quarantine) as ``models.specialists.runner.run_specialist`` gives them,
    over all folds; each label's ``source`` names the specialist and its fold's weights.
    """
    assigned = images.with_columns(_fold=fold_of(folds))
    labels, quarantine = [empty("labels")], [empty("quarantine")]
    for fold in range(folds):
        held_out = assigned.filter(pl.col("_fold") == fold).drop("_fold")
        if held_out.is_empty():
            continue
        context = BuildContext(workdir=fold_dir(out_dir, fold), categories=categories, device=device)
        specialist = build_specialist(kind, name, settings, context)
        run = run_specialist(
            specialist,
            image_refs(held_out, resolve_path),
            iteration=iteration,
            progress=progress,
            desc=f"{name} fold {fold}",
        )
        labels.append(run.labels)
        quarantine.append(run.quarantine)
    return pl.concat(labels, how="vertical"), pl.concat(quarantine, how="vertical")


__all__ = ["detect_held_out", "fold_dir", "fold_of", "train_folds"]
