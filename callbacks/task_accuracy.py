"""TaskAccuracyCallback: task accuracy (lm-evaluation-harness definitions) at chosen optimizer steps, logged as
`eval/<task>/<metric>` beside the head-activation curves, and its standard error as `eval_stderr/<task>/<metric>`.

At each scheduled step every task is evaluated with `lightning_sft.evaluation.evaluate` (multiple choice by
log-likelihood: `acc`, `acc_norm`; generation by exact match) and the metrics go to every logger. With
TensorBoard, a custom-scalars chart puts every task's accuracy beside every probe's drift (with a
HeadActivationCallback; `loggers.scalars_layout`).
"""

from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from typing_extensions import override

from callbacks.loggers import scalars_layout
from callbacks.schedule import Schedule
from lightning_sft.evaluation import TaskData, evaluate, get_task, load_task
from lightning_sft.models import model_of, tokenizer_for

TaskSource = str | dict[str, Any]


def _tag(task: str, metric: str) -> str:
    """`eval/<task>/<metric>`; a standard error as `eval_stderr/<task>/<metric>`, off the accuracy chart."""
    if metric.endswith("_stderr"):
        return f"eval_stderr/{task}/{metric.removesuffix('_stderr')}"
    return f"eval/{task}/{metric}"


class TaskAccuracyCallback(Callback):
    """Evaluates tasks during training and logs `eval/<task>/<metric>` at each scheduled optimizer step.

    Args:
        tasks: task name (a key of `lightning_sft.evaluation.TASKS`: arc_challenge, mmlu, hellaswag, winogrande,
            gsm8k, math, or a demo task) -> its rows: a JSONL/JSON/Parquet/CSV file or `datasets.load_dataset`
            arguments with a `split`.
        steps: explicit optimizer steps to evaluate at (0 = the base model, before any update).
        every_n_steps: evaluate at 0, n, 2n, ... (instead of `steps`). With neither, log-spaced 0, 1, 2, 4, ...
        evaluate_at_end: also evaluate after the last optimizer step.
        max_examples: examples used per task (the first ones); None for all.
        batch_size: examples per forward pass, per process.
        max_new_tokens: generation bound for generative tasks; default the task's (gsm8k and math 256, demo tasks 32).
        num_fewshot: solved examples before each one (0: zero-shot).
        fewshot: task name -> the rows few-shot examples are drawn from (needed when num_fewshot > 0).
        tokenizer: id or directory; default the LightningModule's `tokenizer` attribute.
        model_attribute: the LightningModule attribute holding the transformers model; default: the one
            child that is a `PreTrainedModel`.

    The model is left as found (training flags, RNG states) and training with this callback is bit-identical to
    training without it. Under DeepSpeed ZeRO-3 every rank runs the same number of forward passes.
    """

    def __init__(
        self,
        tasks: Mapping[str, TaskSource],
        steps: list[int] | None = None,
        every_n_steps: int | None = None,
        evaluate_at_end: bool = True,
        max_examples: int | None = 256,
        batch_size: int = 8,
        max_new_tokens: int | None = None,
        num_fewshot: int = 0,
        fewshot: Mapping[str, TaskSource] | None = None,
        tokenizer: str | None = None,
        model_attribute: str | None = None,
    ) -> None:
        if not tasks:
            raise ValueError("TaskAccuracyCallback needs at least one task: tasks={arc_challenge: path, ...}")
        for name in tasks:
            get_task(name)
        if unknown := sorted(set(fewshot or {}) - set(tasks)):
            raise ValueError(f"TaskAccuracyCallback: fewshot names tasks {unknown} that are not in tasks"
                             f" {sorted(tasks)}")
        if batch_size < 1 or (max_examples is not None and max_examples < 1):
            raise ValueError(f"TaskAccuracyCallback: batch_size={batch_size} and max_examples={max_examples} must be"
                             " >= 1 (max_examples None: every row)")
        if max_new_tokens is not None and max_new_tokens < 1:
            raise ValueError(f"TaskAccuracyCallback: max_new_tokens={max_new_tokens}; pass a positive integer or None")
        self.schedule = Schedule(steps, every_n_steps, "TaskAccuracyCallback")
        self.tasks = dict(tasks)
        self.evaluate_at_end = evaluate_at_end
        self.max_examples = max_examples
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.num_fewshot = num_fewshot
        self.fewshot = dict(fewshot or {})
        self.tokenizer_name = tokenizer
        self.model_attribute = model_attribute
        self.done_steps: list[int] = []
        self._data: dict[str, TaskData] = {}
        self._tokenizer: Any = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(tasks=sorted(self.tasks), steps=self.schedule.steps,
                                        every_n_steps=self.schedule.every_n_steps)

    @override
    def setup(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        if stage != "fit":
            return
        if not trainer.loggers:
            rank_zero_warn("TaskAccuracyCallback: the trainer has no logger, so the accuracies go nowhere.")
        self._tokenizer = tokenizer_for(self.tokenizer_name, pl_module, "TaskAccuracyCallback")
        self._data = {name: load_task(name, source, fewshot=self.fewshot.get(name), num_fewshot=self.num_fewshot,
                                      max_examples=self.max_examples)
                      for name, source in self.tasks.items()}

    @override
    def on_train_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self.schedule.warn_beyond(trainer, "evaluated")
        self._evaluate_if_due(trainer, pl_module)

    @override
    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", *args: Any) -> None:
        # global_step counts optimizer steps; between micro-batches of one accumulation it does not move
        self._evaluate_if_due(trainer, pl_module)

    @override
    def on_train_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if self.evaluate_at_end and trainer.global_step not in self.done_steps:
            self._evaluate(trainer, pl_module)

    def _evaluate_if_due(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        step = trainer.global_step
        if self.schedule.is_due(step) and step not in self.done_steps:
            self._evaluate(trainer, pl_module)

    def _evaluate(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        model = model_of(pl_module, self.model_attribute, "TaskAccuracyCallback")
        metrics = {}
        for name, data in self._data.items():
            results = evaluate(model, self._tokenizer, data, batch_size=self.batch_size,
                               max_new_tokens=self.max_new_tokens)
            metrics.update({_tag(name, metric): value for metric, value in results.items()
                            if metric != "n" and value is not None})  # a stderr is None for one example
        self.done_steps.append(trainer.global_step)
        self._log(trainer, trainer.global_step, metrics)

    @rank_zero_only
    def _log(self, trainer: "L.Trainer", step: int, metrics: dict[str, float]) -> None:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            if isinstance(logger, TensorBoardLogger):
                # TensorBoard shows one layout per run (the last written): both callbacks write this same one
                logger.experiment.add_custom_scalars(scalars_layout(trainer.callbacks))
            logger.save()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"done_steps": list(self.done_steps)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.done_steps = list(state_dict["done_steps"])

