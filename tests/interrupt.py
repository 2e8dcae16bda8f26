"""A callback that interrupts a fit after a given optimizer step, as a crash or a preemption would."""

import lightning as L
from lightning.pytorch.callbacks import Callback


class StopAfterStep(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True
