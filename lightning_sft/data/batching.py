"""Examples -> batches of int64 tensors: padded (`collate`, `collate_batches`) or packed (`pack_examples`,
`collate_packed`).

Packed batches carry `position_ids` (restarting at 0 for each example) and no `attention_mask`:
transformers' `create_causal_mask` then builds a block-diagonal causal mask from the position ids
(`masking_utils.find_packed_sequence_indices`), so packed examples do not attend to each other with eager
and sdpa attention alike. The model must be called with `use_cache=False`: with a cache present (the
default `config.use_cache=True` creates one) transformers skips that detection. Packing relies on label 0 of
every example being `IGNORE_INDEX`: no example's first token is a target predicted from the previous example.
"""

import torch

from lightning_sft.data.tokenization import check_max_length
from lightning_sft.labels import IGNORE_INDEX


def collate(examples: list[dict], pad_token_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad to the longest example: `input_ids`, `attention_mask` (1 on real tokens), `labels` (-100 on
    padding), all [batch, longest] int64."""
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side={padding_side!r}; pass 'right' or 'left'")
    if not examples:
        raise ValueError("collate got no examples")
    longest = max(len(example["input_ids"]) for example in examples)
    batch = {
        "input_ids": torch.full((len(examples), longest), pad_token_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(examples), longest), dtype=torch.long),
        "labels": torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long),
    }
    for row, example in enumerate(examples):
        length = len(example["input_ids"])
        columns = slice(0, length) if padding_side == "right" else slice(longest - length, longest)
        batch["input_ids"][row, columns] = torch.tensor(example["input_ids"])
        batch["attention_mask"][row, columns] = 1
        batch["labels"][row, columns] = torch.tensor(example["labels"])
    return batch


def collate_batches(examples: list[dict], pad_token_id: int, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """`examples` in order, cut into `collate`d batches of at most `batch_size` (for scoring, not training)."""
    return [collate(examples[start:start + batch_size], pad_token_id) for start in range(0, len(examples), batch_size)]


def pack_examples(examples: list[dict], max_length: int) -> list[dict]:
    """Concatenate examples, in order, into rows of at most `max_length` tokens (an example that does not
    fit starts a new row). Each row: `input_ids`, `labels`, `position_ids` restarting at 0 per example.

    The first label of every example is set to -100: it would be predicted from the previous example.
    """
    check_max_length(max_length)
    return _pack(examples, max_length)


def _pack(examples: list[dict], max_length: int) -> list[dict]:
    """`pack_examples` with `max_length` checked by the caller."""
    rows: list[dict] = []
    for example in examples:
        length = len(example["input_ids"])
        if length > max_length:
            raise ValueError(f"an example has {length} tokens, more than max_length={max_length}; truncate it first")
        if not rows or len(rows[-1]["input_ids"]) + length > max_length:
            rows.append({"input_ids": [], "labels": [], "position_ids": []})
        rows[-1]["input_ids"] += example["input_ids"]
        rows[-1]["labels"] += [IGNORE_INDEX] + example["labels"][1:]
        rows[-1]["position_ids"] += list(range(length))
    return rows


def collate_packed(rows: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad packed rows to the longest: `input_ids`, `labels` (-100 on padding) and `position_ids`, all
    [batch, longest] int64; no `attention_mask`. Padding gets positions 0, 1, ... so it is a block of its own.
    """
    longest = max(len(row["input_ids"]) for row in rows)
    batch = {
        "input_ids": torch.full((len(rows), longest), pad_token_id, dtype=torch.long),
        "labels": torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long),
        "position_ids": torch.zeros((len(rows), longest), dtype=torch.long),
    }
    for index, row in enumerate(rows):
        length = len(row["input_ids"])
        batch["input_ids"][index, :length] = torch.tensor(row["input_ids"])
        batch["labels"][index, :length] = torch.tensor(row["labels"])
        batch["position_ids"][index, :length] = torch.tensor(row["position_ids"])
        batch["position_ids"][index, length:] = torch.arange(longest - length)
    return batch
