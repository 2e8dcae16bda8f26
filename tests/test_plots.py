"""lightning_sft.plots: heatmap frames equal matplotlib's own drawings, ASCII minus signs, the drift figure's axes."""

import matplotlib
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from lightning_sft.plots import (
    CorrelationHeatmap, PatternHeatmap, correlation_heatmap, crowds_start, drift_figure, pattern_heatmap,
    pattern_limits, probe_colours,
)


def fresh_pixels(figure) -> np.ndarray:
    canvas = FigureCanvasAgg(figure)
    for artist in figure.findobj():
        artist.set_animated(False)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3]


def cell_centres(axes, shape: tuple[int, int], height: int) -> tuple[np.ndarray, np.ndarray]:
    """Buffer (row, column) of each cell's centre [L, H], from the axes' box (independent of PatternHeatmap's
    own indexing)."""
    x0, y0, x1, y1 = axes.get_window_extent().extents
    layers, heads = shape
    rows = height - (y1 - (np.arange(layers) + 0.5) * (y1 - y0) / layers)
    columns = x0 + (np.arange(heads) + 0.5) * (x1 - x0) / heads
    return np.floor(rows).astype(int)[:, None].repeat(heads, 1), np.floor(columns).astype(int)[None].repeat(layers, 0)


@pytest.mark.parametrize("diverging, limits", [(False, (0.0, 1.0)), (True, (-0.7, 0.7))])
def test_a_frame_is_matplotlibs_own_drawing_of_the_pattern(diverging, limits):
    rng = np.random.default_rng(0)
    first, second = rng.random((3, 5)) - 0.5 * diverging, rng.random((3, 5)) - 0.5 * diverging
    heatmap = PatternHeatmap((3, 5), diverging=diverging)
    heatmap.draw((-9.0, 9.0), "other probe")
    heatmap.draw(limits, "probe: head activation")  # a second drawing replaces the first
    heatmap.frame(first)  # a previous frame must leave no trace
    frame = heatmap.frame(second)
    drawn = fresh_pixels(pattern_heatmap(second, "probe: head activation", limits, diverging=diverging))
    assert frame.shape == drawn.shape
    # Equal but where the axes' edge (spine) is blended over the cells: within two pixels of the axes' box.
    x0, y0, x1, y1 = heatmap.axes.get_window_extent().extents
    rows, columns = np.nonzero((frame != drawn).any(-1))
    rows = frame.shape[0] - rows - 0.5  # display y of the pixel centres
    on_edge = (np.minimum(abs(rows - y0), abs(rows - y1)) <= 2) | (np.minimum(abs(columns + 0.5 - x0),
                                                                               abs(columns + 0.5 - x1)) <= 2)
    assert on_edge.all(), f"{(~on_edge).sum()} pixels differ inside the cells"
    rows, columns = cell_centres(heatmap.axes, (3, 5), frame.shape[0])
    colours = matplotlib.colormaps["RdBu_r" if diverging else "viridis"](
        matplotlib.colors.Normalize(*limits)(second), bytes=True)[..., :3]
    np.testing.assert_array_equal(frame[rows, columns], colours)
    np.testing.assert_array_equal(drawn[rows, columns], colours)
    assert not np.array_equal(frame, heatmap.frame(first))


def test_a_blitted_correlation_frame_equals_the_figure_drawn_from_scratch():
    names = ["a", "b", "c"]
    matrix = np.array([[1.0, -0.5, 0.2], [-0.5, 1.0, 0.9], [0.2, 0.9, 1.0]])
    blitted = CorrelationHeatmap(names)
    blitted.frame(np.eye(3), "step 1")
    np.testing.assert_array_equal(blitted.frame(matrix, "step 2"),
                                  fresh_pixels(correlation_heatmap(names, matrix, "step 2")))


def test_negative_tick_labels_use_the_ascii_minus():
    heatmap = PatternHeatmap((2, 4), diverging=True)
    heatmap.draw((-0.5, 0.5), "change")
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
    assert [text.get_text() for text in figure.legends[0].get_texts()] == ["a", "b"]
    assert len(pearson_axes.get_lines()) == len(mse_axes.get_lines()) == 2


def test_correlation_heatmap_names_each_probe_in_its_colour():
    names = ["reversal", "addition", "sorting"]
    axes = correlation_heatmap(names, np.eye(3), "change correlation").axes[0]
    for label in [*axes.get_xticklabels(), *axes.get_yticklabels()]:
        assert matplotlib.colors.to_hex(label.get_color()) == probe_colours(names)[label.get_text()]


def test_correlation_heatmap_keeps_long_probe_names_inside_the_figure():
    """The layout is made once, on a real canvas: rotated long names are neither cut at the bottom nor left."""
    heatmap = CorrelationHeatmap(["addition", "reversed_sum", "arc_challenge"])
    heatmap.frame(np.eye(3), "change correlation, step 1500")
    axes, renderer = heatmap.image.axes, heatmap._canvas.get_renderer()
    for label in [*axes.get_xticklabels(), *axes.get_yticklabels(), heatmap.title]:
        box = label.get_window_extent(renderer)
        assert box.x0 >= 0 and box.y0 >= 0, label.get_text()
        assert box.x1 <= heatmap.figure.bbox.x1 and box.y1 <= heatmap.figure.bbox.y1, label.get_text()


DEMO_STEPS = [0, 1, 4, 16, 64, 256, 1024, 1500]  # the demo's schedule and its last step
DEMO_PROBES = ["addition", "reversal", "sorting", "counting", "reversed_sum"]


def demo_drift() -> dict[str, dict[int, tuple[float, float]]]:
    return {name: {step: (1 - 0.01 * i * np.log1p(step), 0.002 * (i + 1) * np.log1p(step)) for step in DEMO_STEPS}
            for i, name in enumerate(DEMO_PROBES)}


def test_drift_figure_reads_at_tensorboards_image_card_width():
    """TensorBoard's image card shows the figure about 340 px wide: every text is then at least 9 px tall."""
    figure = drift_figure(demo_drift())
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    scale = 340 / canvas.get_width_height()[0]
    texts = [text for text in figure.findobj(matplotlib.text.Text) if text.get_visible() and text.get_text()]
    assert len(texts) > 20
    for text in texts:
        assert text.get_fontsize() * figure.dpi / 72 * scale >= 9, (text.get_text(), text.get_fontsize())


def test_drift_figure_step_labels_do_not_overlap_and_keep_the_first_and_last_step():
    figure = drift_figure(demo_drift())
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    labels = [label for label in figure.axes[1].get_xticklabels() if label.get_visible() and label.get_text()]
    assert labels[0].get_text() == "0" and labels[-1].get_text() == "1500"
    boxes = [label.get_window_extent(renderer) for label in labels]
    for left, right in zip(boxes, boxes[1:]):
        assert left.x1 < right.x0, "step labels overlap"
    assert figure.bbox.x0 <= boxes[0].x0 and boxes[-1].x1 <= figure.bbox.x1


def test_each_probe_has_its_colour_in_both_panels_whatever_the_order_of_the_probes():
    colours = probe_colours(DEMO_PROBES)
    assert len(set(colours.values())) == len(DEMO_PROBES)
    reordered = dict(reversed(demo_drift().items()))
    for drift in (demo_drift(), reordered):
        figure = drift_figure(drift)
        for axes in figure.axes[:2]:
            drawn = {line.get_label(): matplotlib.colors.to_hex(line.get_color()) for line in axes.get_lines()}
            assert drawn == colours
