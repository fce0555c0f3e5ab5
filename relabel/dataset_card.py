"""The dataset card written beside every export of an iteration's labels: Markdown and PNG plots.

A card tells whoever receives an export what is in it and where it came from, without access to
the pipeline: counts per annotation type, task, class, origin and split; the paper's table 3
text statistics; the quality of the iteration's model on the frozen, human-audited split; the
lineage of iterations; package versions; the licences of the sources; and the DVC md5s and the
command that reproduce the export. It opens with Hugging Face-style YAML front matter so a hub
(or any YAML reader) can index it.

Everything is drawn from plain inputs (polars frames and mappings, no Dagster, no MLflow) held
in :class:`CardInputs`. Output is deterministic: tables in a fixed order, figures of a fixed
width and dpi with heights that depend only on the number of bars, and PNGs saved without the
``Software`` text chunk, so the same inputs give byte-identical files.
"""

from __future__ import annotations

import importlib.metadata
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import polars as pl
import yaml

from relabel.labels import ANNOTATION_TYPES, HUMAN_SOURCE, SPLITS, TASKS, TASKS_BY_TYPE
from relabel.report import LEGEND_OUTSIDE

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CARD_FILE = "DATASET_CARD.md"
PLOT_FILES: dict[str, str] = {
    "labels_by_task": "card_labels_by_task.png",
    "labels_by_class": "card_labels_by_class.png",
    "labels_by_origin": "card_labels_by_origin.png",
}
NULL = "–"
NOT_INSTALLED = "not installed"
DPI = 100
WIDTH = 8.0  # inches; every figure size is a multiple of 0.25 in, so pixel sizes are exact
# a plot of a thousand classes would be tens of thousands of pixels tall; the table has them all
MAX_PLOTTED_CLASSES = 40

# an origin's kind; "model" is told by the version part "iteration-<k>" that the model's
# labels carry ("florence2@iteration-<k>"), so a renamed model is still recognised
AUDIT_ORIGIN = "human-audit"
_MODEL_VERSION = re.compile(r"iteration-\d+")
# the embedded, procedurally rendered world and its companion sources ("world-alt-text")
WORLD_SOURCE = "world"

# Hugging Face task categories of the tasks (TASKS_BY_TYPE); phrase grounding is detection
# conditioned on free text, which the hub calls zero-shot object detection
_TASK_CATEGORIES = {
    "brief_caption": "image-to-text",
    "detailed_caption": "image-to-text",
    "more_detailed_caption": "image-to-text",
    "alt_text": "image-to-text",
    "object": "object-detection",
    "region_caption": "image-to-text",
    "ocr": "image-to-text",
    "phrase_grounding": "zero-shot-object-detection",
}
_SEGMENTATION_CATEGORY = "image-segmentation"
# the hub's size buckets, by number of examples (here: images)
_SIZE_BOUNDS = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
)
_LARGEST_SIZE = "n>1B"

_TYPE_COLOURS = {"text": "#7570b3", "region_text": "#1b9e77", "text_phrase_region": "#d95f02"}
_KIND_COLOURS = {
    "human": "#31a354",
    "human-audit": "#006d2c",
    "specialist": "#3182bd",
    "model": "#e6550d",
}
_CLASS_COLOUR = "#1b9e77"
_OTHER_COLOUR = "#969696"


@dataclass(frozen=True, kw_only=True, eq=False)
class CardInputs:
    """Everything a dataset card is written from (``eq=False``: frames do not compare with ``==``).

    ``images`` (``IMAGES_SCHEMA`` columns) and ``labels`` (``LABELS_SCHEMA`` rows) are what the
    export holds. ``text_statistics`` is the filter report's table 3 frame
    (``text_statistics.parquet``), rendered as it is; ``frozen_split_metrics`` has rows
    ``metric``, ``value`` of the iteration's model on the frozen split and ``split`` describes
    that split (images, audited labels, digest); either is None when there is none.
    ``lineage`` has one row per iteration up to this one (``iteration``, ``labels``,
    ``made_from``, ``model_run``, ``dvc_md5``). ``versions`` maps a package to its version,
    ``sources`` holds one mapping per input source (``name``, ``kind``, ``licence`` and ``url``
    or ``path``), ``dvc_inputs`` maps an input file or stage to the DVC md5 the export was made
    from, ``filters`` says what the export left out (its settings and the counts dropped), and
    ``export_command`` is the ``relabel export`` command line that made the export.
    """

    name: str
    iteration: int
    export_format: str
    images: pl.DataFrame
    labels: pl.DataFrame
    lineage: pl.DataFrame
    versions: Mapping[str, str]
    sources: Sequence[Mapping[str, str]]
    dvc_inputs: Mapping[str, str]
    filters: Mapping[str, object]
    export_command: str
    text_statistics: pl.DataFrame | None = None
    frozen_split_metrics: pl.DataFrame | None = None
    split: Mapping[str, object] | None = None


