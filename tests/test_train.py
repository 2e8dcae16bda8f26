"""train.py (LightningCLI): every shipped config parses; the demo config fits end to end offline; user errors
end in one line, bugs keep their traceback, SIGTERM exits 143 after Lightning's checkpoint."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForCausalLM

import lightning_sft.strategy  # noqa: F401  (strategy names used by the configs)
from lightning_sft.data import SFTDataModule
from lightning_sft.module import SFTModule
from lightning_sft.storage import load_patterns
from train import main

ROOT = Path(__file__).parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


class ParseOnlyCLI(LightningCLI):
    """The CLI's own parser and checks, without building the model, the data or the Trainer."""

    def instantiate_classes(self) -> None:
        pass


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch):
    """LightningCLI(args=...) also looks at sys.argv; pytest's own flags are not ours."""
    monkeypatch.setattr(sys, "argv", ["train.py"])


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: str(path.relative_to(ROOT)))
def test_shipped_config_parses(config):
    cli = ParseOnlyCLI(SFTModule, SFTDataModule, run=False, args=["--config", str(config)])
    settings = yaml.safe_load(config.read_text())
    assert cli.config.model.as_dict().keys() >= settings["model"].keys()
    assert cli.config.trainer.precision == settings["trainer"]["precision"]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: str(path.relative_to(ROOT)))
def test_cpu_configs_train_in_float32_and_gpu_configs_in_bf16(config):
    """float32 is fast on every CPU, bf16 only on those with native bf16 (issue 12); the paper's GPU runs are bf16."""
    settings = yaml.safe_load(config.read_text())
    on_cpu = settings["trainer"].get("accelerator") == "cpu"
    assert settings["trainer"]["precision"] == ("32-true" if on_cpu else "bf16-true")
    assert settings["model"].get("dtype", "bfloat16") == ("float32" if on_cpu else "bfloat16")


