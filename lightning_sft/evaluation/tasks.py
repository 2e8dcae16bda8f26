"""Task definitions as lm-evaluation-harness defines them (v0.4.12, EleutherAI/lm-evaluation-harness @ 4e7e0d47):
rows -> prompts -> per-example metrics. Pure string work: no torch, no model.

Multiple-choice tasks are scored by log-likelihood: each choice is a (context, continuation) pair, `acc` picks the
highest sum of continuation token log-probabilities, `acc_norm` the highest sum divided by the choice's length in
characters (lm-eval's `completion_len`; equal to bytes for ASCII text). The continuation is the target delimiter
" " + the choice; lm-eval's tokenisation (context and context + continuation encoded separately, trailing spaces
of the context moved to the continuation) happens in `lightning_sft.evaluation.scoring`.

    arc_challenge  "Question: {question}\nAnswer:" + " {choice}"                          acc, acc_norm
    hellaswag      "{activity_label}: {ctx_a} {Ctx_b}" (cleaned) + " {ending}"             acc, acc_norm
    mmlu           "The following are multiple choice questions (with answers) about {subject}.\n\n"
                   "{question}\nA. ..\nB. ..\nC. ..\nD. ..\nAnswer:" + " A" .. " D"        acc
    winogrande     partial scoring: context = the sentence up to the blank + an option,
                   continuation = " " + the rest of the sentence after the blank            acc
    gsm8k          "Question: {question}\nAnswer:", greedy until "Question:", "</s>", "<|im_end|>" or eos;
                   exact_match_strict: the number after "#### ", exact_match_flexible: the last number
                   (lm-eval's strict-match and flexible-extract filters), compared with the reference's
                   number after "#### " with "," "$" and a final "." removed, case-insensitively
    math           lm-eval's `hendrycks_math` group (its default MATH task; `minerva_math` is the 4-shot Minerva
                   variant): "Problem: {problem}\nAnswer:", greedy until "Problem:" or eos, 256 new tokens;
                   exact_match: the text between the first and last "$" (else all of it) equals the last
                   \boxed{} of the solution after lm-eval's normalisation (`math_answers`)
    demo tasks     (addition, reversal, sorting, counting, reversed_sum; rows {"prompt", "response"}): the
                   training format's prompt, greedy until eos; exact_match: the text equals the response

Few-shot: `num_fewshot` solved rows, rendered as lm-eval renders them ("{context} {answer}\n\n" each; for math the
answer is the boxed answer, lm-eval's doc_to_target, not the worked solution) before the example; they are the
first rows of the few-shot source (lm-eval's `first_n` sampler, which MMLU uses; for MMLU the first rows of the
same subject), skipping a row equal to the evaluated one.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass

from lightning_sft.data import benchmarks
from lightning_sft.data.benchmarks import MultipleChoice, Worked, text_field
from lightning_sft.demo import TASKS as DEMO_TASKS
from lightning_sft.evaluation.math_answers import equivalent, generated_answer, reference_answer


@dataclass(frozen=True)
class ChoiceRequest:
    """One multiple-choice example: `pairs[i]` = (context, continuation) of choice i; `answer` its index;
    `lengths[i]` the characters of choice i (the `acc_norm` divisor)."""

    pairs: list[tuple[str, str]]
    answer: int
    lengths: list[int]


@dataclass(frozen=True)
class GenerationRequest:
    """One generative example: greedy decoding from `prompt` until a `stop` string (or eos).

    `training_format`: encode the prompt as SFT training does (bos + prompt, `data.PromptResponse`) rather than
    with the tokenizer's defaults (lm-eval's `tok_encode`).
    """

    prompt: str
    target: str
    stop: tuple[str, ...]
    training_format: bool = False


Request = ChoiceRequest | GenerationRequest


class Task:
    """A named evaluation task: how to read a row, render it (with few-shot rows) and score the model's output.

    Subclasses set `metrics` (the names `score` returns, in table order).
    """

    metrics: tuple[str, ...] = ()

    def __init__(self, name: str, read: Callable[[dict], object]) -> None:
        self.name = name
        self.read = read

    def request(self, record, shots: list) -> Request:
        raise NotImplementedError

    def fewshot_key(self, record) -> object:
        """Few-shot rows are drawn from those with the same key (MMLU: the subject)."""
        return None


class MultipleChoiceTask(Task):
    """Context + " " + choice for every choice; `query` renders the question, `options` the choice texts."""

    def __init__(self, name: str, read: Callable[[dict], MultipleChoice], metrics: tuple[str, ...],
                 query: Callable[[MultipleChoice], str], options: Callable[[MultipleChoice], list[str]],
                 description: Callable[[MultipleChoice], str] = lambda record: "") -> None:
        super().__init__(name, read)
        self.metrics, self.query, self.options, self.description = metrics, query, options, description

    def request(self, record: MultipleChoice, shots: list[MultipleChoice]) -> ChoiceRequest:
        prefix = self.description(record) + "".join(
            f"{self.query(shot)} {self.options(shot)[shot.answer]}\n\n" for shot in shots)
        context = prefix + self.query(record)
        options = self.options(record)
        return ChoiceRequest([(context, f" {option}") for option in options], record.answer,
                             [len(option) for option in options])

    def fewshot_key(self, record: MultipleChoice) -> object:
        return record.subject


class PartialScoringTask(Task):
    """WinoGrande: each option fills the blank in the context; the shared rest of the sentence is scored."""

    metrics = ("acc",)

    @staticmethod
    def _split(record: MultipleChoice) -> tuple[list[str], str]:
        blank = record.question.index("_")
        contexts = [record.question[:blank] + option for option in record.choices]
        return contexts, record.question[blank + 1:].strip()

    def request(self, record: MultipleChoice, shots: list[MultipleChoice]) -> ChoiceRequest:
        prefix = ""
        for shot in shots:
            contexts, rest = self._split(shot)
            prefix += f"{contexts[shot.answer]} {rest}\n\n"
        contexts, rest = self._split(record)
        return ChoiceRequest([(prefix + context, f" {rest}") for context in contexts], record.answer,
                             [len(context) for context in contexts])


STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
IGNORED = (",", "\\$", "(?s).*#### ", "\\.$")  # lm-eval's gsm8k exact_match regexes_to_ignore, in its order
INVALID = "[invalid]"


def strict_answer(text: str) -> str:
    """lm-eval's gsm8k "strict-match" filter: the first number after "#### ", else "[invalid]"."""
    match = STRICT.findall(text)
    return match[0].strip() if match else INVALID


