"""SFTModule: construction errors, learning-rate schedule, loss over supervised tokens, HF export (atomic, failure-safe),
the warning for bf16 on CPUs without it."""

import errno
import inspect
import math
import os
import stat
import warnings
from pathlib import Path
from shutil import rmtree

import lightning as L
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from lightning_sft.data import SFTDataModule
import lightning_sft.module
from lightning_sft import precision
from lightning_sft.module import SFTModule, export_hf, lr_multiplier
from lightning_sft.user_errors import user_error_message
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


def test_module_has_no_literal_ignore_index():
    """The label convention has one home (lightning_sft.labels.IGNORE_INDEX); module.py must import it."""
    source = inspect.getsource(lightning_sft.module)
    assert "-100" not in source and "IGNORE_INDEX" in source


@pytest.mark.parametrize(("onednn_bf16", "capabilities", "cost"), [
    (False, {"avx2": True}, "30x"),  # AVX2 only: torch emulates bf16 matmuls
    (True, {"avx512_f": True, "avx512_bf16": False}, "2x"),  # AVX512 without bf16: oneDNN converts
    (True, {"avx512_f": True, "avx512_bf16": True}, None),  # native (this machine)
    (True, {"architecture": "arm64", "bf16": True}, None),
])
def test_cpu_bf16_cost_reads_torch_capability_queries(monkeypatch, onednn_bf16, capabilities, cost):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn_bf16)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    found = precision.cpu_bf16_cost()
    assert found is None if cost is None else f"about {cost} slower than float32" in found


def test_cpu_bf16_cost_says_when_torch_cannot_tell(monkeypatch):
    """torch 2.6 (the lowest declared) has no torch.cpu.get_capabilities: say so rather than guess."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    assert "cannot tell whether this CPU has native bf16" in precision.cpu_bf16_cost()


@pytest.mark.parametrize(("trainer_precision", "dtype", "warns"), [
    ("bf16-true", "float32", True), ("bf16-mixed", "float32", True),
    ("32-true", "bfloat16", True),  # 32-true leaves bf16-loaded weights bf16
    ("32-true", "float32", False),
])
def test_bf16_on_a_cpu_without_it_warns_once_with_the_fix(monkeypatch, trainer_precision, dtype, warns):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    precision.warn_if_cpu_bf16_is_slow.cache_clear()
    module = tiny_module(dtype=dtype)
    module.trainer = L.Trainer(accelerator="cpu", precision=trainer_precision, logger=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module.setup("fit")
        module.setup("validate")
    messages = [str(warning.message) for warning in caught if "on CPU compute in bf16" in str(warning.message)]
    assert len(messages) == (1 if warns else 0), messages
    if warns:
        assert "about 30x slower than float32" in messages[0] and "`trainer.precision: 32-true`" in messages[0]
    precision.warn_if_cpu_bf16_is_slow.cache_clear()


def attached_module(tmp_path) -> SFTModule:
    module = tiny_module()
    module.configure_model()
    module.trainer = L.Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path)
    return module


def test_export_failure_keeps_the_old_export_and_leaves_no_staging(tmp_path, monkeypatch):
    module = attached_module(tmp_path)
    export = tmp_path / "hf_export"
    export_hf(module, export)
    before = {path.name: path.read_bytes() for path in export.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(module.tokenizer, "save_pretrained", disk_full)  # after the weights were written
    with torch.no_grad():
        next(module.model.parameters()).add_(1.0)
    with pytest.raises(OSError, match="No space left"):
        export_hf(module, export)
    assert {path.name: path.read_bytes() for path in export.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["hf_export"]


def test_export_removes_staging_left_by_a_killed_export(tmp_path):
    (tmp_path / ".hf_export.staging-killed").mkdir()
    (tmp_path / ".hf_export.staging-killed" / "model.safetensors").write_bytes(b"half")
    export_hf(attached_module(tmp_path), tmp_path / "hf_export")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["hf_export"]


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=oct)
def test_export_folder_mode_follows_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        export_hf(attached_module(tmp_path), tmp_path / "hf_export")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "hf_export").stat().st_mode) == 0o777 & ~umask


def test_export_swap_deletes_the_old_export_only_once_the_new_one_is_in_place(tmp_path, monkeypatch):
    module = attached_module(tmp_path)
    export = tmp_path / "hf_export"
    export_hf(module, export)
    (export / "old-marker").write_text("the previous export")
    removed = []

    def checked_rmtree(path, *args, **kwargs):
        # at every deletion the export folder is there and already the new one
        assert Path(path) != export and (export / "config.json").exists() and not (export / "old-marker").exists()
        removed.append(Path(path))
        rmtree(path, *args, **kwargs)

    monkeypatch.setattr(lightning_sft.module.shutil, "rmtree", checked_rmtree)
    export_hf(module, export)
    assert [path.name.startswith(".hf_export.old-") for path in removed] == [True]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["hf_export"]


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


def _tree(folder: Path) -> dict[str, bytes | str]:
    """Every entry under `folder`: file bytes, link targets, folder marks."""
    return {path.relative_to(folder).as_posix(): (os.readlink(path) if path.is_symlink() else
                                                  path.read_bytes() if path.is_file() else "dir")
            for path in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("export_dir", [".", "..", "head_patterns", "users_folder", "link_to_export"])
def test_export_dir_that_is_no_earlier_export_is_refused_before_training(tmp_path, export_dir):
    """The export replaces only an earlier export of this project (its marker file); the run's own folder, a
    folder above it, another folder of the run or of the user, or a link are refused in one line, untouched."""
    run = tmp_path / "run"
    (run / "head_patterns").mkdir(parents=True)
    (run / "head_patterns" / "index.json").write_text("{}")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (tmp_path / "users_folder").mkdir()
    (tmp_path / "users_folder" / "thesis.tex").write_text("years of work")
    export_hf(attached_module(tmp_path / "earlier"), tmp_path / "earlier" / "hf_export")
    (tmp_path / "link_to_export").symlink_to(tmp_path / "earlier" / "hf_export", target_is_directory=True)
    target = str(tmp_path / export_dir) if export_dir in ("users_folder", "link_to_export") else export_dir
    data = SFTDataModule(train=str(write_rows(tmp_path / "train.jsonl")), batch_size=4, val_fraction=0)
    before = _tree(tmp_path)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        default_root_dir=run, enable_progress_bar=False)
    with pytest.raises(ValueError, match="export_dir") as error:
        trainer.fit(tiny_module(export_dir=target), datamodule=data)
    assert trainer.global_step == 0 and _tree(tmp_path) == before
    assert user_error_message(error.value) is not None and "\n" not in str(error.value)
    with pytest.raises(ValueError, match="export_dir"):  # the export itself checks again at the end
        export_hf(attached_module(run), (run / target))
    assert _tree(tmp_path) == before


def test_export_replaces_an_earlier_export_and_clears_a_link_left_aside_by_an_old_swap(tmp_path):
    export_hf(attached_module(tmp_path), tmp_path / "hf_export")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / ".hf_export.old-0123").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "hf_export" / "stale.txt").write_text("from the earlier export")
    export_hf(attached_module(tmp_path), tmp_path / "hf_export")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["elsewhere", "hf_export"]
    assert not (tmp_path / "hf_export" / "stale.txt").exists() and (tmp_path / "hf_export" / "config.json").exists()
