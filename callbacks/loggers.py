"""What the callbacks send loggers besides `log_metrics`: TensorBoard's Custom Scalars layout, and images through
W&B's and MLflow's own image APIs."""

from collections.abc import Sequence
from typing import Any

import numpy as np
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

IMAGE_LOGGERS = (TensorBoardLogger, WandbLogger, MLFlowLogger)  # the loggers the callbacks send images to


def scalars_layout(callbacks: Sequence[Callback]) -> dict[str, dict[str, list[Any]]]:
    """The Custom Scalars layout of a run: only the charts its callbacks fill, drift and concentration first.

    A line per probe run (HeadActivationCallback) and per task metric (TaskAccuracyCallback); with both,
    the accuracy chart sits beside the drift charts.
    """
    from callbacks import HeadActivationCallback, TaskAccuracyCallback  # both modules import this one

    probes = any(isinstance(callback, HeadActivationCallback) for callback in callbacks)
    tasks = any(isinstance(callback, TaskAccuracyCallback) for callback in callbacks)
    layout: dict[str, dict[str, list[Any]]] = {}
    if probes:
        layout["drift"] = {"pearson vs base": ["Multiline", [r"^drift/pearson$"]],
                           "mse vs base": ["Multiline", [r"^drift/mse$"]]}
        layout["concentration"] = {statistic: ["Multiline", [rf"^concentration/{statistic}$"]]
                                   for statistic in ("gini", "cv", "kurtosis", "mean")}
    if tasks:
        layout.setdefault("drift" if probes else "eval", {})["eval accuracy"] = ["Multiline", [r"^eval/.*"]]
    if probes:
        layout["head_probe"] = {"probe loss": ["Multiline", [r"^head_probe/loss$"]]}
    return layout


def log_image(logger: Logger, tag: str, pixels: np.ndarray, step: int) -> None:
    """Logs `pixels` [height, width, 3] uint8 RGB as image `tag` at `step` through W&B's or MLflow's own image
    API (TensorBoard's images are written by `head_activation.add_png`; other loggers get none)."""
    if isinstance(logger, WandbLogger):
        logger.log_image(tag, [pixels], step=step)
    elif isinstance(logger, MLFlowLogger):
        logger.experiment.log_image(logger.run_id, pixels, key=tag, step=step)
