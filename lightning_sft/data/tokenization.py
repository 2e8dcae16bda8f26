"""Rows -> examples `{"input_ids": list[int], "labels": list[int]}` (equal length, at most `max_length` tokens).

Labels follow `lightning_sft.labels`: `IGNORE_INDEX` where unsupervised, and always at position 0, which
nothing precedes (packing relies on it). Errors about a row name its place in the file (`Rows.places`).
"""

from collections.abc import Callable, Iterable
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_warn
from transformers import PreTrainedTokenizerBase

from lightning_sft.data.adapters import ADAPTERS
from lightning_sft.data.formats import Format, check_format, resolve_format
from lightning_sft.data.sources import Rows, read_rows
from lightning_sft.labels import IGNORE_INDEX

Adapter = str | Callable[[dict], dict] | None


def check_max_length(max_length: int) -> None:
    """Raise unless `max_length` (tokens per example) is an integer >= 2: a target needs a token before it."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length={max_length!r}; pass an integer >= 2 (tokens per example)")


def resolve_adapter(adapter: Adapter) -> Callable[[dict], dict] | None:
    """The callable for `adapter`: a name in `adapters.ADAPTERS`, a callable, or None (no adapter)."""
    if adapter is None or callable(adapter):
        return adapter
    if adapter not in ADAPTERS:
        raise ValueError(f"adapter={adapter!r}; pass one of {list(ADAPTERS)}, a callable, or None")
    return ADAPTERS[adapter]


def _format_row(
    row: dict, tokenizer: PreTrainedTokenizerBase, format: str | Format, adapt: Callable[[dict], dict] | None,
    max_length: int,
) -> tuple[dict | None, bool]:
    """(`tokenize_row`'s result, whether the row's response is empty)."""
    row = adapt(row) if adapt else row
    row_format = resolve_format(format, row)
    input_ids, labels = row_format(row, tokenizer)
    labels = [IGNORE_INDEX] + labels[1:max_length]  # position 0 is never predicted
    if all(label == IGNORE_INDEX for label in labels):
        return None, row_format.empty_response(row)
    return {"input_ids": input_ids[:max_length], "labels": labels}, row_format.empty_response(row)


def tokenize_row(
    row: dict,
    tokenizer: PreTrainedTokenizerBase,
    *,
    format: str | Format = "auto",
    adapter: Adapter = None,
    max_length: int = 1024,
) -> dict | None:
    """One row as `{"input_ids": list[int], "labels": list[int]}`, or None when no supervised token is left.

    The row goes through `adapter` (a name in `adapters.ADAPTERS` or a callable), then `format`; an example
    longer than `max_length` tokens keeps its start; labels are -100 where unsupervised, always at 0.
    """
    check_max_length(max_length)
    return _format_row(row, tokenizer, format, resolve_adapter(adapter), max_length)[0]


def tokenize_rows(
    rows: Rows | Iterable[dict],
    tokenizer: PreTrainedTokenizerBase,
    *,
    format: str | Format = "auto",
    adapter: Adapter = None,
    max_length: int = 1024,
    source: str = "<rows>",
) -> list[dict]:
    """`tokenize_row` over `rows`, in order.

    Errors name the row: its place in the file for `Rows` (`read_rows`), else "`source` row N" (from 1).
    Rows with an empty response are counted in one warning (they teach only the end of sequence); none with a
    response is an error. Examples left without a supervised token after truncation are skipped and counted
    in one warning; none left is an error.
    """
    check_max_length(max_length)
    check_format(format)
    return _tokenize(rows, tokenizer, format, resolve_adapter(adapter), max_length, source)


def _tokenize(
    rows: Rows | Iterable[dict], tokenizer: PreTrainedTokenizerBase, format: str | Format,
    adapt: Callable[[dict], dict] | None, max_length: int, source: str,
) -> list[dict]:
    """`tokenize_rows` with its arguments checked by the caller."""
    if isinstance(rows, Rows):
        source, places = rows.name, rows.places
    else:
        places = None
    examples, total, empty = [], 0, 0
    for index, row in enumerate(rows):
        total += 1
        try:
            example, empty_response = _format_row(row, tokenizer, format, adapt, max_length)
        except (ValueError, KeyError, TypeError) as error:  # KeyError, TypeError: an adapter on an odd row
            place = places[index] if places is not None else f"{source} row {index + 1}"
            raise ValueError(f"{place}: {error}") from error
        empty += empty_response
        if example is not None:
            examples.append(example)
    if total and empty == total:
        raise ValueError(
            f"{source}: all {total} rows have an empty response, so there is nothing to learn but the end of"
            " sequence; fill in the responses, or name the response field (format: PromptResponse(response_field=...))"
        )
    if empty:
        rank_zero_warn(
            f"{source}: {empty} of {total} rows have an empty response and teach only the end of sequence;"
            " fill them in or remove them"
        )
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


def read_examples(
    source: str | Path | dict, tokenizer: PreTrainedTokenizerBase, format: str | Format,
    adapt: Callable[[dict], dict] | None, max_length: int, max_examples: int | None = None,
) -> list[dict]:
    """`read_rows(source)`, its first `max_examples` rows (all when None), tokenized; arguments checked by the
    caller (`load_examples`, `SFTDataModule`)."""
    rows = read_rows(source)
    if max_examples is not None:
        rows = rows.select(range(min(max_examples, len(rows))))
    return _tokenize(rows, tokenizer, format, adapt, max_length, rows.name)


def load_examples(
    source: str | Path | dict,
    tokenizer: PreTrainedTokenizerBase,
    *,
    format: str | Format = "auto",
    adapter: Adapter = None,
    max_length: int = 1024,
    max_examples: int | None = None,
) -> list[dict]:
    """`read_rows(source)` then `tokenize_rows` on its first `max_examples` rows (all when None)."""
    check_max_length(max_length)
    check_format(format)
    if max_examples is not None and (not isinstance(max_examples, int) or max_examples < 1):
        raise ValueError(f"max_examples={max_examples!r}; pass a positive integer or None for all rows")
    return read_examples(source, tokenizer, format, resolve_adapter(adapter), max_length, max_examples)
