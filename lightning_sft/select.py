"""Scenario 2, data selection (Eq. 5): the pool rows whose own head pattern correlates best with a target
set's, scored with a saved model.

    python -m lightning_sft.select --model DIR --target FILE --pool FILE --k N --out FILE

It re-runs a model, so it lives beside `lightning_sft.score` (whose functions load and score) rather than
in `lightning_sft.analysis`, which only reads saved patterns.
"""

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from lightning_sft import stats
from lightning_sft.data import load_examples, read_rows, tokenize_row
from lightning_sft.models import load_tokenizer
from lightning_sft.score import ScoringOptions, add_model_arguments, load_scoring_model, run_command, score_examples
from lightning_sft.storage import atomic_write_text


def select_command(
    model_path: str, target: str, pool: Path, k: int, out: Path, options: ScoringOptions = ScoringOptions()
) -> str:
    """Scenario 2: the `k` pool rows whose head pattern correlates best with the target set's (Eq. 5).

    Scores the target set and each pool row with the model at `model_path` (`score.load_scoring_model`,
    tokenizer from the same source), ranks pool rows with `stats.select_by_pattern` and writes the chosen
    rows, best first, to `out` as JSONL, each exactly as read (`data.Rows.as_json`). Pool rows without a supervised
    token within `max_length` cannot be scored and are not candidates. Returns what to print.
    """
    if k < 1:
        raise ValueError(f"--k {k}; pass the number of pool rows to select (>= 1)")
    rows = read_rows(pool)
    tokenizer = load_tokenizer(model_path)
    # The target first: it checks --format, --adapter and --max-length before the pool loop relies on them.
    reading = {"format": options.format, "adapter": options.adapter, "max_length": options.max_length}
    target_examples = load_examples(target, tokenizer, **reading)
    candidates, candidate_lines = [], []
    for position, (place, row) in enumerate(zip(rows.places, rows)):
        try:
            example = tokenize_row(row, tokenizer, **reading)
        except (ValueError, KeyError, TypeError) as error:  # TypeError: e.g. a list where text belongs
            raise ValueError(f"{place}: cannot be formatted: {error}") from error
        if example is not None:  # rows without a supervised token within max_length cannot be scored
            candidates.append(example)
            candidate_lines.append(rows.as_json(position))
    skipped = len(rows) - len(candidates)
    if k > len(candidates):
        raise ValueError(
            f"--k {k} but only {len(candidates)} of the {len(rows)} pool rows can be scored ({skipped} have no "
            f"supervised token within --max-length {options.max_length}); pass a smaller --k"
        )
    model = load_scoring_model(model_path, options.dtype)
    target_pattern = score_examples(model, target_examples, tokenizer, options.batch_size).pattern.double().numpy()
    # Pool rows scored shortest first (less padding), then put back in pool order.
    order = sorted(range(len(candidates)), key=lambda position: len(candidates[position]["input_ids"]))
    scores = score_examples(model, [candidates[position] for position in order], tokenizer, options.batch_size)
    if scores.skipped or len(scores.per_example) != len(candidates):
        raise RuntimeError(f"the scorer kept {len(scores.per_example)} of {len(candidates)} pool rows that have "
                           "supervised tokens; lightning_sft.data and lightning_sft.scorer.patterns disagree on labels")
    pool_patterns = np.empty(scores.per_example.shape)
    pool_patterns[order] = scores.per_example.double().numpy()
    correlations = stats.pattern_correlations(pool_patterns, target_pattern)
    chosen = stats.select_by_pattern(pool_patterns, target_pattern, k)
    atomic_write_text(out, "".join(candidate_lines[position] + "\n" for position in chosen))
    return (
        f"selected {k} of {len(rows)} pool rows ({skipped} without supervised tokens skipped); Pearson r with "
        f"the target pattern: {correlations[chosen].max():.4f} (best) to {correlations[chosen].min():.4f} "
        f"(k-th); wrote {out}\n"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lightning_sft.select",
                                     description="Scenario 2: pool rows whose pattern best matches the target's.")
    add_model_arguments(parser)
    parser.add_argument("--target", required=True, help="target set (any format lightning_sft.data reads)")
    parser.add_argument("--pool", type=Path, required=True, help="pool to select from (.jsonl/.json/.parquet/.csv)")
    parser.add_argument("--k", type=int, required=True, help="rows to select")
    parser.add_argument("--out", type=Path, required=True, help="JSONL file for the chosen rows, best first")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    run_command(parser, lambda args: select_command(
        args.model, args.target, args.pool, args.k, args.out, ScoringOptions.from_args(args)), parser.parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
