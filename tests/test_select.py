"""`python -m lightning_sft.select` (Scenario 2): pool rows ranked by the correlation of their own pattern with
the target's, checked against patterns computed one row at a time; bad input refused with one line."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from transformers import LlamaForCausalLM

from lightning_sft.data import collate, load_examples, tokenize_rows
from lightning_sft.scorer.patterns import activation_pattern
from lightning_sft.select import main
from tests.test_analysis import _pearson, _short_rows


def _select(capsys, *argv) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of the command run in this process."""
    try:
        main([str(arg) for arg in argv])
        status = 0
    except SystemExit as exit_info:
        status = exit_info.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_select_ranks_pool_rows_by_pattern(model_dir, tokenizer, capsys, tmp_path):
    target = tmp_path / "target.jsonl"
    target.write_text("".join(json.dumps(row) + "\n" for row in _short_rows("math", 3)))
    pool_rows = _short_rows("gsm8k", 3) + _short_rows("math", 3, start=10)
    pool_rows.insert(2, {"id": "long", "prompt": "x" * 200, "response": "y"})  # truncated away at 64 tokens
    lines = [json.dumps(row, indent=None, separators=(", ", ": ")) for row in pool_rows]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("\n".join(lines[:4]) + "\n\n" + "\n".join(lines[4:]) + "\n")  # a blank line is not a row

    status, printed, _ = _select(capsys, "--model", model_dir, "--target", target, "--pool", pool, "--k", 3,
                                 "--out", tmp_path / "chosen.jsonl", "--max-length", 64, "--batch-size", 2)
    assert status == 0
    chosen = (tmp_path / "chosen.jsonl").read_text().splitlines()

    model = LlamaForCausalLM.from_pretrained(model_dir).float().eval()
    target_pattern = activation_pattern(model, [collate(load_examples(target, tokenizer, max_length=64), 0)])
    kept = [line for line, row in zip(lines, pool_rows) if row["id"] != "long"]
    correlations = []
    for line in kept:
        [example] = tokenize_rows([json.loads(line)], tokenizer, max_length=64)
        pattern = activation_pattern(model, [collate([example], 0)])
        correlations.append(_pearson(pattern.double().numpy(), target_pattern.double().numpy()))
    expected = [kept[i] for i in np.argsort(-np.array(correlations), kind="stable")[:3]]
    assert chosen == expected  # the original lines, unchanged, best first
    assert "selected 3 of 7 pool rows (1 without supervised tokens skipped)" in printed
    assert f"{max(correlations):.4f} (best)" in printed


def test_select_refuses_malformed_pool_rows(model_dir, capsys, tmp_path):
    target = tmp_path / "target.jsonl"
    target.write_text("".join(json.dumps(row) + "\n" for row in _short_rows("math", 2)))
    good = [json.dumps(row) for row in _short_rows("gsm8k", 3)]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("\n".join([good[0], good[1], '{"prompt": "unterminated', good[2]]) + "\n")
    status, _, error = _select(capsys, "--model", model_dir, "--target", target, "--pool", pool, "--k", 1,
                               "--out", tmp_path / "chosen.jsonl")
    assert status == 1 and f"{pool}:3: Unterminated string" in error

    pool.write_text("\n".join([good[0], json.dumps({"question": "no response field"}), good[2]]) + "\n")
    status, _, error = _select(capsys, "--model", model_dir, "--target", target, "--pool", pool, "--k", 1,
                               "--out", tmp_path / "chosen.jsonl")
    assert status == 1 and f"{pool}:2: cannot be formatted: " in error and "the row has ['question']" in error

    pool.write_text("\n".join([good[0], good[1]]) + "\n")
    status, _, error = _select(capsys, "--model", model_dir, "--target", target, "--pool", pool, "--k", 3,
                               "--out", tmp_path / "chosen.jsonl")
    assert status == 1 and "--k 3 but only 2 of the 2 pool rows can be scored" in error
    assert not (tmp_path / "chosen.jsonl").exists()


def test_out_that_is_a_directory_is_refused_before_the_model_loads(capsys, tmp_path):
    target = tmp_path / "target.jsonl"
    target.write_text("".join(json.dumps(row) + "\n" for row in _short_rows("math", 2)))
    status, _, error = _select(capsys, "--model", tmp_path / "nowhere", "--target", target, "--pool", target,
                               "--k", 1, "--out", tmp_path)
    assert status == 1
    assert error == f"error: --out {tmp_path} is an existing directory; pass the path of the file to write\n"


def test_missing_model_is_one_error_line(tmp_path):
    """The module entry point, as a user runs it: one `error:` line naming the model, no traceback."""
    target = tmp_path / "target.jsonl"
    target.write_text("".join(json.dumps(row) + "\n" for row in _short_rows("math", 2)))
    command = [sys.executable, "-m", "lightning_sft.select", "--model", str(tmp_path / "nowhere"), "--target",
               str(target), "--pool", str(target), "--k", "1", "--out", str(tmp_path / "chosen.jsonl")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=120)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nowhere" in lines[0], result.stderr
