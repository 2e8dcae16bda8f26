"""When a measuring callback runs: the schedule HeadActivationCallback and TaskAccuracyCallback share."""

import math
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn


class Schedule:
    """Optimizer steps to measure at (0 = the base model, before any update).

    Args:
        steps: an explicit list of steps.
        every_n_steps: 0, n, 2n, ... (instead of `steps`).
            With neither: log-spaced 0, 1, 2, 4, 8, ... (models move fastest early).
        owner: the callback's name, for error messages.
    """

    def __init__(self, steps: list[int] | None, every_n_steps: int | None, owner: str) -> None:
        if steps is not None and every_n_steps is not None:
            raise ValueError(f"{owner}: pass either `steps` or `every_n_steps`, not both (neither: log-spaced 0, 1,"
                             " 2, 4, ...).")
        if steps is not None and (not steps or min(steps) < 0):
            raise ValueError(f"{owner}: steps={steps} must be a non-empty list of optimizer steps >= 0.")
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"{owner}: every_n_steps={every_n_steps} must be >= 1.")
        self.steps = sorted(set(steps)) if steps is not None else None
        self.every_n_steps = every_n_steps
        self.owner = owner

    def is_due(self, step: int) -> bool:
        """Whether optimizer step `step` is on the schedule."""
        if self.steps is not None:
            return step in self.steps
        if self.every_n_steps is not None:
            return step % self.every_n_steps == 0
        return step == 0 or step & (step - 1) == 0

    def warn_beyond(self, trainer: Any, what: str) -> None:
        """Warn (rank 0) about listed steps past the run's last optimizer step, whether `max_steps` or
        `max_epochs` bounds it (`trainer.estimated_stepping_batches`; call it from `on_train_start`)."""
        last_step = trainer.estimated_stepping_batches
        beyond = [step for step in self.steps or [] if math.isfinite(last_step) and step > last_step]
        if beyond:
            rank_zero_warn(f"{self.owner} steps {beyond} are beyond the last step of this run, {int(last_step)}"
                           f" (trainer.max_steps={trainer.max_steps}, max_epochs={trainer.max_epochs}), and will"
                           f" never be {what}.")
