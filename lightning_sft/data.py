"""SFT data: rows -> (input_ids, labels) by a format -> truncated examples -> padded or packed batches.

Label convention (HF causal LMs shift labels inside the loss, so `labels[i]` is predicted from position
i-1): unsupervised positions hold -100, and position 0 of every example is always -100 because nothing
precedes it. Packing relies on that: no example's first token is ever a target predicted from the end of
the previous example.

Packed batches carry `position_ids` (restarting at 0 for each example) and no `attention_mask`:
transformers' `create_causal_mask` then builds a block-diagonal causal mask from the position ids
(`masking_utils.find_packed_sequence_indices`), so packed examples do not attend to each other with eager
and sdpa attention alike. The model must be called with `use_cache=False`: with a cache present (the
default `config.use_cache=True` creates one) transformers skips that detection.

Resuming: `SFTDataModule.train_dataloader()` is a `ResumableDataLoader`, which Lightning's fit loop saves
into the checkpoint (`state_dict`: epoch and batches consumed) and restores before the resumed epoch, so a
run resumed mid-epoch sees exactly the batches the uninterrupted run would have seen.
"""

import json
import math
import tempfile
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import datasets
import lightning.pytorch as pl
import torch
from datasets.exceptions import DatasetGenerationError
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, DistributedSampler
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from typing_extensions import override

from lightning_sft.adapters import ADAPTERS

IGNORE_INDEX = -100
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}

