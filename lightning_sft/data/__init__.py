"""SFT data: rows -> (input_ids, labels) by a format -> truncated examples -> padded or packed batches.

One module per step, in the order data flows:
    sources       read_rows: files and `datasets.load_dataset` -> `Rows` (values as written, places from 1)
    formats       PromptResponse, ChatMessages, PlainText: one row -> (input_ids, labels)
    tokenization  tokenize_row(s), load_examples: rows -> truncated examples with labels
    batching      collate, collate_batches, pack_examples, collate_packed: examples -> int64 tensors
    loader        ResumableSampler, ResumableDataLoader: the training order, resumable mid-epoch
    datamodule    SFTDataModule: all of the above for Lightning

Every public name is importable from `lightning_sft.data` (and YAML names formats as
`lightning_sft.data.PromptResponse`).
"""

from lightning_sft.data.batching import collate, collate_batches, collate_packed, pack_examples
from lightning_sft.data.datamodule import SFTDataModule
from lightning_sft.data.formats import FALLBACK_CHAT_TEMPLATE, FORMATS, ChatMessages, Format, PlainText, PromptResponse
from lightning_sft.data.loader import ResumableDataLoader, ResumableSampler
from lightning_sft.data.sources import Rows, read_rows
from lightning_sft.data.tokenization import load_examples, tokenize_row, tokenize_rows
from lightning_sft.labels import IGNORE_INDEX

__all__ = [
    "FALLBACK_CHAT_TEMPLATE", "FORMATS", "IGNORE_INDEX", "ChatMessages", "Format", "PlainText", "PromptResponse",
    "ResumableDataLoader", "ResumableSampler", "Rows", "SFTDataModule", "collate", "collate_batches", "collate_packed",
    "load_examples", "pack_examples", "read_rows", "tokenize_row", "tokenize_rows",
]