@dataclass(frozen=True)
class DatasetCard:
    """What ``write_card`` wrote: the card's path, each plot's path by key of ``PLOT_FILES``,
    and the card's Markdown (also in ``path``)."""

    path: Path
    plots: dict[str, Path]
    markdown: str


def package_versions(names: Sequence[str]) -> dict[str, str]:
    """The installed version of each distribution in ``names``, in that order; a missing one
    is ``NOT_INSTALLED``."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = NOT_INSTALLED
    return versions


# counts


def _ranked(data: pl.DataFrame, column: str, known: Sequence[str]) -> pl.DataFrame:
    """``data`` with ``column`` as a string, sorted in the order of ``known`` (the schema's
    order), values outside it after those alphabetically, null last."""
    data = data.with_columns(pl.col(column).cast(pl.String))
    rank = pl.col(column).replace_strict(
        {value: position for position, value in enumerate(known)},
        default=len(known),
        return_dtype=pl.Int64,
    )
    return data.sort(rank, pl.col(column), nulls_last=True)


def _count(labels: pl.DataFrame, column: str, known: Sequence[str]) -> pl.DataFrame:
    return _ranked(labels.group_by(column).len(name="labels"), column, known)


def origin_of(source: str | None) -> tuple[str | None, str, str | None]:
    """The origin (``source`` before "@"), its kind (human, human-audit, model or specialist)
    and the part after "@" (a version, a model iteration or an auditor; None without "@")."""
    if source is None:
        return None, NULL, None
    origin, _, after = source.partition("@")
    if source == HUMAN_SOURCE:
        kind = "human"
    elif origin == AUDIT_ORIGIN:
        kind = "human-audit"
    elif _MODEL_VERSION.fullmatch(after):
        kind = "model"
    else:
        kind = "specialist"
    return origin, kind, after or None


def _by_origin(labels: pl.DataFrame) -> pl.DataFrame:
    """Labels per origin, with its kind and its distinct versions (iterations, auditors)."""
    per_source = labels.group_by(pl.col("source").cast(pl.String)).len()
    grouped: dict[tuple[str | None, str], tuple[set[str], int]] = {}
    for source, count in per_source.iter_rows():
        origin, kind, after = origin_of(source)
        versions, total = grouped.get((origin, kind), (set(), 0))
        grouped[(origin, kind)] = (versions | ({after} if after else set()), total + count)
    rows = [
        {
            "origin": origin,
            "kind": kind,
            "versions": ", ".join(sorted(versions)) or None,
            "labels": total,
        }
        for (origin, kind), (versions, total) in grouped.items()
    ]
    schema = {"origin": pl.String, "kind": pl.String, "versions": pl.String, "labels": pl.Int64}
    return pl.DataFrame(rows, schema=schema).sort(
        "labels", "origin", descending=[True, False], nulls_last=True
    )


def _by_split(labels: pl.DataFrame, images: pl.DataFrame) -> pl.DataFrame:
    """Images and labels per split; labels whose image is not in ``images`` have a null split."""
    split = pl.col("split").cast(pl.String)
    image_split = images.select("image_id", split)
    images_per = image_split.group_by("split").len(name="images")
    labels_per = (
        labels.select("image_id")
        .join(image_split, on="image_id", how="left")
        .group_by("split")
        .len(name="labels")
    )
    both = images_per.join(labels_per, on="split", how="full", coalesce=True, nulls_equal=True)
    counts = both.with_columns(pl.col("images", "labels").fill_null(0).cast(pl.Int64))
    return _ranked(counts, "split", SPLITS).select("split", "images", "labels")


def counts_tables(labels: pl.DataFrame, images: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Label counts of an export, one frame per view, each with a ``labels`` column.

    * ``annotation_type`` and ``task``: in the schema's order;
    * ``class``: ``category`` of the object labels (task ``object``), most labels first;
    * ``origin``: ``origin`` (the source before "@"), ``kind`` (human, human-audit, model or
      specialist) and ``versions`` (the distinct parts after "@"), most labels first;
    * ``split``: ``split``, ``images`` (rows of ``images``) and ``labels``, in the schema's order.
    """
    objects = labels.filter(pl.col("task").cast(pl.String) == "object")
    by_class = (
        objects.group_by(pl.col("category").cast(pl.String))
        .len(name="labels")
        .sort("labels", "category", descending=[True, False], nulls_last=True)
    )
    return {
        "annotation_type": _count(labels, "annotation_type", ANNOTATION_TYPES),
        "task": _count(labels, "task", TASKS),
        "class": by_class,
        "origin": _by_origin(labels),
        "split": _by_split(labels, images),
    }


