"""Every matplotlib figure of the project: head heatmaps (TensorBoard images and analysis PNGs), drift
curves, composition R^2, and writing a figure as a PNG.

Importing this module selects the non-interactive Agg backend and plain ASCII minus signs (the Unicode
minus vanishes at TensorBoard's card size, so "-0.10" would read as "0.10").
"""

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["axes.unicode_minus"] = False
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.artist import Artist  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.textpath import TextPath  # noqa: E402

from lightning_sft.stats import CompositionFit  # noqa: E402
from lightning_sft.storage import atomic_write_bytes  # noqa: E402


class RedrawnFigure:
    """A figure drawn once, whose `changing` artists are redrawn alone (blitted) for each new frame.

    Everything else (axes, ticks, labels, colour bar) is rendered once and copied back for each frame,
    so a frame costs the few changing artists, not a whole figure. Colour limits must therefore stay fixed.
    """

    def __init__(self, figure: Figure, changing: Sequence[Artist]) -> None:
        self.figure = figure
        self.changing = list(changing)
        for artist in self.changing:
            artist.set_animated(True)  # left out of the full draw below
        self._canvas = FigureCanvasAgg(figure)
        self._canvas.draw()
        self._background = self._canvas.copy_from_bbox(figure.bbox)

    def pixels(self) -> np.ndarray:
        """The figure as it now stands, [height, width, 3] uint8 RGB (for TensorBoard images)."""
        self._canvas.restore_region(self._background)
        for artist in self.changing:
            self.figure.draw_artist(artist)
        return _rgb(self._canvas)

    def still(self) -> Figure:
        """The figure with its changing artists drawn like the rest (for `save_figure`)."""
        for artist in self.changing:
            artist.set_animated(False)
        return self.figure


