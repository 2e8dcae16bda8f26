"""What the scenario experiments share: training the demo model on a set of rows, judging it by held-out
exact match, and writing the table and the plot.

Every run trains configs/demo.yaml's tiny Llama (its model and optimizer settings) in float32 (`32-true`,
which every CPU runs at full speed), batch 32, for a fixed number of optimizer steps (the budget), and
`TaskAccuracyCallback` measures held-out exact match during training.
"""

import csv
import json
import math
import random
import statistics
from pathlib import Path

import lightning as L
import matplotlib.pyplot as plt
import yaml
from lightning.pytorch.loggers import CSVLogger
from scipy import optimize, stats

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
BASE_CONFIG = Path(__file__).parents[1] / "configs" / "scenarios" / "base.yaml"  # the scenarios' base model
BASE_MODEL = Path("runs/scenario_base/hf_export")  # written by experiments/pretrain_base.py
METRIC = f"eval/{TARGET}/exact_match"
MAX_NEW_TOKENS = 8  # a reversed_sum answer is at most 4 digits (999+999) plus eos; longer is wrong anyway
FINE_TUNING_LR = 1e-3  # the scenarios' and the base's probe run's peak learning rate (warmup 20, cosine)
HELD_OUT_SEED = 10_000  # the held-out rows' generator seed, apart from every training seed

Curve = list[tuple[int, float, float]]  # (optimizer step, held-out exact match in [0, 1], held-out loss in nats)


def write_rows(path: Path, rows: list[dict]) -> str:
    """Writes `rows` as JSONL to `path` (atomically); returns the path as a string."""
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def fresh_rows(task: str, count: int, rng: random.Random, seen: set[str]) -> list[dict]:
    """`count` rows of `task` whose prompts are not in `seen`, each once; adds them to `seen`."""
    rows = []
    while len(rows) < count:
        row = TASKS[task](rng)
        if row["prompt"] not in seen:
            rows.append(row)
            seen.add(row["prompt"])
    return rows


def held_out(count: int, seen: set[str]) -> list[dict]:
    """`count` fresh reversed_sum rows whose prompts are not in `seen` (the training prompts), each once."""
    return fresh_rows(TARGET, count, random.Random(HELD_OUT_SEED), set(seen))