# Used when the tokenizer has no chat template of its own. Each turn is `<|role|>\n{content}{eos}\n`, so the
# end-of-turn token is the tokenizer's eos; the assistant's content + eos are supervised.
FALLBACK_CHAT_TEMPLATE = (
    "{{ bos_token if bos_token else '' }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token if eos_token else '' }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _check_source(source: Any, name: str) -> None:
    """Raise where a `train`/`val` source cannot be read: a missing file, an unknown suffix, a bad dict."""
    if isinstance(source, dict):
        if "path" not in source or "split" not in source:
            raise ValueError(
                f"{name}={source!r}: a dict source holds `datasets.load_dataset` arguments and needs `path` and"
                " `split`, e.g. {path: openai/gsm8k, name: main, split: train}"
            )
        return
    if not isinstance(source, (str, Path)):
        raise ValueError(f"{name}={source!r}: pass a file path or a dict of `datasets.load_dataset` arguments")
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(
            f"{name}: no file {str(path)!r}; for a Hugging Face Hub dataset pass a dict instead,"
            " e.g. {path: openai/gsm8k, name: main, split: train}"
        )
    if path.suffix not in BUILDERS:
        raise ValueError(f"{name}: {str(path)!r} has suffix {path.suffix!r}; accepted: {', '.join(BUILDERS)}")


def _source_name(source: str | Path | dict) -> str:
    """A short name for messages: the path, or the dict's `path` with its other arguments."""
    if isinstance(source, dict):
        details = ", ".join(f"{key}={value}" for key, value in source.items() if key != "path")
        return f"{source['path']} ({details})"
    return str(source)


def _json_syntax_error(path: Path) -> str | None:
    """'FILE:LINE: <json error>' for the first JSON syntax error in `path`, or None if it parses."""
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    try:
        json.loads(lines[0])
    except json.JSONDecodeError:  # not JSON lines (a multi-line JSON document), or a bad first line
        try:
            json.loads(text)
        except json.JSONDecodeError as error:
            return f"{path}:{error.lineno}: {error}"
        return None
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                json.loads(line)
            except json.JSONDecodeError as error:
                return f"{path}:{number}: {error}"
    return None


def read_rows(source: str | Path | dict) -> datasets.Dataset:
    """Rows of a local .jsonl/.json/.parquet/.csv file, or of `datasets.load_dataset(**source)` for a dict.

    Local files are loaded in memory through a temporary cache, so nothing is written beside the data or
    into the user's cache.
    """
    _check_source(source, "source")
    if isinstance(source, dict):
        rows = datasets.load_dataset(**source)
        if not isinstance(rows, datasets.Dataset):
            raise ValueError(f"{_source_name(source)}: gave a {type(rows).__name__}, not one split as a Dataset")
        return rows
    path = Path(source)
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty; give it one example per row")
    builder = BUILDERS[path.suffix]
    with tempfile.TemporaryDirectory() as cache_dir:
        try:
            return datasets.load_dataset(
                builder, data_files=str(path), split="train", cache_dir=cache_dir, keep_in_memory=True
            )
        except DatasetGenerationError as error:
            # datasets' own message does not say where; find the first line json cannot read
            if builder == "json" and (where := _json_syntax_error(path)):
                raise ValueError(f"{where}; fix or remove that line") from error
            raise
        except ValueError as error:
            if "corresponds to no data" in str(error):  # whitespace only, or a CSV header without rows
                raise ValueError(f"{path} has no rows; give it one example per row") from error
            raise


def _missing_fields_error(missing: str, row: dict) -> ValueError:
    present = sorted(key for key, value in row.items() if value is not None)
    return ValueError(
        f"missing {missing}; the row has {present}. Accepted formats: 'chat' (field 'messages': a list"
        " of {role, content}), 'prompt_response' (fields 'prompt' and 'response'), 'text' (field 'text')."
        " Name other fields with PromptResponse(prompt_field=..., response_field=...) (in YAML: format:"
        " {class_path: lightning_sft.data.PromptResponse, init_args: {prompt_field: question, response_field:"
        f" answer}}}}), ChatMessages(messages_field=...) or PlainText(text_field=...), or convert benchmark rows"
        f" with an adapter ({', '.join(ADAPTERS)})"
    )


def _require(row: dict, fields: tuple[str, ...]) -> None:
    if missing := [name for name in fields if row.get(name) is None]:
        raise _missing_fields_error(f"field(s) {missing}", row)


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


class PromptResponse:
    """bos (if the tokenizer has one) + prompt (unsupervised) + response + eos (if any; supervised)."""

    def __init__(self, prompt_field: str = "prompt", response_field: str = "response") -> None:
        self.prompt_field = prompt_field
        self.response_field = response_field

    def __call__(self, row: dict, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
        _require(row, (self.prompt_field, self.response_field))
        bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
        eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
        prompt = bos + _encode(tokenizer, row[self.prompt_field])
        response = _encode(tokenizer, row[self.response_field]) + eos
        return prompt + response, [IGNORE_INDEX] * len(prompt) + response


class ChatMessages:
    """A conversation (list of {role, content}) through the tokenizer's chat template, or
    `FALLBACK_CHAT_TEMPLATE` when it has none. Supervised: each assistant turn's content and its
    end-of-turn token(s).

    Assistant spans are found by rendering prefixes: turn i spans from the end of the render of
    messages[:i] with the generation prompt to the end of the render of messages[:i+1] (trailing whitespace
    after the end-of-turn token excluded). Tokens overlapping a span (by the fast tokenizer's character
    offsets) are supervised. This works for any template that renders a prefix of the conversation as a
    prefix of the text, which is checked.
    """

    def __init__(self, messages_field: str = "messages") -> None:
        self.messages_field = messages_field

    def __call__(self, row: dict, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
        _require(row, (self.messages_field,))
        messages = row[self.messages_field]
        if not isinstance(messages, list) or not messages or not all(
            isinstance(message, dict) and "role" in message and "content" in message for message in messages
        ):
            raise ValueError(f"field {self.messages_field!r} must be a non-empty list of {{role, content}} dicts")
        if messages[0]["role"] == "assistant":
            raise ValueError("the conversation starts with an assistant message; start it with a user (or system) turn")
        template = None if tokenizer.chat_template else FALLBACK_CHAT_TEMPLATE  # None: the tokenizer's own

        def render(turns: list[dict], generation_prompt: bool = False) -> str:
            return tokenizer.apply_chat_template(
                turns, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
            )

        text = render(messages)
        spans = []
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before, through = render(messages[:index], generation_prompt=True), render(messages[: index + 1])
            if not (through.startswith(before) and text.startswith(through)):
                raise ValueError(
                    f"the chat template renders the first {index + 1} messages as something that is not a prefix"
                    " of the whole conversation, so assistant tokens cannot be located; use a template without"
                    " turn-dependent rendering"
                )
            spans.append((len(before), len(through.rstrip())))
        if not tokenizer.is_fast:
            raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; chat data needs character offsets")
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        input_ids = encoding["input_ids"]
        labels = [
            token if any(start < span_end and end > span_start for span_start, span_end in spans) else IGNORE_INDEX
            for token, (start, end) in zip(input_ids, encoding["offset_mapping"])
        ]
        return input_ids, labels


class PlainText:
    """bos (if any) + text + eos (if any); every token supervised."""

    def __init__(self, text_field: str = "text") -> None:
        self.text_field = text_field

    def __call__(self, row: dict, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
        _require(row, (self.text_field,))
        bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
        eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
        input_ids = bos + _encode(tokenizer, row[self.text_field]) + eos
        return input_ids, list(input_ids)


Format = PromptResponse | ChatMessages | PlainText
FORMATS: dict[str, type[Format]] = {"prompt_response": PromptResponse, "chat": ChatMessages, "text": PlainText}


def _resolve_format(format: str | Format, row: dict) -> Format:
    """The format object for `format`; for "auto", chosen by the fields of `row` (the first one)."""
    if not isinstance(format, str):
        return format
    if format in FORMATS:
        return FORMATS[format]()
    if format != "auto":
        raise ValueError(f"format={format!r}; pass 'auto', one of {list(FORMATS)} or a format object")
    present = {key for key, value in row.items() if value is not None}
    if "messages" in present:
        return ChatMessages()
    if {"prompt", "response"} <= present:
        return PromptResponse()
    if "text" in present:
        return PlainText()
    raise _missing_fields_error("the fields of every format ('messages', or 'prompt' + 'response', or 'text')", row)


def _check_max_length(max_length: int) -> None:
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length={max_length!r}; pass an integer >= 2 (tokens per example)")


def _resolve_adapter(adapter: str | Callable[[dict], dict] | None) -> Callable[[dict], dict] | None:
    if adapter is None or callable(adapter):
        return adapter
    if adapter not in ADAPTERS:
        raise ValueError(f"adapter={adapter!r}; pass one of {list(ADAPTERS)}, a callable, or None")
    return ADAPTERS[adapter]


def tokenize_row(
    row: dict,
    tokenizer: PreTrainedTokenizerBase,
    *,
    format: str | Format = "auto",
    adapter: str | Callable[[dict], dict] | None = None,
    max_length: int = 1024,
) -> dict | None:
    """One row as `{"input_ids": list[int], "labels": list[int]}`, or None when no supervised token is left.

    The row goes through `adapter` (a name in `adapters.ADAPTERS` or a callable), then `format`; an example
    longer than `max_length` tokens keeps its start; labels are -100 where unsupervised, always at 0.
    """
    adapt = _resolve_adapter(adapter)
    row = adapt(row) if adapt else row
    input_ids, labels = _resolve_format(format, row)(row, tokenizer)
    labels = [IGNORE_INDEX] + labels[1:max_length]  # position 0 is never predicted
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return {"input_ids": input_ids[:max_length], "labels": labels}


def tokenize_rows(
    rows: Iterable[dict],
    tokenizer: PreTrainedTokenizerBase,
    *,
    format: str | Format = "auto",
    adapter: str | Callable[[dict], dict] | None = None,
    max_length: int = 1024,
    source: str = "<rows>",
) -> list[dict]:
    """`tokenize_row` over `rows`; examples left without a supervised token are skipped and counted in
    one warning naming `source`; none left is an error."""
    _check_max_length(max_length)
    _resolve_adapter(adapter)
    examples, total = [], 0
    for index, row in enumerate(rows):
        total += 1
        try:
            example = tokenize_row(row, tokenizer, format=format, adapter=adapter, max_length=max_length)
        except ValueError as error:
            raise ValueError(f"{source} row {index}: {error}") from error
        if example is not None:
            examples.append(example)
    if not examples:
        raise ValueError(
            f"{source}: none of its {total} examples has a supervised token after truncation to"
            f" max_length={max_length}; use a larger max_length"
        )
    if len(examples) < total:
        rank_zero_warn(
            f"{source}: skipped {total - len(examples)} of {total} examples with no supervised token after"
            f" truncation to max_length={max_length}; raise max_length to keep them"
        )
    return examples


def load_examples(
    source: str | Path | dict,
    tokenizer: PreTrainedTokenizerBase,
    *,
    format: str | Format = "auto",
    adapter: str | Callable[[dict], dict] | None = None,
    max_length: int = 1024,
    max_examples: int | None = None,
) -> list[dict]:
    """`read_rows(source)` then `tokenize_rows` on its first `max_examples` rows (all when None)."""
    _check_max_length(max_length)
    if max_examples is not None and (not isinstance(max_examples, int) or max_examples < 1):
        raise ValueError(f"max_examples={max_examples!r}; pass a positive integer or None for all rows")
    rows = read_rows(source)
    if max_examples is not None:
        rows = rows.select(range(min(max_examples, len(rows))))
    return tokenize_rows(
        rows, tokenizer, format=format, adapter=adapter, max_length=max_length, source=_source_name(source)
    )


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
    _check_max_length(max_length)
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


class ResumableSampler(DistributedSampler):
    """`DistributedSampler` (shuffled by seed + epoch, sharded by rank) that can start part-way into an epoch.

    Being a `DistributedSampler`, Lightning leaves it in place instead of injecting its own
    (`use_distributed_sampler` is then not needed) and calls its `set_epoch` at each epoch start.
    """

    def __init__(self, dataset_size: int, *, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(range(dataset_size), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.start = 0  # first sample (of this rank's share) the next iteration yields

    @override
    def __iter__(self) -> Iterator[int]:
        return islice(super().__iter__(), self.start, None)


class ResumableDataLoader(DataLoader):
    """A training DataLoader whose place in the epoch survives a checkpoint.

    Lightning's fit loop saves `state_dict()` of stateful train dataloaders into the checkpoint and calls
    `load_state_dict()` before iterating on resume (`FitLoop.on_save_checkpoint`,
    `_load_combined_loader_states`). The state is (epoch, batches consumed in it); batches are counted as
    they are handed to the loop (not as workers prefetch them). On resume the iteration of that same epoch
    starts after the consumed batches; any other epoch starts from its beginning.

    Resume from checkpoints written during training (`ModelCheckpoint(every_n_train_steps=...)`, or
    `trainer.save_checkpoint` from a callback): one written after `fit` returned holds Lightning's
    end-of-run loop counters, which send the resumed run to the next epoch whatever the data state says.
    """

    def __init__(self, dataset: list[dict], *, sampler: ResumableSampler, batch_size: int, **kwargs: Any) -> None:
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self._epoch = 0
        self._batches_consumed = 0
        self._resume_state: dict | None = None

    @override
    def __iter__(self) -> Iterator[Any]:
        # A generator: this body runs at the first `next`, after Lightning's `set_epoch` for the epoch.
        epoch, skip = self.sampler.epoch, 0
        if self._resume_state is not None and self._resume_state["epoch"] == epoch:
            skip = self._resume_state["batches_consumed"]
        self._resume_state = None
        self.sampler.start = skip * self.batch_size
        self._epoch, self._batches_consumed = epoch, skip
        for batch in super().__iter__():
            self._batches_consumed += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Where the loop is: `epoch`, `batches_consumed` in it, and the layout they count in."""
        position = self._resume_state or {"epoch": self._epoch, "batches_consumed": self._batches_consumed}
        return {
            **position,
            "batch_size": self.batch_size,
            "num_replicas": self.sampler.num_replicas,
            "dataset_size": len(self.dataset),
            "seed": self.sampler.seed,
        }

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Resume after `batches_consumed` batches of `epoch` at the next iteration of that epoch.

        With another batch size, device count, seed or dataset, the exact order cannot be restored: the
        position is then converted by samples consumed over all ranks, with a warning.
        """
        batches = state_dict["batches_consumed"]
        saved = {key: state_dict[key] for key in ("batch_size", "num_replicas", "dataset_size", "seed")}
        current = {
            "batch_size": self.batch_size, "num_replicas": self.sampler.num_replicas,
            "dataset_size": len(self.dataset), "seed": self.sampler.seed,
        }
        if saved != current:
            samples = batches * saved["batch_size"] * saved["num_replicas"]
            batches = samples // (self.batch_size * self.sampler.num_replicas)
            rank_zero_warn(
                f"Resuming the training data with {current} although the checkpoint was written with {saved}:"
                f" the exact batch order cannot be restored; continuing after ~{samples} samples of epoch"
                f" {state_dict['epoch']}. Resume with the same settings for an exact resume."
            )
        self._resume_state = {"epoch": state_dict["epoch"], "batches_consumed": batches}


class SFTDataModule(pl.LightningDataModule):
    """Training (and validation) data for SFT: read, format, tokenize, truncate, then pad or pack.

    Args:
        train: a local .jsonl/.json/.parquet/.csv file, or a dict of `datasets.load_dataset` arguments
            ({path: openai/gsm8k, name: main, split: train}).
        val: the same for validation; None carves `val_fraction` of `train` (by `seed`).
        format: "auto" (by columns: messages / prompt + response / text), "chat", "prompt_response",
            "text", or a format object such as `PromptResponse(prompt_field=..., response_field=...)`.
        adapter: a name in `lightning_sft.adapters.ADAPTERS` turning benchmark rows into prompt/response.
        max_length: tokens per example (longer ones keep their start); with packing, tokens per packed row.
        batch_size: examples (or packed rows) per micro-batch per device.
        val_fraction: share of `train` held out for validation when `val` is None (ignored otherwise);
            0 disables validation.
        packing: concatenate examples into rows of `max_length` (see `pack_examples`).
        seed: for the validation split and the per-epoch shuffle.
        num_workers: DataLoader worker processes.
        tokenizer: a path or id for `AutoTokenizer.from_pretrained`; None takes the LightningModule's
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
        _check_source(train, "train")
        if val is not None:
            _check_source(val, "val")
        if isinstance(format, str) and format != "auto" and format not in FORMATS:
            raise ValueError(f"format={format!r}; pass 'auto', one of {list(FORMATS)} or a format object")
        if not isinstance(format, (str, PromptResponse, ChatMessages, PlainText)):
            raise ValueError(f"format={format!r}; pass a name or a PromptResponse/ChatMessages/PlainText")
        _resolve_adapter(adapter)
        _check_max_length(max_length)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}; pass a positive integer (examples per device)")
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction={val_fraction!r}; pass a number in [0, 1) (0 disables validation)")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed={seed!r}; pass an integer")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers={num_workers!r}; pass an integer >= 0")
        if tokenizer is not None and not isinstance(tokenizer, str):
            raise ValueError(f"tokenizer={tokenizer!r}; pass a path or hub id, or None to use the module's")
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
                read_rows(source)

    @override
    def setup(self, stage: str) -> None:
        if self.train_examples is not None:
            return
        self.tokenizer = self._load_tokenizer()
        settings = {"format": self.format, "adapter": self.adapter, "max_length": self.max_length}
        name = _source_name(self.train)
        examples = tokenize_rows(read_rows(self.train), self.tokenizer, source=name, **settings)
        if self.val is not None:
            val_rows = read_rows(self.val)
            self.val_examples = tokenize_rows(val_rows, self.tokenizer, source=_source_name(self.val), **settings)
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
            self.train_examples = pack_examples(self.train_examples, self.max_length)
            if self.val_examples is not None:
                self.val_examples = pack_examples(self.val_examples, self.max_length)

    def _load_tokenizer(self) -> PreTrainedTokenizerBase:
        if self.tokenizer_name is not None:
            return AutoTokenizer.from_pretrained(self.tokenizer_name)
        module = self.trainer.lightning_module if self.trainer is not None else None
        if getattr(module, "tokenizer", None) is None:
            raise ValueError(
                "SFTDataModule(tokenizer=None) takes the tokenizer from the LightningModule's `tokenizer`"
                f" attribute, but {type(module).__name__} has none; pass tokenizer: <path or hub id>"
            )
        return module.tokenizer

    def _collate_fn(self) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        pad_token_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0  # masked anyway
        return partial(collate_packed if self.packing else collate, pad_token_id=pad_token_id)

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
        )

    @override
    def val_dataloader(self) -> DataLoader | list:
        if self.val_examples is None:
            return []
        return DataLoader(
            self.val_examples, batch_size=self.batch_size, collate_fn=self._collate_fn(), num_workers=self.num_workers
        )
