"""Small helpers that turn frames and pictures into Dagster metadata."""

import base64
import io
from collections import Counter

import polars as pl
from PIL import Image


def counts_by(frame: pl.DataFrame, column: str, top: int | None = None) -> dict[str, int]:
    """Row counts per value of ``column`` as entries ``column/value`` (the ``top`` largest)."""
    counts = Counter(str(value) for value in frame[column].to_list()) if len(frame) else Counter()
    chosen = counts.most_common(top) if top else sorted(counts.items())
    return {f"{column}/{value}": n for value, n in sorted(chosen)}


def markdown_table(frame: pl.DataFrame, digits: int = 3) -> str:
    """``frame`` as a markdown table, floats rounded to ``digits``."""

    def cell(value: object) -> str:
        if value is None:
            return ""
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join(lines)


def figure_image(figure) -> Image.Image:
    """A matplotlib figure rendered to a PIL image (and closed)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return Image.open(io.BytesIO(buffer.getvalue()))


def bar_chart(frame: pl.DataFrame, title: str) -> Image.Image:
    """A horizontal bar chart of a two-column frame (label, value), largest first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label, value = frame.columns[:2]
    ordered = frame.sort(value)
    figure, axis = plt.subplots(figsize=(8, 0.9 + 0.28 * max(ordered.height, 1)), dpi=90)
    axis.barh(ordered[label].cast(pl.String).to_list(), ordered[value].to_list())
    axis.set_title(title)
    axis.bar_label(axis.containers[0], fontsize=8)
    figure.tight_layout()
    return figure_image(figure)


def png_markdown(image: Image.Image, title: str) -> str:
    """``image`` inline in markdown metadata, so the UI shows the picture itself."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return f"![{title}](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode('ascii')})"