def test_misspelled_key_is_rejected(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text((ROOT / "configs" / "demo.yaml").read_text().replace("learning_rate:", "learning_rat:"))
    with pytest.raises(SystemExit):
        ParseOnlyCLI(SFTModule, SFTDataModule, run=False, args=["--config", str(config)])


def run_train(*args: str, cwd: Path = ROOT, returncode: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == returncode, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def write_tiny_config(directory: Path, callbacks: list[dict], **data: object) -> Path:
    """A 2-layer model on 64 rows: a fit of a few steps takes seconds."""
    rows = directory / "train.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"{i}+{i}=", "response": str(2 * i)}) + "\n" for i in range(64)))
    config = {
        "trainer": {"accelerator": "cpu", "devices": 1, "precision": "32-true", "max_steps": 20,
                    "enable_progress_bar": False, "limit_val_batches": 0, "default_root_dir": str(directory),
                    "callbacks": callbacks},
        "model": {"config": {"model_type": "llama", "vocab_size": 259, "hidden_size": 16, "intermediate_size": 32,
                             "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1},
                  "tokenizer": "byte", "dtype": "float32", "export_dir": None},
        "data": {"train": str(rows), "batch_size": 4, "max_length": 16, "val_fraction": 0, **data},
    }
    path = directory / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_sigterm_exits_143_after_the_checkpoint(tmp_path):
    checkpoint = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": str(tmp_path / "checkpoints"), "save_on_exception": True}}
    terminate = {"class_path": "tests.interrupt.TerminateAtStep", "init_args": {"step": 3}}
    config = write_tiny_config(tmp_path, [checkpoint, terminate])
    run_train("fit", "--config", str(config), returncode=128 + signal.SIGTERM)
    assert [path.name for path in (tmp_path / "checkpoints").iterdir()] == ["epoch=0-step=3.ckpt"]


def checkpoint_callbacks(config: Path) -> list[dict]:
    return [callback for callback in yaml.safe_load(config.read_text())["trainer"].get("callbacks", [])
            if callback["class_path"].endswith("ModelCheckpoint")]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_shipped_config_checkpoints_periodically_and_when_stopped(config):
    """A preempted job (SIGTERM) or a crash keeps a checkpoint; a killed one (SIGKILL) the latest periodic one."""
    settings = yaml.safe_load(config.read_text())["trainer"]
    assert settings.get("enable_checkpointing", True)
    (checkpoint,) = checkpoint_callbacks(config)
    assert checkpoint["init_args"]["save_on_exception"] is True and checkpoint["init_args"]["save_last"] == "link"
    assert 0 < checkpoint["init_args"]["every_n_train_steps"] <= settings.get("max_steps", 10**9)


def test_the_shipped_checkpointing_leaves_a_checkpoint_on_sigterm_that_resumes(tmp_path):
    terminate = {"class_path": "tests.interrupt.TerminateAtStep", "init_args": {"step": 3}}
    config = write_tiny_config(tmp_path, [*checkpoint_callbacks(ROOT / "configs" / "demo.yaml"), terminate])
    run_train("fit", "--config", str(config), returncode=128 + signal.SIGTERM)
    checkpoints = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    assert sorted(path.name for path in checkpoints.iterdir()) == ["epoch=0-step=3.ckpt", "last.ckpt"]
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 3
    cli = main(["fit", "--config", str(config), "--trainer.callbacks", "[]", "--trainer.max_steps", "4",
                "--ckpt_path", str(checkpoints / "last.ckpt")])
    assert cli.trainer.global_step == 4


def tiny_run_with_patterns(tmp_path: Path) -> Path:
    """A tiny config whose runs all log into one folder (a fixed logger version), with head patterns."""
    probe = {"class_path": "callbacks.HeadActivationCallback",
             "init_args": {"probes": {"p": [{"input_ids": [1, 40, 41], "labels": [-100, 40, 41]}]},
                           "log_images": False}}
    config = write_tiny_config(tmp_path, [probe])
    settings = yaml.safe_load(config.read_text())
    settings["trainer"]["max_steps"] = 2
    settings["trainer"]["logger"] = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                                     "init_args": {"save_dir": str(tmp_path), "version": "fixed"}}
    config.write_text(yaml.safe_dump(settings))
    return config


def test_a_run_refused_for_its_folder_keeps_that_folders_config(tmp_path):
    config = tiny_run_with_patterns(tmp_path)
    main(["fit", "--config", str(config)])
    recorded = tmp_path / "lightning_logs" / "fixed" / "config.yaml"
    first = recorded.read_text()
    with pytest.raises(ValueError, match="already holds the patterns of another run"):
        main(["fit", "--config", str(config), "--model.learning_rate", "0.5"])
    assert recorded.read_text() == first


def test_a_checkpoints_settings_are_compared_never_applied(tmp_path):
    """LightningCLI would apply a checkpoint's hyper_parameters over the user's model settings: here a
    checkpoint naming another export_dir (a folder of the user's, which the export would replace) and
    learning rate is refused, naming both; the genuine checkpoint resumes."""
    checkpoint = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True}}
    config = write_tiny_config(tmp_path, [checkpoint])
    main(["fit", "--config", str(config), "--trainer.max_steps", "2"])
    victim = tmp_path / "users_folder"
    victim.mkdir()
    (victim / "notes.txt").write_text("mine")
    content = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    content["hyper_parameters"].update(export_dir=str(victim), learning_rate=0.5)
    torch.save(content, tmp_path / "forged.ckpt")
    with pytest.raises(ValueError) as error:
        main(["fit", "--config", str(config), "--trainer.max_steps", "3", "--ckpt_path", str(tmp_path / "forged.ckpt")])
    message = str(error.value)
    assert f"export_dir: \"{victim}\" in the checkpoint, null here" in message, message
    assert "learning_rate: 0.5 in the checkpoint, 1e-05 here" in message, message
    assert [path.name for path in victim.iterdir()] == ["notes.txt"]
    cli = main(["fit", "--config", str(config), "--trainer.max_steps", "3",
                "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt")])
    assert cli.trainer.global_step == 3


def assert_one_line_error(result: subprocess.CompletedProcess, *names: str) -> None:
    last = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr and "Union subtypes" not in result.stderr, result.stderr[-3000:]
    assert last.startswith("train.py: error: ") and all(name in last for name in names), last


def test_bad_callback_value_is_one_line_naming_the_field(tmp_path):
    callback = {"class_path": "callbacks.HeadActivationCallback",
                "init_args": {"probes": {"p": str(tmp_path / "train.jsonl")}, "batch_size": -3}}
    result = run_train("fit", "--config", str(write_tiny_config(tmp_path, [callback])), returncode=1)
    assert_one_line_error(result, "HeadActivationCallback", "batch_size=-3")


