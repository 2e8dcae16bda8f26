"""`python -m lightning_sft.score`: a saved model scored on a probe file equals `score_heads` on the same
batches; device and dtype are picked in one place; user errors are one `error:` line."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import LlamaForCausalLM

from lightning_sft import score
from lightning_sft.data import collate, load_examples
from lightning_sft.scorer.patterns import score_heads
from lightning_sft.storage import load_pattern_file

DATA = Path(__file__).parents[1] / "data" / "benchmarks"


def test_command_scores_a_saved_model(model_dir, tokenizer, capsys, tmp_path):
    out = tmp_path / "scores.safetensors"
    score.main(["--model", str(model_dir), "--probe", str(DATA / "winogrande.jsonl"), "--adapter", "winogrande",
                "--out", str(out), "--batch-size", "2", "--max-length", "200", "--max-examples", "3"])
    assert "wrote the [2, 4] pattern of 3 examples (0 skipped)" in capsys.readouterr().out
    saved = load_pattern_file(out)
    with safe_open(out, "pt") as file:
        assert file.metadata()["dtype"] == "float32"  # the CPU default
    examples = load_examples(DATA / "winogrande.jsonl", tokenizer, adapter="winogrande", max_length=200,
                             max_examples=3)
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    pad = tokenizer.pad_token_id
    expected = score_heads(model, [collate(examples[:2], pad), collate(examples[2:], pad)])
    for name in ("per_example", "losses"):
        torch.testing.assert_close(saved[name], getattr(expected, name), rtol=1e-5, atol=0)
    torch.testing.assert_close(saved["pattern"], expected.pattern, rtol=1e-5, atol=0)


def test_device_and_dtype_are_picked_in_one_place(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert score.scoring_device_and_dtype() == (torch.device("cpu"), "float32")
    assert score.scoring_device_and_dtype("bfloat16") == (torch.device("cpu"), "bfloat16")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert score.scoring_device_and_dtype() == (torch.device("cuda"), "bfloat16")
    assert score.scoring_device_and_dtype("float32") == (torch.device("cuda"), "float32")


def test_dtype_option_loads_the_model_in_that_dtype(model_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert score.load_scoring_model(model_dir, "bfloat16").dtype == torch.bfloat16
    assert score.load_scoring_model(model_dir).dtype == torch.float32


def _fails(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        score.main([str(arg) for arg in argv])
    assert exit_info.value.code == 1
    return capsys.readouterr().err


def test_user_errors_are_one_line(model_dir, capsys, tmp_path):
    error = _fails(capsys, "--model", tmp_path / "nowhere", "--probe", DATA / "gsm8k.jsonl", "--out", tmp_path / "x")
    assert error.startswith("error: ") and "nowhere" in error and error.count("\n") == 1
    error = _fails(capsys, "--model", model_dir, "--probe", tmp_path / "missing.jsonl", "--out", tmp_path / "x")
    assert error.startswith("error: ") and "missing.jsonl" in error and error.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_out_that_is_a_directory_is_refused_before_the_model_loads(capsys, tmp_path):
    error = _fails(capsys, "--model", tmp_path / "nowhere", "--probe", DATA / "gsm8k.jsonl", "--out", tmp_path)
    assert error == f"error: --out {tmp_path} is an existing directory; pass the path of the file to write\n"


def test_missing_probe_through_the_entry_point_has_no_traceback(model_dir, tmp_path):
    command = [sys.executable, "-m", "lightning_sft.score", "--model", str(model_dir), "--probe",
               str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x.safetensors")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=120)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "missing.jsonl" in lines[0], result.stderr
