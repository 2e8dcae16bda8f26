"""Task accuracy as lm-evaluation-harness defines it (v0.4.12): multiple-choice tasks by log-likelihood (`acc`,
`acc_norm`), generative tasks by exact match; batched, distributed, usable in training (the
`callbacks.TaskAccuracyCallback`) and from the command line (`python -m lightning_sft.evaluate`).

    data = load_task("arc_challenge", "data/benchmarks/arc_challenge.jsonl")
    evaluate(model, tokenizer, data)   # {"acc": ..., "acc_norm": ..., "n": 300}
"""

from lightning_sft.evaluation.runner import TaskData, evaluate, load_task
from lightning_sft.evaluation.tasks import TASKS, get_task

__all__ = ["TASKS", "TaskData", "evaluate", "get_task", "load_task"]
