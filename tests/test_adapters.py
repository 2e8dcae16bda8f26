"""Adapters on the real benchmark slices in data/benchmarks, and on rows in the published HF layouts."""

import json
from pathlib import Path

import pytest

from lightning_sft.data.adapters import ADAPTERS
from lightning_sft.data import tokenize_rows
from lightning_sft.labels import IGNORE_INDEX

DATA = Path(__file__).parents[1] / "data" / "benchmarks"


def read_jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines()]


def options_of(prompt: str, count: int) -> dict[str, str]:
    """The last `count` lines of a multiple-choice prompt, which must be "X. option", as {"X": option}."""
    lines = prompt.splitlines()[-count:]
    assert prompt.endswith("\n") and all(line[1:3] == ". " for line in lines)
    return {line[0]: line[3:] for line in lines}


def test_gsm8k_keeps_the_worked_solution_and_final_line():
    rows = read_jsonl("gsm8k.jsonl")
    for row in rows:
        pair = ADAPTERS["gsm8k"](row)
        assert pair == {"prompt": row["question"] + "\n", "response": row["answer"]}
    first = ADAPTERS["gsm8k"](rows[0])["response"]
    assert "<<16-3-4=9>>" in first and first.splitlines()[-1] == "#### 18"


def test_math_problem_to_solution():
    for row in read_jsonl("math.jsonl"):
        pair = ADAPTERS["math"](row)
        assert pair == {"prompt": row["problem"] + "\n", "response": row["solution"]}
        assert "\\boxed" in pair["response"] or "\\fbox" in pair["response"]


def test_arc_letters_options_by_position_and_answers_with_the_key():
    rows = read_jsonl("arc_challenge.jsonl")
    for row in rows:
        pair = ADAPTERS["arc"](row)
        options = options_of(pair["prompt"], len(row["choices"]["text"]))
        assert list(options.values()) == row["choices"]["text"]
        assert pair["prompt"].startswith(row["question"] + "\n")
        assert pair["response"] == f"Answer: {row['answerKey']}"  # the slice's labels are already A-D
    three = ADAPTERS["arc"](rows[121])  # the slice's one row with 3 options
    assert list(options_of(three["prompt"], 3)) == ["A", "B", "C"]


def test_arc_numeric_labels_and_five_options():
    numeric = {
        "id": "x1", "question": "Which is a mammal?",
        "choices": {"text": ["trout", "whale", "shark", "squid"], "label": ["1", "2", "3", "4"]}, "answerKey": "2",
    }
    pair = ADAPTERS["arc"](numeric)
    assert pair == {"prompt": "Which is a mammal?\nA. trout\nB. whale\nC. shark\nD. squid\n", "response": "Answer: B"}
    five = {"question": "Pick e.", "choices": {"text": list("abcde"), "label": list("ABCDE")}, "answerKey": "E"}
    pair = ADAPTERS["arc"](five)
    assert options_of(pair["prompt"], 5)["E"] == "e" and pair["response"] == "Answer: E"
    with pytest.raises(ValueError, match="answerKey '5'"):
        ADAPTERS["arc"]({**numeric, "answerKey": "5"})


def test_winogrande_answer_one_or_two():
    for row in read_jsonl("winogrande.jsonl"):
        pair = ADAPTERS["winogrande"](row)
        assert pair["prompt"].startswith(row["sentence"] + "\n")
        assert options_of(pair["prompt"], 2) == {"A": row["option1"], "B": row["option2"]}
        assert pair["response"] == {"1": "Answer: A", "2": "Answer: B"}[row["answer"]]


def test_mmlu_slice_layout_and_cais_layout():
    for row in read_jsonl("mmlu.jsonl"):
        pair = ADAPTERS["mmlu"](row)
        assert options_of(pair["prompt"], 4) == {letter: row[letter] for letter in "ABCD"}
        assert pair["response"] == f"Answer: {row['answer']}"
    cais = {"question": "2 + 2 =", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "22"], "answer": 1}
    assert ADAPTERS["mmlu"](cais) == {"prompt": "2 + 2 =\nA. 3\nB. 4\nC. 5\nD. 22\n", "response": "Answer: B"}
    with pytest.raises(ValueError, match="'E' is not a letter A-D"):
        ADAPTERS["mmlu"]({**read_jsonl("mmlu.jsonl")[0], "answer": "E"})


# Rows in the field layout of HF `Rowan/hellaswag` (values modelled on its validation split, shortened).
HELLASWAG_ROWS = [
    {
        "ind": 24, "activity_label": "Roof shingle removal",
        "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
        "ctx": "A man is sitting on a roof. he",
        "endings": [
            "is using wrap to wrap a pair of skis.",
            "is ripping level tiles off.",
            "is holding a rubik's cube.",
            "starts pulling up roofing on a roof.",
        ],
        "source_id": "activitynet~v_-JhWjGDPHMY", "split": "val", "split_type": "indomain", "label": "3",
    },
    {
        "ind": 92, "activity_label": "Clean and jerk",
        "ctx_a": "A lady walks to a barbell. She bends down and grabs the pole.", "ctx_b": "the lady",
        "ctx": "A lady walks to a barbell. She bends down and grabs the pole. the lady",
        "endings": [
            "swings and lands in her arms.",
            "pulls the barbell forward.",
            "pulls a rope attached to the barbell.",
            "stands and lifts the weight over her head.",
        ],
        "source_id": "activitynet~v_-lJS58hyo1c", "split": "val", "split_type": "zeroshot", "label": "3",
    },
]


