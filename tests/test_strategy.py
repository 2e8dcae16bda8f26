"""Real DeepSpeed ZeRO-2/ZeRO-3 fits with 2 CPU processes (gloo, bf16): checkpoint, exact resume, HF export."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from lightning_sft.strategy import DeepSpeedStrategy
from tests.conftest import tiny_llama_config

ROOT = Path(__file__).parents[1]


def test_zero_stage_4_is_refused_before_any_work():
    with pytest.raises(ValueError, match="stage=4"):
        DeepSpeedStrategy(stage=4)


def write_run_config(directory: Path, *, stage: int, max_steps: int, pretrained: Path | None = None) -> Path:
    rows = directory / "train.jsonl"
    if not rows.exists():
        rows.write_text("".join(
            json.dumps({"prompt": f"{i} + {i * 7} =", "response": f" {i * 8}"}) + "\n" for i in range(64)
        ))
    model = {"pretrained": str(pretrained)} if pretrained else {
        "config": {"model_type": "llama", **tiny_llama_config().to_diff_dict()}, "tokenizer": "byte"}
    config = {
        "seed_everything": 7,
        "trainer": {
            "accelerator": "cpu", "devices": 2, "precision": "bf16-true", "max_steps": max_steps,
            "accumulate_grad_batches": 2, "gradient_clip_val": 1.0, "enable_progress_bar": False,
            "limit_val_batches": 2, "val_check_interval": 4, "log_every_n_steps": 1,
            "default_root_dir": str(directory),
            "strategy": {"class_path": "lightning_sft.strategy.DeepSpeedStrategy", "init_args": {"stage": stage}},
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"every_n_train_steps": 3, "save_top_k": -1}}],
        },
        "model": {**model, "dtype": "bfloat16", "learning_rate": 1e-3, "warmup_steps": 1},
        "data": {"train": str(rows), "batch_size": 2, "max_length": 24, "val_fraction": 0.1},
    }
    path = directory / f"stage{stage}_{max_steps}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def fit(config: Path, *extra: str) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "fit", "--config", str(config), *extra],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-8000:]


def exported_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    weights = {}
    for file in sorted((run_dir / "hf_export").glob("*.safetensors")):
        weights.update(load_file(file))
    return weights


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_fit_resume_and_export(tmp_path, stage):
    """Uninterrupted 6 steps == 3 steps, checkpoint, resume to 6; the export reloads with transformers."""
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    whole.mkdir(), halves.mkdir()
    fit(write_run_config(whole, stage=stage, max_steps=6))
    fit(write_run_config(halves, stage=stage, max_steps=3))
    checkpoint = next((halves / "lightning_logs" / "version_0" / "checkpoints").glob("*step=3*"))
    assert checkpoint.is_dir()  # DeepSpeed's sharded checkpoint directory
    fit(write_run_config(halves, stage=stage, max_steps=6), "--ckpt_path", str(checkpoint))

    expected = exported_weights(whole / "lightning_logs" / "version_0")
    resumed = exported_weights(halves / "lightning_logs" / "version_1")
    assert expected.keys() == resumed.keys() and expected
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name

    model = AutoModelForCausalLM.from_pretrained(whole / "lightning_logs" / "version_0" / "hf_export")
    assert model.dtype == torch.bfloat16
    state = model.state_dict()
    initial = AutoModelForCausalLM.from_config(tiny_llama_config())
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name
        assert tensor.shape == initial.state_dict()[name].shape
