"""The paper's two uses of patterns: data mixing by composition coefficients (Scenario 1, Eq. 4) and data
selection by pattern similarity (Scenario 2, Eq. 5).

lightning_sft.data, lightning_sft.patterns and transformers are imported inside the commands: they pull in
Lightning, datasets and transformers, which the pattern-only commands should not wait for.
"""

import csv
import json
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from lightning_sft import stats
from lightning_sft.analysis.commands import COEFFICIENT_PREFIX
from lightning_sft.storage import atomic_write_text


def read_compose_coefficients(path: Path) -> dict[str, float]:
    """The coefficients of the best fit (rank 1) in a `compose.csv` written by the compose command."""
    with open(path, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    best = [row for row in rows if row.get("rank") == "1"]
    if not best or not any(column.startswith(COEFFICIENT_PREFIX) for column in best[0]):
        raise ValueError(
            f"{path} has no rank-1 row with {COEFFICIENT_PREFIX}<name> columns; pass the compose.csv written by "
            "`python -m lightning_sft.analysis compose ... --out DIR`"
        )
    return {column.removeprefix(COEFFICIENT_PREFIX): float(value)
            for column, value in best[0].items() if column.startswith(COEFFICIENT_PREFIX) and value != ""}


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


def read_jsonl_lines(path: Path) -> list[tuple[int, str, dict]]:
    """(line number, line as written, parsed object) for each non-blank line of a JSONL file."""
    rows = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} row {number} is not valid JSON ({error}); each line must be one JSON object")
            if not isinstance(row, dict):
                raise ValueError(f"{path} row {number} is a {type(row).__name__}, not a JSON object")
            rows.append((number, line, row))
    if not rows:
        raise ValueError(f"{path} has no rows; pass a JSONL file with one example per line")
    return rows


def select_command(
    model_path: str,
    target: str,
    pool: Path,
    k: int,
    out: Path,
    *,
    batch_size: int = 8,
    max_length: int = 1024,
    format: str = "auto",
    adapter: str | None = None,
) -> str:
    """Scenario 2: the `k` pool rows whose head pattern correlates best with the target set's (Eq. 5).

    Scores the target set and each pool row with the model at `model_path` (HF format, tokenizer in the same
    directory), ranks pool rows with `stats.select_by_pattern` and writes the chosen rows, best first, to
    `out` exactly as they are in the pool (JSONL). Pool rows without a supervised token within `max_length`
    cannot be scored and are not candidates.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lightning_sft.data import collate_batches, load_examples, tokenize_row
    from lightning_sft.patterns import score_heads

    if k < 1:
        raise ValueError(f"--k {k}; pass the number of pool rows to select (>= 1)")
    rows = read_jsonl_lines(pool)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # The target first: it checks --format, --adapter and --max-length before the pool loop relies on them.
    target_examples = load_examples(target, tokenizer, format=format, adapter=adapter, max_length=max_length)
    candidates, candidate_lines = [], []
    for number, line, row in rows:
        try:
            example = tokenize_row(row, tokenizer, format=format, adapter=adapter, max_length=max_length)
        except (ValueError, KeyError, TypeError) as error:  # TypeError: e.g. a number where text belongs
            raise ValueError(f"{pool} row {number} cannot be formatted: {error}") from error
        if example is not None:  # rows without a supervised token within max_length cannot be scored
            candidates.append(example)
            candidate_lines.append(line)
    skipped = len(rows) - len(candidates)
    if k > len(candidates):
        raise ValueError(
            f"--k {k} but only {len(candidates)} of the {len(rows)} pool rows can be scored ({skipped} have no "
            f"supervised token within --max-length {max_length}); pass a smaller --k"
        )
    model = AutoModelForCausalLM.from_pretrained(model_path)
    if torch.cuda.is_available():
        model = model.cuda()
    target_pattern = score_heads(model, collate_batches(target_examples, pad_token_id, batch_size),
                                 progress=True).pattern.double().cpu().numpy()
    # Pool rows scored shortest first (less padding), then put back in pool order.
    order = sorted(range(len(candidates)), key=lambda position: len(candidates[position]["input_ids"]))
    pool_batches = collate_batches([candidates[position] for position in order], pad_token_id, batch_size)
    scores = score_heads(model, pool_batches, progress=True)
    if scores.skipped or len(scores.per_example) != len(candidates):
        raise RuntimeError(f"the scorer kept {len(scores.per_example)} of {len(candidates)} pool rows that have "
                           "supervised tokens; lightning_sft.data and lightning_sft.patterns disagree on labels")
    pool_patterns = np.empty(scores.per_example.shape)
    pool_patterns[order] = scores.per_example.double().cpu().numpy()
    correlations = stats.pattern_correlations(pool_patterns, target_pattern)
    chosen = stats.select_by_pattern(pool_patterns, target_pattern, k)
    atomic_write_text(out, "".join(candidate_lines[position] + "\n" for position in chosen))
    return (
        f"selected {k} of {len(rows)} pool rows ({skipped} without supervised tokens skipped); Pearson r with "
        f"the target pattern: {correlations[chosen].max():.4f} (best) to {correlations[chosen].min():.4f} "
        f"(k-th); wrote {out}\n"
    )
