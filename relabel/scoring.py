"""How good labels are against a ground truth: boxes, OCR text and captions.

Plain functions over label-store frames (``relabel.labels``), used to score each output of
the data engine (a specialist, the consensus, a trained model) against the embedded world's
ground truth or a human-audited sample:

``box_scores``
    Detection precision, recall and F1 per category and overall, at one IoU threshold,
    with the greedy score-ordered matching of COCO / PASCAL VOC.
``character_error_rate`` / ``ocr_cer``
    Levenshtein distance over reference length, for one string and for the OCR regions of
    whole frames (regions matched by IoU; text nobody read counts as fully wrong).
``caption_object_recall``
    The share of the ground-truth object categories of an image that its captions mention.
``region_naming_accuracy``
    The share of ground-truth objects named right when their own box is given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import polars as pl
from rapidfuzz.distance import Levenshtein

from relabel.consensus import normalise_text
from relabel.merge import box_iou

ALL = "all"
"""The ``category`` of the micro-averaged row of ``box_scores``."""

BOX_SCORES_SCHEMA = pl.Schema(
    {
        "category": pl.String,
        "tp": pl.Int64,
        "fp": pl.Int64,
        "fn": pl.Int64,
        "precision": pl.Float64,
        "recall": pl.Float64,
        "f1": pl.Float64,
        "n_truth": pl.Int64,
    }
)


def box_scores(predictions: pl.DataFrame, truth: pl.DataFrame, *, iou_threshold: float = 0.5) -> pl.DataFrame:
    """Per-category detection precision, recall and F1 of ``predictions`` against ``truth``.

    Parameters
    ----------
    predictions : pl.DataFrame
        Predicted regions: at least ``image_id``, ``category``, ``box`` (``[x0, y0, x1,
        y1]``) and ``score`` (a labels frame will do).  Rows with a null ``box`` are
        ignored; a null ``score`` ranks below every score.  The caller selects the rows to
        score (for example ``task == "object"``): every row with a box counts.
    truth : pl.DataFrame
        Ground-truth regions with ``image_id``, ``category`` and ``box``; rows with a null
        ``box`` are ignored.
    iou_threshold : float, default 0.5
        A prediction can match a truth box of the same image and category when their IoU
        is at least this.

    Returns
    -------
    pl.DataFrame
        ``BOX_SCORES_SCHEMA``: one row per category present in either frame (sorted, a null
        category last), then a row with ``category`` ``"all"``, the micro average (counts
        summed over categories).  ``tp`` is the number of matched predictions, ``fp`` the
        unmatched predictions, ``fn`` the unmatched truth boxes, ``n_truth = tp + fn``;
        ``precision = tp / (tp + fp)``, ``recall = tp / n_truth`` and ``f1`` their harmonic
        mean, each 0.0 where its denominator is 0 (scikit-learn's ``zero_division=0``).

    Matching
    --------
    Greedy by score, one-to-one, as COCO and PASCAL VOC evaluate at a single threshold:
    predictions are visited in decreasing score (ties: input order) and each takes the
    still unmatched truth box of the same image and category with which it has the highest
    IoU (ties: the earliest truth row), if that IoU is at least ``iou_threshold``; a
    prediction whose best truth box was taken by a higher-scoring one falls back to the best
    box still free, as in COCO.  Categories are compared exactly (null
    equals null).  Crowd regions (``is_crowd``) are not treated specially: a truth crowd box
    counts like any other.
    """
    preds = _regions(predictions, "_p", with_score=True)
    truths = _regions(truth, "_t", with_score=False)
    pairs = preds.join(truths, on=["image_id", "category"], how="inner", nulls_equal=True, suffix="_t")
    iou = box_iou(pairs["box"].to_numpy().reshape(-1, 4), pairs["box_t"].to_numpy().reshape(-1, 4))
    candidates = (
        pairs.select("_p", "_t", "_rank", _iou=pl.Series(iou, dtype=pl.Float64))
        .filter(pl.col("_iou") >= iou_threshold)
        .sort(["_rank", "_iou", "_t"], descending=[False, True, False])
    )
    matched_pred = np.zeros(preds.height, dtype=bool)
    for p, _ in greedy_pairs(candidates["_p"].to_numpy(), candidates["_t"].to_numpy()):
        matched_pred[p] = True

    per_pred = preds.select("category", _tp=pl.Series(matched_pred, dtype=pl.Boolean))
    predicted = per_pred.group_by("category").agg(
        tp=pl.col("_tp").sum().cast(pl.Int64), _n=pl.len().cast(pl.Int64)
    )
    expected = truths.group_by("category").agg(n_truth=pl.len().cast(pl.Int64))
    counts = (
        predicted.join(expected, on="category", how="full", coalesce=True, nulls_equal=True)
        .with_columns(pl.col("tp", "_n", "n_truth").fill_null(0))
        .with_columns(fp=pl.col("_n") - pl.col("tp"), fn=pl.col("n_truth") - pl.col("tp"))
        .sort("category", nulls_last=True)
        .select("category", "tp", "fp", "fn", "n_truth")
    )
    total = counts.select(
        category=pl.lit(ALL),
        tp=pl.col("tp").sum(),
        fp=pl.col("fp").sum(),
        fn=pl.col("fn").sum(),
        n_truth=pl.col("n_truth").sum(),
    )
    table = pl.concat([counts, total.cast(dict(counts.schema))], how="vertical")
    return table.with_columns(_rates()).select(*BOX_SCORES_SCHEMA).cast(dict(BOX_SCORES_SCHEMA))


def _rates() -> list[pl.Expr]:
    tp, fp, fn = (pl.col(c).cast(pl.Float64) for c in ("tp", "fp", "fn"))
    precision = pl.when(tp + fp > 0).then(tp / (tp + fp)).otherwise(0.0)
    recall = pl.when(tp + fn > 0).then(tp / (tp + fn)).otherwise(0.0)
    f1 = pl.when(precision + recall > 0).then(2 * precision * recall / (precision + recall)).otherwise(0.0)
    return [precision.alias("precision"), recall.alias("recall"), f1.alias("f1")]


def _regions(data: pl.DataFrame, index: str, *, with_score: bool) -> pl.DataFrame:
    regions = data.filter(pl.col("box").is_not_null()).with_row_index(index)
    columns = [
        index,
        "image_id",
        pl.col("category").cast(pl.String),
        pl.col("box").cast(pl.Array(pl.Float64, 4)),
    ]
    if with_score:
        # visiting order: decreasing score, nulls last, ties in input order
        rank = pl.struct(
            _s=pl.col("score").cast(pl.Float64).fill_nan(None).neg().fill_null(math.inf), _i=pl.col(index)
        ).rank("ordinal")
        columns.append(rank.alias("_rank"))
    return regions.select(columns)


def greedy_pairs(first: np.ndarray, second: np.ndarray) -> list[tuple[int, int]]:
    """One-to-one greedy matching over candidate pairs ``(first[i], second[i])`` given in
    priority order (best first): the pairs kept, each item in at most one."""
    taken_first: set[int] = set()
    taken_second: set[int] = set()
    chosen = []
    for a, b in zip(first.tolist(), second.tolist(), strict=True):
        if a not in taken_first and b not in taken_second:
            taken_first.add(a)
            taken_second.add(b)
            chosen.append((a, b))
    return chosen


# --------------------------------------------------------------------------------------
# OCR


def levenshtein(a: str, b: str) -> int:
    """The edit distance between ``a`` and ``b``: the least number of single-character
    insertions, deletions and substitutions that turn one into the other (rapidfuzz's)."""
    return Levenshtein.distance(a, b)


def character_error_rate(predicted: str, reference: str) -> float:
    """The character error rate of ``predicted`` against ``reference``.

    ``levenshtein(predicted, reference) / len(reference)``: 0 for a perfect reading, 1 when
    every character is wrong or missing, and more than 1 when the prediction also adds
    characters.  Strings are compared exactly as given (case, spacing and Unicode form
    count).  With an empty reference the rate is 0.0 for an empty prediction and 1.0
    otherwise (the ratio is undefined; this caps it).

    Examples
    --------
    >>> character_error_rate("STOP", "STOP")
    0.0
    >>> character_error_rate("ST0P", "STOP")
    0.25
    """
    if not reference:
        return 0.0 if not predicted else 1.0
    return levenshtein(predicted, reference) / len(reference)


def ocr_cer(predictions: pl.DataFrame, truth: pl.DataFrame, iou_threshold: float = 0.5) -> float:
    """The character error rate of the OCR regions of ``predictions`` against ``truth``.

    Only rows with ``task`` ``"ocr"`` are used, from both frames.  Truth rows with a null
    ``text`` are ignored; prediction rows with a null ``box`` cannot be matched and are
    ignored (a null predicted text reads as ``""``).

    Predicted and truth regions of one image are matched one-to-one, greedily by
    decreasing IoU (ties: earliest truth row, then earliest prediction), when their IoU is
    at least ``iou_threshold``; OCR regions are matched regardless of what they read.  The
    result is corpus-level::

        sum(levenshtein(matched prediction, truth)) + sum(len(unmatched truth))
        ---------------------------------------------------------------------
                              sum(len(truth))

    so a truth region nobody read (or that a prediction missed by more than the IoU
    threshold) counts as fully wrong, and long texts weigh more than short ones.
    Unmatched predictions add nothing: spurious text regions are a detection error,
    measured by ``box_scores`` on the OCR regions.  Returns NaN when the truth has no
    characters to read.
    """
    preds = (
        predictions.filter(pl.col("task") == "ocr", pl.col("box").is_not_null())
        .with_row_index("_p")
        .select("_p", "image_id", "box", _text=pl.col("text").fill_null(""))
    )
    truths = (
        truth.filter(pl.col("task") == "ocr", pl.col("text").is_not_null())
        .with_row_index("_t")
        .select("_t", "image_id", "box", _ref=pl.col("text"))
    )
    total = int(truths["_ref"].str.len_chars().sum() or 0)
    if total == 0:
        return math.nan
    pairs = preds.join(truths.filter(pl.col("box").is_not_null()), on="image_id", how="inner", suffix="_t")
    iou = box_iou(pairs["box"].to_numpy().reshape(-1, 4), pairs["box_t"].to_numpy().reshape(-1, 4))
    candidates = (
        pairs.select("_p", "_t", _iou=pl.Series(iou, dtype=pl.Float64))
        .filter(pl.col("_iou") >= iou_threshold)
        .sort(["_iou", "_t", "_p"], descending=[True, False, False])
    )
    chosen = greedy_pairs(candidates["_p"].to_numpy(), candidates["_t"].to_numpy())
    texts, refs = preds["_text"].to_list(), truths["_ref"].to_list()
    matched = {t: p for p, t in chosen}
    errors = sum(
        levenshtein(texts[matched[t]], ref) if t in matched else len(ref) for t, ref in enumerate(refs)
    )
    return errors / total


# --------------------------------------------------------------------------------------
# captions

_IRREGULAR = {
    "people": "person",
    "persons": "person",
    "men": "man",
    "women": "woman",
    "children": "child",
    "mice": "mouse",
    "feet": "foot",
    "teeth": "tooth",
    "geese": "goose",
    "oxen": "ox",
    "sheep": "sheep",
    "fish": "fish",
}


def word_forms(word: str) -> frozenset[str]:
    """The forms a (normalised) word may have in the singular, including itself.

    Regular English plurals are undone by every rule that could apply (``horses`` ->
    ``horse``, ``buses`` -> ``bus``, ``cherries`` -> ``cherry``, ``knives`` -> ``knife``),
    plus a few irregular ones (``people`` -> ``person``, ``mice`` -> ``mouse``).  Two words
    are the same noun when their forms intersect, so the rules may over-generate (``bus``
    also yields ``bu``) without harm.
    """
    forms = {word}
    if word in _IRREGULAR:
        forms.add(_IRREGULAR[word])
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        forms.add(word[:-1])
        if word.endswith("es"):
            forms.add(word[:-2])
        if word.endswith("ies"):
            forms.add(word[:-3] + "y")
        if word.endswith("ves"):
            forms.update((word[:-3] + "f", word[:-3] + "fe"))
    return frozenset(forms)


def mentions(caption_words: list[frozenset[str]], phrase: str) -> bool:
    """Whether the words of ``phrase`` (a category name) occur consecutively among
    ``caption_words`` (the ``word_forms`` of each word of a caption), singular or plural."""
    wanted = [word_forms(word) for word in normalise_text(phrase).split()]
    if not wanted:
        return False
    span = len(wanted)
    return any(
        all(caption_words[i + j] & wanted[j] for j in range(span))
        for i in range(len(caption_words) - span + 1)
    )


def caption_object_recall(captions: pl.DataFrame, truth_objects: pl.DataFrame) -> float:
    """The share of ground-truth object categories that the captions of their image mention.

    Parameters
    ----------
    captions : pl.DataFrame
        Text rows with ``image_id`` and ``text`` (all given rows count: the caller selects
        the task, for example ``brief_caption``; several captions of one image are read
        together).
    truth_objects : pl.DataFrame
        Ground-truth objects with ``image_id`` and ``category`` (where ``category`` is null
        its ``text`` is used).

    Returns
    -------
    float
        ``mentioned / expected`` over the distinct (image, category) pairs of
        ``truth_objects`` (micro average: an image with many categories weighs more).  A
        category is mentioned when all its words occur consecutively in one of the image's
        captions, each in the singular or the plural (``word_forms``), after the
        normalisation of ``relabel.consensus.normalise_text`` (case, punctuation,
        ``traffic_light`` reads as ``traffic light``).  An image with objects but no caption
        mentions none of them; captions of images without truth objects are ignored.
        Synonyms and hypernyms do not count (``puppy`` does not mention ``dog``).  NaN when
        ``truth_objects`` has no category.
    """
    expected = (
        truth_objects.select("image_id", _category=pl.coalesce(pl.col("category"), pl.col("text")))
        .drop_nulls()
        .unique(maintain_order=True)
    )
    if expected.height == 0:
        return math.nan
    texts = (
        captions.filter(pl.col("text").is_not_null())
        .group_by("image_id", maintain_order=True)
        .agg(pl.col("text"))
    )
    words_of = {
        image: [[word_forms(w) for w in normalise_text(t).split()] for t in image_texts]
        for image, image_texts in texts.iter_rows()
    }
    hits = sum(
        any(mentions(words, category) for words in words_of.get(image, ()))
        for image, category in expected.iter_rows()
    )
    return hits / expected.height


def region_naming_accuracy(answers: pl.DataFrame, truth_objects: pl.DataFrame) -> float:
    """The share of ground-truth objects whose category is named right when their box is given
    (Florence-2's ``<REGION_TO_CATEGORY>``).

    ``answers`` are object rows whose ``box`` is the box that was asked about (it comes back
    quantised, so an answer counts for the truth box it overlaps at IoU 0.9) and whose
    ``category`` is the answer. A truth object nobody answered counts as wrong. NaN when
    ``truth_objects`` has no box.
    """
    if truth_objects.filter(pl.col("box").is_not_null()).height == 0:
        return math.nan
    scores = box_scores(answers, truth_objects, iou_threshold=0.9)
    return float(scores.filter(pl.col("category") == ALL)["recall"][0])


# --------------------------------------------------------------------------------------
# single labels

CORRECTNESS_SCHEMA = pl.Schema({"label_id": pl.String, "correct": pl.Boolean, "truth_id": pl.String})


def label_correctness(
    labels: pl.DataFrame,
    truth: pl.DataFrame,
    *,
    categories: Sequence[str] = (),
    iou_threshold: float = 0.5,
    ocr_iou_threshold: float = 0.1,
    max_ocr_cer: float = 0.25,
) -> pl.DataFrame:
    """Whether each label is right about its image, judged against ``truth`` one by one.

    Returns ``CORRECTNESS_SCHEMA``, one row per label: ``correct`` (null where the label
    cannot be judged: its image has no truth, or its task is not one of those below) and
    ``truth_id``, the truth label it was matched with.

    * a region with a category (``object``, ``region_caption``, ``phrase_grounding``) is
      right when a truth object of its image and category overlaps it by ``iou_threshold``;
    * an ``ocr`` region is right when a truth text region overlaps it by
      ``ocr_iou_threshold`` (the world's quads frame a whole sign, the OCR's the ink) and it
      reads that text with a character error rate of at most ``max_ocr_cer``;
    * an image-level text is right when it mentions at least one category and every
      category it mentions is in the image (``mentions``, over ``categories``: the
      ontology; default: the categories of the truth).

    Matching is not exclusive: two labels of one object are both right (a duplicate is what
    NMS measures, with ``truth_id``).
    """
    judged_images = truth["image_id"].unique().implode()
    objects = truth.filter(pl.col("task") == "object", pl.col("box").is_not_null())
    texts = truth.filter(pl.col("task") == "ocr", pl.col("box").is_not_null())
    categories = sorted(categories or objects["category"].drop_nulls().unique().to_list())
    present = objects.group_by("image_id").agg(pl.col("category").unique())
    present_of = {image: set(names) for image, names in present.iter_rows()}

    results: dict[str, tuple[bool | None, str | None]] = {}
    rows = labels.filter(pl.col("image_id").is_in(judged_images))
    regions = rows.filter(
        pl.col("task").is_in(["object", "region_caption", "phrase_grounding"]), pl.col("box").is_not_null()
    )
    results.update(_best_overlap(regions, objects, ["image_id", "category"], iou_threshold))
    ocr = rows.filter(pl.col("task") == "ocr", pl.col("box").is_not_null())
    for label_id, (matched, truth_id, truth_text, text) in _best_overlap(
        ocr, texts, ["image_id"], ocr_iou_threshold, with_text=True
    ).items():
        good = matched and character_error_rate(text or "", truth_text or "") <= max_ocr_cer
        results[label_id] = (good, truth_id)
    for label_id, image_id, text in (
        rows.filter(pl.col("annotation_type") == "text").select("label_id", "image_id", "text").iter_rows()
    ):
        words = [word_forms(w) for w in normalise_text(text or "").split()]
        named = {c for c in categories if mentions(words, c)}
        results[label_id] = (bool(named) and named <= present_of.get(image_id, set()), None)
    return pl.DataFrame(
        {
            "label_id": labels["label_id"],
            "correct": [results.get(i, (None, None))[0] for i in labels["label_id"]],
            "truth_id": [results.get(i, (None, None))[1] for i in labels["label_id"]],
        },
        schema=CORRECTNESS_SCHEMA,
    )


def _best_overlap(
    labels: pl.DataFrame, truth: pl.DataFrame, on: list[str], threshold: float, *, with_text: bool = False
) -> dict[str, tuple]:
    """For each label, whether its best-overlapping truth row (joined ``on``) reaches
    ``threshold``, and that row's id (and, ``with_text``, both texts)."""
    pairs = labels.select("label_id", *on, "box", "text").join(
        truth.select(*on, "box", "text", truth_id="label_id"),
        on=on,
        how="left",
        suffix="_t",
        nulls_equal=True,
    )
    has_truth = pairs["box_t"].is_not_null().to_numpy()
    iou = np.zeros(pairs.height)
    if has_truth.any():
        both = pairs.filter(pl.Series(has_truth))
        iou[has_truth] = box_iou(
            both["box"].to_numpy().reshape(-1, 4), both["box_t"].to_numpy().reshape(-1, 4)
        )
    best = (
        pairs.with_columns(_iou=pl.Series(np.nan_to_num(iou)))
        .sort("_iou", descending=True)
        .unique("label_id", keep="first")
    )
    out = {}
    for row in best.iter_rows(named=True):
        matched = row["_iou"] >= threshold
        truth_id = row["truth_id"] if matched else None
        out[row["label_id"]] = (
            (matched, truth_id, row["text_t"], row["text"]) if with_text else (matched, truth_id)
        )
    return out


__all__ = [
    "ALL",
    "CORRECTNESS_SCHEMA",
    "label_correctness",
    "BOX_SCORES_SCHEMA",
    "box_scores",
    "caption_object_recall",
    "character_error_rate",
    "levenshtein",
    "mentions",
    "ocr_cer",
    "word_forms",
]