def test_missing_data_file_is_one_line_naming_the_file(tmp_path):
    config = write_tiny_config(tmp_path, [], train=str(tmp_path / "no-such-rows.jsonl"))
    result = run_train("fit", "--config", str(config), returncode=1)
    assert_one_line_error(result, "no-such-rows.jsonl")


def test_a_bug_keeps_its_traceback(tmp_path):
    config = write_tiny_config(tmp_path, [{"class_path": "tests.interrupt.BuggyCallback"}])
    result = run_train("fit", "--config", str(config), returncode=1)
    assert "Traceback" in result.stderr and "ValueError: invalid literal for int()" in result.stderr
    assert "train.py: error:" not in result.stderr


@pytest.mark.slow
@pytest.mark.lowest
def test_demo_config_fits_offline_and_leaves_checkpoint_events_export(tmp_path):
    """The demo config with TaskAccuracyCallback added beside its HeadActivationCallback."""
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    config["trainer"]["callbacks"].append({"class_path": "callbacks.TaskAccuracyCallback", "init_args": {
        "tasks": {"addition": str(ROOT / "demo" / "data" / "addition_probe.jsonl")}, "steps": [0, 8],
        "max_examples": 4, "max_new_tokens": 4}})
    (tmp_path / "both.yaml").write_text(yaml.safe_dump(config))
    run_train("fit", "--config", str(tmp_path / "both.yaml"), "--trainer.default_root_dir", str(tmp_path),
              "--trainer.max_steps", "8", "--trainer.val_check_interval", "4", "--model.warmup_steps", "2",
              "--trainer.log_every_n_steps", "2")
    run_dir = tmp_path / "lightning_logs" / "version_0"
    assert list((run_dir / "checkpoints").glob("*.ckpt"))
    events = EventAccumulator(str(run_dir)).Reload()
    losses = [event.value for event in events.Scalars("train/loss")]
    assert losses and all(value > 0 for value in losses)
    assert events.Scalars("val/loss")
    export = run_dir / "hf_export"
    model = AutoModelForCausalLM.from_pretrained(export)
    assert model.config.num_hidden_layers == 4 and list(export.glob("*.safetensors"))
    assert "hp_metric" not in events.Tags()["scalars"]
    assert [event.step for event in events.Scalars("eval/addition/exact_match")] == [0, 8]
    probes = ("addition", "reversal", "sorting", "counting", "reversed_sum")
    for probe in probes:  # the callback is on in the demo: drift and concentration curves, a run per probe
        probe_events = EventAccumulator(str(run_dir / f"probe_{probe}")).Reload()
        for tag in ("drift/pearson", "drift/mse", "concentration/gini", "head_probe/loss"):
            # the config's steps up to 8 (0, 1, 4), and the end
            assert [event.step for event in probe_events.Scalars(tag)] == [0, 1, 4, 8]
    assert sorted(load_patterns(run_dir / "head_patterns")) == sorted(probes)


def test_default_logger_writes_no_hp_metric_placeholder(tmp_path):
    cli = main(["--config", str(ROOT / "configs" / "demo.yaml"), "--trainer.default_root_dir", str(tmp_path),
                "--trainer.callbacks", "[]"], run=False)
    logger = cli.trainer.logger
    assert isinstance(logger, TensorBoardLogger) and Path(logger.save_dir) == tmp_path
    logger.log_hyperparams({"learning_rate": 0.003})  # what the Trainer does at fit start
    logger.finalize("success")
    events = EventAccumulator(logger.log_dir).Reload()
    assert "hp_metric" not in events.Tags()["scalars"]


def test_print_config_shows_every_option():
    result = run_train("fit", "--config", "configs/demo.yaml", "--print_config")
    printed = yaml.safe_load(result.stdout)
    assert printed["model"]["learning_rate"] == 0.003
    assert {"gradient_checkpointing", "warmup_steps", "export_dir"} <= printed["model"].keys()
    assert {"packing", "val_fraction", "adapter"} <= printed["data"].keys()


@pytest.mark.slow
def test_validate_subcommand(tmp_path):
    result = run_train("validate", "--config", "configs/demo.yaml", "--trainer.default_root_dir", str(tmp_path),
                       "--trainer.limit_val_batches", "2", "--trainer.callbacks", "[]")
    assert "val/loss" in result.stdout + result.stderr
