"""python -m lightning_sft.evaluate: the table, results.json, and errors before any model is loaded."""

import json
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
    assert "| task | metric | value | n |" in printed
    assert f"| arc_challenge | acc_norm | {results['arc_challenge']['acc_norm']:.4f} | 4 |" in printed
    assert list(results["winogrande"]) == ["acc", "n"]


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


def test_math_task_from_the_command_line(model_dir, tmp_path, capsys):
    out = tmp_path / "results.json"
    main(["--model", str(model_dir), "--task", f"math={DATA / 'math.jsonl'}", "--max-examples", "3",
          "--max-new-tokens", "4", "--out", str(out)])
    results = json.loads(out.read_text())
    expected = evaluate(load_model(model_dir), load_tokenizer(model_dir),
                        load_task("math", DATA / "math.jsonl", max_examples=3), max_new_tokens=4)
    assert list(results) == ["math"] and list(results["math"]) == ["exact_match", "n"]
    assert results["math"] == pytest.approx(expected) and results["math"]["n"] == 3
    assert f"| math | exact_match | {results['math']['exact_match']:.4f} | 3 |" in capsys.readouterr().out
