"""TaskAccuracyCallback in real fits: schedule, values logged to every logger, no effect on training."""

import copy
import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from torch.utils.data import DataLoader
from transformers import LlamaForCausalLM

from callbacks import TaskAccuracyCallback
from lightning_sft.data import collate
from lightning_sft.evaluation import evaluate, load_task
from lightning_sft.tokenizer import byte_tokenizer
from tests.conftest import tiny_llama_config

DATA = Path(__file__).parents[1] / "data" / "benchmarks"


class HandWrittenModule(L.LightningModule):
    """A user's own LightningModule (the model in `self.net`, attention dropout on so RNG use shows), recording
    every training loss."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = LlamaForCausalLM(tiny_llama_config(attention_dropout=0.1, max_position_embeddings=4096))
        self.tokenizer = byte_tokenizer()
        self.losses: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        loss = self.net(**batch).loss
        self.losses.append(loss.detach().clone())
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=5e-3)


def train_loader(tokenizer, count: int = 24, batch_size: int = 4):
    examples = [{"input_ids": tokenizer(f"rev {i}+{i}={str(2 * i)[::-1]}")["input_ids"]} for i in range(count)]
    examples = [{"input_ids": e["input_ids"], "labels": e["input_ids"]} for e in examples]
    return DataLoader(examples, batch_size=batch_size, shuffle=True,
                      collate_fn=lambda batch: collate(batch, tokenizer.pad_token_id))


@pytest.fixture
def tasks(tmp_path):
    rows = [{"prompt": f"rev {i}+{i}=", "response": str(2 * i)[::-1]} for i in range(5)]
    (tmp_path / "reversed_sum.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return {"winogrande": str(DATA / "winogrande.jsonl"), "reversed_sum": str(tmp_path / "reversed_sum.jsonl")}


def make_trainer(folder, callbacks, max_steps, loggers=False):
    return L.Trainer(max_steps=max_steps, accelerator="cpu", logger=loggers, callbacks=callbacks,
                     enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                     default_root_dir=folder)


def test_logs_every_task_metric_to_every_logger_on_the_schedule(tmp_path, tasks):
    module = HandWrittenModule()
    base = copy.deepcopy(module.net)
    loggers = [TensorBoardLogger(tmp_path, name="tb"), CSVLogger(tmp_path, name="csv")]
    callback = TaskAccuracyCallback(tasks, max_examples=4, batch_size=3, max_new_tokens=4)
    make_trainer(tmp_path, [callback], max_steps=5, loggers=loggers).fit(module, train_loader(module.tokenizer))
    assert callback.done_steps == [0, 1, 2, 4, 5]  # log-spaced, then the end of training

    events = EventAccumulator(loggers[0].log_dir, size_guidance={"tensors": 0}).Reload()
    layouts = events.Tensors("custom_scalars__config__")
    assert len(layouts) == 5  # rewritten at every evaluation
    layout = layout_pb2.Layout.FromString(layouts[-1].tensor_proto.string_val[0])
    charts = {category.title: {chart.title: list(chart.multiline.tag) for chart in category.chart}
              for category in layout.category}
    assert charts == {"eval": {"eval accuracy": ["^eval/.*"]}}  # no charts for probes this run does not have
    for tag in ("eval/winogrande/acc", "eval/reversed_sum/exact_match"):
        assert [event.step for event in events.Scalars(tag)] == [0, 1, 2, 4, 5]
    with open(Path(loggers[1].log_dir) / "metrics.csv") as file:
        rows = [row for row in csv.DictReader(file) if row.get("eval/winogrande/acc")]
    assert [int(row["step"]) for row in rows] == [0, 1, 2, 4, 5]

    tokenizer = module.tokenizer
    winogrande = load_task("winogrande", tasks["winogrande"], max_examples=4)
    base_result = evaluate(base, tokenizer, winogrande)
    assert events.Scalars("eval/winogrande/acc")[0].value == pytest.approx(base_result["acc"])
    # the standard error beside it, off the accuracy chart (whose regex is ^eval/)
    assert events.Scalars("eval_stderr/winogrande/acc")[0].value == pytest.approx(base_result["acc_stderr"])
    assert [event.step for event in events.Scalars("eval_stderr/reversed_sum/exact_match")] == [0, 1, 2, 4, 5]
    assert float(rows[-1]["eval/winogrande/acc"]) == pytest.approx(
        evaluate(module.net, tokenizer, winogrande)["acc"])


def test_training_is_bit_identical_with_and_without_it(tmp_path, tasks):
    runs = []
    for callbacks in ([], [TaskAccuracyCallback(tasks, every_n_steps=1, max_examples=3, max_new_tokens=3)]):
        L.seed_everything(3)
        module = HandWrittenModule()
        make_trainer(tmp_path / str(len(callbacks)), callbacks, max_steps=4).fit(module, train_loader(module.tokenizer))
        runs.append(module)
    assert len(runs[0].losses) == 4
    for without, with_callback in zip(runs[0].losses, runs[1].losses, strict=True):
        assert torch.equal(without, with_callback)
    for name, tensor in runs[0].net.state_dict().items():
        assert torch.equal(tensor, runs[1].net.state_dict()[name]), name
    assert runs[1].net.training  # left in the mode it was found in


def test_arguments_checked_where_given(tasks):
    with pytest.raises(ValueError, match="unknown task 'arc'; known tasks: addition, arc_challenge"):
        TaskAccuracyCallback({"arc": "x.jsonl"})
    with pytest.raises(ValueError, match="either `steps` or `every_n_steps`"):
        TaskAccuracyCallback(tasks, steps=[0, 10], every_n_steps=5)
    with pytest.raises(ValueError, match=r"fewshot names tasks \['gsm8k'\]"):
        TaskAccuracyCallback(tasks, fewshot={"gsm8k": "g.jsonl"})
    callback = TaskAccuracyCallback(tasks, steps=[3, 0, 3])
    assert [step for step in range(6) if callback.schedule.is_due(step)] == [0, 3]