class PatternHeatmap:
    """Layers x heads heatmaps of [num_layers, num_heads] patterns, as RGB pixels, many frames per drawing.

    `draw(limits, title)` renders the figure (axes, ticks, a colour bar spanning `limits` = (vmin, vmax),
    the title; after the first, only the colour bar and the title); each `frame(pattern)` then only colours
    the cells: the colour map's RGB of each value, nearest-neighbour into the axes' pixel box, as
    imshow(interpolation="nearest") draws them, on a copy of that drawing. No matplotlib drawing per frame,
    so the callback's heatmaps cost a copy and an index each.
    The colour limits are fixed per `draw`, so frames of one drawing compare across steps. `diverging=True`
    (for changes) uses a red-blue map.
    """

    def __init__(self, shape: tuple[int, int], *, diverging: bool = False) -> None:
        num_layers, num_heads = shape
        self.shape = shape
        width, height = max(4.0, 1.7 + 0.45 * num_heads), 1.3 + 0.4 * num_layers
        figure = Figure(figsize=(width, height), dpi=100)
        left, right, bottom, top = 0.6, 1.1, 0.5, 0.35  # fixed margins in inches: no layout engine
        self.axes = figure.add_axes(
            (left / width, bottom / height, 1 - (left + right) / width, 1 - (bottom + top) / height))
        colorbar_axes = figure.add_axes((1 - 0.95 / width, bottom / height, 0.15 / width, 1 - (bottom + top) / height))
        self.image = self.axes.imshow(np.zeros(shape), cmap="RdBu_r" if diverging else "viridis",
                                      aspect="auto", interpolation="nearest")
        self.image.set_visible(False)  # `frame` colours the cells; `still` shows the image for a saved figure
        self.axes.set_xlabel("head")
        self.axes.set_ylabel("layer")
        self.axes.set_xticks(range(0, num_heads, max(1, num_heads // 16)))  # at most ~16 labels per axis
        self.axes.set_yticks(range(0, num_layers, max(1, num_layers // 16)))
        self.title = self.axes.set_title(" ", fontsize=9)
        figure.colorbar(self.image, cax=colorbar_axes)
        self.figure = figure
        # what `draw` changes: the colour bar (its ticks follow the limits) and the title; they overlap
        # nothing else, so redrawn over the rest's rendering (made once, by the first `draw`) they give the
        # pixels of a whole drawing
        self._changing = (colorbar_axes, self.title)
        self._redrawn: RedrawnFigure | None = None
        self._background: np.ndarray | None = None

    def draw(self, limits: tuple[float, float], title: str) -> None:
        """Render everything but the cells with colour limits `limits` and `title`: the first call draws the
        whole figure but those two, later ones copy that back and draw only the colour bar and title."""
        self.image.set_clim(*limits)
        self.title.set_text(title)
        first = self._redrawn is None
        if first:
            self._redrawn = RedrawnFigure(self.figure, self._changing)
        self._background = self._redrawn.pixels()
        if first:
            self._locate_cells(self._background)
        self._edge_pixels = self._background[self._box][self._edge]

    def _locate_cells(self, pixels: np.ndarray) -> None:
        """Where the cells go in `pixels` [height, width, 3] (a drawing without them; the title and colour
        bar lie outside the axes): the axes' box in buffer pixels (rows from the top), the cell index
        (layer * num_heads + head) under each box pixel's centre, and the box pixels off the axes' face (the
        spines drawn over its edge), left as drawn."""
        x0, y0, x1, y1 = self.axes.get_window_extent().extents
        rows = pixels.shape[0] - (np.arange(pixels.shape[0]) + 0.5)  # display y of row centres
        columns = np.arange(pixels.shape[1]) + 0.5
        inside_rows, inside_columns = np.flatnonzero((rows > y0) & (rows < y1)), np.flatnonzero(
            (columns > x0) & (columns < x1))
        num_layers, num_heads = self.shape
        self._box = (slice(inside_rows[0], inside_rows[-1] + 1), slice(inside_columns[0], inside_columns[-1] + 1))
        layer = np.minimum(((y1 - rows[inside_rows]) / (y1 - y0) * num_layers).astype(int), num_layers - 1)
        head = np.minimum(((columns[inside_columns] - x0) / (x1 - x0) * num_heads).astype(int), num_heads - 1)
        self._cells = layer[:, None] * num_heads + head[None, :]
        self._edge = np.nonzero(~(pixels[self._box] == 255).all(-1))

    def frame(self, pattern: np.ndarray) -> np.ndarray:
        """RGB pixels [height, width, 3] uint8 of `pattern` [num_layers, num_heads] on the last `draw`."""
        if self._background is None:
            raise RuntimeError("PatternHeatmap.frame before draw(limits, title)")
        colours = self.image.cmap(self.image.norm(np.asarray(pattern, dtype=np.float64)), bytes=True)[..., :3]
        pixels = self._background.copy()
        box = pixels[self._box]
        np.take(colours.reshape(-1, 3), self._cells, axis=0, out=box)  # each pixel the colour of its cell
        box[self._edge] = self._edge_pixels
        return pixels

    def still(self, pattern: np.ndarray, limits: tuple[float, float], title: str) -> Figure:
        """The figure of `pattern` drawn by matplotlib itself (for `save_figure`)."""
        self.image.set_data(np.asarray(pattern, dtype=np.float64))
        self.image.set_clim(*limits)
        self.image.set_visible(True)
        self.title.set_text(title)
        for artist in self._changing:
            artist.set_animated(False)
        return self.figure


def pattern_heatmap(pattern: np.ndarray, title: str, limits: tuple[float, float], *,
                    diverging: bool = False) -> Figure:
    """One layers x heads heatmap figure of `pattern` [num_layers, num_heads] (for `save_figure`)."""
    return PatternHeatmap(pattern.shape, diverging=diverging).still(pattern, limits, title)


def figure_pixels(figure: Figure) -> np.ndarray:
    """`figure` rendered by Agg, [height, width, 3] uint8 RGB (for TensorBoard images)."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return _rgb(canvas)


def _rgb(canvas: FigureCanvasAgg) -> np.ndarray:
    """A copy of what `canvas` holds now, [height, width, 3] uint8 RGB."""
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def pattern_limits(patterns: Sequence[np.ndarray], *, diverging: bool = False) -> tuple[float, float]:
    """Colour limits shared by all `patterns`: [min, max] over them, or +-max|value| when `diverging`."""
    stacked = np.stack([np.asarray(pattern, dtype=np.float64) for pattern in patterns])
    if diverging:
        limit = float(np.abs(stacked).max()) or 1.0
        return -limit, limit
    low, high = float(stacked.min()), float(stacked.max())
    return (low, high) if high > low else (low - 0.5, low + 0.5)


class CorrelationHeatmap(RedrawnFigure):
    """Annotated [P, P] correlation matrix in [-1, 1] with the probe names on both axes, in their colours.

    `frame(matrix, title)` returns the RGB pixels of one frame; `correlation_heatmap` draws one figure.
    """

    def __init__(self, names: Sequence[str]) -> None:
        size = len(names)
        figure = Figure(figsize=(2.0 + 0.9 * size, 1.6 + 0.8 * size), dpi=100, layout="constrained")
        axes = figure.add_subplot()
        self.image = axes.imshow(np.zeros((size, size)), cmap="RdBu_r", vmin=-1, vmax=1)
        axes.set_xticks(range(size), names, rotation=45, ha="right")
        axes.set_yticks(range(size), names)
        colours = probe_colours(names)
        for label in [*axes.get_xticklabels(), *axes.get_yticklabels()]:
            label.set_color(colours[label.get_text()])  # as its line in the drift figure
        self.texts = [[axes.text(column, row, "-0.00", ha="center", va="center", fontsize=8)
                       for column in range(size)] for row in range(size)]
        self.title = axes.set_title(" ", fontsize=10)
        figure.colorbar(self.image, ax=axes)
        # Lays out once with stand-in text, measured by Agg, without rendering; no layout engine for the frames.
        FigureCanvasAgg(figure)
        figure.get_layout_engine().execute(figure)
        figure.set_layout_engine("none")
        super().__init__(figure, [self.image, *axes.spines.values(), self.title,
                                  *(text for row in self.texts for text in row)])

    def set(self, matrix: np.ndarray, title: str) -> None:
        self.image.set_data(matrix)
        for row, texts in enumerate(self.texts):
            for column, text in enumerate(texts):
                value = float(matrix[row, column])
                text.set_text(f"{value:.2f}")
                text.set_color("white" if abs(value) > 0.6 else "black")
        self.title.set_text(title)

    def frame(self, matrix: np.ndarray, title: str) -> np.ndarray:
        """RGB pixels [height, width, 3] uint8 of the [P, P] `matrix` under `title`."""
        self.set(matrix, title)
        return self.pixels()


def correlation_heatmap(names: Sequence[str], matrix: np.ndarray, title: str) -> Figure:
    """One annotated [P, P] correlation-matrix figure (for `save_figure`)."""
    heatmap = CorrelationHeatmap(names)
    heatmap.set(matrix, title)
    return heatmap.still()


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write `figure` as a PNG at its own dpi (100, or 200 for the drift figure) atomically and close it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi="figure")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def crowds_start(steps: Sequence[int]) -> bool:
    """True when the steps crowd the start of a linear axis (the median positive step is under a tenth of
    the largest), as a log-spaced schedule 0, 1, 2, 4, 8, ... does: then a symlog axis reads better."""
    positive = sorted(step for step in set(steps) if step > 0)
    return len(positive) >= 3 and float(np.median(positive)) < 0.1 * positive[-1]


def probe_colours(names: Sequence[str]) -> dict[str, str]:
    """The project's colour of each probe in every figure: matplotlib's tab10, in sorted name order.

    TensorBoard colours its runs in its browser page (by run order, changeable there), so its colours are
    not matched; sorting the names gives a probe the same colour in the callback's figures, the analysis
    figures and every logger, whatever order the probes were given in.
    """
    palette = matplotlib.colormaps["tab10"].colors
    return {name: to_hex(palette[i % len(palette)]) for i, name in enumerate(sorted(names))}


CARD_WIDTH = 3.4  # inches at 100 px per inch: the width of TensorBoard's image card (about 340 px)


def drift_figure(drift: Mapping[str, Mapping[int, tuple[float, float]]]) -> Figure:
    """Two panels over optimizer steps (Figure 5): Pearson r and MSE of each probe's pattern vs its base.

    `drift` = {probe: {step: (pearson, mse)}}, one line per probe in its `probe_colours` colour. Drawn to
    be read at TensorBoard's image-card width (`CARD_WIDTH`; 200 dpi, so twice as many pixels): panels
    stacked, fonts of 7-8 pt. The step axis is symlog (linear up to 1, so step 0 shows) when the steps
    crowd the start of a linear axis (`crowds_start`), ticked at the probed steps whose labels fit.
    """
    colours = probe_colours(list(drift))
    legend_rows = -(-len(drift) // 3)
    height = 4.1 + 0.17 * legend_rows
    figure = Figure(figsize=(CARD_WIDTH, height), dpi=200)  # fixed margins: no layout engine
    pearson_axes, mse_axes = figure.subplots(2, 1, sharex=True, gridspec_kw={
        "left": 0.62 / CARD_WIDTH, "right": 1 - 0.12 / CARD_WIDTH, "top": 1 - 0.08 / height,
        "bottom": (0.5 + 0.17 * legend_rows) / height, "hspace": 0.08})
    for probe in sorted(drift):
        by_step = drift[probe]
        steps = sorted(by_step)
        for axes, column in ((pearson_axes, 0), (mse_axes, 1)):
            axes.plot(steps, [by_step[step][column] for step in steps], marker="o", markersize=2.5, linewidth=1.2,
                      color=colours[probe], label=probe)
    all_steps = sorted({step for by_step in drift.values() for step in by_step})
    log_steps = crowds_start(all_steps)
    for axes, label in ((pearson_axes, "Pearson r with step 0"), (mse_axes, "MSE to step 0")):
        axes.set_ylabel(label, fontsize=8)
        axes.tick_params(labelsize=7)
        axes.yaxis.get_offset_text().set_fontsize(7)
        axes.grid(alpha=0.3)
    if log_steps:
        mse_axes.set_xscale("symlog", linthresh=1)
        mse_axes.minorticks_off()
        shown = fitting_ticks(mse_axes, all_steps, fontsize=7)
        mse_axes.set_xticks(shown, [str(step) for step in shown])
    mse_axes.set_xlabel("optimizer step" + (" (symlog)" if log_steps else ""), fontsize=8)
    figure.legend(*pearson_axes.get_legend_handles_labels(), loc="lower center", ncols=min(3, len(drift)),
                  fontsize=7, frameon=False, borderaxespad=0.2, handlelength=1.5, columnspacing=1.0)
    return figure


def fitting_ticks(axes: Axes, steps: Sequence[int], fontsize: float) -> list[int]:
    """The `steps` whose labels, centred under their ticks on `axes`' x-axis (its limits and scale as
    they stand), do not overlap: kept from the last step leftwards, so the last step is always labelled."""
    text_width = {step: TextPath((0, 0), str(step), size=fontsize).get_extents().width
                  * axes.figure.dpi / 72 for step in steps}  # points to pixels
    axes.set_xlim(*axes.get_xlim())  # autoscaled now, before the positions are read
    position = {step: axes.transData.transform((step, 0))[0] for step in steps}
    gap = 0.5 * fontsize * axes.figure.dpi / 72  # half a letter between two labels
    kept = [steps[-1]]
    for step in reversed(steps[:-1]):
        if position[kept[-1]] - position[step] >= (text_width[kept[-1]] + text_width[step]) / 2 + gap:
            kept.append(step)
    return kept[::-1]


def composition_figure(target: str, fits: Sequence[CompositionFit]) -> Figure:
    """Horizontal bars of R^2 per subset of bases (Figure 4), best at the top."""
    labels = [" + ".join(fit.bases) for fit in fits]
    values = np.array([fit.r2 for fit in fits])
    figure, axes = plt.subplots(figsize=(7.5, 1.2 + 0.32 * len(fits)), layout="constrained")
    positions = np.arange(len(fits))
    axes.barh(positions, values, color=np.where(values >= 0, "tab:blue", "tab:red"))
    axes.set_yticks(positions, labels, fontsize=8)
    axes.invert_yaxis()
    for position, value in zip(positions, values):  # right of the bar, or of 0 for a negative one
        axes.text(max(value, 0.0), position, f" {value:.3f}", va="center", ha="left", fontsize=8)
    axes.set_xlim(min(0.0, values.min() * 1.05), 1.1)
    axes.axvline(0, color="black", linewidth=0.8)
    axes.set_xlabel("R$^2$ of the least-squares fit (no intercept)")
    axes.set_title(f"Pattern change of {target} composed from {len(fits[0].bases)} bases", fontsize=10)
    axes.grid(axis="x", alpha=0.3)
    return figure