# plots


def _pyplot() -> ModuleType:
    # imported lazily and pinned to Agg: no display is needed, and callers that only count
    # never pay for importing matplotlib
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bar_chart(
    names: Sequence[str],
    counts: Sequence[int],
    colours: Sequence[str],
    legend: Mapping[str, str],
    title: str,
    path: Path,
) -> Path:
    """A horizontal bar chart, first bar on top, count written at each bar's end, saved to
    ``path`` as PNG. ``legend`` maps a legend entry to its colour (none when empty). Size:
    ``WIDTH`` x max(2.5, 1.25 + 0.25 per bar) in."""
    plt = _pyplot()
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    figure, axis = plt.subplots(figsize=(WIDTH, max(2.5, 1.25 + 0.25 * len(names))), dpi=DPI)
    if names:
        positions = list(range(len(names)))
        bars = axis.barh(positions, list(counts), color=list(colours))
        axis.bar_label(bars, padding=3, fontsize=8)
        axis.set_yticks(positions, list(names))
        axis.invert_yaxis()
        axis.set_xlim(0, max(counts) * 1.15)  # room for the count right of the longest bar
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("labels")
        if legend:
            handles = [Patch(color=colour, label=entry) for entry, colour in legend.items()]
            axis.legend(handles=handles, **LEGEND_OUTSIDE)
    else:
        axis.set_axis_off()
        axis.text(0.5, 0.5, "no labels", ha="center", va="center", transform=axis.transAxes)
    axis.set_title(title)
    return _save(figure, path)


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    # without the Software chunk the bytes do not depend on the matplotlib version
    figure.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    _pyplot().close(figure)
    return path


def _type_of_task(task: str) -> str | None:
    return next((kind for kind, tasks in TASKS_BY_TYPE.items() if task in tasks), None)


def _plot_tasks(by_task: pl.DataFrame, title: str, path: Path) -> Path:
    names = [NULL if task is None else task for task in by_task["task"].to_list()]
    types = [_type_of_task(task) for task in by_task["task"].to_list()]
    colours = [_TYPE_COLOURS.get(kind, _OTHER_COLOUR) for kind in types]
    legend = {kind: _TYPE_COLOURS[kind] for kind in ANNOTATION_TYPES if kind in types}
    return _bar_chart(names, by_task["labels"].to_list(), colours, legend, title, path)


def _plot_classes(by_class: pl.DataFrame, title: str, path: Path) -> Path:
    shown = by_class.head(MAX_PLOTTED_CLASSES)
    names = [NULL if c is None else c for c in shown["category"].to_list()]
    counts = shown["labels"].to_list()
    colours = [_CLASS_COLOUR] * shown.height
    rest = by_class.slice(MAX_PLOTTED_CLASSES)
    if rest.height:
        names.append(f"({rest.height} other classes)")
        counts.append(int(rest["labels"].sum()))
        colours.append(_OTHER_COLOUR)
    return _bar_chart(names, counts, colours, {}, title, path)


def _plot_origins(by_origin: pl.DataFrame, title: str, path: Path) -> Path:
    names = [NULL if o is None else o for o in by_origin["origin"].to_list()]
    kinds = by_origin["kind"].to_list()
    colours = [_KIND_COLOURS.get(kind, _OTHER_COLOUR) for kind in kinds]
    legend = {kind: colour for kind, colour in _KIND_COLOURS.items() if kind in kinds}
    return _bar_chart(names, by_origin["labels"].to_list(), colours, legend, title, path)


