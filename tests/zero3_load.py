"""Run by tests/test_strategy.py as a 2-process `sft_zero3` fit on CPU: records, on each rank, what every
parameter holds right after `SFTModule.configure_model` (before any gathering), then its gathered sum.

python tests/zero3_load.py OUT_DIR TRAIN_JSONL (--pretrained DIR | --config JSON)
Writes OUT_DIR/rank{r}.json: {name: {ds_id, numel, status, partition_numel, full_numel, gathered_sum}}.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import deepspeed
import lightning as L

import lightning_sft.strategy  # noqa: F401  registers sft_zero3
from lightning_sft.data import SFTDataModule
from lightning_sft.module import SFTModule


class RecordingSFTModule(SFTModule):
    def __init__(self, out_dir: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.out_dir = Path(out_dir)

    def configure_model(self) -> None:
        loaded = self.model is not None
        super().configure_model()
        if loaded:
            return
        record = {}
        for name, parameter in self.model.named_parameters():
            record[name] = {
                "ds_id": getattr(parameter, "ds_id", None),
                "numel": parameter.numel(),
                "status": getattr(getattr(parameter, "ds_status", None), "name", None),
                "partition_numel": parameter.ds_tensor.numel() if hasattr(parameter, "ds_tensor") else None,
                "full_numel": getattr(parameter, "ds_numel", None),
            }
        for name, parameter in self.model.named_parameters():
            with deepspeed.zero.GatheredParameters([parameter]):
                record[name]["gathered_sum"] = parameter.detach().double().sum().item()
        (self.out_dir / f"rank{self.global_rank}.json").write_text(json.dumps(record))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("train")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pretrained")
    source.add_argument("--config", type=json.loads)
    args = parser.parse_args()
    module = RecordingSFTModule(args.out_dir, pretrained=args.pretrained, config=args.config, tokenizer="byte",
                                dtype="float32", learning_rate=1e-3, export_dir=None)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="sft_zero3", precision="32-true", max_steps=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        default_root_dir=args.out_dir)
    trainer.fit(module, datamodule=SFTDataModule(train=args.train, batch_size=2, max_length=24, val_fraction=0))


if __name__ == "__main__":
    main()
    # The results are written; skip interpreter teardown, where ZeRO-3's CPU background threads sometimes
    # race static destructors ("terminate called without an active exception", SIGABRT) after a clean run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
