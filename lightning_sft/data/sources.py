"""Reading rows: local .jsonl/.json/.csv/.parquet files, or `datasets.load_dataset(**source)` for a dict.

Values are kept as the file holds them: JSON strings stay strings and JSON numbers stay numbers (no column
type is guessed across rows), every CSV field is the string written in the file (no number or NA guessing),
Parquet columns keep their declared types. JSON Lines files are split into lines at `\n` only, as JSON Lines
defines them (a U+2028 or U+0085 in a string is text, not a line break; a `\r` before the `\n` is dropped). A
JSON object or CSV header naming a key twice is refused (one value would be dropped). Each row carries its
place, counted from 1, so errors and tools that write rows back (`mix`, `select`) can point into the file:
- .jsonl, .json, .csv: the file's line number (for CSV the physical line, the header being line 1), as
  "FILE:LINE";
- .parquet and `load_dataset` sources: the row number, as "SOURCE row N".
"""

import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow
import pyarrow.parquet

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
JSON_WHITESPACE = " \t\r\n"  # RFC 8259's; str.strip() would also strip U+2028, U+0085, \x1c...


@dataclass(frozen=True)
class Rows:
    """The rows of one source, in file order, each with its place.

    Attributes:
        name: the source for messages (the path, or the dict's `path` with its other arguments).
        records: one dict per row, values as in the file (see the module docstring).
        places: per row, "FILE:LINE" or "SOURCE row N" (from 1), for messages.
        lines: per row, the line exactly as written (JSONL files only, else None), for writing rows back unchanged.
    """

    name: str
    records: list[dict]
    places: list[str]
    lines: list[str] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.records)

    def select(self, indices: Sequence[int]) -> "Rows":
        """These rows at `indices`, in that order, with their places (and lines)."""
        return Rows(
            self.name,
            [self.records[index] for index in indices],
            [self.places[index] for index in indices],
            None if self.lines is None else [self.lines[index] for index in indices],
        )

    def as_json(self, index: int) -> str:
        """Row `index` as one JSON line without a newline: the line as written for JSONL, else its values."""
        return self.lines[index] if self.lines is not None else json.dumps(self.records[index], ensure_ascii=False)


def check_source(source: Any, name: str) -> None:
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
    if path.suffix not in SUFFIXES:
        raise ValueError(f"{name}: {str(path)!r} has suffix {path.suffix!r}; accepted: {', '.join(SUFFIXES)}")


def source_name(source: str | Path | dict) -> str:
    """A short name for messages: the path, or the dict's `path` with its other arguments."""
    if isinstance(source, dict):
        details = ", ".join(f"{key}={value}" for key, value in source.items() if key != "path")
        return f"{source['path']} ({details})"
    return str(source)


def read_rows(source: str | Path | dict) -> Rows:
    """The rows of a local .jsonl/.json/.parquet/.csv file, or of `datasets.load_dataset(**source)` for a dict.

    Errors name the file and the line (or row) and say what to fix. Local files are read directly, so nothing
    is written beside the data or into the user's cache.
    """
    check_source(source, "source")
    if isinstance(source, dict):
        rows = datasets.load_dataset(**source)
        if not isinstance(rows, datasets.Dataset):
            raise ValueError(f"{source_name(source)}: gave a {type(rows).__name__}, not one split as a Dataset")
        return _numbered_rows(source_name(source), rows.to_list())
    path = Path(source)
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty; give it one example per row")
    if path.suffix == ".parquet":
        rows = _read_parquet(path)
    else:
        text = _read_text(path)
        if path.suffix == ".csv":
            rows = _read_csv(path, text)
        elif path.suffix == ".json" and text.lstrip().startswith("["):
            rows = _read_json_document(path, text)
        else:  # .jsonl, or a .json file holding JSON lines
            rows = _read_json_lines(path, text, path.suffix == ".json")
    if not rows.records:
        raise ValueError(f"{path} has no rows; give it one example per row")
    return rows


