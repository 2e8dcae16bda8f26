"""HeadActivationCallback in real fits: schedule, logged values, saved patterns, resume, no effect on training."""

import csv
import io
import json
import shutil
from pathlib import Path

import lightning as L
import matplotlib
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from torch.utils.data import DataLoader
from transformers import LlamaForCausalLM

import callbacks.head_activation as head_activation
from callbacks import HeadActivationCallback
from lightning_sft import stats
from lightning_sft.analysis.runs import load_runs
from lightning_sft.data import SFTDataModule, collate, collate_batches, load_examples
from lightning_sft.module import SFTModule
from lightning_sft.models import model_of
from lightning_sft.scorer.patterns import activation_pattern, score_heads
from lightning_sft.plots import PatternHeatmap
from lightning_sft.storage import load_index, load_pattern_file, load_patterns, pattern_path
from lightning_sft.tokenizer import byte_tokenizer
from lightning_sft.user_errors import user_error_message
from tests.conftest import tiny_llama_config
from tests.test_plots import cell_centres


class HandWrittenModule(L.LightningModule):
    """A user's own LightningModule: the transformers model lives in `self.net`."""

    def __init__(self, gradient_checkpointing: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.net = LlamaForCausalLM(tiny_llama_config())
        if gradient_checkpointing:
            self.net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.tokenizer = byte_tokenizer()

    def training_step(self, batch, batch_idx):
        return self.net(**batch).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=5e-3)


def write_probe(path: Path, offset: int, count: int = 6) -> Path:
    path.write_text("".join(
        json.dumps({"prompt": f"{i + offset}*2=", "response": str(2 * (i + offset))}) + "\n" for i in range(count)
    ))
    return path


@pytest.fixture
def probes(tmp_path, tokenizer):
    pre_tokenized = [{"input_ids": [1, 40, 41, 42, 43], "labels": [-100, -100, 41, 42, 43]},
                     {"input_ids": [1, 50, 51, 52], "labels": [-100, 50, 51, 52]}]
    return {"doubling": str(write_probe(tmp_path / "doubling.jsonl", 0)),
            "big": str(write_probe(tmp_path / "big.jsonl", 500)),
            "tokens": pre_tokenized}


def train_loader(tokenizer, count: int = 32, batch_size: int = 4):
    rows = [{"input_ids": tokenizer(f"{i}+{i}={2 * i}")["input_ids"]} for i in range(count)]
    examples = [{"input_ids": r["input_ids"], "labels": r["input_ids"]} for r in rows]
    return DataLoader(examples, batch_size=batch_size, collate_fn=lambda b: collate(b, tokenizer.pad_token_id))


def make_trainer(tmp_path, callbacks, max_steps=4, logger=True, **kwargs):
    if logger is True:
        logger = TensorBoardLogger(tmp_path, name="logs")
    return L.Trainer(max_steps=max_steps, accelerator="cpu", logger=logger, callbacks=callbacks,
                     enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                     enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks), **kwargs)


def probe_run(log_dir: str, name: str) -> EventAccumulator:
    """The events of probe `name`'s own TensorBoard run."""
    return EventAccumulator(str(Path(log_dir) / f"probe_{name}"), size_guidance={"images": 0}).Reload()


def custom_scalars_layout(log_dir: str | Path) -> dict[str, dict[str, list[str]]]:
    """The custom-scalars layout in a run's events: {category: {chart title: [tag regexes]}}."""
    events = EventAccumulator(str(log_dir)).Reload()
    if "custom_scalars__config__" not in events.Tags()["tensors"]:
        return {}
    layout = layout_pb2.Layout.FromString(events.Tensors("custom_scalars__config__")[-1].tensor_proto.string_val[0])
    return {category.title: {chart.title: list(chart.multiline.tag) for chart in category.chart}
            for category in layout.category}


def drift_layout_charts() -> dict[str, dict[str, list[str]]]:
    """Every chart the layout of a run with this callback alone must name (no accuracy chart: no
    TaskAccuracyCallback fills it), drift and concentration first, written out independently of the code."""
    return {
        "drift": {"pearson vs base": ["^drift/pearson$"], "mse vs base": ["^drift/mse$"]},
        "concentration": {statistic: [f"^concentration/{statistic}$"]
                            for statistic in ("gini", "cv", "kurtosis", "mean")},
        "head_probe": {"probe loss": ["^head_probe/loss$"]},
    }


def independent_gini(values: np.ndarray) -> float:
    values = values.ravel()
    return float(np.abs(values[:, None] - values[None, :]).sum() / (2 * values.size ** 2 * values.mean()))


