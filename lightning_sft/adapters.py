"""Benchmark adapters: each turns one row of a public benchmark into `{"prompt": str, "response": str}`.

Name one in a config (`adapter: gsm8k`) or pass it to `lightning_sft.data.tokenize_rows(adapter=...)`;
the result is then read by the prompt/response format (prompt tokens unsupervised, response supervised).
Multiple-choice tasks share one layout: the question, one lettered option per line, and the response
`Answer: X`. Options are lettered by position (A, B, C, ...), whatever labels the dataset uses.

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

from collections.abc import Callable, Sequence
from string import ascii_uppercase


def _field(row: dict, name: str, adapter: str):
    """`row[name]`, or a ValueError naming the adapter, the field and the keys the row has."""
    value = row.get(name)
    if value is None:
        raise ValueError(
            f"adapter {adapter!r}: the row has no field {name!r} (its keys: {sorted(row)}); "
            f"point the adapter at data in the layout its docstring names, or use another adapter"
        )
    return value


def _multiple_choice(question: str, options: Sequence[str], answer_index: int, adapter: str) -> dict:
    """Question, lettered options one per line, and the response `Answer: <letter>`."""
    if not 0 <= answer_index < len(options):
        raise ValueError(
            f"adapter {adapter!r}: answer index {answer_index} is outside the {len(options)} options {list(options)}"
        )
    lines = [question] + [f"{ascii_uppercase[i]}. {option}" for i, option in enumerate(options)]
    return {"prompt": "\n".join(lines) + "\n", "response": f"Answer: {ascii_uppercase[answer_index]}"}


def gsm8k(row: dict) -> dict:
    """GSM8K: `question` -> `answer` (the worked solution with its `<<...>>` annotations and `#### N` line)."""
    return {"prompt": _field(row, "question", "gsm8k") + "\n", "response": _field(row, "answer", "gsm8k")}


def math(row: dict) -> dict:
    """MATH (Hendrycks): `problem` -> `solution` (final answer in `\\boxed{}`)."""
    return {"prompt": _field(row, "problem", "math") + "\n", "response": _field(row, "solution", "math")}


def arc(row: dict) -> dict:
    """ARC in the HF `allenai/ai2_arc` layout: `question`, `choices` {`text`, `label`}, `answerKey`.

    Labels may be letters or "1".."4" and there may be 3 to 5 options: the answer is found by its label's
    position, and options are re-lettered A, B, C, ... in that order.
    """
    choices = _field(row, "choices", "arc")
    texts, labels = _field(choices, "text", "arc"), _field(choices, "label", "arc")
    answer_key = str(_field(row, "answerKey", "arc"))
    if answer_key not in labels:
        raise ValueError(f"adapter 'arc': answerKey {answer_key!r} is not one of the choice labels {labels}")
    return _multiple_choice(_field(row, "question", "arc"), texts, labels.index(answer_key), "arc")


def hellaswag(row: dict) -> dict:
    """HellaSwag in the HF `Rowan/hellaswag` layout: `activity_label`, `ctx`, `endings` (4), `label` ("0".."3")."""
    context = _field(row, "ctx", "hellaswag")
    if row.get("activity_label"):
        context = f"{row['activity_label']}: {context}"
    question = f"{context}\nWhich ending is the most likely continuation?"
    return _multiple_choice(
        question, _field(row, "endings", "hellaswag"), int(_field(row, "label", "hellaswag")), "hellaswag"
    )


def winogrande(row: dict) -> dict:
    """WinoGrande: `sentence` with a `_` blank, `option1`, `option2`, `answer` ("1" or "2")."""
    question = f"{_field(row, 'sentence', 'winogrande')}\nWhich option best fills the blank (_)?"
    options = [_field(row, "option1", "winogrande"), _field(row, "option2", "winogrande")]
    return _multiple_choice(question, options, int(_field(row, "answer", "winogrande")) - 1, "winogrande")


def mmlu(row: dict) -> dict:
    """MMLU: `question`, `A`..`D`, `answer` (a letter: the original CSV layout), or the HF `cais/mmlu` layout
    `question`, `choices` (list), `answer` (an index 0-3)."""
    question, answer = _field(row, "question", "mmlu"), _field(row, "answer", "mmlu")
    if "choices" in row:
        return _multiple_choice(question, _field(row, "choices", "mmlu"), int(answer), "mmlu")
    options = [_field(row, letter, "mmlu") for letter in "ABCD"]
    if answer not in ("A", "B", "C", "D"):
        raise ValueError(f"adapter 'mmlu': answer {answer!r} is not a letter A-D")
    return _multiple_choice(question, options, "ABCD".index(answer), "mmlu")


def codesearchnet_python(row: dict) -> dict:
    """CodeSearchNet (Python): docstring -> code. HF `code_search_net` layout (`func_documentation_string`,
    `func_code_string`) or the original jsonl layout (`docstring`, `code`)."""
    layout = ("func_documentation_string", "func_code_string") if "func_code_string" in row else ("docstring", "code")
    docstring, code = (_field(row, name, "codesearchnet_python") for name in layout)
    return {"prompt": f"Write a Python function for this description:\n{docstring}\n", "response": code}


ADAPTERS: dict[str, Callable[[dict], dict]] = {
    "gsm8k": gsm8k,
    "math": math,
    "arc": arc,
    "hellaswag": hellaswag,
    "winogrande": winogrande,
    "mmlu": mmlu,
    "codesearchnet_python": codesearchnet_python,
}
