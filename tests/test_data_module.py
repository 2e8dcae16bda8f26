"""SFTDataModule and the resumable loader: arguments, validation split, shuffling, packing, exact mid-epoch
resume."""

import json
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from jsonargparse import ArgumentError, ArgumentParser
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_sft.data import ResumableDataLoader, ResumableSampler, SFTDataModule
from lightning_sft.tokenizer import byte_tokenizer
from tests.data_helpers import BOS, EOS, ids, write_jsonl


@pytest.fixture
def rows_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "rows.jsonl", [{"text": f"sample {i:02d}"} for i in range(40)])


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"train": "missing.jsonl"}, FileNotFoundError, "train: no file 'missing.jsonl'"),
        ({"train": "rows.txt"}, ValueError, "suffix '.txt'"),
        ({"train": {"path": "openai/gsm8k"}}, ValueError, "train=.*needs `path` and `split`"),
        ({"train": 3}, ValueError, "train=3: pass a file path"),
        ({"val": "missing.jsonl"}, FileNotFoundError, "val: no file"),
        ({"format": "xml"}, ValueError, "format='xml'"),
        ({"adapter": "gsm9k"}, ValueError, "adapter='gsm9k'"),
        ({"batch_size": 0}, ValueError, "batch_size=0"),
        ({"val_fraction": 1.0}, ValueError, r"val_fraction=1.0; pass a number in \[0, 1\)"),
        ({"val_fraction": -0.1}, ValueError, "val_fraction=-0.1"),
        ({"num_workers": -1}, ValueError, "num_workers=-1"),
    ],
)
def test_data_module_validates_arguments(rows_file, monkeypatch, overrides, error, match):
    monkeypatch.chdir(rows_file.parent)
    (rows_file.parent / "rows.txt").write_text("x\n")
    with pytest.raises(error, match=match):
        SFTDataModule(**{"train": str(rows_file), **overrides})