def test_fit_in_hand_written_module_logs_and_saves(tmp_path, probes, tokenizer):
    module = HandWrittenModule()
    base_model = LlamaForCausalLM(tiny_llama_config())
    base_model.load_state_dict(module.net.state_dict())
    callback = HeadActivationCallback(probes, batch_size=4)
    trainer = make_trainer(tmp_path, [callback], max_steps=5)
    trainer.fit(module, train_loader(tokenizer))

    save_dir = Path(trainer.log_dir) / "head_patterns"
    patterns = load_patterns(save_dir)
    assert set(patterns) == set(probes)
    assert sorted(patterns["doubling"]) == [0, 1, 2, 4, 5]  # log-spaced, plus the end of training

    examples = load_examples(probes["doubling"], tokenizer)
    batches = [collate(examples, tokenizer.pad_token_id)]
    module.net.eval()
    torch.testing.assert_close(patterns["doubling"][5], activation_pattern(module.net, batches), rtol=1e-5, atol=0)
    torch.testing.assert_close(patterns["doubling"][0], activation_pattern(base_model, batches), rtol=1e-5, atol=0)

    events = EventAccumulator(trainer.log_dir, size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    for name in probes:  # each probe is its own run, so TensorBoard gives each its own colour and legend entry
        run = probe_run(trainer.log_dir, name)
        run_tags = run.Tags()
        for statistic in ("gini", "cv", "kurtosis", "mean"):
            assert f"concentration/{statistic}" in run_tags["scalars"]
        for tag in ("drift/pearson", "drift/mse", "head_probe/loss"):
            assert [e.step for e in run.Scalars(tag)] == [0, 1, 2, 4, 5]
        assert [e.step for e in run.Images("head_activation/pattern")] == [0, 1, 2, 4, 5]
        assert [e.step for e in run.Images("head_activation/change")] == [1, 2, 4, 5]
        assert "head_activation/scores" in run_tags["histograms"]
        assert not [tag for tag in tags["scalars"] if f"/{name}/" in tag and not tag.startswith("head_similarity/")]
    assert [e.step for e in events.Images("head_similarity/change_correlation")] == [1, 2, 4, 5]
    assert [e.step for e in events.Images("drift/figure")] == [5]
    assert "head_similarity/big/doubling" in tags["scalars"] or "head_similarity/doubling/big" in tags["scalars"]

    last = patterns["doubling"][5].numpy()
    doubling = probe_run(trainer.log_dir, "doubling")
    gini_logged = doubling.Scalars("concentration/gini")[-1].value
    assert gini_logged == pytest.approx(independent_gini(last), rel=1e-5)
    drift = doubling.Scalars("drift/mse")[-1].value
    assert drift == pytest.approx(float(((last - patterns["doubling"][0].numpy()) ** 2).mean()), rel=1e-5)
    assert doubling.Scalars("drift/pearson")[0].value == pytest.approx(1.0)
    assert doubling.Scalars("drift/pearson")[-1].value != pytest.approx(
        probe_run(trainer.log_dir, "big").Scalars("drift/pearson")[-1].value)  # two probes, two series
    index = load_index(save_dir)
    assert index["probes"]["doubling"]["metrics"][5]["concentration/gini"] == pytest.approx(gini_logged, rel=1e-6)
    assert custom_scalars_layout(trainer.log_dir) == drift_layout_charts()
    assert list(custom_scalars_layout(trainer.log_dir)) == ["drift", "concentration", "head_probe"]

    # head_similarity/<a>/<b>: Pearson correlation of the two probes' changes since step 0, flattened.
    tag = next(tag for tag in tags["scalars"] if tag.startswith("head_similarity/") and "doubling" in tag
               and "big" in tag)
    changes = [(patterns[name][5] - patterns[name][0]).double().numpy().ravel() for name in ("doubling", "big")]
    expected = float(np.corrcoef(*changes)[0, 1])
    assert [e.step for e in events.Scalars(tag)] == [1, 2, 4, 5]
    assert events.Scalars(tag)[-1].value == pytest.approx(expected, rel=1e-5)
    names, matrix = stats.change_correlation({name: change for name, change in zip(("doubling", "big"), changes)})
    assert matrix[0, 1] == pytest.approx(expected, rel=1e-9)


class LossRecorder(L.Callback):
    """Records the training loss of every batch (listed before the callback under test)."""

    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].detach().clone())


