"""Scenario 2 of the paper on the demo's tasks: with a little private target data (reversed_sum rows used only
as a probe), do the `k` pool rows whose head pattern correlates best with the target's train a better model
than `k` random rows of the same pool? Judged by held-out `reversed_sum` exact match.

    python -m experiments.scenario2 --out runs/scenario2    # 2 conditions x 3 seeds: table, results, plot

1. The selecting model: the demo's tiny Llama trained briefly (`--base-steps`) on the four basic tasks only,
   never on reversed_sum. The paper selects with the pretrained base model; the demo's base is a random
   initialisation, whose gradients say nothing about any task, so the analogue of "pretrained, not yet tuned
   on the target" is a model that has seen the basic skills but not the target task.
2. Per seed, a pool of `--pool-per-task` fresh rows of each of the five demo tasks (a fifth is reversed_sum)
   and `--target-rows` private reversed_sum rows (the target probe, never trained on).
3. selected: the `k` pool rows chosen by pattern correlation with the target probe (Eq. 5, scored with the
   selecting model); random: `k` rows drawn uniformly from the same pool.
4. Each set fine-tunes the selecting model for `--steps` optimizer steps of batch 32 (the budget), seed per
   seed; the held-out rows are fresh reversed_sum rows that are in no pool and no probe.
"""

import argparse
import json
import random
import time
from collections import Counter
from pathlib import Path

from experiments.demo_runs import BASIC, TARGET, Curve, held_out, train, write_results, write_rows
from lightning_sft.analysis.commands import markdown_table
from lightning_sft.score import ScoringOptions
from lightning_sft.select import select_command
from lightning_sft.demo import TASKS
from lightning_sft.storage import atomic_write_text

BASE_SEED = 1_000  # the selecting model's data and initialisation, apart from the per-seed pools


def select_rows(model: str, target: str, pool: str, k: int, out: Path) -> list[dict]:
    """The `k` rows of `pool` that pattern selection (Scenario 2) picks with `model`, best first.

    The one place this experiment calls selection (`python -m lightning_sft.select`'s function)."""
    select_command(model, target, Path(pool), k, out, ScoringOptions(batch_size=64, max_length=64))
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/scenario2"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--base-rows", type=int, default=1600, help="basic-task rows the selecting model learns")
    parser.add_argument("--base-steps", type=int, default=300, help="its optimizer steps of batch 32 (a multiple of 4)")
    parser.add_argument("--pool-per-task", type=int, default=400, help="pool rows of each of the five tasks")
    parser.add_argument("--target-rows", type=int, default=32, help="private reversed_sum rows (the probe)")
    parser.add_argument("--k", type=int, default=256, help="rows selected, and rows drawn at random")
    parser.add_argument("--steps", type=int, default=300,
                        help="fine-tuning steps of batch 32 per run (the budget), a multiple of 4")
    parser.add_argument("--eval-rows", type=int, default=256, help="held-out reversed_sum rows")
    args = parser.parse_args()
    if len(args.seeds) < 2:
        raise ValueError(f"--seeds {args.seeds}; pass at least 2 seeds (the table gives mean ± std)")
    pool_rows = len(TASKS) * args.pool_per_task
    if args.k > pool_rows:
        raise ValueError(f"--k {args.k} exceeds the pool ({len(TASKS)} tasks x --pool-per-task = {pool_rows} rows)")
    started = time.perf_counter()
    base_rng = random.Random(BASE_SEED)
    base_rows = [TASKS[BASIC[index % len(BASIC)]](base_rng) for index in range(args.base_rows)]
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
    base_folder = args.out / "selecting_model"
    base_curve = train(write_rows(base_folder / "train.jsonl", base_rows), eval_file, BASE_SEED, args.base_steps,
                       base_folder, export=True)
    model = str(base_folder / "hf_export")
    curves: dict[str, list[Curve]] = {"selected": [], "random": []}
    composition = []
    for seed in args.seeds:
        folder = args.out / f"seed{seed}"
        pool = write_rows(folder / "pool.jsonl", pools[seed])
        probe = write_rows(folder / "target_probe.jsonl", probes[seed])
        sets = {"selected": select_rows(model, probe, pool, args.k, folder / "selected.jsonl"),
                "random": random.Random(seed).sample(pools[seed], args.k)}
        for condition, rows in sets.items():
            counts = Counter(task_of[row["prompt"]] for row in rows)
            composition.append([seed, condition, *(counts[name] for name in TASKS)])
            curve = train(write_rows(folder / condition / "train.jsonl", rows), eval_file, seed, args.steps,
                          folder / condition, pretrained=model)
            curves[condition].append(curve)
            print(f"seed {seed} {condition} {dict(counts)}: {TARGET} exact match {curve[-1][1]:.4f}", flush=True)
    rows_table = markdown_table(["seed", "set", *TASKS], composition)
    atomic_write_text(args.out / "composition.md", f"Rows per task in each training set ({args.k} rows)\n\n"
                                                  f"{rows_table}")
    title = (f"Scenario 2 on the demo: {args.k} of {pool_rows} pool rows, selected by pattern "
             f"correlation with {args.target_rows} {TARGET} rows vs random; {args.steps} steps from a model "
             f"trained {args.base_steps} steps on the basic tasks")
    settings = vars(args) | {"out": str(args.out), "composition": composition, "selecting_model_curve": base_curve,
                             "seconds": round(time.perf_counter() - started)}
    print(write_results(args.out, title, curves, settings))
    print(rows_table)
    print(f"wrote {args.out}/table.md, table.csv, composition.md, results.json, accuracy.png in "
          f"{settings['seconds']} s")


if __name__ == "__main__":
    main()
