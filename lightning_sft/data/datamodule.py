"""`SFTDataModule`: the LightningDataModule that reads, formats, tokenizes, truncates, then pads or packs."""

import math
from collections.abc import Callable
from functools import partial

import datasets
import lightning.pytorch as pl
from lightning.pytorch.accelerators import CUDAAccelerator
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase
from typing_extensions import override

from lightning_sft import models
from lightning_sft.data.batching import _pack, collate, collate_packed
from lightning_sft.data.formats import ChatMessages, PlainText, PromptResponse, check_format
from lightning_sft.data.loader import ResumableDataLoader, ResumableSampler
from lightning_sft.data.sources import check_source, source_name
from lightning_sft.data.tokenization import check_max_length, read_examples, resolve_adapter


class SFTDataModule(pl.LightningDataModule):
    """Training (and validation) data for SFT: read, format, tokenize, truncate, then pad or pack.

    Args:
        train: a local .jsonl/.json/.parquet/.csv file, or a dict of `datasets.load_dataset` arguments
            ({path: openai/gsm8k, name: main, split: train}).
        val: the same for validation; None carves `val_fraction` of `train` (by `seed`).
        format: "auto" (by columns: messages / prompt + response / text), "chat", "prompt_response",
            "text", or a format object such as `PromptResponse(prompt_field=..., response_field=...)`.
        adapter: a name in `lightning_sft.data.adapters.ADAPTERS` turning benchmark rows into prompt/response.
        max_length: tokens per example (longer ones keep their start); with packing, tokens per packed row.
        batch_size: examples (or packed rows) per micro-batch per device.
        val_fraction: share of `train` held out for validation when `val` is None (ignored otherwise);
            0 disables validation.
        packing: concatenate examples into rows of `max_length` (see `lightning_sft.data.pack_examples`).
        seed: for the validation split and the per-epoch shuffle.
        num_workers: DataLoader worker processes.
        tokenizer: a directory or hub id for `models.load_tokenizer`; None takes the LightningModule's
            `tokenizer` attribute in `setup`.

    Training batches are resumable mid-epoch (`ResumableDataLoader`) and sharded by rank inside their
    sampler, so Lightning's `use_distributed_sampler` is not needed for them.
    """

    def __init__(
        self,
        train: str | dict,
        val: str | dict | None = None,
        format: str | PromptResponse | ChatMessages | PlainText = "auto",
        adapter: str | None = None,
        max_length: int = 1024,
        batch_size: int = 4,
        val_fraction: float = 0.05,
        packing: bool = False,
        seed: int = 0,
        num_workers: int = 0,
        tokenizer: str | None = None,
    ) -> None:
        super().__init__()
        check_source(train, "train")
        if val is not None:
            check_source(val, "val")
        check_format(format)
        resolve_adapter(adapter)
        check_max_length(max_length)
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}; pass a positive integer (examples per device)")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction={val_fraction!r}; pass a number in [0, 1) (0 disables validation)")
        if num_workers < 0:
            raise ValueError(f"num_workers={num_workers!r}; pass an integer >= 0")
        self.train = train
        self.val = val
        self.format = format
        self.adapter = adapter
        self.max_length = max_length
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.packing = packing
        self.seed = seed
        self.num_workers = num_workers
        self.tokenizer_name = tokenizer
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.train_examples: list[dict] | None = None
        self.val_examples: list[dict] | None = None

    @override
    def prepare_data(self) -> None:
        """Download hub datasets once per node before every rank reads them in `setup`."""
        for source in (self.train, self.val):
            if isinstance(source, dict):
                datasets.load_dataset(**source)

    @override
    def setup(self, stage: str) -> None:
        if self.train_examples is not None:
            return
        module = self.trainer.lightning_module if self.trainer is not None else None
        self.tokenizer = models.tokenizer_for(self.tokenizer_name, module, "SFTDataModule(tokenizer=None)")
        settings = (self.tokenizer, self.format, resolve_adapter(self.adapter), self.max_length)
        name = source_name(self.train)
        examples = read_examples(self.train, *settings)
        if self.val is not None:
            self.val_examples = read_examples(self.val, *settings)
        elif self.val_fraction > 0:
            # carved after tokenizing, so messages name rows of the file; both parts keep the file's order
            count = math.ceil(self.val_fraction * len(examples))
            if count >= len(examples):
                raise ValueError(
                    f"{name} has {len(examples)} usable examples: val_fraction={self.val_fraction} leaves none for"
                    " training; lower val_fraction or pass val"
                )
            order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(self.seed)).tolist()
            self.val_examples = [examples[index] for index in sorted(order[:count])]
            examples = [examples[index] for index in sorted(order[count:])]
        self.train_examples = examples
        if self.packing:
            self.train_examples = _pack(self.train_examples, self.max_length)
            if self.val_examples is not None:
                self.val_examples = _pack(self.val_examples, self.max_length)

    def _collate_fn(self) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        return partial(collate_packed if self.packing else collate, pad_token_id=models.pad_token_id(self.tokenizer))

    def _pin_memory(self) -> bool:
        """Page-locked batches when training on a CUDA GPU: Lightning's copy to the GPU is then asynchronous."""
        return self.trainer is not None and isinstance(self.trainer.accelerator, CUDAAccelerator)

    @override
    def train_dataloader(self) -> ResumableDataLoader:
        if self.train_examples is None:
            raise RuntimeError("SFTDataModule.setup() must run before train_dataloader()")
        sharding = (self.trainer.distributed_sampler_kwargs if self.trainer is not None else None) or {}
        sampler = ResumableSampler(len(self.train_examples), seed=self.seed, **sharding)
        return ResumableDataLoader(
            self.train_examples,
            sampler=sampler,
            batch_size=self.batch_size,
            collate_fn=self._collate_fn(),
            num_workers=self.num_workers,
            pin_memory=self._pin_memory(),
        )

    @override
    def val_dataloader(self) -> DataLoader | list:
        if self.val_examples is None:
            return []
        return DataLoader(
            self.val_examples, batch_size=self.batch_size, collate_fn=self._collate_fn(), num_workers=self.num_workers,
            pin_memory=self._pin_memory(),
        )
