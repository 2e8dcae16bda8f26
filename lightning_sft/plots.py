"""Matplotlib figures of head patterns, shared by the callback (TensorBoard images) and the analysis CLI."""

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def pattern_heatmap(pattern: np.ndarray, title: str, *, diverging: bool = False) -> Figure:
    """Layers x heads heatmap of a [num_layers, num_heads] pattern (or of its change, `diverging=True`)."""
    pattern = np.asarray(pattern, dtype=np.float64)
    num_layers, num_heads = pattern.shape
    width, height = max(4.0, 1.7 + 0.45 * num_heads), 1.3 + 0.4 * num_layers
    figure = plt.figure(figsize=(width, height))
    # Fixed margins in inches instead of a layout engine: drawn at every probe step, this halves the cost.
    left, right, bottom, top = 0.6, 1.1, 0.5, 0.35
    axes = figure.add_axes((left / width, bottom / height, 1 - (left + right) / width, 1 - (bottom + top) / height))
    colorbar_axes = figure.add_axes((1 - 0.95 / width, bottom / height, 0.15 / width, 1 - (bottom + top) / height))
    if diverging:
        limit = float(np.abs(pattern).max()) or 1.0
        image = axes.imshow(pattern, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    else:
        image = axes.imshow(pattern, cmap="viridis", aspect="auto")
    axes.set_xlabel("head")
    axes.set_ylabel("layer")
    axes.set_xticks(range(0, num_heads, max(1, num_heads // 16)))  # at most ~16 labels per axis
    axes.set_yticks(range(0, num_layers, max(1, num_layers // 16)))
    axes.set_title(title, fontsize=9)
    figure.colorbar(image, cax=colorbar_axes)
    return figure


def correlation_heatmap(names: Sequence[str], matrix: np.ndarray, title: str) -> Figure:
    """Annotated [P, P] correlation matrix in [-1, 1] with the probe names on both axes."""
    size = len(names)
    figure, axes = plt.subplots(figsize=(2.0 + 0.9 * size, 1.6 + 0.8 * size), layout="constrained")
    image = axes.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1)
    axes.set_xticks(range(size), names, rotation=45, ha="right")
    axes.set_yticks(range(size), names)
    for row in range(size):
        for column in range(size):
            value = matrix[row, column]
            axes.text(column, row, f"{value:.2f}", ha="center", va="center",
                      color="white" if abs(value) > 0.6 else "black", fontsize=8)
    axes.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axes)
    return figure