def test_callback_does_not_change_training_with_dropout_bf16_shuffling_and_schedule(tmp_path, probes):
    """Where probing could leak into training: dropout (RNG draws, train/eval mode), bf16-true, a shuffling
    SFTDataModule and a warmup + cosine learning rate. Every step's loss and the final weights must be equal
    bit for bit with and without the callback."""
    rows = "".join(json.dumps({"prompt": f"{i}+{i}=", "response": str(2 * i)}) + "\n" for i in range(40))
    (tmp_path / "train.jsonl").write_text(rows)
    config = {"model_type": "llama", **tiny_llama_config(attention_dropout=0.3).to_diff_dict()}
    results = []
    for with_callback in (False, True):
        L.seed_everything(7)
        module = SFTModule(config=config, tokenizer="byte", dtype="bfloat16", learning_rate=3e-3, warmup_steps=2,
                           lr_schedule="cosine", export_dir=None)
        data = SFTDataModule(str(tmp_path / "train.jsonl"), batch_size=4, val_fraction=0.0, seed=1,
                             max_length=32)
        recorder = LossRecorder()
        callbacks = [recorder] + ([HeadActivationCallback(probes, every_n_steps=1, batch_size=2,
                                                          save_dir=str(tmp_path / "patterns"))]
                                  if with_callback else [])
        trainer = make_trainer(tmp_path / str(with_callback), callbacks, max_steps=6, logger=False,
                               precision="bf16-true", limit_val_batches=0)
        trainer.fit(module, data)
        results.append((recorder.losses, module.model.state_dict()))
    (losses, weights), (probed_losses, probed_weights) = results
    assert len(losses) == 6
    assert len(set(map(float, losses))) > 1
    assert [float(loss) for loss in probed_losses] == [float(loss) for loss in losses]
    for name, tensor in weights.items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, probed_weights[name]), name
    assert sorted(load_patterns(tmp_path / "patterns")["doubling"]) == list(range(7))


def test_callback_does_not_change_training(tmp_path, probes, tokenizer):
    weights = []
    for callbacks in ([], [HeadActivationCallback(probes, every_n_steps=1)]):
        L.seed_everything(3)
        module = HandWrittenModule()
        make_trainer(tmp_path / str(len(callbacks)), callbacks, max_steps=4).fit(module, train_loader(tokenizer))
        weights.append(module.net.state_dict())
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name


def test_gradient_accumulation_probes_on_optimizer_steps_only(tmp_path, probes, tokenizer):
    callback = HeadActivationCallback({"doubling": probes["doubling"]}, every_n_steps=1, probe_at_end=False)
    trainer = make_trainer(tmp_path, [callback], max_steps=3, accumulate_grad_batches=3)
    calls = []
    original = callback._probe
    callback._probe = lambda t, m: (calls.append((t.global_step, t.fit_loop.epoch_loop.batch_progress.current.ready)),
                                    original(t, m))
    trainer.fit(HandWrittenModule(), train_loader(tokenizer, count=36))  # 9 micro-batches: 3 full steps
    assert [step for step, _ in calls] == [0, 1, 2, 3]
    assert [batches for _, batches in calls[1:]] == [3, 6, 9]  # after the last micro-batch of each step
    assert sorted(load_patterns(Path(trainer.log_dir) / "head_patterns")["doubling"]) == [0, 1, 2, 3]


def test_resume_keeps_base_pattern_and_probes_no_step_twice(tmp_path, probes, tokenizer, monkeypatch):
    def run(directory, max_steps, ckpt_path=None):
        L.seed_everything(5)
        module = HandWrittenModule()
        callback = HeadActivationCallback({"doubling": probes["doubling"]}, steps=[0, 1, 2, 3, 4],
                                          save_dir=str(directory / "patterns"))
        checkpoint = ModelCheckpoint(dirpath=directory / "ckpt", every_n_train_steps=2, save_top_k=-1)
        trainer = make_trainer(directory, [callback, checkpoint], max_steps=max_steps)
        # two batches an epoch: the step-2 checkpoint falls on an epoch boundary, where a plain
        # DataLoader resumes exactly (SFTDataModule's loader also resumes mid-epoch)
        trainer.fit(module, train_loader(tokenizer, count=8), ckpt_path=ckpt_path)
        return callback, trainer

    whole, _ = run(tmp_path / "whole", 4)
    _, first = run(tmp_path / "resumed", 2)
    calls = []
    monkeypatch.setattr(head_activation, "score_heads", lambda *a, **k: (calls.append(1), score_heads(*a, **k))[1])
    checkpoint = tmp_path / "resumed" / "ckpt" / "epoch=0-step=2.ckpt"
    resumed_callback, second = run(tmp_path / "resumed", 4, ckpt_path=str(checkpoint))
    assert second.log_dir != first.log_dir  # the resumed run logs to a new run, which also gets the layout
    assert custom_scalars_layout(first.log_dir) == custom_scalars_layout(second.log_dir) == drift_layout_charts()
    assert [e.step for e in probe_run(second.log_dir, "doubling").Scalars("drift/pearson")] == [3, 4]
    assert resumed_callback.done_steps == [0, 1, 2, 3, 4]
    assert len(calls) == 2  # steps 3 and 4 only
    torch.testing.assert_close(resumed_callback.base_patterns["doubling"], whole.base_patterns["doubling"])
    resumed = load_patterns(tmp_path / "resumed" / "patterns")["doubling"]
    uninterrupted = load_patterns(tmp_path / "whole" / "patterns")["doubling"]
    assert sorted(resumed) == sorted(uninterrupted) == [0, 1, 2, 3, 4]
    for step in uninterrupted:
        torch.testing.assert_close(resumed[step], uninterrupted[step], rtol=1e-5, atol=0)