def train(rows_file: str, eval_file: str, seed: int, steps: int, folder: Path, *,
          pretrained: str | None = None, export: bool = False, config: Path = DEMO_CONFIG,
          learning_rate: float | None = None, warmup_steps: int | None = None,
          tasks: dict[str, str] | None = None, callbacks: list[L.Callback] = ()) -> Curve:
    """Trains the demo model on `rows_file` for `steps` optimizer steps of batch 32 from seed `seed`.

    From a fresh random initialisation (the demo's config), or from the Hugging Face folder `pretrained`.
    Returns held-out exact match and loss on `eval_file` at 1/4, 1/2, 3/4 of the budget and at the end
    (`steps` must be a multiple of 4). With `export`, the trained model is saved in Hugging Face format under
    `folder/hf_export`. `config`: the YAML whose `model` section gives the architecture and optimizer
    (`learning_rate`, `warmup_steps` override it). `tasks`: more held-out sets (name -> JSONL) whose exact
    match is logged at the same steps, read back with `final_accuracy`. `callbacks`: more Lightning callbacks.
    """
    if steps < 4 or steps % 4:
        raise ValueError(f"steps={steps}; pass a positive multiple of 4 (evaluated at each quarter)")
    settings = yaml.safe_load(config.read_text())["model"]
    training = {key: value for key, value in settings.items() if key not in ("config", "tokenizer")}  # dtype: float32
    training |= {key: value for key, value in (("learning_rate", learning_rate), ("warmup_steps", warmup_steps))
                 if value is not None}
    L.seed_everything(seed, verbose=False)
    source = {"pretrained": pretrained} if pretrained else {"config": settings["config"], "tokenizer": "byte"}
    module = SFTModule(**source, **training, export_dir="hf_export" if export else None)
    data = SFTDataModule(train=rows_file, val=eval_file, max_length=64, batch_size=32, seed=seed)
    logger = CSVLogger(folder, name="", version="")
    quarters = [steps // 4 * quarter for quarter in (1, 2, 3)]
    callback = TaskAccuracyCallback({TARGET: eval_file, **(tasks or {})}, steps=quarters, max_examples=None,
                                    batch_size=128,
                                    max_new_tokens=MAX_NEW_TOKENS)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", precision="32-true", gradient_clip_val=1.0,
                        val_check_interval=steps // 4, check_val_every_n_epoch=None, num_sanity_val_steps=0,
                        logger=logger, callbacks=[callback, *callbacks], enable_checkpointing=False,
                        enable_progress_bar=False,
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


def final_accuracy(folder: Path, task: str) -> float:
    """The last held-out exact match (in [0, 1]) of `task` logged by a `train` run in `folder`."""
    with open(folder / "metrics.csv") as file:
        column = f"eval/{task}/exact_match"
        values = [row[column] for row in csv.DictReader(file) if row.get(column)]
    return float(values[-1])


def detectable_difference(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean difference a two-sided paired t-test over `n` pairs with difference sd `sd`
    detects with probability `power` at level `alpha` (noncentral t; the far tail's chance, under 0.3% here,
    left out), in the units of `sd`."""
    critical = stats.t.ppf(1 - alpha / 2, n - 1)

    def shortfall(shift: float) -> float:
        return stats.nct.sf(critical, n - 1, shift) - power

    return optimize.brentq(shortfall, 0.0, 30.0) * sd / math.sqrt(n)


def interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """The t-interval of the mean of `values` (over seeds) at `level`; the mean itself when they are all equal."""
    if statistics.stdev(values) == 0:
        return values[0], values[0]
    low, high = stats.t.interval(level, len(values) - 1, loc=statistics.mean(values), scale=stats.sem(values))
    return float(low), float(high)


def compare(first: list[float], second: list[float]) -> dict[str, float]:
    """Paired comparison of two conditions' per-seed values (same seed = pair): mean difference `first -
    second` with its 95% t-interval, the paired t-test's and the Wilcoxon signed-rank test's two-sided p, and
    the difference the design detects at 80% power, alpha 0.05."""
    differences = [a - b for a, b in zip(first, second, strict=True)]
    sd = statistics.stdev(differences)
    low, high = interval(differences)
    t_p = float(stats.ttest_rel(first, second).pvalue) if sd > 0 else float("nan")
    w_p = float(stats.wilcoxon(first, second).pvalue) if any(differences) else float("nan")
    return {"difference": statistics.mean(differences), "ci_low": low, "ci_high": high, "t_p": t_p,
            "wilcoxon_p": w_p, "detectable": detectable_difference(sd, len(differences))}


def write_results(out: Path, title: str, curves: dict[str, list[Curve]], settings: dict,
                  pairs: list[tuple[str, str]]) -> str:
    """Writes `results.json` (settings, per-seed curves), `table.csv`, `comparisons.csv`, `table.md` and
    `accuracy.png` to `out`.

    `curves`: condition -> one curve per seed, seeds in the same order for every condition. The table holds the
    last point of each curve: exact match mean, 95% t-interval over the seeds and per seed, and held-out loss
    (nats per response token) mean ± std; `pairs` are compared seed by seed (`compare`). Returns the markdown.
    """
    seeds = settings["seeds"]
    header = ["condition", "exact_match_mean", "exact_match_ci_low", "exact_match_ci_high",
              *(f"exact_match_seed_{seed}" for seed in seeds), "loss_mean", "loss_std"]
    rows, finals = [], {}
    for condition, runs in curves.items():
        accuracy, loss = [run[-1][1] for run in runs], [run[-1][2] for run in runs]
        finals[condition] = accuracy
        rows.append([condition, statistics.mean(accuracy), *interval(accuracy), *accuracy,
                     statistics.mean(loss), statistics.stdev(loss)])
    write_csv(out / "table.csv", header, rows)
    compared = [[first, second, *compare(finals[first], finals[second]).values()] for first, second in pairs]
    write_csv(out / "comparisons.csv", ["first", "second", "difference", "ci_low", "ci_high", "t_p", "wilcoxon_p",
                                        "detectable"], compared)
    table = markdown_table(
        ["condition", f"{TARGET} exact match, mean [95% CI] ({len(seeds)} seeds)", "per seed",
         "held-out loss (nats/token)"],
        [[row[0], f"{row[1]:.3f} [{row[2]:.3f}, {row[3]:.3f}]", ", ".join(f"{value:.3f}" for value in row[4:-2]),
          f"{row[-2]:.3f} ± {row[-1]:.3f}"] for row in rows])
    table += "\n" + markdown_table(
        ["paired comparison (same seed)", "difference [95% CI]", "paired t p", "Wilcoxon p",
         "detectable difference (80% power)"],
        [[f"{first} - {second}", f"{difference:+.3f} [{low:+.3f}, {high:+.3f}]", f"{t_p:.3g}", f"{w_p:.3g}",
          f"{detectable:.3f}"] for first, second, difference, low, high, t_p, w_p, detectable in compared])
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
