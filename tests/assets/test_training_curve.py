"""The training curve's chart: every line visible, the legend beside the panels, not on them."""

from types import SimpleNamespace

from assets.model import TrainingCurve
from relabel.task_tokens import TASK_TOKENS

TASKS = tuple(TASK_TOKENS)  # every Florence-2 task: 14 lines and the total


def _curve(steps: int = 40) -> TrainingCurve:
    curve = TrainingCurve()
    for step in range(1, steps + 1):
        curve.add(
            SimpleNamespace(
                step=step,
                loss=4.0 / step**0.5,
                learning_rate=1e-3 * min(1.0, step / 5),
                examples=8,
                target_tokens=100,
                seconds=0.5,
                task_losses={task: (i + 2) / step**0.5 for i, task in enumerate(TASKS)},
            )
        )
    return curve


def test_the_legend_covers_no_panel_and_names_every_line():
    figure = _curve().figure()
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    (legend,) = figure.legends
    box = legend.get_window_extent(renderer)
    for axis in figure.axes:
        assert not box.overlaps(axis.get_window_extent(renderer)), axis.get_title()
    assert [text.get_text() for text in legend.get_texts()] == ["all tasks", *TASKS]
    # inside the picture, not cut off at its edge
    assert box.x1 <= figure.bbox.x1 and box.y0 >= figure.bbox.y0
    # no two lines of one colour
    colours = [line.get_color() for line in figure.axes[1].get_lines()]
    assert len(set(map(str, colours))) == len(colours)
    assert _curve().chart().size == (12 * 90, 4 * 90)
