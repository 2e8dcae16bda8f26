"""lightning_sft.evaluation: prompts as lm-evaluation-harness writes them, log-likelihoods against an
independent per-example forward pass, GSM8K and MATH answer extraction on real answers, generation, bad input."""

import json
import math
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from lightning_sft.evaluation import TASKS, evaluate, load_task
from lightning_sft.evaluation.scoring import greedy_generate
from lightning_sft.evaluation.math_answers import equivalent, generated_answer, normalized as math_normalized
from lightning_sft.evaluation.math_answers import reference_answer
from lightning_sft.evaluation.tasks import flexible_answer, normalized, strict_answer
from tests.conftest import tiny_llama_config

DATA = Path(__file__).parents[1] / "data" / "benchmarks"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(max_position_embeddings=4096)).eval()


def rows_of(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines()]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# Rows in the field layout of HF `Rowan/hellaswag` (a WikiHow row keeps its `[title]`/`[step]` artifacts).
HELLASWAG = [
    {"activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
     "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                 "is holding a rubik's cube.", "starts pulling up roofing on a roof."], "label": "3"},
    {"activity_label": "Home and Garden", "ctx_a": "[header] How to grow lettuce [title] Pick a spot.",
     "ctx_b": "", "endings": ["Water it [step] daily.", "Plant it  deep.", "Eat it.", "Sell it."], "label": "0"},
]


def test_prompts_are_lm_eval_s():
    arc = rows_of("arc_challenge.jsonl")[0]
    request = load_task("arc_challenge", DATA / "arc_challenge.jsonl", max_examples=1).requests[0]
    assert request.pairs == [(f"Question: {arc['question']}\nAnswer:", f" {text}") for text in arc["choices"]["text"]]
    assert request.answer == 2 and request.lengths == [len(text) for text in arc["choices"]["text"]]

    mmlu = rows_of("mmlu.jsonl")[0]
    request = load_task("mmlu", DATA / "mmlu.jsonl", max_examples=1).requests[0]
    context = ("The following are multiple choice questions (with answers) about college mathematics.\n\n"
               f"{mmlu['question'].strip()}\nA. {mmlu['A']}\nB. {mmlu['B']}\nC. {mmlu['C']}\nD. {mmlu['D']}\nAnswer:")
    assert request.pairs == [(context, f" {letter}") for letter in "ABCD"] and request.answer == 3

    request = load_task("winogrande", DATA / "winogrande.jsonl", max_examples=1).requests[0]
    assert request.pairs == [("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
                             ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases.")]
    assert request.answer == 1

    gsm8k = rows_of("gsm8k.jsonl")[0]
    request = load_task("gsm8k", DATA / "gsm8k.jsonl", max_examples=1).requests[0]
    assert request.prompt == f"Question: {gsm8k['question']}\nAnswer:"
    assert request.stop == ("Question:", "</s>", "<|im_end|>")


def test_hellaswag_preprocessing(tmp_path):
    requests = load_task("hellaswag", write_rows(tmp_path / "h.jsonl", HELLASWAG)).requests
    context = "Roof shingle removal: A man is sitting on a roof. He"
    assert requests[0].pairs[3] == (context, " starts pulling up roofing on a roof.") and requests[0].answer == 3
    # " [title]" becomes ". ", other brackets go, double spaces become one, the text is stripped
    assert requests[1].pairs[0] == ("Home and Garden: How to grow lettuce. Pick a spot.", " Water it daily.")
    assert requests[1].pairs[1][1] == " Plant it deep."


def test_fewshot_rows_first_n_of_the_same_subject(tmp_path):
    rows = rows_of("mmlu.jsonl")
    dev, test = [row for row in rows if row["split"] == "dev"], [row for row in rows if row["split"] == "test"]
    physics = next(row for row in test if row["subject"] == "high_school_physics")
    data = load_task("mmlu", write_rows(tmp_path / "t.jsonl", [physics]), fewshot=write_rows(tmp_path / "d.jsonl", dev),
                     num_fewshot=2)
    shots = [row for row in dev if row["subject"] == "high_school_physics"][:2]
    context = data.requests[0].pairs[0][0]
    expected_shots = "".join(
        f"{row['question'].strip()}\nA. {row['A']}\nB. {row['B']}\nC. {row['C']}\nD. {row['D']}\nAnswer:"
        f" {row['answer']}\n\n" for row in shots)
    assert context.startswith("The following are multiple choice questions (with answers) about high school physics."
                              "\n\n" + expected_shots)
    with pytest.raises(ValueError, match="fewer than num_fewshot=6"):
        load_task("mmlu", tmp_path / "t.jsonl", fewshot=tmp_path / "d.jsonl", num_fewshot=6)

    arc = rows_of("arc_challenge.jsonl")[:3]
    data = load_task("arc_challenge", write_rows(tmp_path / "a.jsonl", arc), fewshot=tmp_path / "a.jsonl",
                     num_fewshot=1)
    # the evaluated row itself is never its own example
    answer = arc[1]["choices"]["text"][arc[1]["choices"]["label"].index(arc[1]["answerKey"])]
    assert data.requests[0].pairs[0][0].startswith(f"Question: {arc[1]['question']}\nAnswer: {answer}\n\n")


def independent_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """One forward pass of one (context, continuation), float64 log-softmax (the byte tokenizer has no merges,
    so the two encode separately)."""
    context_ids, continuation_ids = tokenizer.encode(context), tokenizer.encode(continuation)
    if context.endswith(" "):
        raise AssertionError("these contexts never end with a space")
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        log_probs = model(ids).logits[0].double().log_softmax(-1)
    return sum(float(log_probs[len(context_ids) - 1 + i, token]) for i, token in enumerate(continuation_ids))


@pytest.mark.parametrize(("task", "file"), [("arc_challenge", "arc_challenge.jsonl"), ("mmlu", "mmlu.jsonl"),
                                            ("winogrande", "winogrande.jsonl")])
def test_multiple_choice_equals_independent_per_example_forward(model, tokenizer, task, file):
    from lightning_sft.evaluation.scoring import continuation_loglikelihoods, encode_pair

    data = load_task(task, DATA / file, max_examples=6)
    pairs = [pair for request in data.requests for pair in request.pairs]
    batched = continuation_loglikelihoods(model, [encode_pair(tokenizer, *pair) for pair in pairs], 0)
    expected = torch.tensor([independent_loglikelihood(model, tokenizer, *pair) for pair in pairs], dtype=torch.float64)
    torch.testing.assert_close(batched.double(), expected, rtol=0, atol=1e-5)

    # acc and acc_norm as lm-eval's process_results computes them, from the independent log-likelihoods
    accs, norms, start = [], [], 0
    for request in data.requests:
        lls = expected[start:start + len(request.pairs)].numpy()
        start += len(request.pairs)
        choices = [continuation[1:] for _, continuation in request.pairs] if task != "winogrande" else [
            context for context, _ in request.pairs]
        accs.append(float(np.argmax(lls) == request.answer))
        norms.append(float(np.argmax(lls / np.array([len(choice) for choice in choices])) == request.answer))
    result = evaluate(model, tokenizer, data, batch_size=5)
    assert result["n"] == 6 and result["acc"] == pytest.approx(np.mean(accs), abs=1e-6)
    # lm-eval's mean_stderr: sample standard deviation (ddof=1) over sqrt(n)
    assert result["acc_stderr"] == pytest.approx(statistics.stdev(accs) / math.sqrt(6), abs=1e-12)
    if "acc_norm" in TASKS[task].metrics:
        assert result["acc_norm"] == pytest.approx(np.mean(norms), abs=1e-6)
        assert result["acc_norm_stderr"] == pytest.approx(statistics.stdev(norms) / math.sqrt(6), abs=1e-12)
        assert list(result) == ["acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n"]
    else:
        assert list(result) == ["acc", "acc_stderr", "n"]


def test_gsm8k_answer_extraction_on_real_answers():
    for row in rows_of("gsm8k.jsonl"):
        final = row["answer"].split("\n#### ")[-1]
        assert re.fullmatch(r"-?[0-9.,]+", final), final
        assert strict_answer(row["answer"]) == final
        assert flexible_answer(row["answer"]) == final
        assert normalized(final) == normalized(row["answer"]) == final.replace(",", "").lower()
        # without the "#### N" line, strict finds nothing; flexible takes the solution's last number
        worked = row["answer"].rsplit("\n#### ", 1)[0]
        assert strict_answer(worked) == "[invalid]"
        numbers = re.findall(r"-?[$0-9.,]{2,}|-?[0-9]+", worked)
        assert flexible_answer(worked) == numbers[-1].strip()
    task, request = TASKS["gsm8k"], load_task("gsm8k", DATA / "gsm8k.jsonl", max_examples=1).requests[0]
    assert task.score(" She makes $18.", True, request) == {"exact_match_strict": 0.0, "exact_match_flexible": 1.0}
    assert task.score(" 9*2=18\n#### 18", True, request) == {"exact_match_strict": 1.0, "exact_match_flexible": 1.0}
    assert task.score(" #### 1,8", False, request) == {"exact_match_strict": 1.0, "exact_match_flexible": 1.0}
    assert task.score(" 17 or 18 or 19", True, request) == {"exact_match_strict": 0.0, "exact_match_flexible": 0.0}


def balanced(text: str) -> bool:
    depth = 0
    for character in text:
        depth += {"{": 1, "}": -1}.get(character, 0)
        if depth < 0:
            return False
    return depth == 0


def test_math_answers_on_real_solutions():
    rows, task = rows_of("math.jsonl"), TASKS["math"]
    assert len(rows) == 294
    requests = load_task("math", DATA / "math.jsonl").requests
    for row, request in zip(rows, requests, strict=True):
        solution = row["solution"]
        answer = reference_answer(solution)
        # independently: the solution's last "\boxed{" opens exactly "{answer}", whose braces balance
        assert "\\boxed " not in solution and balanced(answer), answer
        assert solution.rfind("\\boxed{") == solution.rfind(f"\\boxed{{{answer}}}") >= 0, answer
        assert request.target == answer and request.prompt == f"Problem: {row['problem']}\nAnswer:"
        for text in (answer, f" The answer is ${answer}$.", f" ${answer}$", f"\n${answer}$\n\nThat is all."):
            assert task.score(text, True, request) == {"exact_match": 1.0}, (text, answer)
        assert task.score(f" 9{answer}", True, request) == {"exact_match": 0.0}, answer
        assert task.score(f" $9{answer}$", True, request) == {"exact_match": 0.0}, answer
        assert task.score(f" $9$ or ${answer}$", True, request) == {"exact_match": 0.0}, answer


# (answer, reference, lm-eval's is_equiv): each verdict is what lm-eval's own utils.py @ 4e7e0d47 returned.
MATH_CASES = [
    ("\\frac12", "\\frac{1}{2}", True), ("0.5", "\\frac{1}{2}", True), (".5", "\\frac{1}{2}", True),
    ("1/2", "\\frac{1}{2}", True), ("0.50", "\\frac{1}{2}", False), ("03/4", "\\frac34", False),
    ("\\dfrac{9}{7}", "\\frac{9}{7}", True), ("\\tfrac{9}{7}", "\\frac97", True),
    ("\\frac1{72}", "\\frac{1}{72}", True), ("\\frac{72}1", "\\frac{72}{1}", False),
    ("14,\\!400", "14,400", True), ("14400", "14,400", False),
    ("\\sqrt3", "\\sqrt{3}", True), ("\\sqrt 2", "\\sqrt2", False),  # the space becomes the root: \sqrt{ }2
    ("x = 5", "5", True), ("k=5", "5", True), ("xy = 5", "5", False), ("x=y=5", "5", False),
    (" y = 2x", "y = 2x", False),  # a leading space counts towards the 2-character "y =" prefix lm-eval removes
    ("5\\text{ cm}", "5", True), ("5\\text{cm}", "5", False), ("\\text{neither}", "neither", False),
    ("120^\\circ", "120", True), ("120^{\\circ}", "120", True), ("7.2\\%", "7.2", True), ("\\$40", "40", True),
    ("5\\\\\\%%", "5", True),  # raw 5\\\%%: \\ -> \ gives 5\\%%; \% removed twice: 5\% then 5
    ("$40", "40", False), ("2\n", "2", True), ("\\\\frac{1}{2}", "\\frac{1}{2}", True),
    ("\\left(\\frac34,5\\right)", "(\\frac{3}{4},5)", True), ("\\frac{5}{2},-3", "\\frac52, -3", True),
    # where lm-eval's strip_string raises, is_equiv compares the raw strings
    ("5 \\text{ cm} \\text{ cm}", "5", False), ("x/y", "x/y", True), ("x/y", "x / y", False),
    ("\\frac", "\\frac", True),
]


@pytest.mark.parametrize(("answer", "reference", "expected"), MATH_CASES)
def test_math_equivalence_as_lm_eval_judges(answer, reference, expected):
    assert equivalent(answer, reference) is expected


def test_math_normalisation_and_extraction():
    assert math_normalized("\\sqrt 2") == "\\sqrt{}2" and math_normalized("2 \\sqrt{2}") == "2\\sqrt{2}"
    assert math_normalized("\\left( 3, \\dfrac{1}{2} \\right)") == "(3,\\frac{1}{2})"
    assert math_normalized("5 \\text{ cm} \\text{ cm}") is None and math_normalized("x/y") is None
    assert math_normalized("\\sqrt") is None and math_normalized("\\frac1") == "\\frac1"
    assert math_normalized("") == "" and math_normalized("\\$") == ""
    assert generated_answer(" The answer is $\\frac{1}{2}$.") == "\\frac{1}{2}"
    assert generated_answer("So $x=5$, the answer is $5$") == "x=5$, the answer is $5"
    assert generated_answer(" It costs \\$5.") == " It costs \\$5." and generated_answer(" 5") == " 5"
    assert generated_answer("$$5$$") == "$5$" and not equivalent("$5$", "5")  # display math is judged wrong
    assert reference_answer("So \\boxed{a} and \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert reference_answer("$\\boxed 5$ and more") == "5"
    for solution in ("It is 5.", "\\boxed{5", "\\fbox{5}"):
        with pytest.raises(ValueError, match="no closed"):
            reference_answer(solution)


def test_math_fewshot_shots_show_the_boxed_answer(tmp_path):
    rows = rows_of("math.jsonl")[:3]
    data = load_task("math", write_rows(tmp_path / "m.jsonl", rows[:1]), fewshot=write_rows(tmp_path / "f.jsonl", rows),
                     num_fewshot=2)
    assert data.requests[0].prompt == (f"Problem: {rows[1]['problem']}\nAnswer: 10\n\n"
                                       f"Problem: {rows[2]['problem']}\nAnswer: \\dfrac{{9}}{{7}}\n\n"
                                       f"Problem: {rows[0]['problem']}\nAnswer:")
    assert data.requests[0].stop == ("Problem:",) and TASKS["math"].max_new_tokens == 256


def independent_greedy(model, prompt: list[int], steps: int, banned: int) -> list[int]:
    """Greedy decoding without a cache or padding: the whole sequence re-run for every token."""
    ids = list(prompt)
    for _ in range(steps):
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
        logits[banned] = -float("inf")
        ids.append(int(logits.argmax()))
    return ids[len(prompt):]


class EosAfter:
    """Hooks on a model: eos impossible for the first `steps` forward passes of each generation (a pass whose
    input holds more than one position starts one), then certain; counts the passes. `attach` returns a handle
    whose `remove()` takes both hooks off."""

    def __init__(self, eos: int, steps: int | None) -> None:
        self.eos, self.steps, self.calls, self.total = eos, steps, 0, 0

    def attach(self, model) -> "_Both":
        first = model.get_input_embeddings().register_forward_pre_hook(self.start)
        head = model.get_output_embeddings().register_forward_hook(self.logits)
        return _Both(first, head)

    def start(self, module, args):
        if args[0].shape[1] > 1:
            self.calls = 0

    def logits(self, module, args, output):
        self.total += 1
        output = output.clone()
        output[..., self.eos] = float("inf") if self.steps is not None and self.calls >= self.steps else -float("inf")
        self.calls += 1
        return output


class _Both:
    """Removable handles removed together."""

    def __init__(self, *handles) -> None:
        self.handles = handles

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def test_generation_batched_with_cache_equals_independent_greedy(model, tokenizer):
    prompts = [tokenizer.encode(text) for text in ("12+345=", "rev 9=", "sort 314159=", "count a in abca=")]
    hook = EosAfter(tokenizer.eos_token_id, None).attach(model)
    try:
        generations = greedy_generate(model, prompts, max_new_tokens=6, pad_token_id=0, eos_token_id=2,
                                      stopped=lambda tokens: False)
    finally:
        hook.remove()
    for prompt, generation in zip(prompts, generations):
        assert generation.tokens == independent_greedy(model, prompt, 6, banned=2) and not generation.stopped


def test_exact_string_task_counts_matches(model, tokenizer, tmp_path):
    from lightning_sft.evaluation.scoring import encode_prompt

    prompts = ["12+345=", "rev 3142=", "sort 3142=", "count a in abca=", "rev 12+345="]
    rows = []
    for index, prompt in enumerate(prompts):
        text = tokenizer.decode(independent_greedy(model, encode_prompt(tokenizer, prompt, True), 3, banned=2))
        rows.append({"prompt": prompt, "response": text if index % 2 == 0 else text + "x"})
    data = load_task("reversed_sum", write_rows(tmp_path / "rows.jsonl", rows))
    hook = EosAfter(tokenizer.eos_token_id, steps=3)  # 3 tokens, then eos: every generation stops
    handle = hook.attach(model)
    try:
        result = evaluate(model, tokenizer, data, batch_size=2)
    finally:
        handle.remove()
    assert result == {"exact_match": pytest.approx(3 / 5), "n": 5,
                      "exact_match_stderr": pytest.approx(statistics.stdev([1, 0, 1, 0, 1]) / math.sqrt(5))}
    one = evaluate(model, tokenizer, load_task("reversed_sum", tmp_path / "rows.jsonl", max_examples=1))
    assert one["n"] == 1 and one["exact_match_stderr"] is None  # undefined for one example (ddof=1)


def test_math_task_end_to_end(model, tokenizer, tmp_path):
    from lightning_sft.evaluation.scoring import encode_prompt

    rows = rows_of("math.jsonl")[:4]
    texts = [tokenizer.decode(independent_greedy(model, encode_prompt(tokenizer, f"Problem: {row['problem']}\nAnswer:",
                                                                      False), 4, banned=2)) for row in rows]
    assert not any(set("${}") & set(text) or "Problem:" in text for text in texts), texts
    # rows 0 and 2 are solved by what the model writes; rows 1 and 3 keep their real solutions
    rows = [{**row, "solution": f"So \\boxed{{{text}}}."} if index % 2 == 0 else row
            for index, (row, text) in enumerate(zip(rows, texts))]
    data = load_task("math", write_rows(tmp_path / "rows.jsonl", rows))
    handle = EosAfter(tokenizer.eos_token_id, steps=4).attach(model)
    try:
        result = evaluate(model, tokenizer, data, batch_size=3)
    finally:
        handle.remove()
    assert result == {"exact_match": pytest.approx(2 / 4), "n": 4,
                      "exact_match_stderr": pytest.approx(statistics.stdev([1, 0, 1, 0]) / 2)}


def test_generation_that_never_stops_is_bounded_and_wrong(model, tokenizer, tmp_path):
    from lightning_sft.evaluation.scoring import encode_prompt

    prompt = "rev 12+345="
    text = tokenizer.decode(independent_greedy(model, encode_prompt(tokenizer, prompt, True), 5, banned=2))
    data = load_task("reversed_sum", write_rows(tmp_path / "rows.jsonl", [{"prompt": prompt, "response": text}]))
    hook = EosAfter(tokenizer.eos_token_id, steps=None)  # eos never comes
    handle = hook.attach(model)
    try:
        result = evaluate(model, tokenizer, data, max_new_tokens=5)
    finally:
        handle.remove()
    # the text equals the response, but the generation was cut off: wrong; exactly max_new_tokens passes ran
    assert result == {"exact_match": 0.0, "exact_match_stderr": None, "n": 1} and hook.total == 5


def test_evaluate_leaves_the_model_as_found(tokenizer):
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config())
    model.train()
    model.model.layers[0].eval()
    modes = [module.training for module in model.modules()]
    torch.manual_seed(5)
    rng = torch.get_rng_state()
    evaluate(model, tokenizer, load_task("winogrande", DATA / "winogrande.jsonl", max_examples=2))
    assert [module.training for module in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)


# Bad input


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError) as error:
        load_task("arc_chalenge", DATA / "arc_challenge.jsonl")
    assert "unknown task 'arc_chalenge'" in str(error.value)
    for name in ("arc_challenge", "gsm8k", "hellaswag", "math", "mmlu", "winogrande", "reversed_sum"):
        assert name in str(error.value)


@pytest.mark.parametrize(("task", "row", "field"), [
    ("arc_challenge", {"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}}, "answerKey"),
    ("gsm8k", {"question": "q"}, "answer"),
    ("math", {"problem": "q", "level": "Level 1", "type": "Algebra"}, "solution"),
    ("winogrande", {"sentence": "a _ b", "option1": "x", "answer": "1"}, "option2"),
    ("mmlu", {"question": "q", "A": "a", "B": "b", "C": "c", "D": "d", "answer": "A"}, "subject"),
    ("addition", {"prompt": "1+1="}, "response"),
])
def test_row_missing_a_field_names_file_line_and_field(tmp_path, task, row, field):
    good = {"arc_challenge": rows_of("arc_challenge.jsonl")[0], "gsm8k": rows_of("gsm8k.jsonl")[0],
            "math": rows_of("math.jsonl")[0],
            "winogrande": rows_of("winogrande.jsonl")[0], "mmlu": rows_of("mmlu.jsonl")[0],
            "addition": {"prompt": "1+2=", "response": "3"}}[task]
    path = write_rows(tmp_path / "rows.jsonl", [good, good, row])
    with pytest.raises(ValueError) as error:
        load_task(task, path)
    assert str(error.value).startswith(f"{path}:3: ") and repr(field) in str(error.value)


@pytest.mark.parametrize(("task", "row", "message"), [
    ("mmlu", {"question": "q", "choices": ["a", "b", "c", "d"], "answer": 4, "subject": "s"}, "answer index 4"),
    ("winogrande", {"sentence": "a _ b", "option1": "x", "option2": "y", "answer": "3"}, "answer index 2"),
    ("hellaswag", {**HELLASWAG[0], "label": "-1"}, "answer index -1"),
    ("arc_challenge", {"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "C"},
     "answerKey 'C'"),
    ("math", {"problem": "q", "solution": "It is 5."}, "no closed \\boxed"),
])
def test_answer_index_out_of_range(tmp_path, task, row, message):
    path = write_rows(tmp_path / "rows.jsonl", [row])
    with pytest.raises(ValueError, match=re.escape(f"{path}:1: ") + ".*" + re.escape(message)):
        load_task(task, path)


@pytest.mark.parametrize(("task", "field", "value"), [
    ("hellaswag", "label", 2.9), ("hellaswag", "label", "2.9"), ("hellaswag", "label", True),
    ("mmlu", "answer", 1.7), ("mmlu", "answer", True), ("winogrande", "answer", 1.7), ("winogrande", "answer", 2.0),
])
def test_answer_index_that_is_not_an_integer_is_refused(tmp_path, task, field, value):
    good = {"hellaswag": HELLASWAG[0], "winogrande": rows_of("winogrande.jsonl")[0],
            "mmlu": {"question": "q", "choices": ["a", "b", "c", "d"], "answer": 1, "subject": "s"}}[task]
    path = write_rows(tmp_path / "rows.jsonl", [good, {**good, field: value}])
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: task {task!r}: {task}: field {field!r} holds")
                       + ".*not an integer answer index"):
        load_task(task, path)


@pytest.mark.parametrize(("task", "row"), [
    ("gsm8k", {"question": "How many?", "answer": 16}),
    ("gsm8k", {"question": 7, "answer": "#### 7"}),
    ("reversed_sum", {"prompt": "1+2=", "response": 3.0}),
    ("arc_challenge", {"question": "q", "choices": {"text": ["a", 2], "label": ["A", "B"]}, "answerKey": "A"}),
])
def test_a_number_where_text_belongs_in_a_task_row_is_refused(tmp_path, task, row):
    path = write_rows(tmp_path / "rows.jsonl", [row])
    with pytest.raises(ValueError, match=re.escape(f"{path}:1: task {task!r}: ") + ".*not (text|a list of strings)"):
        load_task(task, path)


def test_empty_task_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_task("gsm8k", tmp_path / "empty.jsonl")
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="no rows"):
        load_task("gsm8k", tmp_path / "blank.jsonl")
