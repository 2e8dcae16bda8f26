"""Command line for lightning-sft: `python train.py fit --config configs/demo.yaml`.

Every YAML key is a constructor argument of SFTModule (`model:`), SFTDataModule (`data:`),
lightning's Trainer (`trainer:`) or a callback; `python train.py fit --print_config` shows them all.

Exit codes: 0 done; 1 with one line `train.py: error: ...` for a bad input or value, or a dependency outside
its declared range (no traceback; a bug keeps its traceback); 2 for a command-line or YAML mistake
(jsonargparse's message); 143 (128 + SIGTERM) when the run was terminated, after Lightning's on-exception checkpoint (`ModelCheckpoint(save_on_exception=
True)`), so that a scheduler sees the run did not finish.
"""

import signal
import sys
from typing import Any

try:
    import lightning_sft  # noqa: F401  first: checks the installed versions against the declared ranges
except ImportError as error:
    if type(error).__name__ != "UnsupportedVersion":
        raise
    sys.exit(f"train.py: error: {error}")

from lightning import Trainer
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

import lightning_sft.strategy  # noqa: F401  registers the sft_zero2/sft_zero3 strategy names
from lightning_sft.data import SFTDataModule
from lightning_sft.module import SFTModule
from lightning_sft.user_errors import user_error_message


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
    try:
        main()
    except SIGTERMException:  # Lightning's own exit on SIGTERM is SystemExit(None), i.e. status 0
        sys.exit(128 + signal.SIGTERM)
    except Exception as error:
        message = user_error_message(error)
        if message is None:
            raise
        sys.exit(f"train.py: error: {message}")