@pytest.mark.parametrize(
    ("key", "value"),
    [("batch_size", "2.0"), ("val_fraction", "abc"), ("seed", "x"), ("packing", "maybe"), ("num_workers", "1.5")],
)
def test_argument_types_are_checked_by_the_cli_parser(rows_file, key, value):
    """SFTDataModule checks values, not types: LightningCLI's parser (jsonargparse) rejects a wrong type."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(SFTDataModule, "data")
    with pytest.raises(ArgumentError, match=rf'"data.{key}":\s+Expected a'):
        parser.parse_args(["--data.train", str(rows_file), f"--data.{key}", value])


def test_data_module_needs_a_tokenizer(rows_file):
    data = SFTDataModule(str(rows_file))
    with pytest.raises(ValueError, match="takes the tokenizer from the LightningModule's `tokenizer`"):
        data.setup("fit")


def test_data_module_loads_a_tokenizer_by_path(rows_file, tmp_path):
    byte_tokenizer().save_pretrained(tmp_path / "tokenizer")
    data = SFTDataModule(str(rows_file), tokenizer=str(tmp_path / "tokenizer"), val_fraction=0)
    data.setup("fit")
    assert data.train_examples[0]["input_ids"] == [BOS] + ids(data.tokenizer, "sample 00") + [EOS]


def texts(tokenizer, examples: list[dict]) -> list[str]:
    return [tokenizer.decode(example["input_ids"], skip_special_tokens=True) for example in examples]


def data_module(source, tokenizer, **kwargs) -> SFTDataModule:
    data = SFTDataModule(source, **kwargs)
    data.tokenizer_name = None
    data.trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    data.trainer.strategy.connect(_ModuleWithTokenizer(tokenizer))
    data.setup("fit")
    return data


class _ModuleWithTokenizer(pl.LightningModule):
    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer


def test_validation_split_is_carved_by_seed(rows_file, tokenizer):
    first = data_module(str(rows_file), tokenizer, val_fraction=0.25, seed=1)
    again = data_module(str(rows_file), tokenizer, val_fraction=0.25, seed=1)
    other = data_module(str(rows_file), tokenizer, val_fraction=0.25, seed=2)
    train, val = texts(tokenizer, first.train_examples), texts(tokenizer, first.val_examples)
    assert (len(train), len(val)) == (30, 10)
    assert sorted(train + val) == [f"sample {i:02d}" for i in range(40)]
    assert texts(tokenizer, again.val_examples) == val
    assert texts(tokenizer, other.val_examples) != val
    assert len(first.val_dataloader()) == 3  # 10 examples in batches of 4


def test_validation_split_must_leave_training_examples(tmp_path, tokenizer):
    rows = write_jsonl(tmp_path / "two.jsonl", [{"text": "a"}, {"text": "b"}])
    with pytest.raises(ValueError, match="has 2 usable examples: val_fraction=0.6 leaves none for training"):
        data_module(str(rows), tokenizer, val_fraction=0.6)
    data = data_module(str(rows), tokenizer, val_fraction=0.4)
    assert sorted(texts(tokenizer, data.train_examples + data.val_examples)) == ["a", "b"]


def test_data_module_errors_name_the_file_row(tmp_path, tokenizer):
    rows = [{"text": f"row {i}"} for i in range(10)]
    rows[7] = {"title": "no text"}
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(ValueError, match=rf"^{path}:8: missing field\(s\) \['text'\]; the row has \['title'\]"):
        data_module(str(path), tokenizer, format="text", val_fraction=0.3)


def test_no_validation_with_val_fraction_zero_and_explicit_val(rows_file, tmp_path, tokenizer):
    data = data_module(str(rows_file), tokenizer, val_fraction=0)
    assert len(data.train_examples) == 40 and data.val_dataloader() == []
    val = write_jsonl(tmp_path / "val.jsonl", [{"text": "held out"}])
    data = data_module(str(rows_file), tokenizer, val=str(val))
    assert len(data.train_examples) == 40 and texts(tokenizer, data.val_examples) == ["held out"]


def epoch_order(data: SFTDataModule, epoch: int) -> list[str]:
    loader = data.train_dataloader()
    loader.sampler.set_epoch(epoch)
    decode = data.tokenizer.batch_decode
    return [text for batch in loader for text in decode(batch["input_ids"], skip_special_tokens=True)]


def test_training_order_is_a_deterministic_shuffle_by_seed_and_epoch(rows_file, tokenizer):
    data = data_module(str(rows_file), tokenizer, val_fraction=0, seed=5)
    order = epoch_order(data, 0)
    assert sorted(order) == [f"sample {i:02d}" for i in range(40)]
    assert order != sorted(order)
    assert epoch_order(data_module(str(rows_file), tokenizer, val_fraction=0, seed=5), 0) == order
    assert epoch_order(data, 1) != order and sorted(epoch_order(data, 1)) == sorted(order)
    assert epoch_order(data_module(str(rows_file), tokenizer, val_fraction=0, seed=6), 0) != order


def test_sampler_shards_disjointly_by_rank():
    shards = [list(ResumableSampler(10, num_replicas=2, rank=rank, seed=0)) for rank in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 5
    assert sorted(shards[0] + shards[1]) == list(range(10))


def test_data_module_packing_batches(rows_file, tokenizer):
    data = data_module(str(rows_file), tokenizer, val_fraction=0.1, packing=True, max_length=40, batch_size=2)
    batch = next(iter(data.train_dataloader()))
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    assert batch["input_ids"].shape[1] <= 40
    example_length = len([BOS] + ids(tokenizer, "sample 00") + [EOS])
    assert sum(len(row["input_ids"]) for row in data.train_examples) == 36 * example_length


def test_loader_state_is_kept_until_the_resumed_epoch_starts(rows_file, tokenizer):
    data = data_module(str(rows_file), tokenizer, val_fraction=0, batch_size=4)
    loader = data.train_dataloader()
    state = {**loader.state_dict(), "epoch": 1, "batches_consumed": 3}
    loader.load_state_dict(state)
    assert loader.state_dict() == state  # a checkpoint written before the first batch keeps the position
    loader.sampler.set_epoch(1)
    assert len(list(loader)) == 10 - 3 and loader.state_dict() == {**state, "batches_consumed": 10}


def test_loader_state_with_another_layout_warns_and_approximates(rows_file, tokenizer):
    data = data_module(str(rows_file), tokenizer, val_fraction=0, batch_size=4)
    loader = data.train_dataloader()
    state = {**loader.state_dict(), "batches_consumed": 3, "batch_size": 2}
    with pytest.warns(UserWarning, match="exact batch order cannot be restored"):
        loader.load_state_dict(state)
    assert len(list(loader)) == 10 - 1  # 6 samples of 40 consumed = 1 batch of 4


# ------------------------------------------------------------------------------------------ exact resume


class BatchRecorder(pl.LightningModule):
    """Records the texts of every training batch it receives; writes them per rank when training ends."""

    def __init__(self, record: Path):
        super().__init__()
        self.tokenizer = byte_tokenizer()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.record = record
        self.batches: list[list[str]] = []

    def training_step(self, batch, batch_idx):
        self.batches.append(self.tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True))
        return self.weight * batch["labels"].float().mean()

    def validation_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_train_end(self):
        Path(f"{self.record}.rank{self.global_rank}.json").write_text(json.dumps(self.batches))


def fit(tmp_path: Path, name: str, max_steps: int, *, ckpt_path=None, save_every=None, devices=1, accumulate=1,
        **settings) -> tuple[pl.Trainer, list[list[list[str]]]]:
    """Fit a BatchRecorder on 24 rows (21 for training: 11 batches of 2 per epoch by default); returns the
    trainer and, per rank, the texts of each batch it trained on."""
    data_file = write_jsonl(tmp_path / "train.jsonl", [{"text": f"sample {i:02d}"} for i in range(24)])
    settings = {"batch_size": 2, "max_length": 16, "val_fraction": 0.125, "seed": 3, **settings}
    checkpoints = ModelCheckpoint(
        tmp_path / "checkpoints", filename="{step}", every_n_train_steps=save_every, save_top_k=-1
    )
    trainer = pl.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp_fork" if devices > 1 else "auto", max_steps=max_steps,
        accumulate_grad_batches=accumulate, logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, enable_checkpointing=bool(save_every), callbacks=[checkpoints] if save_every else [],
    )
    trainer.fit(BatchRecorder(tmp_path / name), SFTDataModule(str(data_file), **settings), ckpt_path=ckpt_path)
    records = [Path(f"{tmp_path / name}.rank{rank}.json") for rank in range(devices)]
    return trainer, [json.loads(record.read_text()) for record in records]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, list[list[str]]]:
    """30 steps (almost 3 epochs of 11 batches) with a checkpoint after every step."""
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    _, [batches] = fit(tmp_path, "full", 30, save_every=1)
    return tmp_path, batches


def test_uninterrupted_run_reshuffles_each_epoch(uninterrupted):
    _, batches = uninterrupted
    epochs = [[text for batch in batches[start:start + 11] for text in batch] for start in (0, 11)]
    assert len(batches) == 30 and sorted(epochs[0]) == sorted(epochs[1]) and epochs[0] != epochs[1]
    assert len(set(epochs[0])) == 21


@pytest.mark.parametrize("step", [4, 11, 15, 29])  # mid epoch 0, end of epoch 0, mid epoch 1, mid epoch 2
def test_resume_from_a_mid_epoch_checkpoint_sees_the_uninterrupted_batches(uninterrupted, step):
    tmp_path, batches = uninterrupted
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, [resumed] = fit(tmp_path, f"resumed{step}", 30, ckpt_path=tmp_path / "checkpoints" / f"step={step}.ckpt")
    assert resumed == batches[step:]
    assert not [warning for warning in caught if "not resumable" in str(warning.message)]


def test_resume_without_the_loader_state_would_repeat_the_epoch(uninterrupted, monkeypatch):
    """The control: with the state ignored, the resumed epoch restarts, so the comparison above can fail."""
    tmp_path, batches = uninterrupted
    monkeypatch.setattr(ResumableDataLoader, "load_state_dict", lambda self, state: None)
    _, [resumed] = fit(tmp_path, "ignored", 30, ckpt_path=tmp_path / "checkpoints" / "step=4.ckpt")
    assert resumed != batches[4:] and resumed[:7] == batches[:7]


def test_resume_with_gradient_accumulation_and_workers(tmp_path):
    settings = {"accumulate": 2, "num_workers": 2}  # 6 optimizer steps per epoch of 11 batches
    _, [batches] = fit(tmp_path, "full", 12, save_every=1, **settings)
    assert len(batches) == 22
    for step, consumed in [(3, 6), (8, 15)]:  # mid epoch 0; mid epoch 1 (11 + 4 batches)
        checkpoint = tmp_path / "checkpoints" / f"step={step}.ckpt"
        _, [resumed] = fit(tmp_path, f"resumed{step}", 12, ckpt_path=checkpoint, **settings)
        assert resumed == batches[consumed:]


@pytest.mark.slow
def test_resume_with_two_processes_sees_each_ranks_uninterrupted_batches(tmp_path):
    settings = {"devices": 2, "val_fraction": 0}  # 12 rows per rank: 6 batches of 2 per epoch
    _, ranks = fit(tmp_path, "full", 14, save_every=1, **settings)
    first_epoch = [text for rank in ranks for batch in rank[:6] for text in batch]
    assert sorted(first_epoch) == [f"sample {i:02d}" for i in range(24)]  # the ranks' shards are disjoint
    _, resumed = fit(tmp_path, "resumed", 14, ckpt_path=tmp_path / "checkpoints" / "step=8.ckpt", **settings)
    assert resumed == [rank[8:] for rank in ranks]


def test_max_length_is_checked_once_per_entry_point(rows_file, tokenizer, monkeypatch):
    """Issue 13: the check ran at four call sites along one path (init, tokenize, pack train, pack val)."""
    from lightning_sft.data import batching, datamodule, tokenization

    checked = []
    for module in (batching, datamodule, tokenization):
        monkeypatch.setattr(module, "check_max_length", checked.append)
    data_module(str(rows_file), tokenizer, packing=True, max_length=40, val_fraction=0.1)
    assert checked == [40]
