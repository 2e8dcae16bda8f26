"""Command line for lightning-sft: `python train.py fit --config configs/demo.yaml`.

Every YAML key is a constructor argument of SFTModule (`model:`), SFTDataModule (`data:`),
lightning's Trainer (`trainer:`) or a callback; `python train.py fit --print_config` shows them all.

Exit codes: 0 done; 1 with one line `train.py: error: ...` for a bad input or value, or a dependency outside
its declared range (no traceback; a bug keeps its traceback); 2 for a command-line or YAML mistake
(jsonargparse's message); 143 (128 + SIGTERM) when the run was terminated, after Lightning's on-exception
checkpoint (`ModelCheckpoint(save_on_exception=True)`, in every shipped config), so that a scheduler sees the
run did not finish.
"""

import json
import signal
import sys
from pathlib import Path
from typing import Any

try:
    import lightning_sft  # noqa: F401  first: checks the installed versions against the declared ranges
except ImportError as error:
    if type(error).__name__ != "UnsupportedVersion":
        raise
    sys.exit(f"train.py: error: {error}")

import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

import lightning_sft.strategy  # noqa: F401  registers the sft_zero2/sft_zero3 strategy names
from lightning_sft.data import SFTDataModule
from lightning_sft.module import SFTModule
from lightning_sft.user_errors import user_error_message


class SaveConfigWhenTrainingStarts(SaveConfigCallback):
    """Lightning's SaveConfigCallback, which for `fit` writes `config.yaml` when training starts rather than at
    setup: after every check of the run's folders and checkpoint (the callbacks' `on_train_start` before it,
    the model's `setup`), so that a refused run never overwrites the record of the run whose folder it found."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            super().setup(trainer, pl_module, stage)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().setup(trainer, pl_module, "fit")


class SFTCLI(LightningCLI):
    """LightningCLI whose default logger (no `trainer.logger`, or `true`) is Lightning's own default,
    a TensorBoardLogger under `default_root_dir`, without the `hp_metric = -1` placeholder that would
    fill TensorBoard's HParams tab with a metric nobody logs.

    A checkpoint is untrusted input: LightningCLI would apply its `hyper_parameters` over the user's `model:`
    settings (where the run exports, which model it loads); here they are only compared, and a checkpoint
    saved with other settings than the ones passed is refused, naming each.
    """

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():  # a DeepSpeed checkpoint is a folder: no hparams read
            return
        saved = torch.load(ckpt_path, weights_only=True, map_location="cpu", mmap=True).get("hyper_parameters", {})
        passed = self.config[subcommand].model.as_dict()
        differences = [
            f"{name}: {_plain(saved[name])} in the checkpoint, {_plain(passed[name])} here"
            for name in passed if name in saved and _plain(saved[name]) != _plain(passed[name])
        ]
        if differences:
            raise ValueError(
                f"--ckpt_path {ckpt_path} was saved with other model settings than this run's "
                f"({'; '.join(differences)})."
                " A checkpoint's settings are not applied over yours: pass the checkpoint's settings to resume it, or "
                "start a new run without --ckpt_path."
            )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = self._get(self.config_init, "trainer", default={})
        if trainer.get("logger") in (None, True) and "logger" not in kwargs:
            kwargs["logger"] = TensorBoardLogger(trainer.get("default_root_dir") or ".", default_hp_metric=False)
        return super().instantiate_trainer(**kwargs)


def _plain(value: Any) -> str:
    """`value` as JSON, so that a tuple and a list of the same numbers, or 1e-05 and 0.00001, compare equal."""
    return json.dumps(value, sort_keys=True, default=str)


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    return SFTCLI(
        SFTModule, SFTDataModule, seed_everything_default=0, save_config_callback=SaveConfigWhenTrainingStarts,
        save_config_kwargs={"overwrite": True}, args=args, run=run,
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
