"""python -m lightning_sft.evaluate: the table, results.json, and errors before any model is loaded."""

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from lightning_sft.evaluate import main
from lightning_sft.evaluation import evaluate, load_task
from lightning_sft.models import load_model, load_tokenizer
from tests.conftest import tiny_llama_config

DATA = Path(__file__).parents[1] / "data" / "benchmarks"


@pytest.fixture
def model_dir(tmp_path, tokenizer):
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(max_position_embeddings=4096)).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


@pytest.mark.lowest
def test_table_and_results_json(model_dir, tmp_path, capsys):
    out = tmp_path / "results.json"
    main(["--model", str(model_dir), "--task", f"arc_challenge={DATA / 'arc_challenge.jsonl'}",
          "--task", f"winogrande={DATA / 'winogrande.jsonl'}", "--max-examples", "4", "--out", str(out)])
    results = json.loads(out.read_text())
    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    for name in ("arc_challenge", "winogrande"):
        expected = evaluate(model, tokenizer, load_task(name, DATA / f"{name}.jsonl", max_examples=4))
        assert results[name] == pytest.approx(expected)
    printed = capsys.readouterr().out
    assert "| task | metric | value | stderr | n |" in printed
    arc = results["arc_challenge"]
    assert f"| arc_challenge | acc_norm | {arc['acc_norm']:.4f} | {arc['acc_norm_stderr']:.4f} | 4 |" in printed
    assert list(results["winogrande"]) == ["acc", "acc_stderr", "n"]
    # lm-eval's mean_stderr of 0/1 values with mean p: sqrt(p (1 - p) / (n - 1))
    for name, metric in (("arc_challenge", "acc"), ("arc_challenge", "acc_norm"), ("winogrande", "acc")):
        p = results[name][metric]
        assert results[name][f"{metric}_stderr"] == pytest.approx(math.sqrt(p * (1 - p) / 3), abs=1e-12)


@pytest.mark.parametrize(("arguments", "message"), [
    (["--task", "arc=x.jsonl"], "unknown task 'arc'; known tasks: addition, arc_challenge"),
    (["--task", "gsm8k"], "write TASK=FILE"),
    (["--task", "gsm8k=a.jsonl", "--task", "gsm8k=b.jsonl"], "names 'gsm8k' twice"),
    (["--task", "gsm8k=a.jsonl", "--num-fewshot", "2"], "give --fewshot TASK=FILE for ['gsm8k']"),
])
def test_bad_arguments_exit_with_the_fix(arguments, message):
    with pytest.raises(SystemExit) as error:
        main(["--model", "no/such/model", *arguments])
    assert message in str(error.value.code)


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--batch-size", "0", "argument --batch-size: invalid value '0': pass a positive integer"),
    ("--max-new-tokens", "0", "argument --max-new-tokens: invalid value '0': pass a positive integer"),
    ("--num-fewshot", "-1", "argument --num-fewshot: invalid value '-1': pass an integer >= 0"),
    ("--max-examples", "0", "argument --max-examples: invalid value '0': pass a positive integer"),
])
def test_bad_numbers_are_one_line_before_any_work(model_dir, capsys, flag, value, message):
    with pytest.raises(SystemExit) as error:
        main(["--model", str(model_dir), "--task", f"gsm8k={DATA / 'gsm8k.jsonl'}", flag, value])
    assert error.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_out_that_is_a_directory_is_refused_before_the_model_loads(tmp_path):
    with pytest.raises(SystemExit) as error:
        main(["--model", str(tmp_path / "no_model"), "--task", f"gsm8k={DATA / 'gsm8k.jsonl'}", "--out", str(tmp_path)])
    assert str(error.value.code) == (f"error: --out {tmp_path} is an existing directory; pass the path of the file"
                                     " to write")


def test_a_gsm8k_answer_that_is_a_json_number_is_one_line(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text('{"question": "How many?", "answer": "#### 3"}\n{"question": "And now?", "answer": 16}\n')
    with pytest.raises(SystemExit) as error:
        main(["--model", str(tmp_path / "no_model"), "--task", f"gsm8k={path}"])
    assert str(error.value.code).startswith(f"error: {path}:2: task 'gsm8k': gsm8k: field 'answer' holds a int (16)")


def test_math_task_from_the_command_line(model_dir, tmp_path, capsys):
    out = tmp_path / "results.json"
    main(["--model", str(model_dir), "--task", f"math={DATA / 'math.jsonl'}", "--max-examples", "3",
          "--max-new-tokens", "4", "--out", str(out)])
    results = json.loads(out.read_text())
    expected = evaluate(load_model(model_dir), load_tokenizer(model_dir),
                        load_task("math", DATA / "math.jsonl", max_examples=3), max_new_tokens=4)
    assert list(results) == ["math"] and list(results["math"]) == ["exact_match", "exact_match_stderr", "n"]
    assert results["math"] == pytest.approx(expected) and results["math"]["n"] == 3
    math_result = results["math"]
    assert (f"| math | exact_match | {math_result['exact_match']:.4f} | {math_result['exact_match_stderr']:.4f} | 3 |"
            in capsys.readouterr().out)
