"""Evaluating a model on a task: rows read and rendered (`tasks`), batched through the model (`scoring`),
per-example metrics accumulated with torchmetrics and, under torch.distributed, gathered over ranks.
"""

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.progress import Progress
from torchmetrics import MeanMetric, SumMetric
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightning_sft.data import read_rows
from lightning_sft.evaluation.scoring import (
    continuation_loglikelihoods, encode_pair, encode_prompt, greedy_generate, rank_and_world, shard)
from lightning_sft.evaluation.tasks import ChoiceRequest, GenerationRequest, Request, Task, get_task
from lightning_sft.models import left_as_found, pad_token_id


@dataclass
class TaskData:
    """A task with its examples rendered: `requests` in file order, read from `source`."""

    task: Task
    requests: list[Request]
    source: str


def _records(task: Task, source: str | Path | dict) -> list[tuple[str, object]]:
    """(where, record) for every row of `source`, where = the row's place in its file ("FILE:LINE")."""
    rows = read_rows(source)
    if len(rows) == 0:
        raise ValueError(f"task {task.name!r}: {source} has no rows; give it one example per row")
    records = []
    for where, row in zip(rows.places, rows):
        try:
            records.append((where, task.read(row)))
        except (ValueError, TypeError, KeyError) as error:
            raise ValueError(f"{where}: task {task.name!r}: {error}") from None
    return records


def load_task(name: str, source: str | Path | dict, *, fewshot: str | Path | dict | None = None,
              num_fewshot: int = 0, max_examples: int | None = None) -> TaskData:
    """Task `name` (a key of `tasks.TASKS`) on the rows of `source` (a file, or `datasets.load_dataset`
    arguments with a `split`), each rendered with `num_fewshot` solved rows of `fewshot` (a file or a named
    split; see `tasks` for which rows). `max_examples` keeps the first rows."""
    task = get_task(name)
    if isinstance(num_fewshot, bool) or not isinstance(num_fewshot, int) or num_fewshot < 0:
        raise ValueError(f"num_fewshot={num_fewshot!r}; pass an integer >= 0")
    if num_fewshot and fewshot is None:
        raise ValueError(f"task {name!r}: num_fewshot={num_fewshot} needs a few-shot source (fewshot=FILE or split)")
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples={max_examples}; pass a positive integer or None for every row")
    records = _records(task, source)[:max_examples]
    pool = [record for _, record in _records(task, fewshot)] if num_fewshot else []
    requests = []
    for where, record in records:
        key = task.fewshot_key(record)
        shots = [shot for shot in pool if shot != record and task.fewshot_key(shot) == key][:num_fewshot]
        if len(shots) < num_fewshot:
            raise ValueError(f"{where}: task {name!r}: {fewshot} has {len(shots)} few-shot rows for this row"
                             f" (key {key!r}), fewer than num_fewshot={num_fewshot}")
        try:
            requests.append(task.request(record, shots))
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
    return TaskData(task, requests, str(source))


@contextmanager
def _evaluating(model: PreTrainedModel) -> Iterator[None]:
    """Eval mode and no autograd; afterwards (also on error) every module's training flag and the CPU and CUDA
    RNG states are as they were."""
    with left_as_found(model), torch.no_grad():
        model.eval()
        yield


def _choice_results(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch: list[ChoiceRequest],
                    metrics: tuple[str, ...]) -> list[dict[str, float]]:
    pairs = [encode_pair(tokenizer, *pair) for request in batch for pair in request.pairs]
    loglikelihoods = continuation_loglikelihoods(model, pairs, pad_token_id(tokenizer)).double()
    results, start = [], 0
    for request in batch:
        scores = loglikelihoods[start:start + len(request.pairs)]
        start += len(request.pairs)
        lengths = torch.tensor(request.lengths, dtype=torch.float64)
        values = {"acc": float(scores.argmax() == request.answer),
                  "acc_norm": float((scores / lengths).argmax() == request.answer)}
        results.append({metric: values[metric] for metric in metrics})
    return results


def _generation_results(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task,
                        batch: list[GenerationRequest], max_new_tokens: int) -> list[dict[str, float]]:
    stop = batch[0].stop

    def text_of(tokens: list[int]) -> str:
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        return min((text[:text.index(word)] for word in stop if word in text), key=len, default=text)

    def stopped(tokens: list[int]) -> bool:
        return bool(stop) and any(word in tokenizer.decode(tokens, skip_special_tokens=True) for word in stop)

    prompts = [encode_prompt(tokenizer, request.prompt, request.training_format) for request in batch]
    generations = greedy_generate(model, prompts, max_new_tokens=max_new_tokens,
                                  pad_token_id=pad_token_id(tokenizer), eos_token_id=tokenizer.eos_token_id,
                                  stopped=stopped)
    return [task.score(text_of(generation.tokens), generation.stopped, request)
            for generation, request in zip(generations, batch)]


def mean_stderr(mean: float, mean_of_squares: float, n: int) -> float | None:
    """lm-eval's `mean_stderr` (sample standard deviation, ddof=1, over sqrt(n)) from the mean of the values and
    of their squares; None for fewer than two values, where it is undefined."""
    if n < 2:
        return None
    variance = max(mean_of_squares - mean * mean, 0.0) * n / (n - 1)
    return math.sqrt(variance / n)


def evaluate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: TaskData, *, batch_size: int = 8,
             max_new_tokens: int | None = None, progress: bool = False) -> dict[str, float | int | None]:
    """{metric: mean over the examples, f"{metric}_stderr": its standard error (`mean_stderr`), ...,
    "n": examples} for `data` (see `tasks` for the metrics).

    `batch_size`: examples per forward pass (a multiple-choice example puts one sequence per choice in it).
    `max_new_tokens`: the generation bound, default the task's. Under torch.distributed every rank passes the
    same `data`; batch i runs on rank i % world, and every rank returns the result over all examples. The model
    is left as found (training flags, RNG states).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; pass a positive integer")
    task = data.task
    limit = max_new_tokens if max_new_tokens is not None else getattr(task, "max_new_tokens", None)
    if limit is not None and limit < 1:
        raise ValueError(f"max_new_tokens={limit}; pass a positive integer")
    batches = [data.requests[start:start + batch_size] for start in range(0, len(data.requests), batch_size)]
    device = model.device
    means = {metric: MeanMetric().to(device).set_dtype(torch.float64) for metric in task.metrics}
    squares = {metric: MeanMetric().to(device).set_dtype(torch.float64) for metric in task.metrics}
    count = SumMetric().to(device).set_dtype(torch.float64)
    rank, world = rank_and_world()
    with _evaluating(model), Progress(disable=not progress or rank != 0) as bar:
        progress_task = bar.add_task(f"Evaluating {task.name}", total=len(range(rank, len(batches), world)) or 1)
        for index in shard(len(batches)):
            batch = batches[0 if index is None else index]
            if isinstance(batch[0], ChoiceRequest):
                results = _choice_results(model, tokenizer, batch, task.metrics)
            else:
                results = _generation_results(model, tokenizer, task, batch, limit)
            if index is None:  # a pass run only to keep ranks in step
                continue
            for result in results:
                for metric, value in result.items():
                    means[metric].update(value)
                    squares[metric].update(value * value)
            count.update(len(results))
            bar.advance(progress_task)
    n, results = int(count.compute()), {}
    for metric, mean in means.items():
        results[metric] = float(mean.compute())
        results[f"{metric}_stderr"] = mean_stderr(results[metric], float(squares[metric].compute()), n)
    return {**results, "n": n}