def test_hellaswag_rows():
    pair = ADAPTERS["hellaswag"](HELLASWAG_ROWS[0])
    assert pair["prompt"].startswith("Roof shingle removal: A man is sitting on a roof. He\n")
    assert options_of(pair["prompt"], 4) == dict(zip("ABCD", HELLASWAG_ROWS[0]["endings"]))
    assert pair["response"] == "Answer: D"
    assert ADAPTERS["hellaswag"]({**HELLASWAG_ROWS[1], "label": "1"})["response"] == "Answer: B"


# A row in the field layout of HF `code_search_net` (python; values shortened); the original jsonl layout below.
SPLIT_CODE = (
    'def split_phylogeny(p, level="s"):\n    """Return the phylogenetic taxonomy of bacteria."""\n'
    "    return p.split(level)"
)
FLATTEN_CODE = 'def flatten(items):\n    """Flatten a list of lists."""\n    return [x for item in items for x in item]'
CODESEARCHNET_ROWS = [
    {
        "repository_name": "smdabdoub/phylotoast", "func_path_in_repository": "phylotoast/util.py",
        "func_name": "split_phylogeny", "whole_func_string": SPLIT_CODE, "language": "python",
        "func_code_string": SPLIT_CODE, "func_code_tokens": ["def", "split_phylogeny", "(", "p", ")"],
        "func_documentation_string": "Return the phylogenetic taxonomy of bacteria.",
        "func_documentation_tokens": ["Return", "the", "phylogenetic", "taxonomy"],
        "split_name": "train", "func_code_url": "https://github.com/smdabdoub/phylotoast/blob/0b74/phylotoast/util.py",
    },
    {
        "repository_name": "example/utils", "func_path_in_repository": "utils/lists.py", "func_name": "flatten",
        "whole_func_string": FLATTEN_CODE, "language": "python", "func_code_string": FLATTEN_CODE,
        "func_code_tokens": ["def", "flatten", "(", "items", ")"],
        "func_documentation_string": "Flatten a list of lists.",
        "func_documentation_tokens": ["Flatten", "a", "list", "of", "lists"],
        "split_name": "test", "func_code_url": "https://github.com/example/utils/blob/main/utils/lists.py",
    },
]


def test_codesearchnet_python_both_layouts():
    for row in CODESEARCHNET_ROWS:
        pair = ADAPTERS["codesearchnet_python"](row)
        assert pair["prompt"] == f"Write a Python function for this description:\n{row['func_documentation_string']}\n"
        assert pair["response"] == row["func_code_string"]
    original = {"repo": "r", "path": "p.py", "func_name": "f", "docstring": "Add one.", "code": "def f(x): return x+1"}
    assert ADAPTERS["codesearchnet_python"](original) == {
        "prompt": "Write a Python function for this description:\nAdd one.\n", "response": original["code"],
    }


@pytest.mark.parametrize(
    ("name", "row", "field"),
    [
        ("gsm8k", {"question": "q"}, "answer"),
        ("math", {"problem": "p", "level": "Level 1"}, "solution"),
        ("arc", {"question": "q", "answerKey": "A"}, "choices"),
        ("hellaswag", {"activity_label": "a", "ctx_a": "c", "ctx_b": "d", "label": "0"}, "endings"),
        ("winogrande", {"sentence": "_ x", "option1": "a", "answer": "1"}, "option2"),
        ("mmlu", {"question": "q", "A": "a", "B": "b", "C": "c", "answer": "A"}, "D"),
        ("codesearchnet_python", {"docstring": "d"}, "code"),
    ],
)
def test_missing_field_names_adapter_field_and_keys(name, row, field):
    with pytest.raises(ValueError) as error:
        ADAPTERS[name](row)
    message = str(error.value)
    assert f"{name}:" in message and f"no field {field!r}" in message and str(sorted(row)) in message


@pytest.mark.parametrize(
    ("name", "rows"),
    [("gsm8k", read_jsonl("gsm8k.jsonl")), ("math", read_jsonl("math.jsonl")),
     ("arc", read_jsonl("arc_challenge.jsonl")), ("winogrande", read_jsonl("winogrande.jsonl")),
     ("mmlu", read_jsonl("mmlu.jsonl")), ("hellaswag", HELLASWAG_ROWS), ("codesearchnet_python", CODESEARCHNET_ROWS)],
)
def test_adapted_rows_tokenize_with_the_response_supervised(tokenizer, name, rows):
    rows = rows[:20]
    examples = tokenize_rows(rows, tokenizer, adapter=name, max_length=4096, source=name)
    assert len(examples) == len(rows)
    for row, example in zip(rows, examples):
        response = ADAPTERS[name](row)["response"]
        supervised = [token for token in example["labels"] if token != IGNORE_INDEX]
        assert tokenizer.decode(supervised) == response + tokenizer.eos_token
