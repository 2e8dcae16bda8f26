"""The paper's Scenario 1: data mixing by composition coefficients (Eq. 4). Scenario 2, data selection by
pattern similarity (Eq. 5), re-runs a model and lives in `lightning_sft.select`.

lightning_sft.data is imported inside the command: it pulls in Lightning and datasets, which the
pattern-only commands should not wait for.
"""

import csv
import math
from pathlib import Path
from typing import Mapping

import numpy as np

from lightning_sft import stats
from lightning_sft.analysis.commands import COEFFICIENT_PREFIX
from lightning_sft.storage import atomic_write_text


def _finite_number(text: str | None) -> float | None:
    """`text` as a finite float, else None."""
    try:
        number = float(text)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def read_compose_coefficients(path: Path) -> dict[str, float]:
    """The coefficients of the best fit (rank 1) in a `compose.csv` written by the compose command."""
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        best = next((row for row in reader if row.get("rank") == "1"), None)
        line = reader.line_num
    if best is None or not any((column or "").startswith(COEFFICIENT_PREFIX) for column in best):
        raise ValueError(
            f"{path} has no rank-1 row with {COEFFICIENT_PREFIX}<name> columns; pass the compose.csv written by "
            "`python -m lightning_sft.analysis compose ... --out DIR`"
        )
    coefficients = {}
    for column, value in best.items():
        if column is None or not column.startswith(COEFFICIENT_PREFIX) or value == "":
            continue  # None: fields beyond the header; "": a basis not in this subset
        number = _finite_number(value)
        if number is None:
            raise ValueError(f"{path}:{line}: column {column!r} holds {value!r}, not a finite number; pass the"
                             " compose.csv written by `python -m lightning_sft.analysis compose ... --out DIR`")
        coefficients[column.removeprefix(COEFFICIENT_PREFIX)] = number
    return coefficients


def mix_command(
    coefficients: Mapping[str, float],
    datasets: Mapping[str, str],
    total: int,
    top_k: int,
    seed: int,
    out: Path,
) -> str:
    """Scenario 1: draw `mixture_counts(coefficients, total, top_k)` rows from the named datasets (without
    replacement, reproducibly from `seed`), shuffle them and write them as JSONL to `out`.

    Datasets are read with `lightning_sft.data.read_rows`; rows are written exactly as read, one JSON object a
    line: a JSONL row as its line in the file, a row of another format as its values (`Rows.as_json`).
    """
    from lightning_sft.data import read_rows

    counts = stats.mixture_counts(coefficients, total, top_k)
    missing = [name for name in counts if name not in datasets]
    if missing:
        raise ValueError(
            f"no --datasets entry for {', '.join(missing)} (chosen by the coefficients); pass NAME=PATH for each"
        )
    rng = np.random.default_rng(seed)
    lines = []
    for name, count in counts.items():
        rows = read_rows(datasets[name])
        if count > len(rows):
            raise ValueError(
                f"dataset {name} ({datasets[name]}) has {len(rows)} rows but the mixture asks for {count}; "
                "pass a smaller --total or a larger dataset"
            )
        lines += [rows.as_json(index) for index in rng.choice(len(rows), size=count, replace=False).tolist()]
    lines = [lines[position] for position in rng.permutation(len(lines))]
    atomic_write_text(out, "".join(line + "\n" for line in lines))
    table = "\n".join(f"| {name} | {coefficients[name]:.4f} | {count} |" for name, count in counts.items())
    return f"| dataset | coefficient | rows |\n|---|---|---|\n{table}\n\nwrote {len(lines)} rows to {out}\n"