def flexible_answer(text: str) -> str:
    """lm-eval's gsm8k "flexible-extract" filter: the last number-like run (2+ of `$0-9.,`, or digits)."""
    matches = FLEXIBLE.findall(text)
    if not matches:
        return INVALID
    groups = [group for group in matches[-1] if group]
    return groups[0].strip() if groups else INVALID


def normalized(text: str) -> str:
    """lm-eval's gsm8k exact_match normalisation: the `IGNORED` regexes removed, lower case."""
    for pattern in IGNORED:
        text = re.sub(pattern, "", text)
    return text.lower()


class GSM8KTask(Task):
    """GSM8K as lm-eval's `gsm8k` task (zero-shot here by default; lm-eval's default is 5-shot)."""

    metrics = ("exact_match_strict", "exact_match_flexible")
    stop = ("Question:", "</s>", "<|im_end|>")
    max_new_tokens = 256  # lm-eval's default max_gen_toks

    def request(self, record: Worked, shots: list[Worked]) -> GenerationRequest:
        prefix = "".join(f"Question: {shot.question}\nAnswer: {shot.solution}\n\n" for shot in shots)
        return GenerationRequest(f"{prefix}Question: {record.question}\nAnswer:", record.solution, self.stop)

    def score(self, text: str, stopped: bool, request: GenerationRequest) -> dict[str, float]:
        """lm-eval scores the text whether or not generation stopped before `max_new_tokens`."""
        reference = normalized(request.target)
        return {"exact_match_strict": float(normalized(strict_answer(text)) == reference),
                "exact_match_flexible": float(normalized(flexible_answer(text)) == reference)}


