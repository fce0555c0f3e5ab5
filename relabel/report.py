"""The per-iteration evaluation report of the data engine: PNG plots and a Markdown summary.

Everything is drawn from plain polars frames (no Dagster, no MLflow), so the same report can be
written by a pipeline asset, a notebook or a test:

* metrics on the frozen evaluation split over all iterations so far,
* recall@0.5 per class of this iteration, rare classes marked,
* label counts per origin (the ``source`` before ``@``) stacked by status,
* quarantined rows per (phase, reason),
* a short ``summary.md`` that links the plots by relative file name (``embedded_summary``:
  the same with the plots inline, for a page that cannot follow relative links, like
  Dagster's Markdown metadata).

Output is deterministic: fixed width and dpi, heights that depend only on the number of bars,
categories in a fixed order and PNGs saved without the ``Software`` text chunk, so writing the
same inputs twice gives byte-identical files.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import polars as pl

from relabel.labels import LABEL_STATUSES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100
WIDTH = 9.0  # inches; all figure sizes are multiples of 0.25 in so pixel sizes are exact

METRICS_TITLE = "Frozen-split metrics by iteration"
PLOT_FILES: dict[str, str] = {
    "metrics_by_iteration": "metrics_by_iteration.png",
    "per_class_recall": "per_class_recall.png",
    "labels_by_source_status": "labels_by_source_status.png",
    "quarantine_by_reason": "quarantine_by_reason.png",
}
SUMMARY_FILE = "summary.md"
NULL = "–"
WEAKEST = 3

_SINGLE_AXIS_METRICS = 4  # more metrics than this get one panel each: their scales differ
_PANEL_COLUMNS = 3
_RARE_COLOUR = "#d95f02"
_COMMON_COLOUR = "#1b9e77"
_STATUS_COLOURS = {
    "raw": "#bdbdbd",
    "accepted": "#3182bd",
    "audited": "#31a354",
    "superseded": "#fd8d3c",
}
_OTHER_STATUS_COLOUR = "#756bb1"
_QUARANTINE_COLOUR = "#e6550d"
# right of the axes, where it never covers a bar
LEGEND_OUTSIDE = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "fontsize": 8}


def plot_titles(iteration: int) -> dict[str, str]:
    """The title of each plot of ``iteration``, by key of ``PLOT_FILES``."""
    return {
        "metrics_by_iteration": METRICS_TITLE,
        "per_class_recall": f"Recall@0.5 per class, iteration {iteration}",
        "labels_by_source_status": f"Labels by origin and status, iteration {iteration}",
        "quarantine_by_reason": f"Quarantined rows by phase and reason, iteration {iteration}",
    }


@dataclass(frozen=True)
class IterationReport:
    """What ``write_report`` wrote: the folder, each plot's path by key of ``PLOT_FILES``,
    and the Markdown summary (also in ``folder / SUMMARY_FILE``)."""

    folder: Path
    plots: dict[str, Path]
    summary: str


def _pyplot() -> ModuleType:
    # imported lazily and pinned to Agg: no display is needed and importing the module stays
    # cheap for callers that never draw
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bar_height(bars: int) -> float:
    """Figure height in inches for a horizontal bar chart of ``bars`` bars."""
    return max(3.0, 1.5 + 0.25 * bars)


def _save(figure: Figure, path: Path) -> Path:
    plt = _pyplot()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    # without the Software chunk the bytes do not depend on the matplotlib version
    figure.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(figure)
    return path


def _metric_frame(metrics: pl.DataFrame) -> pl.DataFrame:
    """``iteration``, ``metric`` and ``value`` of ``metrics``, cast so ints and enums work too."""
    return metrics.select(
        pl.col("iteration").cast(pl.Int64),
        pl.col("metric").cast(pl.String),
        pl.col("value").cast(pl.Float64),
    )


def _per_class_frame(per_class: pl.DataFrame) -> pl.DataFrame:
    """``category``, ``recall50`` and ``n_truth`` of ``per_class``, cast."""
    return per_class.select(
        pl.col("category").cast(pl.String),
        pl.col("recall50").cast(pl.Float64),
        pl.col("n_truth").cast(pl.Int64),
    )


def _origins(labels: pl.DataFrame) -> pl.DataFrame:
    """``labels`` reduced to ``origin`` (the source before "@") and ``status`` as strings."""
    return labels.select(
        origin=pl.col("source").cast(pl.String).str.split("@").list.first().fill_null(NULL),
        status=pl.col("status").cast(pl.String).fill_null(NULL),
    )


def _statuses(present: Collection[str]) -> list[str]:
    # lifecycle order first, anything unexpected after it, sorted
    known = [status for status in LABEL_STATUSES if status in present]
    return known + sorted(set(present) - set(LABEL_STATUSES))


def _rare_tag(category: str, rare: Collection[str]) -> str:
    return f"{category} (rare)" if category in rare else category


def metric_by_iteration(metrics: pl.DataFrame, path: Path) -> Path:
    """Plot each metric over the iterations to ``path`` (PNG) and return ``path``.

    Reads ``iteration`` (int), ``metric`` (str) and ``value`` (float, null allowed: a gap in
    the line). Up to four metrics share one axis; more get a grid of panels, one per metric,
    since their scales differ (mAP and CER lie in [0, 1], CIDEr can exceed 1). Size:
    ``WIDTH`` x 5 in for one axis, ``WIDTH`` x (1 + 2.5 per row of three panels) in otherwise.
    """
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    data = _metric_frame(metrics).sort("metric", "iteration")
    names = data["metric"].unique().sort().to_list()
    if len(names) <= _SINGLE_AXIS_METRICS:
        figure, axis = plt.subplots(figsize=(WIDTH, 5.0), dpi=DPI)
        groups = [(axis, names)]
    else:
        rows = math.ceil(len(names) / _PANEL_COLUMNS)
        figure, grid = plt.subplots(
            rows, _PANEL_COLUMNS, figsize=(WIDTH, 1.0 + 2.5 * rows), dpi=DPI, squeeze=False
        )
        axes = grid.ravel()
        for unused in axes[len(names) :]:
            unused.set_axis_off()
        groups = [(axis, [name]) for axis, name in zip(axes, names, strict=False)]
    iterations = data["iteration"].drop_nulls()
    for axis, group in groups:
        for name in group:
            series = data.filter(pl.col("metric") == name)
            # NaN, not None, so matplotlib leaves a gap where a value is missing
            values = [math.nan if v is None else v for v in series["value"].to_list()]
            axis.plot(series["iteration"].to_list(), values, marker="o", label=name)
        # min_n_ticks=1: one iteration gets the tick "0", not fractions crowding the axis
        axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        if len(iterations):
            # every panel spans all iterations, so a missing latest value shows as missing
            axis.set_xlim(iterations.min() - 0.25, iterations.max() + 0.25)
        axis.set_xlabel("iteration")
        axis.grid(alpha=0.3)
        if len(groups) > 1:
            axis.set_title(group[0], fontsize=10)
        elif group:
            # right of the axes: inside, "best" still sat on a line's points
            axis.legend(**LEGEND_OUTSIDE)
        else:
            axis.text(0.5, 0.5, "no metrics yet", ha="center", va="center", transform=axis.transAxes)
    figure.suptitle(METRICS_TITLE)
    return _save(figure, path)


def per_class_recall(per_class: pl.DataFrame, rare: Collection[str], path: Path, iteration: int) -> Path:
    """Plot recall@0.5 per class of ``iteration`` to ``path`` (PNG) and return ``path``.

    Reads ``category`` (str), ``recall50`` (float or null) and ``n_truth`` (int). Bars are
    sorted by recall, weakest on top; classes without a recall (no truth boxes) come last
    with no bar. Classes in ``rare`` get their own colour and "(rare)" in the tick label; the
    number of truth boxes is written at the end of each bar. Size: ``WIDTH`` x
    max(3, 1.5 + 0.25 per class) in.
    """
    plt = _pyplot()
    from matplotlib.patches import Patch

    data = _per_class_frame(per_class).sort("recall50", "category", descending=True, nulls_last=False)
    # barh draws the first row at the bottom: descending order with nulls first puts the
    # weakest class on top, ties alphabetical, and the classes without a recall at the bottom
    figure, axis = plt.subplots(figsize=(WIDTH, _bar_height(data.height)), dpi=DPI)
    rows = data.to_dicts()
    positions = range(len(rows))
    bars = axis.barh(
        positions,
        [row["recall50"] or 0.0 for row in rows],
        color=[_RARE_COLOUR if row["category"] in rare else _COMMON_COLOUR for row in rows],
    )
    ends = [f"n={row['n_truth']}" + ("" if row["recall50"] is not None else ", no recall") for row in rows]
    axis.bar_label(bars, labels=ends, padding=3, fontsize=8)
    axis.set_yticks(list(positions), [_rare_tag(row["category"], rare) for row in rows])
    axis.set_xlim(0.0, 1.15)  # room for the n= labels right of a full bar
    axis.set_xlabel("recall@0.5")
    axis.set_title(plot_titles(iteration)["per_class_recall"])
    legend = [
        Patch(color=_COMMON_COLOUR, label="common class"),
        Patch(color=_RARE_COLOUR, label="rare class"),
    ]
    axis.legend(handles=legend, **LEGEND_OUTSIDE)
    return _save(figure, path)


def labels_by_source_and_status(labels: pl.DataFrame, path: Path, iteration: int) -> Path:
    """Plot label counts per origin, stacked by status, to ``path`` (PNG) and return ``path``.

    Reads ``source`` (the origin is the part before "@": ``tinydet@1`` counts as ``tinydet``)
    and ``status``. One bar per origin, largest on top; statuses stack in lifecycle order
    (raw, accepted, audited, superseded). Size: ``WIDTH`` x max(3, 1.5 + 0.25 per origin) in.
    """
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    counts = _origins(labels).group_by("origin", "status").len()
    # smallest first, ties in reverse name order: barh puts the first row at the bottom
    totals = counts.group_by("origin").agg(pl.col("len").sum())
    origins = totals.sort("len", "origin", descending=[False, True])["origin"].to_list()
    figure, axis = plt.subplots(figsize=(WIDTH, _bar_height(len(origins))), dpi=DPI)
    positions = range(len(origins))
    left = [0] * len(origins)
    for status in _statuses(counts["status"].unique().to_list()):
        of_status = counts.filter(pl.col("status") == status)
        by_origin = dict(of_status.select("origin", "len").iter_rows())
        widths = [by_origin.get(origin, 0) for origin in origins]
        colour = _STATUS_COLOURS.get(status, _OTHER_STATUS_COLOUR)
        axis.barh(positions, widths, left=left, label=status, color=colour)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    for y, total in enumerate(left):
        axis.text(total, y, f" {total}", va="center", fontsize=8)
    axis.set_yticks(list(positions), origins)
    if origins:
        axis.legend(**LEGEND_OUTSIDE)
        axis.set_xlim(0, max(left) * 1.15)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        axis.text(0.5, 0.5, "no labels", ha="center", va="center", transform=axis.transAxes)
    axis.set_xlabel("labels")
    axis.set_title(plot_titles(iteration)["labels_by_source_status"])
    return _save(figure, path)


def quarantine_by_reason(quarantine: pl.DataFrame, path: Path, iteration: int) -> Path:
    """Plot quarantined row counts per (phase, reason) to ``path`` (PNG) and return ``path``.

    Reads ``phase`` and ``reason``. Bars are labelled "phase: reason", largest on top; an
    empty quarantine gives a plot that says "nothing quarantined". Size: ``WIDTH`` x
    max(3, 1.5 + 0.25 per bar) in.
    """
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    bucket = pl.concat_str(
        pl.col("phase").cast(pl.String).fill_null(NULL),
        pl.lit(": "),
        pl.col("reason").cast(pl.String).fill_null(NULL),
    )
    # smallest first, ties in reverse name order: barh puts the first row at the bottom
    counts = quarantine.group_by(bucket=bucket).len().sort("len", "bucket", descending=[False, True])
    figure, axis = plt.subplots(figsize=(WIDTH, _bar_height(counts.height)), dpi=DPI)
    if counts.height:
        positions = range(counts.height)
        bars = axis.barh(positions, counts["len"].to_list(), color=_QUARANTINE_COLOUR)
        axis.bar_label(bars, padding=3, fontsize=8)
        axis.set_yticks(list(positions), counts["bucket"].to_list())
        axis.set_xlim(0, counts["len"].max() * 1.15)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("rows")
    else:
        axis.set_axis_off()
        axis.text(0.5, 0.5, "nothing quarantined", ha="center", va="center", transform=axis.transAxes)
    axis.set_title(plot_titles(iteration)["quarantine_by_reason"])
    return _save(figure, path)


def _number(value: float | None) -> str:
    return NULL if value is None or math.isnan(value) else f"{value:.3f}"


def _change(current: float | None, previous: float | None) -> str:
    if current is None or previous is None or math.isnan(current) or math.isnan(previous):
        return NULL
    # round first so a tiny negative difference does not print as "-0.000"
    return f"{round(current - previous, 3) + 0.0:+.3f}"


def _cell(text: object) -> str:
    # a "|" inside a cell would split it
    return str(text).replace("|", "\\|")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]


def _metric_rows(iteration: int, metrics: pl.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the metrics table: this iteration, the previous one and the change.

    The previous iteration is the latest one before ``iteration`` that has any metric, so a
    skipped iteration still gets compared.
    """
    data = _metric_frame(metrics)
    earlier = data.filter(pl.col("iteration") < iteration)["iteration"]
    previous = earlier.max() if len(earlier) else None

    def values(at: int | None) -> dict[str, float | None]:
        of_iteration = data.filter(pl.col("iteration") == at)
        return dict(of_iteration.select("metric", "value").iter_rows())

    current = values(iteration)
    before = values(previous) if previous is not None else {}
    header = [
        "metric",
        f"iteration {iteration}",
        f"iteration {previous}" if previous is not None else "previous",
        "change",
    ]
    rows = [
        [name, _number(now), _number(before.get(name)), _change(now, before.get(name))]
        for name, now in sorted(current.items())
    ]
    return header, rows


