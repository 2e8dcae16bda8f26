"""lightning_sft.plots: blitted heatmap frames equal fresh drawings, ASCII minus signs, the drift figure's axes."""

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from lightning_sft.plots import (
    CorrelationHeatmap, PatternHeatmap, correlation_heatmap, crowds_start, drift_figure, pattern_limits,
)


def fresh_pixels(figure) -> np.ndarray:
    canvas = FigureCanvasAgg(figure)
    for artist in figure.findobj():
        artist.set_animated(False)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3]


def test_a_blitted_frame_equals_the_figure_drawn_from_scratch():
    rng = np.random.default_rng(0)
    first, second = rng.random((3, 5)), rng.random((3, 5))
    reused = PatternHeatmap((3, 5), (0.0, 1.0))
    reused.frame(first, "probe, step 0")  # a previous frame must leave no trace
    frame = reused.frame(second, "probe, step 7")
    fresh = PatternHeatmap((3, 5), (0.0, 1.0))
    fresh.image.set_data(second)
    fresh.title.set_text("probe, step 7")
    np.testing.assert_array_equal(frame, fresh_pixels(fresh.figure))
    assert not np.array_equal(frame, reused.frame(first, "probe, step 0"))

    names = ["a", "b", "c"]
    matrix = np.array([[1.0, -0.5, 0.2], [-0.5, 1.0, 0.9], [0.2, 0.9, 1.0]])
    blitted = CorrelationHeatmap(names)
    blitted.frame(np.eye(3), "step 1")
    np.testing.assert_array_equal(blitted.frame(matrix, "step 2"),
                                  fresh_pixels(correlation_heatmap(names, matrix, "step 2")))


def test_negative_tick_labels_use_the_ascii_minus():
    heatmap = PatternHeatmap((2, 4), (-0.5, 0.5), diverging=True)
    labels = [label.get_text() for label in heatmap.figure.axes[1].get_yticklabels()]
    assert any(label.startswith("-0.") for label in labels), labels
    assert not any("\u2212" in label for label in labels), labels


def test_pattern_limits_span_every_pattern():
    patterns = [np.array([[0.2, 0.4]]), np.array([[0.1, 0.9]])]
    assert pattern_limits(patterns) == (0.1, 0.9)
    assert pattern_limits([np.array([[0.3, -0.7]]), np.array([[0.5, 0.1]])], diverging=True) == (-0.7, 0.7)
    assert pattern_limits([np.zeros((1, 2))], diverging=True) == (-1.0, 1.0)


@pytest.mark.parametrize("steps, symlog", [
    ([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600], True),  # the demo's log-spaced schedule, plus the end
    ([0, 100, 200, 300, 400, 500, 600], False),
])
def test_drift_figure_is_symlog_where_steps_crowd_the_start(steps, symlog):
    assert crowds_start(steps) is symlog
    figure = drift_figure({"a": {s: (1.0 - s / 1000, s / 1000) for s in steps}, "b": {s: (1.0, 0.0) for s in steps}})
    pearson_axes, mse_axes = figure.axes[:2]
    assert pearson_axes.get_xscale() == mse_axes.get_xscale() == ("symlog" if symlog else "linear")
    assert [text.get_text() for text in mse_axes.get_legend().get_texts()] == ["a", "b"]
    assert len(pearson_axes.get_lines()) == len(mse_axes.get_lines()) == 2
