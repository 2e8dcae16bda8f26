"""What the scenario experiments share: training the demo model on a set of rows, judging it by held-out
exact match, and writing the table and the plot.

Every run trains configs/demo.yaml's tiny Llama (its model and optimizer settings) in float32 (`32-true`,
which every CPU runs at full speed), batch 32, for a fixed number of optimizer steps (the budget), and
`TaskAccuracyCallback` measures held-out exact match during training.
"""

import csv
import json
import random
import statistics
from pathlib import Path

import lightning as L
import matplotlib.pyplot as plt
import yaml
from lightning.pytorch.loggers import CSVLogger

from callbacks import TaskAccuracyCallback
from lightning_sft.analysis.commands import markdown_table, write_csv
from lightning_sft.plots import save_figure
from lightning_sft.data import SFTDataModule
from lightning_sft.demo import TASKS
from lightning_sft.module import SFTModule
from lightning_sft.storage import atomic_write_text

BASIC = ("addition", "reversal", "sorting", "counting")
TARGET = "reversed_sum"
DEMO_CONFIG = Path(__file__).parents[1] / "configs" / "demo.yaml"
METRIC = f"eval/{TARGET}/exact_match"
MAX_NEW_TOKENS = 8  # a reversed_sum answer is at most 4 digits (999+999) plus eos; longer is wrong anyway
HELD_OUT_SEED = 10_000  # the held-out rows' generator seed, apart from every training seed

Curve = list[tuple[int, float, float]]  # (optimizer step, held-out exact match in [0, 1], held-out loss in nats)


def write_rows(path: Path, rows: list[dict]) -> str:
    """Writes `rows` as JSONL to `path` (atomically); returns the path as a string."""
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def held_out(count: int, seen: set[str]) -> list[dict]:
    """`count` fresh reversed_sum rows whose prompts are not in `seen` (the training prompts), each once."""
    rng, rows, prompts = random.Random(HELD_OUT_SEED), [], set(seen)
    while len(rows) < count:
        row = TASKS[TARGET](rng)
        if row["prompt"] not in prompts:
            rows.append(row)
            prompts.add(row["prompt"])
    return rows


def train(rows_file: str, eval_file: str, seed: int, steps: int, folder: Path, *,
          pretrained: str | None = None, export: bool = False) -> Curve:
    """Trains the demo model on `rows_file` for `steps` optimizer steps of batch 32 from seed `seed`.

    From a fresh random initialisation (the demo's config), or from the Hugging Face folder `pretrained`.
    Returns held-out exact match and loss on `eval_file` at 1/4, 1/2, 3/4 of the budget and at the end
    (`steps` must be a multiple of 4). With `export`, the trained model is saved in Hugging Face format under
    `folder/hf_export`.
    """
    if steps < 4 or steps % 4:
        raise ValueError(f"steps={steps}; pass a positive multiple of 4 (evaluated at each quarter)")
    settings = yaml.safe_load(DEMO_CONFIG.read_text())["model"]
    training = {key: value for key, value in settings.items() if key not in ("config", "tokenizer")}  # dtype: float32
    L.seed_everything(seed, verbose=False)
    source = {"pretrained": pretrained} if pretrained else {"config": settings["config"], "tokenizer": "byte"}
    module = SFTModule(**source, **training, export_dir="hf_export" if export else None)
    data = SFTDataModule(train=rows_file, val=eval_file, max_length=64, batch_size=32, seed=seed)
    logger = CSVLogger(folder, name="", version="")
    quarters = [steps // 4 * quarter for quarter in (1, 2, 3)]
    callback = TaskAccuracyCallback({TARGET: eval_file}, steps=quarters, max_examples=None, batch_size=128,
                                    max_new_tokens=MAX_NEW_TOKENS)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", precision="32-true", gradient_clip_val=1.0,
                        val_check_interval=steps // 4, check_val_every_n_epoch=None, num_sanity_val_steps=0,
                        logger=logger, callbacks=[callback], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, log_every_n_steps=10, default_root_dir=folder)
    trainer.fit(module, data)
    by_step: dict[int, dict[str, float]] = {}
    with open(Path(logger.log_dir) / "metrics.csv") as file:
        for row in csv.DictReader(file):
            for metric in (METRIC, "val/loss"):
                if row.get(metric):
                    # val/loss is logged at the last finished step (step - 1), exact match at the step count
                    step = int(row["step"]) + (metric == "val/loss")
                    by_step.setdefault(step, {})[metric] = float(row[metric])
    return [(step, values[METRIC], values["val/loss"]) for step, values in sorted(by_step.items())]


def write_results(out: Path, title: str, curves: dict[str, list[Curve]], settings: dict) -> str:
    """Writes `results.json` (settings, per-seed curves), `table.csv`, `table.md` and `accuracy.png` to `out`.

    `curves`: condition -> one curve per seed, seeds in the same order for every condition. The table holds the
    last point of each curve: exact match mean ± sample std over the seeds and per seed, and held-out loss
    (nats per response token) mean ± std. Returns the markdown table.
    """
    seeds = settings["seeds"]
    header = ["condition", "exact_match_mean", "exact_match_std", *(f"exact_match_seed_{seed}" for seed in seeds),
              "loss_mean", "loss_std"]
    rows = []
    for condition, runs in curves.items():
        accuracy, loss = [run[-1][1] for run in runs], [run[-1][2] for run in runs]
        rows.append([condition, statistics.mean(accuracy), statistics.stdev(accuracy), *accuracy,
                     statistics.mean(loss), statistics.stdev(loss)])
    write_csv(out / "table.csv", header, rows)
    table = markdown_table(
        ["condition", f"{TARGET} exact match (mean ± std, {len(seeds)} seeds)", "per seed",
         "held-out loss (nats/token)"],
        [[row[0], f"{row[1]:.3f} ± {row[2]:.3f}", ", ".join(f"{value:.3f}" for value in row[3:-2]),
          f"{row[-2]:.3f} ± {row[-1]:.3f}"] for row in rows])
    atomic_write_text(out / "table.md", f"{title}\n\n{table}")
    atomic_write_text(out / "results.json", json.dumps({"settings": settings, "curves": curves}, indent=2) + "\n")
    figure, panels = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for condition, runs in curves.items():
        steps = [point[0] for point in runs[0]]
        for panel, column in zip(panels, (1, 2)):
            values = [[run[index][column] for run in runs] for index in range(len(steps))]
            panel.errorbar(steps, [statistics.mean(value) for value in values],
                           yerr=[statistics.stdev(value) for value in values], marker="o", capsize=3,
                           label=condition)
    panels[0].set(xlabel="optimizer step (batch 32)", ylabel=f"held-out {TARGET} exact match")
    panels[1].set(xlabel="optimizer step (batch 32)", ylabel=f"held-out {TARGET} loss (nats per response token)")
    panels[0].legend()
    figure.suptitle(f"{title}\n(mean ± std over {len(seeds)} seeds)", fontsize=9)
    save_figure(figure, out / "accuracy.png")
    return table
