"""Scenario 2 of the paper on the demo's tasks: with a little private target data (reversed_sum rows used only
as a probe), do the `k` pool rows whose head pattern correlates best with the target's train a better model
than `k` random rows of the same pool? Judged by held-out `reversed_sum` exact match.

    python -m experiments.pretrain_base --out runs/scenario_base    # the base model, once
    python -m experiments.scenario2 --out runs/scenario2    # 2 conditions x 2 k x 10 seeds: tables, results, plot

1. The selecting model is the base (`--base`, experiments/pretrain_base.py's Llama pre-trained on the four
   basic tasks, never on reversed_sum), as in the paper: pretrained, not yet tuned on the target.
2. Per seed, a pool of `--pool-per-task` fresh rows of each of the five demo tasks (a fifth is reversed_sum)
   and `--target-rows` private reversed_sum rows (the target probe, never trained on).
3. selected: the `k` pool rows chosen by pattern correlation with the target probe (Eq. 5, scored with the
   base); random: `k` rows drawn uniformly from the same pool; for each `k` in `--k`.
4. Each set fine-tunes the base for `--steps` optimizer steps of batch 32 (the budget), the same seed for
   both sets (a pair); the held-out rows are fresh reversed_sum rows that are in no pool and no probe.
"""

import argparse
import json
import random
import time
from collections import Counter
from pathlib import Path

from experiments.demo_runs import (BASE_CONFIG, BASE_MODEL, FINE_TUNING_LR, TARGET, Curve, held_out, train,
                                  write_results, write_rows)
from lightning_sft.analysis.commands import markdown_table
from lightning_sft.score import ScoringOptions
from lightning_sft.select import select_command
from lightning_sft.demo import TASKS
from lightning_sft.storage import atomic_write_text


def select_rows(model: str, target: str, pool: str, k: int, out: Path) -> list[dict]:
    """The `k` rows of `pool` that pattern selection (Scenario 2) picks with `model`, best first.

    The one place this experiment calls selection (`python -m lightning_sft.select`'s function)."""
    select_command(model, target, Path(pool), k, out, ScoringOptions(batch_size=64, max_length=64))
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/scenario2"))
    parser.add_argument("--base", type=Path, default=BASE_MODEL, help="the base model's save_pretrained folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--pool-per-task", type=int, default=400, help="pool rows of each of the five tasks")
    parser.add_argument("--target-rows", type=int, default=32, help="private reversed_sum rows (the probe)")
    parser.add_argument("--k", type=int, nargs="+", default=[128, 512], help="rows selected, and rows drawn at random")
    parser.add_argument("--steps", type=int, default=600,
                        help="fine-tuning steps of batch 32 per run (the budget), a multiple of 4")
    parser.add_argument("--learning-rate", type=float, default=FINE_TUNING_LR,
                        help="peak learning rate (cosine, warmup 20)")
    parser.add_argument("--eval-rows", type=int, default=256, help="held-out reversed_sum rows")
    args = parser.parse_args()
    if len(args.seeds) < 2:
        raise ValueError(f"--seeds {args.seeds}; pass at least 2 seeds (the table gives intervals and paired tests)")
    pool_rows = len(TASKS) * args.pool_per_task
    if max(args.k) > pool_rows:
        raise ValueError(f"--k {max(args.k)} exceeds the pool ({len(TASKS)} tasks x --pool-per-task = "
                         f"{pool_rows} rows)")
    started = time.perf_counter()
    pools, probes, task_of = {}, {}, {}  # task_of: prompt -> its task (each task writes prompts of its own form)
    for seed in args.seeds:
        rng, pools[seed] = random.Random(seed), []
        for name, make in TASKS.items():
            for _ in range(args.pool_per_task):
                pools[seed].append(make(rng))
                task_of[pools[seed][-1]["prompt"]] = name
        probes[seed] = [TASKS[TARGET](rng) for _ in range(args.target_rows)]
    seen = {row["prompt"] for rows in [*pools.values(), *probes.values()] for row in rows}
    eval_file = write_rows(args.out / "held_out.jsonl", held_out(args.eval_rows, seen))
    model = str(args.base)
    curves: dict[str, list[Curve]] = {f"{condition}_k{k}": [] for k in args.k for condition in ("selected", "random")}
    composition = []
    for seed in args.seeds:
        folder = args.out / f"seed{seed}"
        pool = write_rows(folder / "pool.jsonl", pools[seed])
        probe = write_rows(folder / "target_probe.jsonl", probes[seed])
        ranked = select_rows(model, probe, pool, max(args.k), folder / "selected.jsonl")  # best first
        for k in args.k:
            sets = {f"selected_k{k}": ranked[:k], f"random_k{k}": random.Random(seed).sample(pools[seed], k)}
            for condition, rows in sets.items():
                counts = Counter(task_of[row["prompt"]] for row in rows)
                composition.append([seed, condition, *(counts[name] for name in TASKS)])
                curve = train(write_rows(folder / condition / "train.jsonl", rows), eval_file, seed, args.steps,
                              folder / condition, pretrained=model, config=BASE_CONFIG,
                              learning_rate=args.learning_rate)
                curves[condition].append(curve)
                print(f"seed {seed} {condition} {dict(counts)}: {TARGET} exact match {curve[-1][1]:.4f}", flush=True)
    rows_table = markdown_table(["seed", "set", *TASKS], composition)
    atomic_write_text(args.out / "composition.md", f"Rows per task in each training set\n\n{rows_table}")
    title = (f"Scenario 2: k = {', '.join(map(str, args.k))} of {pool_rows} pool rows, selected by pattern "
             f"correlation with {args.target_rows} {TARGET} rows vs random; {args.steps} steps from the base")
    settings = vars(args) | {"out": str(args.out), "base": model, "composition": composition,
                             "seconds": round(time.perf_counter() - started)}
    pairs = [(f"selected_k{k}", f"random_k{k}") for k in args.k]
    print(write_results(args.out, title, curves, settings, pairs))
    print(rows_table)
    print(f"wrote {args.out}/table.md, table.csv, comparisons.csv, composition.md, results.json, accuracy.png in "
          f"{settings['seconds']} s")


if __name__ == "__main__":
    main()
