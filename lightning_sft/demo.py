"""Generates the offline demo's data: four basic tasks and one complex task composed of two of them.

Basic tasks: `addition` (12+345= -> 357), `reversal` (rev 3142= -> 2413), `sorting` (sort 3142= -> 1234),
`counting` (count a in abca= -> 2). Complex task: `reversed_sum` (rev 12+345= -> 753), the digits
of a sum in reverse: addition followed by reversal, written as reversal applied to an addition. The
composition analysis asks whether the change of `reversed_sum`'s head pattern is explained by `addition`
and `reversal` better than by the other bases.

    python -m lightning_sft.demo --out demo/data    # regenerates the committed files byte for byte
"""

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

from lightning_sft.command_line import check_output_dir
from lightning_sft.storage import atomic_write_text

LETTERS = "abcdefgh"


def _number(rng: random.Random) -> int:
    return rng.randint(0, 10 ** rng.randint(1, 3) - 1)


def addition(rng: random.Random) -> dict[str, str]:
    a, b = _number(rng), _number(rng)
    return {"prompt": f"{a}+{b}=", "response": str(a + b)}


def reversal(rng: random.Random) -> dict[str, str]:
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(2, 6)))
    return {"prompt": f"rev {digits}=", "response": digits[::-1]}


def sorting(rng: random.Random) -> dict[str, str]:
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(2, 6)))
    return {"prompt": f"sort {digits}=", "response": "".join(sorted(digits))}


def counting(rng: random.Random) -> dict[str, str]:
    letter = rng.choice(LETTERS[:4])
    word = "".join(rng.choice(LETTERS[:4]) for _ in range(rng.randint(2, 8)))
    return {"prompt": f"count {letter} in {word}=", "response": str(word.count(letter))}


def reversed_sum(rng: random.Random) -> dict[str, str]:
    a, b = _number(rng), _number(rng)
    return {"prompt": f"rev {a}+{b}=", "response": str(a + b)[::-1]}


TASKS: dict[str, Callable[[random.Random], dict[str, str]]] = {
    "addition": addition, "reversal": reversal, "sorting": sorting, "counting": counting,
    "reversed_sum": reversed_sum,
}


def generate(out: Path, train_per_task: int = 1500, probe_per_task: int = 32, seed: int = 0) -> list[Path]:
    """Writes `train.jsonl` (all tasks, shuffled) and `<task>_probe.jsonl` (held-out rows) into `out`."""
    rng = random.Random(seed)
    train_rows, written = [], []
    for name, make in TASKS.items():
        train_rows += [make(rng) for _ in range(train_per_task)]
        probe_path = out / f"{name}_probe.jsonl"
        atomic_write_text(probe_path, "".join(json.dumps(make(rng)) + "\n" for _ in range(probe_per_task)))
        written.append(probe_path)
    rng.shuffle(train_rows)
    atomic_write_text(out / "train.jsonl", "".join(json.dumps(row) + "\n" for row in train_rows))
    return [out / "train.jsonl", *written]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo/data"), help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        check_output_dir(args.out)
    except ValueError as error:
        parser.exit(1, f"error: {error}\n")
    for path in generate(args.out, seed=args.seed):
        print(path)


if __name__ == "__main__":
    main()