def plot_titles(iteration: int) -> dict[str, str]:
    """The title of each plot of ``iteration``, by key of ``PLOT_FILES``."""
    return {
        "labels_by_task": f"Labels by task, iteration {iteration}",
        "labels_by_class": f"Object labels by class, iteration {iteration}",
        "labels_by_origin": f"Labels by origin, iteration {iteration}",
    }


# markdown


def _value(value: object, decimals: int = 3) -> str:
    """``value`` as card text: floats with ``decimals`` decimals, null or NaN as ``NULL``,
    booleans as yes/no, sequences and mappings spelled out."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NULL
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{decimals}f}"
    if isinstance(value, Mapping):
        return ", ".join(f"{key}={_value(item, decimals)}" for key, item in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        # a set has no order of its own; sorted, the card's bytes do not depend on hashing
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return ", ".join(_value(item, decimals) for item in items) or NULL
    return str(value)


def _cell(text: str) -> str:
    # a "|" would split the cell and a newline would end the row
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], decimals: int = 3) -> list[str]:
    lines = ["| " + " | ".join(_cell(str(name)) for name in header) + " |"]
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(_cell(_value(c, decimals)) for c in row) + " |" for row in rows]
    return lines


def _frame_table(data: pl.DataFrame, decimals: int = 3) -> list[str]:
    return _table(data.columns, list(data.iter_rows()), decimals)


def _licences(sources: Sequence[Mapping[str, str]]) -> str | list[str]:
    """The front matter's ``license``: one identifier, a list when the sources differ, "other"
    without sources. A source without a licence counts as "unknown", so the card never claims
    a licence for data whose licence nobody stated."""
    found = sorted({source.get("licence") or "unknown" for source in sources})
    if not found:
        return "other"
    return found[0] if len(found) == 1 else found


def _size_category(images: int) -> str:
    return next((name for bound, name in _SIZE_BOUNDS if images < bound), _LARGEST_SIZE)


def _task_categories(labels: pl.DataFrame, tasks: Sequence[str]) -> list[str]:
    categories = {_TASK_CATEGORIES[task] for task in tasks if task in _TASK_CATEGORIES}
    has_masks = labels.select(
        (pl.col("polygon").is_not_null() | pl.col("mask_rle").is_not_null()).any()
    ).item()
    if has_masks:
        categories.add(_SEGMENTATION_CATEGORY)
    return sorted(categories)


def _is_world(source: Mapping[str, str]) -> bool:
    name = source.get("name") or ""
    return name == WORLD_SOURCE or name.startswith(WORLD_SOURCE + "-")


def front_matter(inputs: CardInputs, tasks: Sequence[str]) -> str:
    """The card's Hugging Face-style YAML front matter, ``---`` lines included."""
    synthetic = any(_is_world(source) for source in inputs.sources)
    tags = ["relabel", "florence-2"] + (["synthetic"] if synthetic else [])
    meta = {
        "pretty_name": f"{inputs.name} — iteration {inputs.iteration}",
        "license": _licences(inputs.sources),
        "task_categories": _task_categories(inputs.labels, tasks),
        "size_categories": [_size_category(inputs.images.height)],
        "tags": tags,
    }
    body = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return f"---\n{body}---\n"


def _summary(inputs: CardInputs, counts: Mapping[str, pl.DataFrame]) -> str:
    splits = counts["split"].filter(pl.col("images") > 0)
    per_split = ", ".join(f"{images} {_value(split)}" for split, images, _ in splits.iter_rows())
    tasks = counts["task"]["task"].drop_nulls().to_list()
    classes = counts["class"]["category"].drop_nulls().len()
    text = (
        f"This export holds {inputs.labels.height} labels on {inputs.images.height} images"
        + (f" ({per_split})" if per_split else "")
        + f", of {len(tasks)} tasks ({', '.join(tasks) or NULL}) and {classes} object classes,"
        + f" written in the `{inputs.export_format}` format from iteration {inputs.iteration}."
    )
    if inputs.filters:
        left_out = "; ".join(f"{key}: {_value(value)}" for key, value in inputs.filters.items())
        return f"{text} Left out by the export: {left_out}."
    return f"{text} The export left nothing out."


