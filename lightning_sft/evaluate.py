r"""Evaluate a saved model on tasks and print a markdown table (lm-evaluation-harness v0.4.12 definitions).

    python -m lightning_sft.evaluate --model FOLDER|FILE.gguf \
        --task arc_challenge=data/benchmarks/arc_challenge.jsonl --task gsm8k=data/benchmarks/gsm8k.jsonl \
        [--num-fewshot 5 --fewshot mmlu=data/mmlu_dev.jsonl] [--out results.json]

`--out` writes {task: {metric: value, metric_stderr: its standard error (lm-eval's, null for one example), ...,
"n": examples}} as JSON. Tasks: see `lightning_sft.evaluation.tasks`.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from lightning_sft.command_line import check_output_file, non_negative_int, positive_int
from lightning_sft.evaluation import evaluate, get_task, load_task
from lightning_sft.models import DTYPES, load_model, load_tokenizer
from lightning_sft.storage import atomic_write_text


def _assignments(values: list[str], option: str) -> dict[str, str]:
    """["name=FILE", ...] -> {name: FILE}; a known task name each, no name twice."""
    parsed: dict[str, str] = {}
    for value in values:
        name, separator, path = value.partition("=")
        if not separator or not path:
            raise ValueError(f"{option} {value!r}: write TASK=FILE, e.g. {option} arc_challenge=arc.jsonl")
        get_task(name)
        if name in parsed:
            raise ValueError(f"{option} names {name!r} twice")
        parsed[name] = path
    return parsed


def markdown_table(results: dict[str, dict[str, float | int | None]]) -> str:
    """One row per task and metric: | task | metric | value | stderr | n | (stderr "n/a" for one example)."""
    lines = ["| task | metric | value | stderr | n |", "|---|---|---|---|---|"]
    for task, metrics in results.items():
        for metric, value in metrics.items():
            if metric != "n" and not metric.endswith("_stderr"):
                stderr = metrics[f"{metric}_stderr"]
                lines.append(f"| {task} | {metric} | {value:.4f} | {'n/a' if stderr is None else f'{stderr:.4f}'}"
                             f" | {metrics['n']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lightning_sft.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a folder written by save_pretrained, a .gguf file or a hub id")
    parser.add_argument("--task", action="append", required=True, metavar="TASK=FILE", help="task and its rows")
    parser.add_argument("--fewshot", action="append", default=[], metavar="TASK=FILE",
                        help="rows the few-shot examples of TASK are drawn from (with --num-fewshot)")
    parser.add_argument("--num-fewshot", type=non_negative_int, default=0,
                        help="solved examples before each one (default 0)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="examples per forward pass")
    parser.add_argument("--max-examples", type=positive_int, default=None, help="the first N rows of each task")
    parser.add_argument("--max-new-tokens", type=positive_int, default=None,
                        help="generation bound (default: the task's)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument("--out", type=Path, default=None, help="results.json to write")
    args = parser.parse_args(argv)
    try:
        if args.out is not None:
            check_output_file(args.out)
        tasks = _assignments(args.task, "--task")
        fewshot = _assignments(args.fewshot, "--fewshot")
        if unknown := sorted(set(fewshot) - set(tasks)):
            raise ValueError(f"--fewshot names tasks {unknown} that no --task names")
        if args.num_fewshot and (missing := sorted(set(tasks) - set(fewshot))):
            raise ValueError(f"--num-fewshot {args.num_fewshot}: give --fewshot TASK=FILE for {missing}")
        data = {name: load_task(name, path, fewshot=fewshot.get(name), num_fewshot=args.num_fewshot,
                                max_examples=args.max_examples) for name, path in tasks.items()}
        tokenizer = load_tokenizer(args.model)
        model = load_model(args.model, dtype=args.dtype)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    results = {name: evaluate(model, tokenizer, task_data, batch_size=args.batch_size,
                              max_new_tokens=args.max_new_tokens, progress=True)
               for name, task_data in data.items()}
    print(markdown_table(results))
    if args.out is not None:
        atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
