"""Scenario 1 of the paper on the demo's tasks: do a few complex-task rows learn better beside basic-task rows
mixed by the composition coefficients? Judged by held-out `reversed_sum` exact match.

    python -m experiments.pretrain_base --out runs/scenario_base    # the base model, once
    python -m experiments.scenario1 --out runs/scenario1    # 4 conditions x 10 seeds: tables, results, plot

Every condition fine-tunes the base model (`--base`, a save_pretrained folder: experiments/pretrain_base.py's
Llama pre-trained on the four basic tasks only) for the same number of optimizer steps of batch 32 (the
budget), the same seed per condition (a pair):

    composed   the `--complex-rows` reversed_sum rows + `--basic-rows` basic rows drawn by the best fit's
               coefficients in `--compose` (`stats.mixture_counts`, its positive coefficients, top 2)
    uniform    the same complex rows + the same number of basic rows, a quarter from each basic task
    complex    the same complex rows only, repeated for the whole budget
    unrelated  the same complex rows + basic rows drawn by the fit of the unrelated pair sorting+counting

A condition whose rows equal another's (the same seed) re-uses that run instead of training again.

`--compose` is a `compose.csv` written by `python -m lightning_sft.analysis compose RUN --target reversed_sum
--bases addition reversal sorting counting --subset-size 2 --shares --out DIR`; the committed
docs/scenarios/compose.csv is experiments/pretrain_base.py's share fit on the base's probe run (its raw fit has no
positive coefficient: docs/scenarios/README.md).
Training rows come from `lightning_sft.demo`'s generators; the held-out rows are fresh reversed_sum rows whose
prompts occur in no training set of any seed.
"""

import argparse
import csv
import json
import random
import time
from pathlib import Path

from experiments.demo_runs import (BASE_CONFIG, BASE_MODEL, BASIC, FINE_TUNING_LR, TARGET, Curve, held_out, train,
                                  write_results, write_rows)
from lightning_sft.analysis.scenarios import read_compose_coefficients
from lightning_sft.demo import TASKS
from lightning_sft.stats import mixture_counts

UNRELATED = ("sorting", "counting")
COMPOSE = Path(__file__).parents[1] / "docs" / "scenarios" / "compose.csv"


def pair_coefficients(path: Path, bases: tuple[str, ...]) -> dict[str, float]:
    """The coefficients of the fit over exactly `bases` in a `compose.csv` (any rank)."""
    with open(path, newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            if set(row["bases"].split("+")) == set(bases):
                return {name: float(row[f"coefficient_{name}"]) for name in bases}
    raise ValueError(f"{path} has no fit over {'+'.join(bases)}; run compose with --subset-size {len(bases)} "
                     f"and --bases including {' '.join(bases)}")


def training_sets(seed: int, complex_rows: int, basic_rows: int,
                  mixtures: dict[str, dict[str, float]]) -> dict[str, list[dict]]:
    """Condition -> rows. Every condition holds the same complex rows; basic rows come from one pool per task,
    so conditions that draw from the same task share those rows. `mixtures`: condition -> coefficients."""
    rng = random.Random(seed)
    complex_part = [TASKS[TARGET](rng) for _ in range(complex_rows)]
    pools = {name: [TASKS[name](rng) for _ in range(basic_rows)] for name in BASIC}
    uniform = {name: basic_rows // len(BASIC) + (index < basic_rows % len(BASIC)) for index, name in enumerate(BASIC)}
    counts = {condition: mixture_counts(coefficients, basic_rows, top_k=2)
              for condition, coefficients in mixtures.items()}
    sets = {"complex": list(complex_part)}
    for condition, by_task in {**counts, "uniform": uniform}.items():
        sets[condition] = complex_part + [row for name, count in by_task.items() for row in pools[name][:count]]
    for rows in sets.values():
        rng.shuffle(rows)
    return {condition: sets[condition] for condition in [*mixtures, "uniform", "complex"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/scenario1"))
    parser.add_argument("--base", type=Path, default=BASE_MODEL, help="the base model's save_pretrained folder")
    parser.add_argument("--compose", type=Path, default=COMPOSE, help="compose.csv of the base's probe run")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--complex-rows", type=int, default=256, help="reversed_sum training rows")
    parser.add_argument("--basic-rows", type=int, default=1536, help="basic-task rows added (conditions but complex)")
    parser.add_argument("--steps", type=int, default=600,
                        help="optimizer steps of batch 32 per run (the budget), a multiple of 4")
    parser.add_argument("--learning-rate", type=float, default=FINE_TUNING_LR,
                        help="peak learning rate (cosine, warmup 20)")
    parser.add_argument("--eval-rows", type=int, default=256, help="held-out reversed_sum rows")
    args = parser.parse_args()
    if len(args.seeds) < 2:
        raise ValueError(f"--seeds {args.seeds}; pass at least 2 seeds (the table gives intervals and paired tests)")
    started = time.perf_counter()
    mixtures = {"composed": read_compose_coefficients(args.compose),
                "unrelated": pair_coefficients(args.compose, UNRELATED)}
    sets = {seed: training_sets(seed, args.complex_rows, args.basic_rows, mixtures) for seed in args.seeds}
    eval_file = write_rows(args.out / "held_out.jsonl", held_out(
        args.eval_rows, {row["prompt"] for by_condition in sets.values() for rows in by_condition.values()
                         for row in rows}))
    curves: dict[str, list[Curve]] = {}
    for seed, by_condition in sets.items():
        trained: dict[str, Curve] = {}  # rows -> curve: a condition with the same rows as another is not re-run
        for condition, rows in by_condition.items():
            folder = args.out / f"seed{seed}" / condition
            key = json.dumps(sorted(json.dumps(row, sort_keys=True) for row in rows))
            if key not in trained:
                trained[key] = train(write_rows(folder / "train.jsonl", rows), eval_file, seed, args.steps, folder,
                                     pretrained=str(args.base), config=BASE_CONFIG, learning_rate=args.learning_rate)
            curve = trained[key]
            curves.setdefault(condition, []).append(curve)
            print(f"seed {seed} {condition}: {TARGET} exact match {curve[-1][1]:.4f}", flush=True)
    mixed = {condition: mixture_counts(coefficients, args.basic_rows, top_k=2)
             for condition, coefficients in mixtures.items()}
    title = (f"Scenario 1: {args.complex_rows} {TARGET} rows + {args.basic_rows} basic rows "
             f"({'; '.join(f'{condition} {counts}' for condition, counts in mixed.items())}), "
             f"{args.steps} steps from the base")
    settings = vars(args) | {"out": str(args.out), "compose": str(args.compose), "base": str(args.base),
                             "coefficients": mixtures,
                             "basic_rows_by_condition": mixed, "seconds": round(time.perf_counter() - started)}
    pairs = [("composed", other) for other in ("uniform", "complex", "unrelated")]
    print(write_results(args.out, title, curves, settings, pairs))
    print(f"wrote {args.out}/table.md, table.csv, comparisons.csv, results.json, accuracy.png in "
          f"{settings['seconds']} s")


if __name__ == "__main__":
    main()
