"""Command line for lightning-sft: `python train.py fit --config configs/demo.yaml`.

Every YAML key is a constructor argument of SFTModule (`model:`), SFTDataModule (`data:`),
lightning's Trainer (`trainer:`) or a callback; `python train.py fit --print_config` shows them all.
"""

from typing import Any

from lightning import Trainer
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

import lightning_sft.strategy  # noqa: F401  registers the sft_zero2/sft_zero3 strategy names
from lightning_sft.data import SFTDataModule
from lightning_sft.module import SFTModule


class SFTCLI(LightningCLI):
    """LightningCLI whose default logger (no `trainer.logger`, or `true`) is Lightning's own default,
    a TensorBoardLogger under `default_root_dir`, without the `hp_metric = -1` placeholder that would
    fill TensorBoard's HParams tab with a metric nobody logs."""

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = self._get(self.config_init, "trainer", default={})
        if trainer.get("logger") in (None, True) and "logger" not in kwargs:
            kwargs["logger"] = TensorBoardLogger(trainer.get("default_root_dir") or ".", default_hp_metric=False)
        return super().instantiate_trainer(**kwargs)


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    return SFTCLI(
        SFTModule, SFTDataModule, seed_everything_default=0, save_config_kwargs={"overwrite": True}, args=args,
        run=run,
    )


if __name__ == "__main__":
    main()