class MATHTask(Task):
    """MATH as lm-eval's `hendrycks_math` tasks (`hendrycks_math_algebra.yaml`: zero-shot by default, `until`
    "Problem:", lm-eval's default max_gen_toks; `utils.process_results` scores)."""

    metrics = ("exact_match",)
    stop = ("Problem:",)
    max_new_tokens = 256  # lm-eval's default max_gen_toks

    def request(self, record: Worked, shots: list[Worked]) -> GenerationRequest:
        prefix = "".join(f"Problem: {shot.question}\nAnswer: {reference_answer(shot.solution)}\n\n" for shot in shots)
        return GenerationRequest(f"{prefix}Problem: {record.question}\nAnswer:", reference_answer(record.solution),
                                 self.stop)

    def score(self, text: str, stopped: bool, request: GenerationRequest) -> dict[str, float]:
        """lm-eval scores the text whether or not generation stopped before `max_new_tokens`."""
        return {"exact_match": float(equivalent(generated_answer(text), request.target))}


def _math(row: dict) -> Worked:
    """A MATH row whose solution has the boxed answer lm-eval's `process_docs` takes (checked as the row is read)."""
    record = benchmarks.math(row)
    reference_answer(record.solution)
    return record


class ExactStringTask(Task):
    """Prompt/response rows (the demo's tasks): right when the generation stops (eos) and equals the response."""

    metrics = ("exact_match",)
    max_new_tokens = 32

    def request(self, record: dict, shots: list) -> GenerationRequest:
        if shots:
            raise ValueError(f"task {self.name!r} is zero-shot only (its rows are trained without examples); "
                             "set num_fewshot to 0")
        return GenerationRequest(record["prompt"], record["response"], (), training_format=True)

    def score(self, text: str, stopped: bool, request: GenerationRequest) -> dict[str, float]:
        """A generation cut off by `max_new_tokens` is wrong whatever its text."""
        return {"exact_match": float(stopped and text == request.target)}


def _prompt_response(task: str) -> Callable[[dict], dict]:
    def read(row: dict) -> dict:
        return {"prompt": text_field(row, "prompt", task), "response": text_field(row, "response", task)}
    return read


def _mmlu_description(record: MultipleChoice) -> str:
    if record.subject is None:
        raise ValueError("mmlu: the row has no field 'subject' (lm-eval's prompt names it); add it, e.g."
                         " \"subject\": \"college_mathematics\"")
    return f"The following are multiple choice questions (with answers) about {record.subject.replace('_', ' ')}.\n\n"


def _mmlu_query(record: MultipleChoice) -> str:
    if len(record.choices) != 4:
        raise ValueError(f"mmlu: {len(record.choices)} choices {record.choices}; MMLU rows have 4")
    options = "".join(f"\n{letter}. {choice}" for letter, choice in zip("ABCD", record.choices))
    return f"{record.question.strip()}{options}\nAnswer:"


TASKS: dict[str, Task] = {
    "arc_challenge": MultipleChoiceTask(
        "arc_challenge", benchmarks.arc, ("acc", "acc_norm"),
        query=lambda record: f"Question: {record.question}\nAnswer:", options=lambda record: record.choices),
    "hellaswag": MultipleChoiceTask(
        "hellaswag", benchmarks.hellaswag, ("acc", "acc_norm"),
        query=lambda record: record.question, options=lambda record: record.choices),
    "mmlu": MultipleChoiceTask(
        "mmlu", benchmarks.mmlu, ("acc",), query=_mmlu_query, options=lambda record: list("ABCD"),
        description=_mmlu_description),
    "winogrande": PartialScoringTask("winogrande", benchmarks.winogrande),
    "gsm8k": GSM8KTask("gsm8k", benchmarks.gsm8k),
    "math": MATHTask("math", _math),
    **{name: ExactStringTask(name, _prompt_response(name)) for name in DEMO_TASKS},
}


def get_task(name: str) -> Task:
    """The task called `name`, or a ValueError listing the known ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]
