"""Command line for lightning-sft: `python train.py fit --config configs/demo.yaml`.

Every YAML key is a constructor argument of SFTModule (`model:`), SFTDataModule (`data:`),
lightning's Trainer (`trainer:`) or a callback; `python train.py fit --print_config` shows them all.
"""

from lightning.pytorch.cli import LightningCLI

import lightning_sft.strategy  # noqa: F401  registers the sft_zero2/sft_zero3 strategy names
from lightning_sft.data import SFTDataModule
from lightning_sft.module import SFTModule


def main(args: list[str] | None = None) -> LightningCLI:
    return LightningCLI(
        SFTModule, SFTDataModule, seed_everything_default=0, save_config_kwargs={"overwrite": True}, args=args
    )


if __name__ == "__main__":
    main()