def _read_text(path: Path) -> str:
    """The file as UTF-8 text (a leading byte-order mark dropped), or an error naming the file and line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(
            f"{path}:{line}: not UTF-8 text (byte {data[error.start]:#04x} at offset {error.start}); save the file"
            " as UTF-8"
        ) from None


def _object(path: Path, line: int, value: Any) -> dict:
    if not isinstance(value, dict):
        raise ValueError(
            f"{path}:{line}: a JSON {type(value).__name__}, not an object; each row must be one JSON object such as"
            ' {"prompt": ..., "response": ...}'
        )
    return value


class _RepeatedKeys(ValueError):
    """A JSON object naming a key twice (JSON parsing would keep only the last value)."""


def _without_repeated_keys(pairs: list[tuple[str, Any]]) -> dict:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        raise _RepeatedKeys(f"an object names key(s) {repeated} more than once, so only the last value would be"
                            " read; give each field once")
    return dict(pairs)


_DECODER = json.JSONDecoder(object_pairs_hook=_without_repeated_keys)


def _read_json_lines(path: Path, text: str, document_allowed: bool) -> Rows:
    """One JSON object per non-blank line; each row keeps its line as written. With `document_allowed` (a .json
    file), a single object spread over several lines is refused with what to pass instead."""
    records, places, lines = [], [], []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip(JSON_WHITESPACE):
            continue
        try:
            value = _DECODER.decode(line)
        except _RepeatedKeys as error:
            raise ValueError(f"{path}:{number}: {error}") from None
        except json.JSONDecodeError as error:
            if document_allowed and _is_json(text):
                raise ValueError(
                    f"{path}: one JSON value spread over several lines; pass an array of row objects"
                    " ([{...}, {...}]) or one object per line (JSON lines)"
                ) from None
            raise ValueError(f"{path}:{number}: {error}; fix or remove that line") from None
        records.append(_object(path, number, value))
        places.append(f"{path}:{number}")
        lines.append(line)
    return Rows(str(path), records, places, lines)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def _read_json_document(path: Path, text: str) -> Rows:
    """A JSON array of objects; each row's place is the line its object starts on."""
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{error.lineno}: {error}; fix or remove that line") from None
    records, places = [], []
    position = text.index("[") + 1
    for _ in values:  # re-walk the array to find where each element starts
        while text[position] in " \t\r\n,":
            position += 1
        line = text.count("\n", 0, position) + 1
        try:
            value, position = _DECODER.raw_decode(text, position)
        except _RepeatedKeys as error:
            raise ValueError(f"{path}:{line}: {error}") from None
        records.append(_object(path, line, value))
        places.append(f"{path}:{line}")
    return Rows(str(path), records, places)


def _read_csv(path: Path, text: str) -> Rows:
    """A header line, then one row per record; every field is the string written in the file."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header and (repeated := sorted({name for name in header if header.count(name) > 1})):
        raise ValueError(
            f"{path}:1: the header names column(s) {repeated} more than once, so a row would keep only one of"
            " their values; give each column its own name"
        )
    records, places = [], []
    end = reader.line_num  # physical line the previous record ended on (records may span lines)
    for fields in reader:
        line, end = end + 1, reader.line_num
        if not fields:  # a blank line
            continue
        if len(fields) != len(header):
            raise ValueError(
                f"{path}:{line}: {len(fields)} fields where the header (line 1) has {len(header)}; quote fields that"
                " hold commas"
            )
        records.append(dict(zip(header, fields)))
        places.append(f"{path}:{line}")
    return Rows(str(path), records, places)


def _read_parquet(path: Path) -> Rows:
    """The table's rows as dicts, values of the columns' declared types; places are row numbers."""
    try:
        records = pyarrow.parquet.read_table(path).to_pylist()
    except (pyarrow.ArrowInvalid, OSError) as error:
        raise ValueError(
            f"{path}: not a readable Parquet file ({str(error).splitlines()[0]}); pass a file written as Parquet, or"
            " name it by its format (.jsonl, .json, .csv)"
        ) from None
    return _numbered_rows(str(path), records)


def _numbered_rows(name: str, records: list[dict]) -> Rows:
    """`records` with places "NAME row N", N from 1 (sources without lines)."""
    return Rows(name, records, [f"{name} row {number}" for number in range(1, len(records) + 1)])
