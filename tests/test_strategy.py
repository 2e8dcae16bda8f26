"""Real DeepSpeed ZeRO-2/ZeRO-3 fits with 2 CPU processes (gloo, bf16): loading a pretrained model,
checkpoint, exact resume, HF export, and the head-activation callback sharded across the ranks."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from lightning_sft.data import collate, load_examples
from lightning_sft.scorer.patterns import activation_pattern
from lightning_sft.storage import load_patterns
from lightning_sft.strategy import DeepSpeedStrategy
from lightning_sft.tokenizer import byte_tokenizer
from tests.conftest import tiny_llama_config

ROOT = Path(__file__).parents[1]


def test_zero_stage_4_is_refused_before_any_work():
    with pytest.raises(ValueError, match="stage=4"):
        DeepSpeedStrategy(stage=4)


def write_inputs(directory: Path) -> tuple[Path, Path, Path]:
    """A tiny pretrained Llama directory, training rows and a probe file."""
    torch.manual_seed(0)
    pretrained = directory / "pretrained"
    LlamaForCausalLM(tiny_llama_config()).to(torch.bfloat16).save_pretrained(pretrained)
    byte_tokenizer().save_pretrained(pretrained)
    rows = directory / "train.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"{i} + {i * 7} =", "response": f" {i * 8}"}) + "\n"
                            for i in range(64)))
    probe = directory / "probe.jsonl"
    probe.write_text("".join(json.dumps({"prompt": f"{i}*3=", "response": str(3 * i)}) + "\n" for i in range(5)))
    return pretrained, rows, probe


def write_run_config(
    directory: Path, inputs: tuple[Path, Path, Path], *, stage: int, stop_after: int | None = None
) -> Path:
    pretrained, rows, probe = inputs
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"every_n_train_steps": 3, "save_top_k": -1}},
        {"class_path": "callbacks.HeadActivationCallback",
         "init_args": {"probes": {"times3": str(probe)}, "steps": [0, 3, 6], "batch_size": 2, "log_images": False}},
    ]
    if stop_after:
        callbacks.append({"class_path": "tests.interrupt.StopAfterStep", "init_args": {"step": stop_after}})
    config = {
        "seed_everything": 7,
        "trainer": {
            "accelerator": "cpu", "devices": 2, "precision": "bf16-true", "max_steps": 6,
            "accumulate_grad_batches": 2, "gradient_clip_val": 1.0, "enable_progress_bar": False,
            "limit_val_batches": 2, "val_check_interval": 4, "log_every_n_steps": 1,
            "default_root_dir": str(directory), "callbacks": callbacks,
            "strategy": {"class_path": "lightning_sft.strategy.DeepSpeedStrategy", "init_args": {"stage": stage}},
        },
        "model": {"pretrained": str(pretrained), "dtype": "bfloat16", "learning_rate": 1e-3, "warmup_steps": 1},
        "data": {"train": str(rows), "batch_size": 2, "max_length": 24, "val_fraction": 0.1},
    }
    path = directory / f"stage{stage}_stop{stop_after}.yaml"
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


def assert_equal_to_one_process(saved: torch.Tensor, model: torch.nn.Module, probe: Path) -> None:
    """The callback's pattern from the 2-rank fit equals one process's scoring of `probe` (in the callback's
    batches of 2) bit for bit.

    Why exact: under `bf16-true` Lightning casts the whole module to bf16, buffers included (RoPE's
    `inv_freq`, which `from_pretrained` keeps in float32: that alone moves patterns by ~6e-4 relative), so the
    model is cast likewise here. Each probe batch is then scored whole by one rank with the same operations
    as here, and `score_heads`' all_reduce sums each example's row with exact zeros from the other ranks; the
    mean over examples is taken afterwards, on the same rows in the same order. No rounding differs.
    """
    examples = load_examples(str(probe), byte_tokenizer())
    batches = [collate(examples[i:i + 2], 0) for i in range(0, len(examples), 2)]
    torch.testing.assert_close(saved, activation_pattern(model.to(torch.bfloat16).eval(), batches), rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [pytest.param(2, marks=pytest.mark.lowest), 3])
def test_zero_fit_resume_export_and_probes(tmp_path, stage):
    """6 steps uninterrupted == interrupted after 3 and resumed from the step-3 checkpoint."""
    inputs = write_inputs(tmp_path)
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    whole.mkdir(), halves.mkdir()
    fit(write_run_config(whole, inputs, stage=stage))
    fit(write_run_config(halves, inputs, stage=stage, stop_after=3))
    checkpoint = next((halves / "lightning_logs" / "version_0" / "checkpoints").glob("*step=3*"))
    assert checkpoint.is_dir()  # DeepSpeed's sharded checkpoint directory
    fit(write_run_config(halves, inputs, stage=stage), "--ckpt_path", str(checkpoint))

    whole_run, resumed_run = whole / "lightning_logs" / "version_0", halves / "lightning_logs" / "version_1"
    expected, resumed = exported_weights(whole_run), exported_weights(resumed_run)
    pretrained = AutoModelForCausalLM.from_pretrained(inputs[0])
    assert expected.keys() == resumed.keys() == set(pretrained.state_dict())
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
    assert not torch.equal(expected["model.layers.0.self_attn.q_proj.weight"],
                           pretrained.state_dict()["model.layers.0.self_attn.q_proj.weight"])  # it trained
    reloaded = AutoModelForCausalLM.from_pretrained(whole_run / "hf_export")
    assert reloaded.dtype == torch.bfloat16
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, expected[name]), name

    # the callback: probes sharded over both ranks equal one process's scoring of the base model
    # the resumed part goes on writing into the first part's patterns directory, which holds step 0
    whole_patterns = load_patterns(whole_run / "head_patterns")["times3"]
    assert not (resumed_run / "head_patterns").exists()
    resumed_patterns = load_patterns(halves / "lightning_logs" / "version_0" / "head_patterns")["times3"]
    assert sorted(whole_patterns) == sorted(resumed_patterns) == [0, 3, 6]
    for step in whole_patterns:
        torch.testing.assert_close(resumed_patterns[step], whole_patterns[step], rtol=1e-6, atol=0)
    assert_equal_to_one_process(whole_patterns[0], pretrained, inputs[2])
    assert_equal_to_one_process(whole_patterns[6], reloaded, inputs[2])


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "sft_zero2_offload"])
def test_ddp_and_zero_offload_fit_with_probes(tmp_path, strategy):
    """Plain DDP and ZeRO-Offload (DeepSpeedCPUAdam) from YAML: train, probe on both ranks, export."""
    inputs = write_inputs(tmp_path)
    config_path = write_run_config(tmp_path, inputs, stage=2)
    config = yaml.safe_load(config_path.read_text())
    config["trainer"]["strategy"] = strategy
    config["trainer"]["max_steps"] = 2
    config["trainer"]["callbacks"][1]["init_args"]["steps"] = [0, 2]
    config_path.write_text(yaml.safe_dump(config))
    fit(config_path)

    run = tmp_path / "lightning_logs" / "version_0"
    pretrained = AutoModelForCausalLM.from_pretrained(inputs[0]).eval()
    exported = AutoModelForCausalLM.from_pretrained(run / "hf_export").eval()
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(exported.state_dict()[name], pretrained.state_dict()[name])
    patterns = load_patterns(run / "head_patterns")["times3"]
    assert_equal_to_one_process(patterns[0], pretrained, inputs[2])
    assert_equal_to_one_process(patterns[2], exported, inputs[2])


@pytest.mark.slow
@pytest.mark.parametrize("source", ["config", "pretrained"])
def test_zero3_partitions_parameters_at_load(tmp_path, source):
    """Under sft_zero3 no rank ever holds a whole parameter: right after configure_model each one is a
    DeepSpeed-managed placeholder (ds_id set, numel 0, NOT_AVAILABLE) over a half-size partition, whether
    built from a config (zero.Init) or loaded with from_pretrained (HfDeepSpeedConfig); gathered, the
    pretrained weights are the saved ones."""
    pretrained, rows, _ = write_inputs(tmp_path)
    model_source = (["--pretrained", str(pretrained)] if source == "pretrained"
                    else ["--config", json.dumps({"model_type": "llama", **tiny_llama_config().to_diff_dict()})])
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "zero3_load.py"), str(tmp_path), str(rows),
                             *model_source], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-8000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    reference = AutoModelForCausalLM.from_pretrained(pretrained, dtype=torch.float32).named_parameters()
    expected = {name: parameter for name, parameter in reference}
    assert ranks[0].keys() == ranks[1].keys() == expected.keys()
    for name, parameter in expected.items():
        zero, one = ranks[0][name], ranks[1][name]
        for held in (zero, one):
            assert held["ds_id"] is not None and held["numel"] == 0 and held["status"] == "NOT_AVAILABLE", name
            assert held["full_numel"] == parameter.numel(), name
            assert held["partition_numel"] == -(-parameter.numel() // 2), name  # ceil(n / 2): half each
        assert zero["ds_id"] == one["ds_id"] and zero["gathered_sum"] == one["gathered_sum"], name
        if source == "pretrained":
            assert zero["gathered_sum"] == pytest.approx(parameter.detach().double().sum().item(), rel=1e-9,
                                                         abs=1e-9), name
