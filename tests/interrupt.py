"""Callbacks that interrupt a fit after a given optimizer step, as a crash, a preemption or a bug would."""

import os
import signal

import lightning as L
from lightning.pytorch.callbacks import Callback


class StopAfterStep(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


class TerminateAtStep(Callback):
    """Sends this process SIGTERM once `step` optimizer steps are done, as a scheduler's preemption would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class BuggyCallback(Callback):
    """Fails in `setup` with a ValueError that no `raise` of ours chose: a bug, whose traceback must show."""

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        int("a bug, not a user's value")
