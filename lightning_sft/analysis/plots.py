"""Figures of the analysis commands (drift curves, composition R^2) and saving any figure as a PNG."""

import io
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from lightning_sft.stats import CompositionFit  # noqa: E402
from lightning_sft.storage import atomic_write_bytes  # noqa: E402


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write `figure` as a PNG (100 dpi) atomically and close it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def is_log_spaced(steps: Sequence[int]) -> bool:
    """True when the positive steps grow geometrically (0, 1, 2, 4, 8, ...: each at least 1.5x the previous)."""
    positive = sorted(step for step in set(steps) if step > 0)
    return len(positive) >= 3 and all(later >= 1.5 * earlier for earlier, later in zip(positive, positive[1:]))


def drift_figure(drift: Mapping[str, Mapping[int, tuple[float, float]]]) -> Figure:
    """Two panels over optimizer steps (Figure 5): Pearson r and MSE of each probe's pattern vs its base.

    `drift` = {probe: {step: (pearson, mse)}}. The step axis is symlog when the steps are log-spaced.
    """
    figure, (pearson_axes, mse_axes) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    all_steps = []
    for probe, by_step in drift.items():
        steps = sorted(by_step)
        all_steps += steps
        pearson_axes.plot(steps, [by_step[step][0] for step in steps], marker="o", markersize=3, label=probe)
        mse_axes.plot(steps, [by_step[step][1] for step in steps], marker="o", markersize=3, label=probe)
    log_steps = is_log_spaced(all_steps)
    for axes, label in ((pearson_axes, "Pearson r with the base pattern"), (mse_axes, "MSE to the base pattern")):
        if log_steps:
            axes.set_xscale("symlog", linthresh=1)
            axes.set_xticks(sorted(set(all_steps)), [str(step) for step in sorted(set(all_steps))])
            axes.minorticks_off()
        axes.set_xlabel("optimizer step" + (" (symlog)" if log_steps else ""))
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
    pearson_axes.set_title("Similarity to the base model's pattern")
    mse_axes.set_title("Distance from the base model's pattern")
    mse_axes.legend(fontsize=8, title="probe", title_fontsize=8, loc="best")
    return figure


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
