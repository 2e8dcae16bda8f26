"""Evaluation over 2 processes (torch.distributed, gloo) equals one process, and every rank runs the same
number of forward passes (what DeepSpeed ZeRO-3 needs), generation included."""

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import LlamaForCausalLM

from lightning_sft.evaluation import evaluate, load_task
from lightning_sft.evaluation.scoring import encode_prompt, greedy_generate
from lightning_sft.tokenizer import byte_tokenizer
from tests.conftest import tiny_llama_config
from tests.test_evaluation import DATA, EosAfter, independent_greedy, write_rows

pytestmark = pytest.mark.slow


def model_and_tokenizer():
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(max_position_embeddings=4096)).eval(), byte_tokenizer()


def run_all(folder: Path) -> dict:
    """Every task evaluation of this test, with the forward passes each ran on this process."""
    model, tokenizer = model_and_tokenizer()
    hook = EosAfter(tokenizer.eos_token_id, steps=3)
    handle = hook.attach(model)
    results = {}
    for name, path, count in (("arc_challenge", DATA / "arc_challenge.jsonl", 5),
                              ("winogrande", DATA / "winogrande.jsonl", 1),  # rank 1 has no batch of its own
                              ("reversed_sum", folder / "reversed_sum.jsonl", 5)):
        before = hook.total
        results[name] = evaluate(model, tokenizer, load_task(name, path, max_examples=count), batch_size=2)
        results[name]["passes"] = hook.total - before
    handle.remove()
    return results


def worker(rank: int, folder: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        results = run_all(Path(folder))
        # generations that stop at different steps on the two ranks: both still run the same passes
        model, tokenizer = model_and_tokenizer()
        hook = EosAfter(tokenizer.eos_token_id, steps=2 + 3 * rank)
        handle = hook.attach(model)
        greedy_generate(model, [tokenizer.encode("1+1=")], max_new_tokens=20, pad_token_id=0,
                        eos_token_id=tokenizer.eos_token_id, stopped=lambda tokens: False)
        handle.remove()
        results["uneven_generation_passes"] = hook.total
        (Path(folder) / f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one(tmp_path):
    model, tokenizer = model_and_tokenizer()
    rows = []
    for index, prompt in enumerate(["12+345=", "rev 3142=", "sort 3142=", "count a in abca=", "rev 12+345="]):
        text = tokenizer.decode(independent_greedy(model, encode_prompt(tokenizer, prompt, True), 3, banned=2))
        rows.append({"prompt": prompt, "response": text if index % 2 == 0 else text + "x"})
    write_rows(tmp_path / "reversed_sum.jsonl", rows)
    single = run_all(tmp_path)
    assert single["reversed_sum"]["exact_match"] == pytest.approx(3 / 5)

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(worker, args=(str(tmp_path), port), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    for name, result in single.items():
        for rank in ranks:
            assert {k: v for k, v in rank[name].items() if k != "passes"} == {
                k: v for k, v in result.items() if k != "passes"}, name
        # batches: arc 3 (ranks run 2 each), winogrande 1 (1 each), reversed_sum 3 generations of 4 passes
        assert ranks[0][name]["passes"] == ranks[1][name]["passes"]
    assert [rank["arc_challenge"]["passes"] for rank in ranks] == [2, 2]
    assert [rank["reversed_sum"]["passes"] for rank in ranks] == [8, 8]
    assert [rank["uneven_generation_passes"] for rank in ranks] == [6, 6]
