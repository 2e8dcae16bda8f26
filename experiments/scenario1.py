"""Scenario 1 of the paper on the demo's tasks: few complex-task rows, helped by basic-task rows mixed by the
composition coefficients? Judged by held-out `reversed_sum` exact-match accuracy.

    python experiments/scenario1.py --out runs/scenario1     # 3 conditions x 3 seeds, table + plot

Every condition trains the same tiny Llama (configs/demo.yaml's model and optimizer) from the same random
initialisation per seed, for the same number of optimizer steps and batch size (the budget):

    composed   the `--complex-rows` reversed_sum rows + `--basic-rows` basic rows drawn by the composition
               coefficients (`stats.mixture_counts`, top 2; default: the demo's compose fit, README)
    uniform    the same complex rows + the same number of basic rows, a quarter from each basic task
    complex    the same complex rows only (repeated for the whole budget)

Rows come from `lightning_sft.demo`'s generators; the held-out set is fresh reversed_sum rows whose prompts
occur in no training set. `TaskAccuracyCallback` evaluates it during training; the table gives the last value,
mean ± std over the seeds, and `accuracy.png` the curves.
"""

import argparse
import csv
import json
import random
import statistics
from pathlib import Path

import lightning as L
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from callbacks import TaskAccuracyCallback  # noqa: E402
from lightning_sft.data import SFTDataModule  # noqa: E402
from lightning_sft.demo import TASKS  # noqa: E402
from lightning_sft.module import SFTModule  # noqa: E402
from lightning_sft.stats import mixture_counts  # noqa: E402
from lightning_sft.storage import atomic_write_text  # noqa: E402

BASIC = ("addition", "reversal", "sorting", "counting")
DEMO_CONFIG = Path(__file__).parents[1] / "configs" / "demo.yaml"


def write_rows(path: Path, rows: list[dict]) -> str:
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def training_sets(seed: int, complex_rows: int, basic_rows: int, coefficients: dict[str, float]) -> dict:
    """Condition -> rows, all sharing the same complex rows; basic rows drawn from one pool per task."""
    rng = random.Random(seed)
    complex_part = [TASKS["reversed_sum"](rng) for _ in range(complex_rows)]
    pools = {name: [TASKS[name](rng) for _ in range(basic_rows)] for name in BASIC}
    composed = [row for name, count in mixture_counts(coefficients, basic_rows, top_k=2).items()
                for row in pools[name][:count]]
    uniform = [row for index, name in enumerate(BASIC)
               for row in pools[name][:basic_rows // 4 + (index < basic_rows % 4)]]
    sets = {"composed": complex_part + composed, "uniform": complex_part + uniform, "complex": list(complex_part)}
    for rows in sets.values():
        rng.shuffle(rows)
    return sets


def held_out(count: int, seen: set[str]) -> list[dict]:
    rng, rows = random.Random(10_000), []
    while len(rows) < count:
        row = TASKS["reversed_sum"](rng)
        if row["prompt"] not in seen:
            rows.append(row)
            seen.add(row["prompt"])
    return rows


def train(rows_file: str, eval_file: str, seed: int, steps: int, folder: Path) -> list[tuple[int, float]]:
    """Trains the demo model on `rows_file`; (step, held-out exact match) at 0, every steps/6, and the end."""
    settings = yaml.safe_load(DEMO_CONFIG.read_text())
    L.seed_everything(seed)
    module = SFTModule(config=settings["model"]["config"], tokenizer="byte",
                       **{key: value for key, value in settings["model"].items() if key not in ("config", "tokenizer")},
                       export_dir=None)
    data = SFTDataModule(train=rows_file, val_fraction=0, max_length=64, batch_size=32, seed=seed)
    logger = CSVLogger(folder, name="", version="")
    callback = TaskAccuracyCallback({"reversed_sum": eval_file}, every_n_steps=max(1, steps // 6),
                                    max_examples=None, batch_size=64)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", precision="bf16-true", gradient_clip_val=1.0,
                        logger=logger, callbacks=[callback], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, log_every_n_steps=10, default_root_dir=folder)
    trainer.fit(module, data)
    with open(Path(logger.log_dir) / "metrics.csv") as file:
        return [(int(row["step"]), float(row["eval/reversed_sum/exact_match"]))
                for row in csv.DictReader(file) if row.get("eval/reversed_sum/exact_match")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/scenario1"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--complex-rows", type=int, default=64)
    parser.add_argument("--basic-rows", type=int, default=1536)
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of batch 32 per run (the budget)")
    parser.add_argument("--eval-rows", type=int, default=256)
    parser.add_argument("--coefficients", nargs="+", default=["addition=0.7223", "reversal=0.4056"],
                        help="NAME=VALUE from `analysis compose` (default: the demo's rank-1 fit in the README)")
    args = parser.parse_args()
    coefficients = {name: float(value) for name, value in (item.split("=") for item in args.coefficients)}
    curves: dict[str, list[list[tuple[int, float]]]] = {}
    for seed in args.seeds:
        sets = training_sets(seed, args.complex_rows, args.basic_rows, coefficients)
        seen = {row["prompt"] for rows in sets.values() for row in rows}
        eval_file = write_rows(args.out / f"seed{seed}" / "held_out.jsonl", held_out(args.eval_rows, seen))
        for condition, rows in sets.items():
            folder = args.out / f"seed{seed}" / condition
            rows_file = write_rows(folder / "train.jsonl", rows)
            curves.setdefault(condition, []).append(train(rows_file, eval_file, seed, args.steps, folder))
            print(f"seed {seed} {condition}: exact match {curves[condition][-1][-1][1]:.4f}", flush=True)
    summary = {condition: {"mean": statistics.mean(run[-1][1] for run in runs),
                           "std": statistics.stdev(run[-1][1] for run in runs) if len(runs) > 1 else 0.0,
                           "runs": [run[-1][1] for run in runs]} for condition, runs in curves.items()}
    atomic_write_text(args.out / "results.json", json.dumps({"settings": vars(args) | {"out": str(args.out)},
                                                             "summary": summary, "curves": curves}, indent=2))
    print(f"\n| condition | reversed_sum exact match (mean ± std, {len(args.seeds)} seeds) | per seed |")
    print("|---|---|---|")
    for condition, values in summary.items():
        print(f"| {condition} | {values['mean']:.3f} ± {values['std']:.3f} | "
              f"{', '.join(f'{value:.3f}' for value in values['runs'])} |")
    figure, axes = plt.subplots(figsize=(6, 4))
    for condition, runs in curves.items():
        steps = [step for step, _ in runs[0]]
        means = [statistics.mean(run[index][1] for run in runs) for index in range(len(steps))]
        axes.plot(steps, means, marker="o", label=condition)
    axes.set(xlabel="optimizer step", ylabel="held-out reversed_sum exact match",
             title=f"Scenario 1 on the demo ({args.complex_rows} complex rows, mean of {len(args.seeds)} seeds)")
    axes.legend()
    figure.savefig(args.out / "accuracy.png", dpi=120, bbox_inches="tight")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'accuracy.png'}")


if __name__ == "__main__":
    main()
