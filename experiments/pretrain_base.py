"""The scenarios' base model: a demo-style Llama (configs/scenarios/base.yaml, 1.7 M parameters) pre-trained on
the four basic tasks only (14 000 steps of batch 32, addition twice as many rows as the others, AdamW at the
config's 5e-4), so that it is good at them and poor at the composed `reversed_sum`, as a pretrained LM is before
SFT in the paper. Then a short probe run fine-tunes it on all five tasks with `HeadActivationCallback`
(per-example patterns) and `analysis compose` fits the composition coefficients that Scenario 1 mixes by.

    python -m experiments.pretrain_base --out runs/scenario_base

Writes `OUT/hf_export` (the base, `save_pretrained`), `OUT/accuracy.json` (held-out exact match per task),
`OUT/probe_run` (the probe run's patterns), `OUT/stats/stats.md`, and two fits: `OUT/compose` of the raw
pattern changes (the paper's) and `OUT/compose_shares` of each head's share of its pattern's sum.
"""

import argparse
import json
import random
import time
from pathlib import Path

from callbacks import HeadActivationCallback
from experiments.demo_runs import (BASE_CONFIG, BASIC, FINE_TUNING_LR, TARGET, final_accuracy, fresh_rows, held_out,
                                  train, write_rows)
from lightning_sft.analysis.commands import compose_command, stats_command
from lightning_sft.analysis.runs import load_runs
from lightning_sft.demo import TASKS
from lightning_sft.storage import atomic_write_text

BASE_SEED = 2_000  # the base's data and initialisation, apart from every scenario seed
PROBE_SEED = 3_000  # the probe run's rows and probes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/scenario_base"))
    parser.add_argument("--init", type=Path, help="continue pre-training this save_pretrained folder (default: random)")
    parser.add_argument("--seed", type=int, default=BASE_SEED, help="seed of the pre-training rows and initialisation")
    parser.add_argument("--rows-per-task", type=int, default=80_000, help="pre-training rows of each basic task")
    parser.add_argument("--addition-rows", type=int, default=160_000,
                        help="pre-training rows of addition, the slowest task to learn")
    parser.add_argument("--steps", type=int, default=14_000,
                        help="pre-training steps of batch 32 (a multiple of 4)")
    parser.add_argument("--eval-rows", type=int, default=256, help="held-out rows per task for exact match")
    parser.add_argument("--probe-steps", type=int, default=100, help="probe run's steps of batch 32 (multiple of 4)")
    parser.add_argument("--probe-rows", type=int, default=64, help="rows of each task's probe set")
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples of the probe rows for stats' intervals")
    args = parser.parse_args()
    started = time.perf_counter()
    rng = random.Random(args.seed)
    counts = {name: args.rows_per_task for name in BASIC} | {"addition": args.addition_rows}
    rows = [TASKS[name](rng) for name in BASIC for _ in range(counts[name])]
    rng.shuffle(rows)
    seen = {row["prompt"] for row in rows}
    evals = {name: write_rows(args.out / "eval" / f"{name}.jsonl", fresh_rows(name, args.eval_rows, rng, seen))
             for name in BASIC}
    target = write_rows(args.out / "eval" / f"{TARGET}.jsonl", held_out(args.eval_rows, set()))
    train(write_rows(args.out / "train.jsonl", rows), target, args.seed, args.steps, args.out, export=True,
          pretrained=str(args.init) if args.init else None, config=BASE_CONFIG, warmup_steps=min(50, args.steps // 2),
          tasks=evals)
    accuracy = {name: final_accuracy(args.out, name) for name in [*BASIC, TARGET]}
    atomic_write_text(args.out / "accuracy.json", json.dumps(accuracy, indent=2) + "\n")
    print("base exact match:", accuracy, flush=True)

    probe_rng = random.Random(PROBE_SEED)
    probes = {name: write_rows(args.out / "probes" / f"{name}.jsonl",
                               fresh_rows(name, args.probe_rows, probe_rng, seen)) for name in TASKS}
    mixed = [row for name in TASKS for row in fresh_rows(name, args.probe_steps * 32 // len(TASKS), probe_rng, seen)]
    probe_rng.shuffle(mixed)
    steps = [0, args.probe_steps // 4, args.probe_steps // 2]
    callback = HeadActivationCallback(probes, steps=steps, batch_size=64, max_length=64, log_images=False,
                                      log_histograms=False, per_example=True)
    folder = args.out / "probe_run"
    train(write_rows(folder / "train.jsonl", mixed), target, PROBE_SEED, args.probe_steps, folder,
          pretrained=str(args.out / "hf_export"), config=BASE_CONFIG, learning_rate=FINE_TUNING_LR,
          callbacks=[callback])
    patterns = load_runs([folder])
    print(stats_command(patterns, args.out / "stats", bootstrap=args.bootstrap))
    print(compose_command(patterns, TARGET, list(BASIC), 2, args.out / "compose"))  # raw: the paper's, for comparison
    print(compose_command(patterns, TARGET, list(BASIC), 2, args.out / "compose_shares", shares=True))
    print(f"wrote {args.out} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
