"""One description of each public benchmark's row layout: which fields hold the question, the options and the
answer. The SFT adapters (`lightning_sft.data.adapters`) and the evaluation tasks (`lightning_sft.evaluation`) both
read rows through these functions, so a field name is written once.

Each reader takes one raw row and returns a `MultipleChoice`, a `Worked` or a `Described` record, or raises a
ValueError naming the benchmark and the field: missing (with the keys the row has), text that is not a string
(a JSON number is refused rather than read as Python prints it), or an answer index that is not an integer
(`1.7`, `true`, `"2.9"` are refused rather than truncated).
"""

import re
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class MultipleChoice:
    """A multiple-choice row: `question`, `choices` (text, in the dataset's order), `answer` (index into choices).

    `subject`: the MMLU subject ("college_mathematics"), else None. For WinoGrande, `question` is the sentence
    with its `_` blank and `choices` are the two options.
    """

    question: str
    choices: list[str]
    answer: int
    subject: str | None = None


@dataclass(frozen=True)
class Worked:
    """A problem with its worked solution: `question` and `solution` (GSM8K: ends with `#### N`)."""

    question: str
    solution: str


@dataclass(frozen=True)
class Described:
    """CodeSearchNet: a docstring and the code it describes."""

    docstring: str
    code: str


Record = MultipleChoice | Worked | Described


def field(row: dict, name: str, benchmark: str):
    """`row[name]`, or a ValueError naming the benchmark, the field and the keys the row has."""
    value = row.get(name)
    if value is None:
        raise ValueError(
            f"{benchmark}: the row has no field {name!r} (its keys: {sorted(row)}); give rows in the layout"
            f" lightning_sft.data.benchmarks.{benchmark} reads"
        )
    return value


def text_field(row: dict, name: str, benchmark: str) -> str:
    """`field(row, name, benchmark)`, which must be a string."""
    value = field(row, name, benchmark)
    if not isinstance(value, str):
        raise ValueError(
            f"{benchmark}: field {name!r} holds a {type(value).__name__} ({value!r:.60}), not text; write it as a"
            " JSON string (in quotes), exactly as it should be read"
        )
    return value


def text_list(row: dict, name: str, benchmark: str) -> list[str]:
    """`field(row, name, benchmark)`, which must be a list of strings."""
    values = field(row, name, benchmark)
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise ValueError(f"{benchmark}: field {name!r} holds {values!r:.80}, not a list of strings; fix the row")
    return values


def index_field(row: dict, name: str, benchmark: str) -> int:
    """`field(row, name, benchmark)` as an integer: an int, or a string of decimal digits ("2", as HF datasets
    store some labels; a leading "-" allowed). Anything else (`1.7`, `true`, `"2.9"`) is refused."""
    value = field(row, name, benchmark)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch("-?[0-9]+", value):
        return int(value)
    raise ValueError(
        f"{benchmark}: field {name!r} holds {value!r:.40}, not an integer answer index; write a whole number"
    )


def _checked(question: str, choices: list[str], answer: int, benchmark: str, subject: str | None = None):
    if not 0 <= answer < len(choices):
        raise ValueError(
            f"{benchmark}: answer index {answer} is outside the {len(choices)} choices {list(choices)}; fix the"
            " row's answer field"
        )
    return MultipleChoice(question, list(choices), answer, subject)


def gsm8k(row: dict) -> Worked:
    """GSM8K: `question`, `answer` (the worked solution with `<<a*b=c>>` annotations and a final `#### N`)."""
    return Worked(text_field(row, "question", "gsm8k"), text_field(row, "answer", "gsm8k"))


def math(row: dict) -> Worked:
    """MATH (Hendrycks): `problem`, `solution` (final answer in `\\boxed{}`)."""
    return Worked(text_field(row, "problem", "math"), text_field(row, "solution", "math"))