def _image(key: str, iteration: int) -> list[str]:
    return ["", f"![{plot_titles(iteration)[key]}]({PLOT_FILES[key]})"]


def card_markdown(inputs: CardInputs, counts: Mapping[str, pl.DataFrame] | None = None) -> str:
    """The card's Markdown for ``inputs``; ``counts`` is ``counts_tables`` of its labels and
    images (computed when None). Plots are linked by the file names of ``PLOT_FILES``, relative
    to the card. Floats have three decimals (two in table 3), a missing value is "–"."""
    if counts is None:
        counts = counts_tables(inputs.labels, inputs.images)
    tasks = counts["task"]["task"].drop_nulls().to_list()
    k = inputs.iteration
    lines = [front_matter(inputs, tasks), f"# {inputs.name} — iteration {k}", ""]
    lines += [_summary(inputs, counts), "", "## Contents", ""]

    lines += ["### By annotation type", "", *_frame_table(counts["annotation_type"])]
    lines += ["", "### By task", "", *_frame_table(counts["task"]), *_image("labels_by_task", k)]
    lines += ["", "### By class (object labels)", ""]
    lines += _frame_table(counts["class"]) if counts["class"].height else ["No object labels."]
    lines += _image("labels_by_class", k)
    lines += ["", "### By origin", "", *_frame_table(counts["origin"])]
    lines += _image("labels_by_origin", k)
    lines += ["", "### By split", "", *_frame_table(counts["split"])]

    lines += ["", "## Text statistics (table 3)", ""]
    statistics = inputs.text_statistics
    lines += (
        _frame_table(statistics, decimals=2)
        if statistics is not None and statistics.height
        else [f"No text statistics for iteration {k}."]
    )

    lines += ["", "## Label quality on the frozen split", ""]
    if inputs.split:
        described = " · ".join(f"{key}: {_value(v)}" for key, v in inputs.split.items())
        lines += [f"Split: {described}", ""]
    metrics = inputs.frozen_split_metrics
    lines += (
        _frame_table(metrics.select("metric", "value"))
        if metrics is not None and metrics.height
        else [f"No evaluation on the frozen split exists for iteration {k}."]
    )

    lineage = inputs.lineage.sort("iteration")
    lines += ["", "## Lineage", ""]
    lines += _frame_table(lineage) if lineage.height else ["No lineage recorded."]

    lines += ["", "## Versions", ""]
    lines += _table(["package", "version"], list(inputs.versions.items()))

    lines += ["", "## Sources and licences", ""]
    source_rows = [
        [s.get("name"), s.get("kind"), s.get("licence"), s.get("url") or s.get("path")]
        for s in inputs.sources
    ]
    header = ["source", "kind", "licence", "url or path"]
    lines += _table(header, source_rows) if source_rows else ["No sources recorded."]

    lines += ["", "## Reproduce", ""]
    if inputs.dvc_inputs:
        lines += ["The export was made from these DVC-tracked inputs:", ""]
        lines += _table(["input", "DVC md5"], list(inputs.dvc_inputs.items())) + [""]
    lines += ["With those inputs checked out (`dvc checkout` or `dvc pull`), run:", ""]
    lines += ["```", inputs.export_command, "```"]
    return "\n".join(lines) + "\n"


def write_card(folder: Path, inputs: CardInputs) -> DatasetCard:
    """Write ``CARD_FILE`` and the plots of ``PLOT_FILES`` into ``folder`` (created if needed,
    existing files overwritten) and return what was written."""
    folder.mkdir(parents=True, exist_ok=True)
    counts = counts_tables(inputs.labels, inputs.images)
    titles = plot_titles(inputs.iteration)
    paths = {key: folder / name for key, name in PLOT_FILES.items()}
    _plot_tasks(counts["task"], titles["labels_by_task"], paths["labels_by_task"])
    _plot_classes(counts["class"], titles["labels_by_class"], paths["labels_by_class"])
    _plot_origins(counts["origin"], titles["labels_by_origin"], paths["labels_by_origin"])
    markdown = card_markdown(inputs, counts)
    path = folder / CARD_FILE
    path.write_text(markdown, encoding="utf-8")
    return DatasetCard(path=path, plots=paths, markdown=markdown)
