"""The training step's per-step costs (issue 21): fused AdamW on CUDA, no host sync between logging steps,
page-locked batches for CUDA, packed batches' loss equal to padded ones, and the step benchmark's plumbing."""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator
from transformers import LlamaForCausalLM

from lightning_sft.data import SFTDataModule, collate, collate_packed, pack_examples, tokenize_rows
from lightning_sft.module import lr_multiplier
from tests.conftest import tiny_llama_config
from tests.data_helpers import PAD
from tests.test_module import tiny_module, write_rows

ROOT = Path(__file__).parents[1]


def test_adamw_is_fused_on_cuda_only(monkeypatch):
    module = tiny_module()
    module.configure_model()
    trainer = L.Trainer(max_steps=10, accelerator="cpu", logger=False)
    module.trainer = trainer
    assert not module.configure_optimizers()["optimizer"].defaults["fused"]  # CPU: results as before
    monkeypatch.setattr(type(trainer.strategy), "root_device", property(lambda self: torch.device("cuda")))
    assert module.configure_optimizers()["optimizer"].defaults["fused"] is True


def test_training_reads_tensors_only_on_logging_steps(tmp_path, monkeypatch):
    """Lightning and the project call `Tensor.item` (a host sync on CUDA) only where the logger writes, progress
    bar on (torch's CPU AdamW reads its CPU step counters, not counted)."""
    data = SFTDataModule(train=str(write_rows(tmp_path / "train.jsonl", 40)), batch_size=4, val_fraction=0,
                         max_length=16)
    trainer = L.Trainer(max_steps=6, accelerator="cpu", default_root_dir=tmp_path, log_every_n_steps=3,
                        enable_checkpointing=False, enable_progress_bar=True)
    steps_reading = []
    item = torch.Tensor.item

    def spy(self: torch.Tensor) -> float:
        caller = sys._getframe(1).f_code.co_filename
        if "/lightning/" in caller or "/lightning_sft/" in caller:
            steps_reading.append(trainer.global_step)
        return item(self)

    monkeypatch.setattr(torch.Tensor, "item", spy)
    module = tiny_module(export_dir=None)
    trainer.fit(module, datamodule=data)
    assert steps_reading and set(steps_reading) <= {3, 6}
    # the last step's learning rate, read before its scheduler step: step 5 of 6, cosine, no warmup
    assert trainer.logged_metrics["train/lr"].item() == pytest.approx(1e-3 * lr_multiplier(5, 0, 6, "cosine", 0.0))


def test_batches_are_page_locked_for_cuda_only(tmp_path, tokenizer):
    data = SFTDataModule(train=str(write_rows(tmp_path / "train.jsonl")), batch_size=4, val_fraction=0.2,
                         max_length=16, tokenizer=None)
    data.tokenizer = tokenizer
    for accelerator, pinned in ((CPUAccelerator(), False), (CUDAAccelerator(), True)):
        data.trainer = SimpleNamespace(accelerator=accelerator, distributed_sampler_kwargs=None,
                                       lightning_module=SimpleNamespace(tokenizer=tokenizer))
        data.setup("fit")
        assert data.train_dataloader().pin_memory is pinned
        assert data.val_dataloader().pin_memory is pinned


@pytest.mark.parametrize("attention", ["eager", "sdpa", "flex_attention"])
def test_packed_and_padded_batches_of_the_same_examples_have_the_same_loss(tokenizer, attention):
    """Padded batches through sdpa (the reference) against packed ones through each attention (flex attention:
    the document mask transformers builds from position_ids; forward only, CPU flex has no backward)."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(attn_implementation="sdpa")).eval()
    rows = [{"prompt": f"{i} + {i * 7} =", "response": f" {i * 8}" * (i % 3 + 1)} for i in range(6)]
    examples = tokenize_rows(rows, tokenizer, max_length=40)
    padded = collate(examples, pad_token_id=PAD)
    packed = collate_packed(pack_examples(examples, max_length=40), pad_token_id=PAD)
    assert packed["input_ids"].numel() < padded["input_ids"].numel()
    with torch.no_grad():
        reference = model(**padded, use_cache=False).loss
        model.set_attn_implementation(attention)
        torch.testing.assert_close(model(**packed, use_cache=False).loss, reference)


def load_benchmark():
    spec = importlib.util.spec_from_file_location("step_overhead", ROOT / "benchmarks" / "step_overhead.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["step_overhead"] = module
    spec.loader.exec_module(module)
    return module


def test_step_overhead_benchmark_runs_every_kind_of_run_on_cpu(monkeypatch):
    """The benchmark's plumbing, as its CUDA runs use it, on the demo model for a few steps."""
    benchmark = load_benchmark()
    args = SimpleNamespace(device="cpu", model="demo", tokenizer="byte", runs=["bare", "auto", "auto+packed"],
                           steps=2, warmup=1, rounds=2)
    rows = benchmark.measure(args, report=lambda line: None)
    assert [row["run"] for row in rows] == args.runs
    assert all(row["steps"] == 2 and row["ms_per_1k_real"] > row["ms_per_1k_padded"] > 0 for row in rows[:2])
    assert rows[0]["vs_bare_padded"] == 1.0
    assert "| auto+packed | 2 |" in benchmark.table(rows)
