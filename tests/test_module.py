"""SFTModule: construction errors, learning-rate schedule, loss over supervised tokens, HF export."""

import math

import lightning as L
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from lightning_sft.data import SFTDataModule
from lightning_sft.module import SFTModule, lr_multiplier
from tests.conftest import tiny_llama_config

TINY = {"model_type": "llama", **tiny_llama_config().to_diff_dict()}


def tiny_module(**overrides) -> SFTModule:
    settings = dict(config=TINY, tokenizer="byte", dtype="float32", learning_rate=1e-3, export_dir="hf_export")
    settings.update(overrides)
    return SFTModule(**settings)


def write_rows(path, count=24):
    import json

    path.write_text("".join(json.dumps({"prompt": f"{i}+{i}=", "response": str(2 * i)}) + "\n" for i in range(count)))
    return path


def test_exactly_one_model_source_is_required():
    with pytest.raises(ValueError, match="exactly one of"):
        SFTModule(tokenizer="byte")
    with pytest.raises(ValueError, match="exactly one of"):
        SFTModule(pretrained="x", config=TINY)


def test_unknown_model_path_is_one_clear_line(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model") as error:
        SFTModule(pretrained=str(missing))
    assert "\n" not in str(error.value)
    assert error.value.__cause__ is None and error.value.__suppress_context__


def test_config_needs_model_type():
    with pytest.raises(ValueError, match="model_type"):
        SFTModule(config={"hidden_size": 8}, tokenizer="byte")


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_lr_multiplier_warmup_then_decay(schedule):
    values = [lr_multiplier(step, 4, 20, schedule, 0.1) for step in range(21)]
    assert values[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    if schedule == "constant":
        assert values[4:] == pytest.approx([1.0] * 17)
        return
    assert values[4] == pytest.approx(1.0) and values[20] == pytest.approx(0.1)
    progress = 8 / 16
    expected = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    assert values[12] == pytest.approx(0.1 + 0.9 * expected)
    assert all(a >= b for a, b in zip(values[4:], values[5:]))


def test_warmup_longer_than_training_fails_before_any_step(tmp_path):
    data = SFTDataModule(train=str(write_rows(tmp_path / "train.jsonl")), batch_size=4, val_fraction=0)
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        default_root_dir=tmp_path, enable_progress_bar=False)
    module = tiny_module(warmup_steps=3)
    with pytest.raises(ValueError, match="warmup_steps=3"):
        trainer.fit(module, datamodule=data)
    assert trainer.global_step == 0


def test_training_loss_is_mean_over_supervised_tokens(tokenizer):
    module = tiny_module()
    module.configure_model()
    batch = {
        "input_ids": torch.tensor([[1, 20, 21, 22, 2], [1, 30, 31, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
        "labels": torch.tensor([[-100, -100, 21, 22, 2], [-100, -100, 31, -100, -100]]),
    }
    logits = module(batch).logits.float()
    # independent: cross-entropy of each supervised token predicted from the previous position
    terms = [
        -torch.log_softmax(logits[b, t - 1], -1)[batch["labels"][b, t]]
        for b in range(2) for t in range(1, 5) if batch["labels"][b, t] != -100
    ]
    assert module(batch).loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)


def test_fit_logs_validation_and_exports_loadable_model(tmp_path):
    rows = write_rows(tmp_path / "train.jsonl", 40)
    data = SFTDataModule(train=str(rows), batch_size=4, val_fraction=0.2, max_length=16)
    module = tiny_module(weight_decay=0.1, warmup_steps=1)
    trainer = L.Trainer(max_steps=4, accelerator="cpu", default_root_dir=tmp_path, enable_progress_bar=False,
                        val_check_interval=2, enable_checkpointing=False, logger=False)
    trainer.fit(module, datamodule=data)
    assert "val/loss" in trainer.callback_metrics
    val_loss = trainer.callback_metrics["val/loss"].item()
    assert trainer.callback_metrics["val/perplexity"].item() == pytest.approx(math.exp(val_loss), rel=1e-4)
    export = tmp_path / "hf_export"
    assert (export / "config.json").exists() and list(export.glob("*.safetensors"))
    reloaded = AutoModelForCausalLM.from_pretrained(export)
    assert isinstance(reloaded, LlamaForCausalLM)
    for name, tensor in module.model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    assert (export / "tokenizer.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".hf_export")]  # no staging left


def test_weight_decay_skips_norms_and_biases():
    module = tiny_module(weight_decay=0.1)
    module.configure_model()
    trainer = L.Trainer(max_steps=10, accelerator="cpu", logger=False)
    module.trainer = trainer
    trainer.fit_loop.epoch_loop.max_steps = 10
    optimizer = module.configure_optimizers()["optimizer"]
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decayed["params"]) and all(p.ndim == 1 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(module.model.parameters()))


class _ModeRecorder(SFTModule):
    """Runs each batch's forward twice: with dropout active the two losses differ, in eval mode they are equal."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.same_loss_twice = {"train": [], "val": []}

    def training_step(self, batch, batch_idx):
        self.same_loss_twice["train"].append(bool(torch.equal(self(batch).loss, self(batch).loss)))
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.same_loss_twice["val"].append(bool(torch.equal(self(batch).loss, self(batch).loss)))
        return super().validation_step(batch, batch_idx)


def test_pretrained_model_trains_with_dropout_and_validates_without(tmp_path):
    """from_pretrained returns an eval-mode model; SFTModule must still train with dropout on."""
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(attention_dropout=0.5)).save_pretrained(tmp_path / "base")
    module = _ModeRecorder(pretrained=str(tmp_path / "base"), tokenizer="byte", dtype="float32", export_dir=None)
    data = SFTDataModule(train=str(write_rows(tmp_path / "train.jsonl")), batch_size=4, val_fraction=0.25)
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        default_root_dir=tmp_path, enable_progress_bar=False, num_sanity_val_steps=1,
                        val_check_interval=3)
    trainer.fit(module, datamodule=data)
    assert module.same_loss_twice["train"] == [False] * 3
    assert module.same_loss_twice["val"] and all(module.same_loss_twice["val"])
