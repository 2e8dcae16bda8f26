"""Benchmark adapters: each turns one row of a public benchmark into `{"prompt": str, "response": str}`.

Rows are read through `lightning_sft.data.benchmarks` (the one description of each benchmark's fields, shared with
the evaluation tasks). Name an adapter in a config (`adapter: gsm8k`) or pass it to
`lightning_sft.data.tokenize_rows(adapter=...)`; the result is then read by the prompt/response format
(prompt tokens unsupervised, response supervised). Multiple-choice tasks share one layout: the question, one
lettered option per line, and the response `Answer: X`. Options are lettered by position (A, B, C, ...),
whatever labels the dataset uses.

Pointing each adapter at the full dataset on the Hugging Face Hub (a `train` or `val` dict is passed to
`datasets.load_dataset` as keyword arguments):

    gsm8k                 train: {path: openai/gsm8k, name: main, split: train}
    math                  train: {path: EleutherAI/hendrycks_math, name: algebra, split: train}
                          (one config per subject; hendrycks/competition_math has the same fields)
    arc                   train: {path: allenai/ai2_arc, name: ARC-Challenge, split: train}
    hellaswag             train: {path: Rowan/hellaswag, split: train}
    winogrande            train: {path: allenai/winogrande, name: winogrande_xl, split: train}
    mmlu                  train: {path: cais/mmlu, name: all, split: auxiliary_train}
    codesearchnet_python  train: {path: code_search_net, name: python, split: train}

each with `adapter: <name>` beside it. Local files in the same layouts work too (`train: data/arc.jsonl`).
"""

from collections.abc import Callable
from string import ascii_uppercase

from lightning_sft.data.benchmarks import BENCHMARKS, Described, MultipleChoice, Worked


def _prompt_response(record: MultipleChoice | Worked | Described, instruction: str = "") -> dict:
    if isinstance(record, Worked):
        return {"prompt": record.question + "\n", "response": record.solution}
    if isinstance(record, Described):
        return {"prompt": f"Write a Python function for this description:\n{record.docstring}\n",
                "response": record.code}
    lines = [record.question + instruction] + [
        f"{ascii_uppercase[index]}. {choice}" for index, choice in enumerate(record.choices)]
    return {"prompt": "\n".join(lines) + "\n", "response": f"Answer: {ascii_uppercase[record.answer]}"}


# The line after the question, where the row alone does not say what is asked.
INSTRUCTIONS = {
    "hellaswag": "\nWhich ending is the most likely continuation?",
    "winogrande": "\nWhich option best fills the blank (_)?",
}


def _adapter(benchmark: str) -> Callable[[dict], dict]:
    read = BENCHMARKS[benchmark]

    def adapt(row: dict) -> dict:
        return _prompt_response(read(row), INSTRUCTIONS.get(benchmark, ""))

    adapt.__name__ = adapt.__qualname__ = benchmark
    adapt.__doc__ = f"{benchmark} row (see lightning_sft.data.benchmarks.{benchmark}) -> prompt/response."
    return adapt


ADAPTERS: dict[str, Callable[[dict], dict]] = {name: _adapter(name) for name in BENCHMARKS}