def summary_markdown(
    iteration: int,
    metrics: pl.DataFrame,
    per_class: pl.DataFrame,
    rare: Collection[str],
    labels: pl.DataFrame,
    quarantine: pl.DataFrame,
    plots: Mapping[str, str],
    *,
    training_run: str | None,
    evaluation_run: str | None,
    split: Mapping[str, object],
) -> str:
    """A short Markdown summary of ``iteration`` on the frozen split.

    Reads the same columns as the plots: ``metrics`` (``iteration``, ``metric``, ``value``;
    all iterations up to ``iteration``), ``per_class`` (``category``, ``recall50``,
    ``n_truth``), ``labels`` (``source``, ``status``) and ``quarantine`` (only its row
    count). ``split`` is written as "key: value" pairs in its own order (for example images,
    audited labels and the freeze digest); ``training_run`` and ``evaluation_run`` are link
    targets (MLflow run URLs) and are left out when None; ``plots`` maps a title to a file
    name relative to the summary. Floats have three decimals, a missing value is "–".
    """
    lines = [f"# Iteration {iteration} on the frozen split", ""]
    if split:
        lines += ["Split: " + " · ".join(f"{key}: {value}" for key, value in split.items()), ""]
    runs = {"training run": training_run, "evaluation run": evaluation_run}
    links = [f"[{name}]({url})" for name, url in runs.items() if url]
    if links:
        lines += ["MLflow: " + ", ".join(links), ""]

    header, rows = _metric_rows(iteration, metrics)
    lines += ["## Metrics", ""]
    lines += _table(header, rows) if rows else ["No metrics for this iteration."]

    with_recall = _per_class_frame(per_class).drop_nulls("recall50")
    weakest = with_recall.sort("recall50", "category").head(WEAKEST)
    lines += ["", f"## Weakest {WEAKEST} classes by recall@0.5", ""]
    lines += (
        _table(
            ["class", "recall@0.5", "truth boxes"],
            [[_rare_tag(c, rare), _number(r), str(n)] for c, r, n in weakest.iter_rows()],
        )
        if weakest.height
        else ["No class has a recall."]
    )

    by_origin = _origins(labels).group_by("origin").len().sort("len", "origin", descending=[True, False])
    lines += ["", "## Labels", ""]
    lines += (
        _table(["origin", "labels"], [[o, str(n)] for o, n in by_origin.iter_rows()])
        if by_origin.height
        else ["No labels."]
    )
    lines += ["", f"Quarantine: {quarantine.height} rows.", ""]

    if plots:
        lines += ["## Plots", ""]
        for title, file in plots.items():
            lines += [f"![{title}]({file})", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_report(
    folder: Path,
    iteration: int,
    metrics: pl.DataFrame,
    per_class: pl.DataFrame,
    rare: Collection[str],
    labels: pl.DataFrame,
    quarantine: pl.DataFrame,
    *,
    training_run: str | None,
    evaluation_run: str | None,
    split: Mapping[str, object],
) -> IterationReport:
    """Write the four plots (file names in ``PLOT_FILES``) and ``summary.md`` into ``folder``.

    Inputs are those of ``summary_markdown`` (see each plot function for the columns it
    reads); ``folder`` is created if needed and existing files are overwritten.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = {key: folder / name for key, name in PLOT_FILES.items()}
    metric_by_iteration(metrics, paths["metrics_by_iteration"])
    per_class_recall(per_class, rare, paths["per_class_recall"], iteration)
    labels_by_source_and_status(labels, paths["labels_by_source_status"], iteration)
    quarantine_by_reason(quarantine, paths["quarantine_by_reason"], iteration)
    titles = plot_titles(iteration)
    summary = summary_markdown(
        iteration,
        metrics,
        per_class,
        rare,
        labels,
        quarantine,
        {titles[key]: path.name for key, path in paths.items()},
        training_run=training_run,
        evaluation_run=evaluation_run,
        split=split,
    )
    (folder / SUMMARY_FILE).write_text(summary, encoding="utf-8")
    return IterationReport(folder=folder, plots=paths, summary=summary)


def embedded_summary(report: IterationReport) -> str:
    """``report``'s summary with each plot inline (a ``data:image/png;base64`` URI) instead of
    its relative file name, which a page served from elsewhere (the Dagster UI's Markdown
    metadata, an MLflow view) shows as a broken image."""
    summary = report.summary
    for path in report.plots.values():
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        summary = summary.replace(f"]({path.name})", f"](data:image/png;base64,{data})")
    return summary
