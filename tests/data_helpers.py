"""Helpers shared by the data tests: token ids computed from the byte vocabulary directly, expected labels."""

import json
from pathlib import Path

from lightning_sft.labels import IGNORE_INDEX

DATA = Path(__file__).parents[1] / "data" / "benchmarks"
PAD, BOS, EOS = 0, 1, 2
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
    " + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _byte_to_char() -> dict[int, str]:
    """GPT-2's byte -> printable character table, which the byte-level tokenizer's vocabulary is keyed by."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    return {**{byte: chr(byte) for byte in printable}, **{byte: chr(256 + i) for i, byte in enumerate(others)}}


BYTE_TO_CHAR = _byte_to_char()


def ids(tokenizer, text: str) -> list[int]:
    """Token ids of `text` computed from the vocabulary directly (one token per UTF-8 byte)."""
    vocab = tokenizer.get_vocab()
    return [vocab[BYTE_TO_CHAR[byte]] for byte in text.encode("utf-8")]


def expected(pieces: list[tuple[list[int], bool]]) -> tuple[list[int], list[int]]:
    """input_ids and labels from (token ids, supervised?) pieces; position 0 is never a target."""
    input_ids = [token for piece, _ in pieces for token in piece]
    labels = [token if supervised else IGNORE_INDEX for piece, supervised in pieces for token in piece]
    return input_ids, [IGNORE_INDEX] + labels[1:]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path