def arc(row: dict) -> MultipleChoice:
    """ARC in the HF `allenai/ai2_arc` layout: `question`, `choices` {`text`, `label`}, `answerKey`.

    Labels may be letters or "1".."4", with 3 to 5 options: the answer is the position of its label.
    """
    choices = field(row, "choices", "arc")
    options, labels = text_list(choices, "text", "arc"), text_list(choices, "label", "arc")
    answer_key = text_field(row, "answerKey", "arc")
    if answer_key not in labels:
        raise ValueError(f"arc: answerKey {answer_key!r} is not one of the choice labels {labels}; fix the row")
    return _checked(text_field(row, "question", "arc"), options, labels.index(answer_key), "arc")


def _hellaswag_clean(text: str) -> str:
    """lm-evaluation-harness's HellaSwag preprocessing: WikiHow `[title]`/`[step]` artifacts removed."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub("\\[.*?\\]", "", text).replace("  ", " ")


def hellaswag(row: dict) -> MultipleChoice:
    """HellaSwag in the HF `Rowan/hellaswag` layout: `activity_label`, `ctx_a`, `ctx_b`, `endings` (4), `label`.

    The question is lm-evaluation-harness's: "<activity_label>: <ctx_a> <Ctx_b>" and the endings, cleaned.
    """
    context = f"{text_field(row, 'ctx_a', 'hellaswag')} {text_field(row, 'ctx_b', 'hellaswag').capitalize()}"
    question = _hellaswag_clean(f"{text_field(row, 'activity_label', 'hellaswag')}: {context}")
    endings = [_hellaswag_clean(ending) for ending in text_list(row, "endings", "hellaswag")]
    return _checked(question, endings, index_field(row, "label", "hellaswag"), "hellaswag")


def winogrande(row: dict) -> MultipleChoice:
    """WinoGrande: `sentence` with one `_` blank, `option1`, `option2`, `answer` ("1" or "2")."""
    sentence = text_field(row, "sentence", "winogrande")
    if "_" not in sentence:
        raise ValueError(f"winogrande: the sentence {sentence!r} has no `_` blank; fix the row")
    options = [text_field(row, "option1", "winogrande"), text_field(row, "option2", "winogrande")]
    return _checked(sentence, options, index_field(row, "answer", "winogrande") - 1, "winogrande")


def mmlu(row: dict) -> MultipleChoice:
    """MMLU: `question`, `A`..`D`, `answer` (a letter: the original CSV layout), or the HF `cais/mmlu` layout
    `question`, `choices` (list), `answer` (an index 0-3); `subject` where the row has it."""
    question = text_field(row, "question", "mmlu")
    subject = None if row.get("subject") is None else text_field(row, "subject", "mmlu")
    if "choices" in row:
        return _checked(question, text_list(row, "choices", "mmlu"), index_field(row, "answer", "mmlu"), "mmlu",
                        subject)
    answer = field(row, "answer", "mmlu")
    options = [text_field(row, letter, "mmlu") for letter in "ABCD"]
    if answer not in ("A", "B", "C", "D"):
        raise ValueError(f"mmlu: answer {answer!r} is not a letter A-D; fix the row")
    return _checked(question, options, "ABCD".index(answer), "mmlu", subject)


def codesearchnet_python(row: dict) -> Described:
    """CodeSearchNet (Python): HF `code_search_net` layout (`func_documentation_string`, `func_code_string`)
    or the original jsonl layout (`docstring`, `code`)."""
    layout = ("func_documentation_string", "func_code_string") if "func_code_string" in row else ("docstring", "code")
    docstring, code = (text_field(row, name, "codesearchnet_python") for name in layout)
    return Described(docstring, code)


BENCHMARKS: dict[str, Callable[[dict], Record]] = {
    "gsm8k": gsm8k,
    "math": math,
    "arc": arc,
    "hellaswag": hellaswag,
    "winogrande": winogrande,
    "mmlu": mmlu,
    "codesearchnet_python": codesearchnet_python,
}