def test_resumed_run_keeps_one_store_and_analyses_like_the_uninterrupted_run(tmp_path, probes, tokenizer):
    """Resumed with --ckpt_path into a new log version and a changed schedule: the patterns go on into the first
    version's directory, the base is restored, and the analysis of the run folder gives the numbers of the
    uninterrupted run."""
    two = {"doubling": probes["doubling"], "big": probes["big"]}

    def run(directory, max_steps, schedule, ckpt_path=None):
        L.seed_everything(5)
        module = HandWrittenModule()
        callback = HeadActivationCallback(two, log_images=False, **schedule)
        checkpoint = ModelCheckpoint(dirpath=directory / "ckpt", every_n_train_steps=2, save_top_k=-1)
        trainer = make_trainer(directory, [callback, checkpoint], max_steps=max_steps,
                               logger=TensorBoardLogger(directory, name="logs"))
        trainer.fit(module, train_loader(tokenizer, count=8), ckpt_path=ckpt_path)  # 2 batches an epoch
        return callback, trainer

    run(tmp_path / "whole", 4, {"every_n_steps": 1})
    run(tmp_path / "resumed", 2, {"every_n_steps": 1})
    checkpoint = tmp_path / "resumed" / "ckpt" / "epoch=0-step=2.ckpt"
    callback, trainer = run(tmp_path / "resumed", 4, {"steps": [3, 4]}, ckpt_path=str(checkpoint))
    first_store = tmp_path / "resumed" / "logs" / "version_0" / "head_patterns"
    assert Path(trainer.log_dir).name == "version_1" and not (Path(trainer.log_dir) / "head_patterns").exists()
    assert callback.done_steps == [0, 1, 2, 3, 4]
    assert sorted(load_patterns(first_store)["doubling"]) == [0, 1, 2, 3, 4]

    whole, resumed = load_runs([tmp_path / "whole"]), load_runs([tmp_path / "resumed"])
    assert resumed.sources["big"] == first_store
    for probe in two:
        assert resumed.base_and_last(probe)[::2] == (0, 4)
        np.testing.assert_allclose(resumed.change(probe), whole.change(probe), rtol=1e-5, atol=0)
    correlation = {run.sources["big"]: stats.change_correlation({p: run.change(p) for p in two})[1][0, 1]
                   for run in (whole, resumed)}
    assert len(set(np.round(list(correlation.values()), 6))) == 1, correlation
    torch.testing.assert_close(callback.base_patterns["big"], load_patterns(first_store)["big"][0])


def test_fresh_run_into_a_used_save_dir_is_refused(tmp_path, probes, tokenizer):
    save_dir = tmp_path / "patterns"
    first = HeadActivationCallback({"doubling": probes["doubling"]}, save_dir=str(save_dir), log_images=False)
    make_trainer(tmp_path / "a", [first], max_steps=1).fit(HandWrittenModule(), train_loader(tokenizer))
    second = HeadActivationCallback({"doubling": probes["doubling"]}, save_dir=str(save_dir), log_images=False)
    with pytest.raises(ValueError, match=f"{save_dir} already holds the patterns of another run .*{first.run_id}"
                                         ".*Pass a new save_dir"):
        make_trainer(tmp_path / "b", [second], max_steps=3).fit(HandWrittenModule(), train_loader(tokenizer))
    assert load_index(save_dir)["run_id"] == first.run_id
    assert sorted(load_patterns(save_dir)["doubling"]) == [0, 1]


