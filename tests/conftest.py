"""Shared fixtures: an offline tokenizer and tiny models built from configs (no downloads)."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Without a GPU, Triton kernels (lightning_sft.scorer.triton_scores) run in Triton's interpreter on the CPU. Triton
    # reads this when it is imported (Lightning imports it) and when a kernel runs; torch does not import it.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from transformers import LlamaConfig, LlamaForCausalLM

from lightning_sft.tokenizer import byte_tokenizer


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", choices=("cpu", "cuda"),
                     help="where the tests that take the `device` fixture score (benchmarks/gpu_check.sh: cuda)")


@pytest.fixture
def device(request) -> torch.device:
    """The `--device` the scorer's device-aware tests run on; with cuda and no GPU they are skipped."""
    name = request.config.getoption("--device")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("--device cuda, but torch sees no CUDA GPU here")
    return torch.device(name)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Nothing in the tests may reach a hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tokenizer():
    return byte_tokenizer()


def tiny_llama_config(**overrides) -> LlamaConfig:
    """2 layers, 4 query heads over 2 key/value heads (grouped-query attention), byte vocabulary."""
    settings = dict(
        vocab_size=259, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )
    settings.update(overrides)
    return LlamaConfig(**settings)


@pytest.fixture
def tiny_llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config()).eval()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tokenizer):
    """A tiny Llama (seed 0) and the byte tokenizer saved with `save_pretrained`, as a user's model folder."""
    path = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config()).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
