"""Great Expectations suites for the label store, one per gated asset, as code.

Each suite validates plain columns of one frame. Where a rule needs a join or a computation
(a box against its image's size, the points of a polygon, the share of labelled images), a
polars function here builds that frame first, so GX never runs code of ours and every rule
reads as an expectation in the Data Docs. ``gates.validate`` runs a suite over its frame. A
rule that a gate is about names what it measures (``meta={"measure": ...}``), so that its
failure reads "labelled share 0.56 < 0.9" (``gates.Measure``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import great_expectations as gx
import great_expectations.expectations as gxe
import polars as pl
from great_expectations.expectations.row_conditions import Column

from data_checks.gates import gx_type_name
from relabel.labels import IMAGES_SCHEMA, LABELS_SCHEMA, QUARANTINE_SCHEMA, RECORD_KINDS, SPLITS
from relabel.merge import same_object_overlaps

# A value that is present has at least one non-whitespace character (GX searches, not matches).
NOT_BLANK = r"\S"

# What a row of each annotation type must carry (the docs of relabel.labels): a name, and the
# condition under which the row lacks it. A region is any of box, quad, polygon or mask_rle.
_REGION_FIELDS = ("box", "quad", "polygon", "mask_rle")
_PHRASE_SPAN_VALID = (
    (pl.col("phrase_start") >= 0)
    & (pl.col("phrase_end") > pl.col("phrase_start"))
    & (pl.col("phrase_end") <= pl.col("text").str.len_chars())
)
_REQUIRED_FIELDS: dict[str, list[tuple[str, pl.Expr]]] = {
    "text": [("text", pl.col("text").is_null())],
    "region_text": [
        ("region_kind", pl.col("region_kind").is_null()),
        ("|".join(_REGION_FIELDS), pl.all_horizontal(pl.col(c).is_null() for c in _REGION_FIELDS)),
    ],
    "text_phrase_region": [
        ("text", pl.col("text").is_null()),
        ("phrase_start", pl.col("phrase_start").is_null()),
        ("phrase_end", pl.col("phrase_end").is_null()),
        # both ends given, but not a non-empty span inside the text
        ("phrase_span", ~_PHRASE_SPAN_VALID),
        ("box", pl.col("box").is_null()),
    ],
}

# Columns labels_gate_frame adds after the label columns, in order.
LABELS_GATE_COLUMNS = (
    "image_width",
    "image_height",
    "box_x0",
    "box_y0",
    "box_x1",
    "box_y1",
    "polygon_min_points",
    "missing_fields",
)


def _schema_expectations(schema: Mapping[str, pl.DataType], *, extra_columns: Sequence[str] = ()) -> list:
    """The frame has exactly these columns in this order, each of its declared type."""
    return [
        gxe.ExpectTableColumnsToMatchOrderedList(column_list=[*schema, *extra_columns]),
        *(
            gxe.ExpectColumnValuesToBeOfType(column=name, type_=gx_type_name(dtype))
            for name, dtype in schema.items()
        ),
    ]


def images_suite() -> gx.ExpectationSuite:
    """Gates the images table as stored (``IMAGES_SCHEMA``).

    Every other table refers to images by ``image_id`` (the SHA-256 of the file) and judges
    geometry against ``width``/``height``, so an image row must be identifiable, unique,
    locatable (``uri``), sized, and in a known split of a known dataset.
    """
    return gx.ExpectationSuite(
        name="images",
        expectations=[
            *_schema_expectations(IMAGES_SCHEMA),
            gxe.ExpectColumnValuesToNotBeNull(column="image_id"),
            gxe.ExpectColumnValuesToBeUnique(column="image_id"),
            gxe.ExpectColumnValuesToMatchRegex(column="image_id", regex=r"^[0-9a-f]{64}$"),
            gxe.ExpectColumnValuesToNotBeNull(column="uri"),
            gxe.ExpectColumnValuesToMatchRegex(column="uri", regex=NOT_BLANK),
            gxe.ExpectColumnValuesToNotBeNull(column="width"),
            gxe.ExpectColumnValuesToBeBetween(column="width", min_value=1),
            gxe.ExpectColumnValuesToNotBeNull(column="height"),
            gxe.ExpectColumnValuesToBeBetween(column="height", min_value=1),
            gxe.ExpectColumnValuesToNotBeNull(column="split"),
            gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
            gxe.ExpectColumnValuesToNotBeNull(column="dataset"),
        ],
    )


def labels_gate_frame(labels: pl.DataFrame, images: pl.DataFrame) -> pl.DataFrame:
    """``labels`` with what the labels suite judges them by, as flat columns after the label
    columns (``LABELS_GATE_COLUMNS``):

    - ``image_width``, ``image_height``: the size of the label's image; null when the image
      is not among ``images``
    - ``box_x0``, ``box_y0``, ``box_x1``, ``box_y1``: the box corners; null without a box
    - ``polygon_min_points``: the fewest points of any ring (0 for a polygon without rings);
      null without a polygon
    - ``missing_fields``: comma-separated names of what the row's annotation type requires
      but the row lacks (``_REQUIRED_FIELDS``; ``phrase_span`` when the phrase is not a
      non-empty span inside the text); null when the row is complete
    """
    # one size per image: a duplicated image row (the images suite's concern) must not
    # duplicate the labels that refer to it
    image_sizes = images.select("image_id", image_width="width", image_height="height").unique(
        "image_id", keep="first", maintain_order=True
    )
    box = pl.col("box").arr
    polygon = pl.col("polygon")
    fewest_ring_points = polygon.list.eval(pl.element().list.len() // 2).list.min()
    missing = pl.concat_str(
        [
            pl.when((pl.col("annotation_type") == annotation_type) & lacks).then(pl.lit(name))
            for annotation_type, fields in _REQUIRED_FIELDS.items()
            for name, lacks in fields
        ],
        separator=",",
        ignore_nulls=True,
    )
    return labels.join(image_sizes, on="image_id", how="left", maintain_order="left").with_columns(
        box_x0=box.get(0),
        box_y0=box.get(1),
        box_x1=box.get(2),
        box_y1=box.get(3),
        polygon_min_points=pl.when(polygon.list.len() == 0)
        .then(0)
        .otherwise(fewest_ring_points)
        .cast(pl.Int32),
        # concat_str of no names is "", which means complete
        missing_fields=pl.when(missing != "").then(missing),
    )


def labels_suite(ontology: Sequence[str]) -> gx.ExpectationSuite:
    """Gates a labels table (``LABELS_SCHEMA``), validated as ``labels_gate_frame``.

    A label that reaches training or an audit must be addressable (unique ``label_id``),
    belong to a known image, carry a confidence in [0, 1], have geometry that lies inside
    its image with positive area (rows without a box are not judged), polygons that are
    areas (>= 3 points), everything its annotation type needs, a category from the ontology
    (null categories, as for captions and OCR, are fine; no check when ``ontology`` is
    empty) and no blank text.
    """
    # rows without a box (or without a known image) are not judged by the box rules
    skip_missing = {"ignore_row_if": "either_value_is_missing"}
    # GX skips nulls in a value-set rule, so rows without a category (captions, OCR) pass
    category_rules = (
        [gxe.ExpectColumnValuesToBeInSet(column="category", value_set=list(ontology))] if ontology else []
    )
    return gx.ExpectationSuite(
        name="labels",
        expectations=[
            *_schema_expectations(LABELS_SCHEMA, extra_columns=LABELS_GATE_COLUMNS),
            gxe.ExpectColumnValuesToNotBeNull(column="label_id"),
            gxe.ExpectColumnValuesToBeUnique(column="label_id"),
            # the join found the label's image
            gxe.ExpectColumnValuesToNotBeNull(column="image_width"),
            gxe.ExpectColumnValuesToNotBeNull(column="score"),
            gxe.ExpectColumnValuesToBeBetween(column="score", min_value=0, max_value=1),
            gxe.ExpectColumnValuesToBeBetween(column="box_x0", min_value=0),
            gxe.ExpectColumnValuesToBeBetween(column="box_y0", min_value=0),
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="image_width", column_B="box_x1", or_equal=True, **skip_missing
            ),
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="image_height", column_B="box_y1", or_equal=True, **skip_missing
            ),
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="box_x1", column_B="box_x0", **skip_missing),
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="box_y1", column_B="box_y0", **skip_missing),
            gxe.ExpectColumnValuesToBeBetween(column="polygon_min_points", min_value=3),
            gxe.ExpectColumnValuesToBeNull(column="missing_fields"),
            *category_rules,
            gxe.ExpectColumnValuesToMatchRegex(column="text", regex=NOT_BLANK),
        ],
    )


def quarantine_gate_frame(quarantine: pl.DataFrame) -> pl.DataFrame:
    """``quarantine`` with a String row number ``row`` first: quarantine rows have no id, and
    the gate names the offending rows by it."""
    return quarantine.with_row_index("row").with_columns(pl.col("row").cast(pl.String))


def quarantine_suite() -> gx.ExpectationSuite:
    """Gates a quarantine table (``QUARANTINE_SCHEMA``), validated as ``quarantine_gate_frame``.

    Quarantine is where nothing is silently lost, so every row must say what was dropped
    (a known ``record_kind``; the ``label_id`` of a dropped label), which phase dropped it,
    why (``reason``, ``detail``), and keep the dropped record as readable JSON.
    """
    return gx.ExpectationSuite(
        name="quarantine",
        expectations=[
            *_schema_expectations({"row": pl.String, **QUARANTINE_SCHEMA}),
            gxe.ExpectColumnValuesToNotBeNull(column="record_kind"),
            gxe.ExpectColumnValuesToBeInSet(column="record_kind", value_set=list(RECORD_KINDS)),
            *(
                expectation
                for column in ("phase", "reason", "detail")
                for expectation in (
                    gxe.ExpectColumnValuesToNotBeNull(column=column),
                    gxe.ExpectColumnValuesToMatchRegex(column=column, regex=NOT_BLANK),
                )
            ),
            gxe.ExpectColumnValuesToNotBeNull(column="record"),
            gxe.ExpectColumnValuesToBeJsonParseable(column="record"),
            gxe.ExpectColumnValuesToNotBeNull(
                column="label_id", row_condition=Column("record_kind") == "label"
            ),
        ],
    )


def coverage_frame(labels: pl.DataFrame, images: pl.DataFrame) -> pl.DataFrame:
    """``image_id`` and ``labels``, the number of labels of that image (0 when none), for
    every image in ``images``."""
    counts = labels.group_by("image_id").len(name="labels")
    return (
        images.select("image_id")
        .unique(maintain_order=True)
        .join(counts, on="image_id", how="left", maintain_order="left")
        .with_columns(pl.col("labels").fill_null(0).cast(pl.Int64))
    )


def coverage_suite(min_labelled_share: float) -> gx.ExpectationSuite:
    """Gates label coverage, validated as ``coverage_frame``: at least ``min_labelled_share``
    of the images have a label. An image nobody labelled teaches nothing and is evaluated on
    nothing, and a sudden drop in coverage means a source or specialist went quiet."""
    return gx.ExpectationSuite(
        name="coverage",
        expectations=[
            gxe.ExpectColumnValuesToBeBetween(
                column="labels", min_value=1, mostly=min_labelled_share, meta={"measure": "labelled share"}
            )
        ],
    )


def one_label_per_object_suite(max_iou: float) -> gx.ExpectationSuite:
    """Gates "one object, one label", validated as ``relabel.merge.same_object_overlaps``: no
    two object labels of one image and class overlap by ``max_iou`` or more unless both are a
    person's. A confirming detection, a traced polygon or a model's re-detection belongs to
    the label of its object (its provenance and agreement), never beside it: a second copy
    would be exported, trained on and counted as another object."""
    return gx.ExpectationSuite(
        name="one_label_per_object",
        expectations=[
            gxe.ExpectColumnValuesToBeBetween(
                column="same_object_iou",
                max_value=max_iou,
                strict_max=True,
                meta={"measure": "same-object IoU"},
            )
        ],
    )


def same_object_frame(labels: pl.DataFrame) -> pl.DataFrame:
    """``relabel.merge.same_object_overlaps`` of ``labels``: per object label, its largest
    overlap with another label of its image and class."""
    return same_object_overlaps(labels)


def class_counts_frame(
    current: pl.DataFrame, reference: pl.DataFrame, min_reference_count: int = 1, min_score: float = 0.0
) -> pl.DataFrame:
    """Per category with at least ``min_reference_count`` object labels in ``reference``:
    ``category``, ``count`` (object labels of it in ``current``, 0 if none),
    ``reference_count`` and ``retention`` = count / reference_count. Both frames are labels
    tables; only labels scored at least ``min_score`` count (a person's unscored label counts).

    In a partly labelled photo collection most of a class's labels before the filters can be a
    detector's low-scored guesses, which the filters are there to drop: counting the labels the
    engine was confident in (``min_score``) and the classes with enough of them
    (``min_reference_count``) keeps the gate about a class collapsing."""
    reference_counts = (
        _object_label_counts(reference, min_score)
        .rename({"count": "reference_count"})
        .filter(pl.col("reference_count") >= min_reference_count)
    )
    return (
        reference_counts.join(_object_label_counts(current, min_score), on="category", how="left")
        .with_columns(pl.col("count").fill_null(0))
        .select("category", "count", "reference_count", retention=pl.col("count") / pl.col("reference_count"))
        .sort("category")
    )


def _object_label_counts(labels: pl.DataFrame, min_score: float = 0.0) -> pl.DataFrame:
    confident = (
        pl.col("score").is_null() | (pl.col("score").fill_nan(None) >= min_score)
        if min_score > 0
        else pl.lit(True)
    )
    objects = labels.filter(pl.col("category").is_not_null() & (pl.col("task") == "object") & confident)
    return objects.group_by("category").len(name="count").with_columns(pl.col("count").cast(pl.Int64))


def class_retention_suite(min_retention: float) -> gx.ExpectationSuite:
    """Gates per-class label counts against a reference, validated as
    ``class_counts_frame``: every class keeps at least ``min_retention`` of its reference
    count. Filtering and consensus drop labels; a rare class that collapses (to 0, say) would
    vanish from training while the overall count barely moves."""
    return gx.ExpectationSuite(
        name="class_retention",
        expectations=[
            gxe.ExpectColumnValuesToBeBetween(
                column="retention", min_value=min_retention, meta={"measure": "class retention"}
            )
        ],
    )


def rare_class_guard_suite(max_count_drop: float, max_recall_drop: float) -> gx.ExpectationSuite:
    """The rare-class guard over ``relabel.refine.rare_class_changes`` (one row per class
    that was rare in the previous iteration): self-labelling may not make a rare class lose
    more than ``max_count_drop`` of its labels or ``max_recall_drop`` of its recall in one
    iteration."""
    return gx.ExpectationSuite(
        name="rare_class_guard",
        expectations=[
            gxe.ExpectColumnValuesToBeBetween(
                column="count_drop", max_value=max_count_drop, meta={"measure": "rare-class count drop"}
            ),
            gxe.ExpectColumnValuesToBeBetween(
                column="recall_drop", max_value=max_recall_drop, meta={"measure": "rare-class recall drop"}
            ),
        ],
    )


def split_changes_frame(frozen: pl.DataFrame, changes: pl.DataFrame) -> pl.DataFrame:
    """One row per image of the frozen split or of the split now, with ``change``: its
    differences from the freeze (``relabel.evaluation_split.manifest_changes``) joined by
    commas, or ``unchanged``."""
    joined = changes.group_by("image_id", maintain_order=True).agg(
        pl.col("change").unique(maintain_order=True).str.join(",")
    )
    every = pl.concat([frozen.select("image_id"), changes.select("image_id")]).unique(maintain_order=True)
    return every.join(joined, on="image_id", how="left").with_columns(pl.col("change").fill_null("unchanged"))


def frozen_split_suite() -> gx.ExpectationSuite:
    """The frozen evaluation split is unchanged: every image and its audited labels are byte
    for byte what was frozen, and no image joined or left."""
    return gx.ExpectationSuite(
        name="frozen_split",
        expectations=[
            gxe.ExpectColumnValuesToBeInSet(
                column="change", value_set=["unchanged"], meta={"measure": "changed images"}
            )
        ],
    )


def leakage_frame(corpus: pl.DataFrame, leaks: pl.DataFrame) -> pl.DataFrame:
    """One row per image of a corpus shard, with ``leak``: ``none``, or how it matches an image
    of the frozen split (``relabel.evaluation_split.leaks``: ``same_content`` or
    ``near_duplicate``) and which one."""
    images = corpus.select("image_id").unique(maintain_order=True)
    found = leaks.select(
        "image_id",
        leak=pl.col("kind")
        + " of "
        + pl.col("split_image_id").str.slice(0, 12)
        + " ("
        + pl.col("distance").cast(pl.String)
        + " bits)",
    )
    return images.join(found, on="image_id", how="left").with_columns(pl.col("leak").fill_null("none"))


def no_leakage_suite() -> gx.ExpectationSuite:
    """No image of the frozen evaluation split, nor a near-duplicate of one, is in the corpus."""
    return gx.ExpectationSuite(
        name="no_eval_leakage",
        expectations=[
            gxe.ExpectColumnValuesToBeInSet(
                column="leak", value_set=["none"], meta={"measure": "images leaking the frozen split"}
            )
        ],
    )