def test_resume_from_a_checkpoint_without_the_callback_is_refused(tmp_path, probes, tokenizer):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    make_trainer(tmp_path, [checkpoint], max_steps=2).fit(HandWrittenModule(), train_loader(tokenizer))
    callback = HeadActivationCallback({"doubling": probes["doubling"]}, log_images=False)
    with pytest.raises(ValueError, match=r"resuming at step 2 from a checkpoint that holds no state of this callback"):
        make_trainer(tmp_path, [callback], max_steps=4).fit(
            HandWrittenModule(), train_loader(tokenizer), ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=2.ckpt"))


def _fit_with_checkpoints(directory: Path, probes, tokenizer, max_steps: int, ckpt_path: Path | None = None):
    """A fit logging under `directory` (its default_root_dir), checkpoints every 2 steps in `directory`/ckpt."""
    L.seed_everything(5)
    callback = HeadActivationCallback({"doubling": probes["doubling"]}, every_n_steps=1, log_images=False)
    checkpoint = ModelCheckpoint(dirpath=directory / "ckpt", every_n_train_steps=2, save_top_k=-1)
    trainer = make_trainer(directory, [callback, checkpoint], max_steps=max_steps)
    trainer.fit(HandWrittenModule(), train_loader(tokenizer, count=8), ckpt_path=ckpt_path)
    return callback


def _forged(checkpoint: Path, change) -> Path:
    """A copy of `checkpoint` whose HeadActivationCallback state `change(state)` edited."""
    content = torch.load(checkpoint, weights_only=True)
    (state,) = [value for key, value in content["callbacks"].items() if key.startswith("HeadActivationCallback")]
    change(state)
    forged = checkpoint.with_name("forged.ckpt")
    torch.save(content, forged)
    return forged


def test_a_copied_run_folder_resumes_into_its_copy(tmp_path, probes, tokenizer):
    """`cp -r a b`, then resume b's checkpoint under b: b's patterns go on, a's stay as they were."""
    _fit_with_checkpoints(tmp_path / "a", probes, tokenizer, 2)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    original = {path: path.read_bytes() for path in (tmp_path / "a").rglob("*") if path.is_file()}
    _fit_with_checkpoints(tmp_path / "b", probes, tokenizer, 4, tmp_path / "b" / "ckpt" / "epoch=0-step=2.ckpt")
    assert {path: path.read_bytes() for path in (tmp_path / "a").rglob("*") if path.is_file()} == original
    assert sorted(load_patterns(tmp_path / "b" / "logs" / "version_0" / "head_patterns")["doubling"]) == [0, 1, 2, 3, 4]


def test_a_checkpoint_does_not_choose_where_the_run_writes_or_its_base(tmp_path, probes, tokenizer):
    run = tmp_path / "run"
    first = _fit_with_checkpoints(run, probes, tokenizer, 2)
    checkpoint = run / "ckpt" / "epoch=0-step=2.ckpt"
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("mine")
    forged = _forged(checkpoint, lambda state: state.update(save_dir=str(victim)))
    with pytest.raises(ValueError, match=f"names the patterns directory {victim}, which lies outside this run's "
                                         f"default_root_dir {run}"):
        _fit_with_checkpoints(run, probes, tokenizer, 4, forged)
    assert [path.name for path in victim.iterdir()] == ["notes.txt"]

    step_2 = load_patterns(first._resolved_save_dir)["doubling"][2]
    forged = _forged(checkpoint, lambda state: state["base_patterns"].update(doubling=step_2))
    with pytest.raises(ValueError, match="base pattern of probe 'doubling' is not the step-0 pattern"):
        _fit_with_checkpoints(run, probes, tokenizer, 4, forged)
    assert sorted(load_patterns(first._resolved_save_dir)["doubling"]) == [0, 1, 2]


def test_base_is_probed_when_the_schedule_lacks_step_0(tmp_path, probes, tokenizer):
    module = HandWrittenModule()
    base_model = LlamaForCausalLM(tiny_llama_config())
    base_model.load_state_dict(module.net.state_dict())
    callback = HeadActivationCallback({"doubling": probes["doubling"]}, steps=[2], probe_at_end=False,
                                      log_images=False)
    trainer = make_trainer(tmp_path, [callback], max_steps=2, logger=CSVLogger(tmp_path, name="csv"))
    trainer.fit(module, train_loader(tokenizer))
    saved = load_patterns(Path(trainer.log_dir) / "head_patterns")["doubling"]
    assert sorted(saved) == [0, 2]
    examples = load_examples(probes["doubling"], tokenizer)
    torch.testing.assert_close(saved[0], activation_pattern(base_model, [collate(examples, 0)]), rtol=1e-5, atol=0)
    mse = load_index(Path(trainer.log_dir) / "head_patterns")["probes"]["doubling"]["metrics"][2]["drift/mse"]
    assert mse == pytest.approx(float(((saved[2] - saved[0]) ** 2).mean()), rel=1e-5)


def test_nested_model_attribute_and_per_example_scores(tmp_path, probes, tokenizer):
    """model_attribute names a nested model; per_example=True saves each example's pattern and loss, which
    must be what score_heads gives for the same model and batches."""
    module = HandWrittenModule()
    module.lit = torch.nn.Module()
    module.lit.backbone = torch.nn.Module()
    module.lit.backbone.model = module.net
    del module.net  # not a direct attribute any more
    module.training_step = lambda batch, batch_idx: module.lit.backbone.model(**batch).loss
    base_model = LlamaForCausalLM(tiny_llama_config())
    base_model.load_state_dict(module.lit.backbone.model.state_dict())
    with pytest.raises(ValueError, match="found 0 transformers models"):
        model_of(module, None, "HeadActivationCallback")
    with pytest.raises(ValueError, match=r"HandWrittenModule.lit.backbone \(Module\) has no attribute 'mdl'"):
        model_of(module, "lit.backbone.mdl", "HeadActivationCallback")
    with pytest.raises(ValueError, match="not an attribute path"):
        HeadActivationCallback(probes, model_attribute="lit..model")

    callback = HeadActivationCallback(probes, model_attribute="lit.backbone.model", per_example=True, batch_size=4,
                                      steps=[0], probe_at_end=False, log_images=False, save_dir=str(tmp_path / "p"))
    make_trainer(tmp_path, [callback], max_steps=1, logger=False).fit(module, train_loader(tokenizer))
    for name, source in probes.items():
        examples = load_examples(source, tokenizer) if isinstance(source, str) else source
        expected = score_heads(base_model, collate_batches(examples, tokenizer.pad_token_id, 4))
        saved = load_pattern_file(pattern_path(tmp_path / "p", name, 0))
        assert saved["per_example"].shape == (len(examples), 2, 4)
        torch.testing.assert_close(saved["per_example"], expected.per_example, rtol=1e-5, atol=0)
        torch.testing.assert_close(saved["losses"], expected.losses, rtol=1e-5, atol=0)
        torch.testing.assert_close(saved["pattern"], saved["per_example"].mean(0), rtol=1e-5, atol=0)


class PoisonWeights(L.Callback):
    """Makes the model diverge after optimizer step 1 (before the callback under test probes it)."""

    def on_train_batch_end(self, trainer, pl_module, *args):
        if trainer.global_step == 1:
            with torch.no_grad():
                pl_module.net.model.norm.weight.fill_(float("nan"))


def test_diverged_model_stops_with_probe_step_and_loss(tmp_path, probes, tokenizer):
    callback = HeadActivationCallback({"doubling": probes["doubling"]}, every_n_steps=1, log_images=False)
    trainer = make_trainer(tmp_path, [PoisonWeights(), callback], max_steps=3)
    with pytest.raises(FloatingPointError, match=r"probe 'doubling' at step 1: the model has diverged "
                                                 r"\(probe loss nan, 8 of 8 head scores not finite\)") as error:
        trainer.fit(HandWrittenModule(), train_loader(tokenizer))
    assert user_error_message(error.value) == str(error.value)  # train.py prints it as one line, no traceback


def test_two_identical_callbacks_say_what_to_change(tmp_path, probes, tokenizer):
    first, second = (HeadActivationCallback({"doubling": probes["doubling"]}, every_n_steps=2) for _ in range(2))
    trainer = make_trainer(tmp_path, [first, second], max_steps=2)  # no generic "state_key must be unique" here
    with pytest.raises(ValueError, match=r"two HeadActivationCallbacks probe \['doubling'\].*Merge them into one"):
        trainer.fit(HandWrittenModule(), train_loader(tokenizer))


def test_steps_beyond_the_last_epoch_warn(tmp_path, probes, tokenizer):
    callback = HeadActivationCallback({"doubling": probes["doubling"]}, steps=[0, 2, 50], log_images=False)
    trainer = make_trainer(tmp_path, [callback], max_steps=-1, max_epochs=1)  # 32 rows / 4 = 8 steps
    with pytest.warns(UserWarning, match=r"steps \[50\] are beyond the last step of this run, 8 .*max_epochs=1"):
        trainer.fit(HandWrittenModule(), train_loader(tokenizer))


def test_two_instances_keep_their_own_state(tmp_path, probes, tokenizer):
    frequent = HeadActivationCallback({"doubling": probes["doubling"]}, every_n_steps=1, probe_at_end=False)
    rare = HeadActivationCallback({"big": probes["big"]}, steps=[0, 3], probe_at_end=False)
    assert frequent.state_key != rare.state_key
    trainer = make_trainer(tmp_path, [frequent, rare], max_steps=3)
    trainer.fit(HandWrittenModule(), train_loader(tokenizer))
    assert frequent.done_steps == [0, 1, 2, 3] and rare.done_steps == [0, 3]
    saved = load_patterns(Path(trainer.log_dir) / "head_patterns")
    assert sorted(saved["doubling"]) == [0, 1, 2, 3] and sorted(saved["big"]) == [0, 3]
    assert rare.checkpoint_state()["done_steps"] == [0, 3]
    assert set(frequent.checkpoint_state()["base_patterns"]) == {"doubling"}


def test_two_instances_writing_the_same_probe_to_one_place_is_an_error(tmp_path, probes, tokenizer):
    first = HeadActivationCallback({"doubling": probes["doubling"]}, steps=[0])
    second = HeadActivationCallback({"doubling": probes["doubling"]}, steps=[0, 2])
    with pytest.raises(ValueError, match="doubling"):
        make_trainer(tmp_path, [first, second], max_steps=2).fit(HandWrittenModule(), train_loader(tokenizer))


def test_no_logger_still_saves_and_warns_once(tmp_path, probes, tokenizer):
    callback = HeadActivationCallback({"doubling": probes["doubling"]}, steps=[0, 2])
    trainer = make_trainer(tmp_path, [callback], max_steps=2, logger=False)
    with pytest.warns(UserWarning, match="no logger") as record:
        trainer.fit(HandWrittenModule(), train_loader(tokenizer))
    assert sum("no logger" in str(w.message) for w in record) == 1
    assert str(tmp_path / "head_patterns") in str([w.message for w in record if "no logger" in str(w.message)][0])
    assert sorted(load_patterns(tmp_path / "head_patterns")["doubling"]) == [0, 2]


def test_other_loggers_get_scalars_through_log_metrics(tmp_path, probes, tokenizer):
    logger = CSVLogger(tmp_path, name="csv")
    callback = HeadActivationCallback({"doubling": probes["doubling"]}, steps=[0, 2], probe_at_end=False)
    trainer = make_trainer(tmp_path, [callback], max_steps=2, logger=logger)
    trainer.fit(HandWrittenModule(), train_loader(tokenizer))
    rows = list(csv.DictReader(open(Path(logger.log_dir) / "metrics.csv")))
    logged = [row for row in rows if row.get("drift/doubling/pearson")]
    assert [int(row["step"]) for row in logged] == [0, 2]
    saved = load_patterns(Path(logger.log_dir) / "head_patterns")["doubling"]
    assert float(logged[1]["drift/doubling/mse"]) == pytest.approx(
        float(((saved[2] - saved[0]) ** 2).mean()), rel=1e-5)


def test_works_with_gradient_checkpointing(tmp_path, probes, tokenizer):
    callback = HeadActivationCallback({"doubling": probes["doubling"]}, steps=[0, 2])
    module = HandWrittenModule(gradient_checkpointing=True)
    trainer = make_trainer(tmp_path, [callback], max_steps=2)
    trainer.fit(module, train_loader(tokenizer))
    examples = load_examples(probes["doubling"], tokenizer)
    module.net.eval()
    expected = activation_pattern(module.net, [collate(examples, tokenizer.pad_token_id)])
    torch.testing.assert_close(load_patterns(Path(trainer.log_dir) / "head_patterns")["doubling"][2], expected,
                               rtol=1e-5, atol=0)
    assert module.net.is_gradient_checkpointing


@pytest.mark.parametrize("content, message", [
    (None, "missing"), ("", "empty"), ('{"prompt": "1", "response": "2"}\n{not json\n', ":2"),
])
def test_bad_probe_set_fails_at_fit_start_with_its_name(tmp_path, tokenizer, content, message):
    path = tmp_path / "broken.jsonl"
    if content is not None:
        path.write_text(content)
    callback = HeadActivationCallback({"broken_probe": str(path)})
    trainer = make_trainer(tmp_path, [callback], max_steps=500)
    module = HandWrittenModule()
    with pytest.raises((FileNotFoundError, ValueError), match="broken_probe") as error:
        trainer.fit(module, train_loader(tokenizer))
    assert trainer.global_step == 0
    if message != "missing":
        assert message in str(error.value)


@pytest.mark.parametrize("rows, message", [
    ([{"input_ids": [1, 2, 3]}], r"pre-tokenized example 0 needs 'input_ids' and 'labels' lists of integers .*"
                                 r"it has \['input_ids'\]"),
    ([{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [1, 2], "labels": 5}],
     r"pre-tokenized example 1 needs 'input_ids' and 'labels' lists of integers"),
    ([{"input_ids": [1, 2, 300], "labels": [-100, 2, 3]}],
     r"pre-tokenized example 0 holds token id 300, outside the model's vocabulary of 259 ids \(0 to 258\)"),
    ([{"input_ids": [1, 2, 3], "labels": [-100, 2, -5]}], r"pre-tokenized example 0 holds token id -5, outside"),
])
def test_bad_pre_tokenized_probe_is_refused_at_fit_start_naming_it(tmp_path, tokenizer, rows, message):
    callback = HeadActivationCallback({"tiny_probe": rows})
    trainer = make_trainer(tmp_path, [callback], max_steps=5)
    with pytest.raises(ValueError, match=r"^probe set 'tiny_probe' \(\d pre-tokenized examples\): " + message):
        trainer.fit(HandWrittenModule(), train_loader(tokenizer))
    assert trainer.global_step == 0 and not list(tmp_path.rglob("index.json"))


def test_steps_beyond_max_steps_warn(tmp_path, probes, tokenizer):
    callback = HeadActivationCallback({"doubling": probes["doubling"]}, steps=[0, 2, 50])
    with pytest.warns(UserWarning, match=r"\[50\].*max_steps=2"):
        make_trainer(tmp_path, [callback], max_steps=2).fit(HandWrittenModule(), train_loader(tokenizer))


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", "sp ace", "tab\t"])
def test_unsafe_probe_names_are_refused(name):
    with pytest.raises(ValueError, match="not safe"):
        HeadActivationCallback({name: "x.jsonl"})


def test_a_probe_name_too_long_for_a_file_name_is_refused_when_the_callback_is_built():
    """Before the model loads (the CLI builds callbacks first): the run folder `probe_<name>` must fit in 255 bytes."""
    with pytest.raises(ValueError, match="is 250 characters long; at most 249"):
        HeadActivationCallback({"p" * 250: "x.jsonl"})


def test_duplicate_probe_names_are_refused():
    with pytest.raises(ValueError, match="collide"):
        HeadActivationCallback({"GSM8K": "a.jsonl", "gsm8k": "b.jsonl"})


def test_schedule_arguments_are_validated():
    with pytest.raises(ValueError, match="either"):
        HeadActivationCallback({"p": "x"}, steps=[1], every_n_steps=2)
    with pytest.raises(ValueError, match="every_n_steps"):
        HeadActivationCallback({"p": "x"}, every_n_steps=0)
    log_spaced = HeadActivationCallback({"p": "x"})
    assert [s for s in range(70) if log_spaced.is_scheduled(s)] == [0, 1, 2, 4, 8, 16, 32, 64]


def test_layout_is_written_without_step_0_in_the_schedule(tmp_path, probes, tokenizer):
    callback = HeadActivationCallback({"doubling": probes["doubling"]}, steps=[2, 3], probe_at_end=False)
    trainer = make_trainer(tmp_path, [callback], max_steps=3)
    trainer.fit(HandWrittenModule(), train_loader(tokenizer))
    assert callback.done_steps == [0, 2, 3]  # the base (step 0) is probed whatever the schedule
    assert custom_scalars_layout(trainer.log_dir) == drift_layout_charts()


def test_images_keep_step_0_and_the_last_within_tensorboards_ten_and_fixed_colour_limits(tmp_path, probes, tokenizer):
    chosen = {"doubling": probes["doubling"], "big": probes["big"]}
    callback = HeadActivationCallback(chosen, every_n_steps=1, probe_at_end=False)
    trainer = make_trainer(tmp_path, [callback], max_steps=12)
    trainer.fit(HandWrittenModule(), train_loader(tokenizer, count=48))
    assert callback.done_steps == list(range(13))
    saved = load_patterns(Path(trainer.log_dir) / "head_patterns")
    shape = tuple(saved["doubling"][0].shape)
    for name in chosen:
        run = probe_run(trainer.log_dir, name)
        steps = [e.step for e in run.Images("head_activation/pattern")]
        assert len(steps) == 10 and steps[0] == 0 and steps[-1] == 12
        for kind, cmap in (("pattern", "viridis"), ("change", "RdBu_r")):
            images = run.Images(f"head_activation/{kind}")
            assert [e.step for e in images] == (steps if kind == "pattern" else steps[1:])
            values = np.stack([(saved[name][e.step] - (saved[name][0] if kind == "change" else 0)).numpy()
                               for e in images])
            # one pair of colour limits for every step: the drawn steps' range (symmetric for changes)
            high = np.abs(values).max() if kind == "change" else values.max()
            norm = matplotlib.colors.Normalize(-high if kind == "change" else values.min(), high)
            pixels = np.stack([np.asarray(Image.open(io.BytesIO(e.encoded_image_string)).convert("RGB"))
                               for e in images])
            rows, columns = cell_centres(PatternHeatmap(shape).axes, shape, pixels.shape[1])  # geometry: shape only
            colours = matplotlib.colormaps[cmap](norm(values), bytes=True)[..., :3]
            np.testing.assert_allclose(pixels[:, rows, columns].astype(int), colours.astype(int), atol=1)


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (40, 33)])
def test_png_bytes_decode_to_the_same_pixels(shape):
    rng = np.random.default_rng(sum(shape))
    flat = np.repeat(rng.integers(0, 256, (shape[0], 1, 3), dtype=np.uint8), shape[1], axis=1)  # repeated rows
    for pixels in (rng.integers(0, 256, (*shape, 3), dtype=np.uint8), flat, 255 - flat):  # wraps both ways
        image = Image.open(io.BytesIO(head_activation.png_bytes(pixels)))  # Pillow's decoder, checksums too
        image.load()
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (shape[1], shape[0]))
        np.testing.assert_array_equal(np.asarray(image), pixels)


def test_png_bytes_refuses_other_than_uint8_rgb():
    with pytest.raises(ValueError, match=r"uint8 RGB; got float64 \(2, 2, 3\)"):
        head_activation.png_bytes(np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match=r"got uint8 \(2, 2, 4\)"):
        head_activation.png_bytes(np.zeros((2, 2, 4), np.uint8))
