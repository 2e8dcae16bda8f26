"""lightning_sft.scorer.patterns: head scores against the naive computation, batching, leaving the model as found,
refused inputs and families, torch.distributed and DeepSpeed ZeRO-2/3."""

import copy
import functools
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import transformers
from safetensors.torch import load_file, save_file

from lightning_sft.scorer import head_scored_attention, patterns
from lightning_sft.data import collate
from lightning_sft.scorer.head_scored_attention import HeadScoredAttention
from lightning_sft.scorer.patterns import activation_pattern, score_heads
from tests.conftest import tiny_llama_config
from tests.test_cpu_kernel import count_kernel_calls

TOLERANCE = 1e-5  # relative, float32


def naive_scores(model: transformers.PreTrainedModel, batches: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """The independent check: one example at a time, padding removed, on a float32 eager copy of the model,
    with every layer's attention probabilities A kept (`output_attentions`, `retain_grad`); mean
    supervised-token cross-entropy, `backward`, sum |A * A.grad|. Returns [N, L, H] and losses [N] of the
    examples that have a supervised token."""
    model = copy.deepcopy(model).float().eval()
    model.set_attn_implementation("eager")
    scores, losses = [], []
    for batch in batches:
        for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
            ids, labels = ids[mask.bool()][None], labels[mask.bool()]
            targets = labels[1:]
            if not (targets != -100).any():
                continue
            output = model(input_ids=ids, output_attentions=True, use_cache=False)
            for probabilities in output.attentions:
                probabilities.retain_grad()
            loss = torch.nn.functional.cross_entropy(output.logits[0, :-1], targets)
            loss.backward()
            scores.append(torch.stack([(a * a.grad).abs().sum((0, 2, 3)) for a in output.attentions]))
            losses.append(loss.detach())
    return torch.stack(scores), torch.stack(losses)


def random_examples(lengths: list[int], prompt: int = 3, seed: int = 0, vocab: int = 259) -> list[dict]:
    """Token ids in [3, vocab), the first `prompt` positions unsupervised."""
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for length in lengths:
        ids = torch.randint(3, vocab, (length,), generator=generator).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return examples


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = TOLERANCE) -> None:
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=rtol, atol=0)


# Tiny configs of every family whose attention goes through transformers' AttentionInterface that builds
# in well under a second: grouped- and multi-query heads, soft-capping, sliding windows, attention sinks.
BASE = dict(vocab_size=259, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
GPT = dict(vocab_size=259, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2)
FAMILIES = {
    "llama_gqa": (transformers.LlamaForCausalLM, dict(BASE, intermediate_size=64, num_key_value_heads=2)),
    "gemma_mqa": (transformers.GemmaForCausalLM, dict(BASE, intermediate_size=64, num_key_value_heads=1, head_dim=8)),
    "gemma2_softcap_sliding": (transformers.Gemma2ForCausalLM, dict(
        BASE, intermediate_size=64, num_key_value_heads=2, head_dim=8, sliding_window=4, attn_logit_softcapping=2.0,
        final_logit_softcapping=5.0)),
    "gemma3_sliding": (transformers.Gemma3ForCausalLM, dict(
        BASE, intermediate_size=64, num_key_value_heads=2, head_dim=8, sliding_window=4)),
    "qwen2": (transformers.Qwen2ForCausalLM, dict(BASE, intermediate_size=64, num_key_value_heads=2)),
    "qwen3": (transformers.Qwen3ForCausalLM, dict(BASE, intermediate_size=64, num_key_value_heads=2, head_dim=8)),
    "mistral_sliding": (transformers.MistralForCausalLM, dict(
        BASE, intermediate_size=64, num_key_value_heads=2, sliding_window=4)),
    "opt": (transformers.OPTForCausalLM, dict(BASE, ffn_dim=64, word_embed_proj_dim=32, max_position_embeddings=64)),
    "gpt2": (transformers.GPT2LMHeadModel, GPT),
    "gpt_neox": (transformers.GPTNeoXForCausalLM, dict(BASE, intermediate_size=64)),
    "gptj": (transformers.GPTJForCausalLM, dict(GPT, rotary_dim=4)),
    "gpt_bigcode_mqa": (transformers.GPTBigCodeForCausalLM, GPT),
    "phi": (transformers.PhiForCausalLM, dict(BASE, intermediate_size=64)),
    "phi3": (transformers.Phi3ForCausalLM, dict(
        BASE, intermediate_size=64, num_key_value_heads=2, pad_token_id=0, eos_token_id=2)),
    "olmo": (transformers.OlmoForCausalLM, dict(
        BASE, intermediate_size=64, num_key_value_heads=2, pad_token_id=0, eos_token_id=2)),
    "olmo2": (transformers.Olmo2ForCausalLM, dict(
        BASE, intermediate_size=64, num_key_value_heads=2, pad_token_id=0, eos_token_id=2)),
    "starcoder2_sliding": (transformers.Starcoder2ForCausalLM, dict(
        BASE, intermediate_size=64, num_key_value_heads=2, sliding_window=4)),
    "cohere": (transformers.CohereForCausalLM, dict(
        BASE, intermediate_size=64, num_key_value_heads=2, pad_token_id=0, eos_token_id=2)),
    "granite": (transformers.GraniteForCausalLM, dict(BASE, intermediate_size=64, num_key_value_heads=2)),
    "gpt_oss_sinks_moe": (transformers.GptOssForCausalLM, dict(
        BASE, intermediate_size=32, num_key_value_heads=2, head_dim=8, num_local_experts=4, num_experts_per_tok=2,
        sliding_window=4)),
}


# The families whose attention the C++ kernel cannot compute (soft-capping, sinks): the Python blocks do.
WITHOUT_KERNEL = ("gemma2_softcap_sliding", "gpt_oss_sinks_moe")
# Where the exactness tests also run on a GPU (benchmarks/gpu_check.sh): plain grouped-query attention,
# soft-capping with sliding windows, attention sinks.
DEVICE_FAMILIES = ("llama_gqa", "gemma2_softcap_sliding", "gpt_oss_sinks_moe")
# Also checked against the lowest declared versions (make test-lowest): the device families and absolute positions.
LOWEST_FAMILIES = DEVICE_FAMILIES + ("gpt2",)
# float32 on CUDA sums in other orders (cuBLAS) than the CPU reference; a wrong formula is off by O(1).
CUDA_TOLERANCE = 1e-4


def build(family: str) -> transformers.PreTrainedModel:
    model_class, settings = FAMILIES[family]
    torch.manual_seed(0)
    return model_class(model_class.config_class(**settings)).eval()


def check_against_naive(model: transformers.PreTrainedModel, lengths: tuple[int, ...] = (14, 11, 9),
                        device: torch.device = torch.device("cpu")) -> None:
    """A right-padded and a left-padded batch == the naive computation (on the CPU, float32), per example,
    with the model scored on `device`."""
    examples = random_examples(list(lengths))
    batches = [collate(examples[:2], pad_token_id=0), collate(examples[1:], pad_token_id=0, padding_side="left")]
    expected, expected_losses = naive_scores(model, batches)
    scores = score_heads(model.to(device), batches)
    rtol = TOLERANCE if device.type == "cpu" else CUDA_TOLERANCE
    assert scores.per_example.shape == (4, model.config.num_hidden_layers, model.config.num_attention_heads)
    assert scores.per_example.dtype == torch.float32
    assert_close(scores.per_example, expected, rtol)
    assert_close(scores.losses, expected_losses, rtol)
    assert scores.skipped == 0
    assert_close(scores.pattern, expected.mean(0), rtol)


def allow_documented_logits_to_keep_only(monkeypatch, model_class: type) -> None:
    """Wrap `model_class.forward` so that `logits_to_keep` in any form transformers does not document (an int
    or a 1-D index tensor) raises, as transformers 5.17 did for a [batch, T] mask (IndexError mid-fit)."""
    forward = model_class.forward

    @functools.wraps(forward)  # keeps the signature the scorer reads (position_ids)
    def checked(self, *args, **kwargs):
        keep = kwargs.get("logits_to_keep", 0)
        if not (isinstance(keep, int) or (isinstance(keep, torch.Tensor) and keep.dim() == 1)):
            raise TypeError(f"logits_to_keep={getattr(keep, 'shape', keep)}: not an int or a 1-D index tensor")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(model_class, "forward", checked)


@pytest.mark.parametrize("family", [pytest.param(family, marks=[pytest.mark.lowest] * (family in LOWEST_FAMILIES))
                                    for family in FAMILIES])
def test_matches_naive_per_family(monkeypatch, family, device):
    """Also: on CPU every layer's backward of each batch goes through the C++ kernel exactly once (the
    first layer's without input gradients), except in the families it cannot compute; and scoring passes
    the model's forward only documented arguments (`logits_to_keep` an int or 1-D)."""
    calls = count_kernel_calls(monkeypatch) if device.type == "cpu" else []
    allow_documented_logits_to_keep_only(monkeypatch, FAMILIES[family][0])
    model = build(family)
    if not model._supports_attention_backend:  # GPT-J in transformers 5.17 (not in 5.0 or 5.25): refused
        with pytest.raises(NotImplementedError, match="sets _supports_attention_backend=False"):
            score_heads(model, [collate(random_examples([8]), 0)])
        return
    check_against_naive(model, device=device)
    uses_kernel = device.type == "cpu" and family not in WITHOUT_KERNEL
    layers = [True] * (model.config.num_hidden_layers - 1) + [False]  # backward runs the last layer first
    assert calls == (layers * 2 if uses_kernel else [])


@pytest.mark.parametrize("family, kernel", [("llama_gqa", True), ("mistral_sliding", True), ("mistral_sliding", False)],
                         ids=["llama_gqa", "mistral_sliding", "mistral_sliding_python"])
def test_long_examples_cross_query_blocks(monkeypatch, family, kernel):
    """Examples longer than a query block (128) through a whole model, with a sliding window, through the C++
    kernel (every layer of both batches) or, where it cannot be built, the Python path."""
    if kernel:
        calls = count_kernel_calls(monkeypatch)
    else:
        monkeypatch.setattr(head_scored_attention, "scored_attention_backward", lambda: None)
    check_against_naive(build(family), lengths=(300, 170, 140))
    if kernel:
        assert calls == [True, False] * 2


@pytest.mark.parametrize("family", ["llama_gqa", "opt"])
def test_python_path_matches_naive(monkeypatch, family):
    """Where the C++ kernel cannot be built: PyTorch's fused backward and the Python blocks score."""
    monkeypatch.setattr(head_scored_attention, "scored_attention_backward", lambda: None)
    check_against_naive(build(family))


@pytest.mark.parametrize("family", ["llama_gqa", "gemma2_softcap_sliding"])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batched_equals_one_at_a_time(family, padding_side):
    model = build(family)
    examples = random_examples([7, 13, 10, 4], prompt=2)
    batched = score_heads(model, [collate(examples, 0, padding_side)])
    single = [score_heads(model, [collate([example], 0)]) for example in examples]
    assert_close(batched.per_example, torch.cat([scores.per_example for scores in single]))
    assert_close(batched.losses, torch.cat([scores.losses for scores in single]))


def test_input_order_across_batches_and_activation_pattern(tiny_llama):
    examples = random_examples([5, 9, 12, 6, 8, 16], seed=3)
    batches = [collate(examples[0:1], 0), collate(examples[1:4], 0), collate(examples[4:], 0, "left")]
    expected, _ = naive_scores(tiny_llama, batches)
    assert_close(activation_pattern(tiny_llama, batches, per_example=True), expected)
    pattern = activation_pattern(tiny_llama, iter(batches))  # any iterable
    assert pattern.shape == (2, 4) and pattern.dtype == torch.float32
    assert_close(pattern, expected.mean(0))
    assert_close(score_heads(tiny_llama, batches, progress=True).pattern, expected.mean(0))


def test_unsupervised_example_is_skipped_and_counted(tiny_llama):
    examples = random_examples([8, 10, 6])
    examples[1]["labels"] = examples[1]["input_ids"][:1] + [-100] * 9  # only position 0: never predicted
    batches = [collate(examples, 0)]
    scores = score_heads(tiny_llama, batches)
    expected, expected_losses = naive_scores(tiny_llama, batches)
    assert scores.skipped == 1 and expected.shape[0] == 2
    assert_close(scores.per_example, expected)
    assert_close(scores.losses, expected_losses)
    assert torch.isfinite(scores.per_example).all() and torch.isfinite(scores.losses).all()


def test_refuses_bad_batches(tiny_llama):
    batch = collate(random_examples([6, 7]), 0)
    unsupervised = dict(batch, labels=torch.full_like(batch["labels"], -100))
    with pytest.raises(ValueError, match="batch 1: no example has a supervised token"):
        score_heads(tiny_llama, [batch, unsupervised])
    with pytest.raises(ValueError, match=r"batch 0: shapes disagree.*'labels': \(2, 6\)"):
        score_heads(tiny_llama, [dict(batch, labels=batch["labels"][:, :6])])
    with pytest.raises(ValueError, match=r"batch 0 lacks tensor\(s\) \['attention_mask'\]"):
        score_heads(tiny_llama, [{"input_ids": batch["input_ids"], "labels": batch["labels"]}])
    with pytest.raises(ValueError, match="no batches"):
        score_heads(tiny_llama, [])


def all_configs(model: transformers.PreTrainedModel) -> list:
    """Every config object the model and its sub-models read their attention implementation from."""
    found, pending = {}, [model.config]
    pending += [module.config for module in model.modules() if isinstance(module, transformers.PreTrainedModel)]
    while pending:
        config = pending.pop()
        if id(config) not in found:
            found[id(config)] = config
            pending += [getattr(config, key) for key in config.sub_configs if getattr(config, key) is not None]
    return list(found.values())


def model_state(model: torch.nn.Module) -> dict:
    return {
        "modes": [module.training for module in model.modules()],
        "attention": [config._attn_implementation for config in all_configs(model)],
        "requires_grad": [parameter.requires_grad for parameter in model.parameters()],
        "grads": [None if parameter.grad is None else parameter.grad.clone() for parameter in model.parameters()],
        "weights": [parameter.detach().clone() for parameter in model.parameters()],
        "rng": torch.get_rng_state(),
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert after["modes"] == before["modes"]
    assert after["attention"] == before["attention"]
    assert after["requires_grad"] == before["requires_grad"]
    for old, new in zip(before["grads"], after["grads"]):
        assert (old is None and new is None) or torch.equal(old, new)
    assert all(torch.equal(old, new) for old, new in zip(before["weights"], after["weights"]))
    assert torch.equal(after["rng"], before["rng"])


def prepared_model() -> transformers.PreTrainedModel:
    """Training mode with attention dropout, eager attention, a frozen layer, a `.grad`, an eval submodule,
    and a layer that draws from the CPU generator in every forward (as dropout does in training), so that
    scoring moves the RNG state and only restoring it leaves the state as found."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(tiny_llama_config(attention_dropout=0.5, attn_implementation="eager")).train()
    model.model.layers[0].requires_grad_(False)
    model.lm_head.weight.grad = torch.ones_like(model.lm_head.weight)
    model.model.norm.eval()
    model.model.layers[1].register_forward_hook(_draw_random_numbers)
    return model


def _draw_random_numbers(module, args, output) -> None:
    torch.rand(3)


def test_leaves_model_as_found():
    model = prepared_model()
    before = model_state(model)
    batches = [collate(random_examples([9, 6]), 0)]
    scores = score_heads(model, batches)
    assert_same_state(before, model_state(model))
    assert_close(scores.per_example, naive_scores(model, batches)[0])  # dropout was off while scoring


def test_leaves_model_as_found_after_an_error_mid_probe():
    model = prepared_model()
    before = model_state(model)
    examples = random_examples([9, 6])
    examples[1]["input_ids"][4] = 10_000  # outside the vocabulary: the embedding lookup fails mid-forward
    with pytest.raises(IndexError):
        score_heads(model, [collate(examples[:1], 0), collate(examples, 0)])
    assert_same_state(before, model_state(model))
    assert patterns._active_probe is None
    score_heads(model, [collate(examples[:1], 0)])  # usable again


def test_no_parameter_gradient_is_computed(tiny_llama):
    accumulated = []
    for parameter in tiny_llama.parameters():
        parameter.register_post_accumulate_grad_hook(accumulated.append)
    score_heads(tiny_llama, [collate(random_examples([8]), 0)])
    assert accumulated == [] and all(parameter.grad is None for parameter in tiny_llama.parameters())


def test_works_under_no_grad_and_inference_mode(tiny_llama):
    batches = [collate(random_examples([8, 5]), 0)]
    expected = score_heads(tiny_llama, batches).per_example
    with torch.no_grad():
        assert torch.equal(score_heads(tiny_llama, batches).per_example, expected)
    with torch.inference_mode():
        inference_batches = [collate(random_examples([8, 5]), 0)]
        assert torch.equal(score_heads(tiny_llama, inference_batches).per_example, expected)


@pytest.mark.parametrize("family", DEVICE_FAMILIES)
def test_bfloat16_model_is_scored_in_bfloat16(family, device):
    batches = [collate(random_examples([16, 12, 9], seed=5), 0)]
    reference = score_heads(build(family), batches)  # float32 on the CPU
    model = build(family).to(device, torch.bfloat16)
    scores = score_heads(model, batches)
    assert model.dtype == torch.bfloat16 and scores.per_example.dtype == torch.float32
    deviation = (scores.per_example - reference.per_example).norm() / reference.per_example.norm()
    assert 0 < deviation < 0.05  # computed in bfloat16 (not exactly float32), close to it
    torch.testing.assert_close(scores.losses, reference.losses, rtol=0.02, atol=0)


@pytest.mark.parametrize("make, reason", [
    (lambda: transformers.StableLmForCausalLM(transformers.StableLmConfig(
        vocab_size=259, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)),
     r"StableLmForCausalLM \(model_type='stablelm'\) sets _supports_attention_backend=False"),
    (lambda: transformers.BloomForCausalLM(transformers.BloomConfig(vocab_size=259, hidden_size=32, n_layer=2,
                                                                    n_head=4)),
     r"BloomForCausalLM \(model_type='bloom'\).*AttentionInterface"),
    (lambda: transformers.Lfm2ForCausalLM(transformers.Lfm2Config(
        vocab_size=259, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, layer_types=["conv", "full_attention"])),
     r"Lfm2ForCausalLM \(model_type='lfm2'\): layers \[0\] of 2 never called the attention interface"),
], ids=["stablelm", "bloom", "lfm2_hybrid"])
def test_unsupported_family_fails_at_once(make, reason):
    torch.manual_seed(0)
    model = make().eval()
    before = model_state(model)
    with pytest.raises(NotImplementedError, match=reason):
        score_heads(model, [collate(random_examples([8]), 0)])
    assert_same_state(before, model_state(model))


def test_multimodal_model_scores_its_text_decoder_only():
    torch.manual_seed(0)
    config = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                    num_attention_heads=4, image_size=32, patch_size=16),
        text_config=tiny_llama_config(vocab_size=300), image_token_index=299)
    model = transformers.LlavaForConditionalGeneration(config).eval()
    batches = [collate(random_examples([10, 7]), 0)]
    scores = score_heads(model, batches)  # the vision tower's attention (no layer_idx) would be refused
    assert_close(scores.per_example, naive_scores(model, batches)[0])
    assert {config._attn_implementation for config in all_configs(model)} == {"sdpa"}


def test_attention_function_refuses_use_outside_scoring(tiny_llama):
    tiny_llama.set_attn_implementation(patterns.ATTENTION_NAME)
    with pytest.raises(RuntimeError, match="only works inside lightning_sft.scorer.patterns.score_heads"):
        tiny_llama(input_ids=torch.tensor([[5, 6, 7]]))


def reference_attention(query, key, value, mask, scale, softcap, sinks):
    """Autograd through the probabilities, which are returned with retain_grad."""
    group = query.shape[1] // key.shape[1]
    logits = query @ key.repeat_interleave(group, 1).transpose(-1, -2) * scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
    if sinks is not None:
        logits = torch.cat([logits, sinks.view(1, -1, 1, 1).expand(*logits.shape[:3], 1)], dim=-1)
    probabilities = torch.nan_to_num(torch.softmax(logits, dim=-1))  # rows with no key: all zero
    if sinks is not None:
        probabilities = probabilities[..., :-1]
    probabilities.retain_grad()
    return probabilities @ value.repeat_interleave(group, 1), probabilities


@pytest.mark.parametrize("mask_kind", ["bool", "float", "sliding"])
@pytest.mark.parametrize("softcap, sinks, cpu_kernel", [(None, False, True), (None, False, False), (3.0, False, True),
                                                        (None, True, True)],
                         ids=["plain", "plain_python", "softcap", "sinks"])
@pytest.mark.parametrize("length", [19, 300], ids=["one_block", "many_blocks"])
def test_attention_function_matches_autograd(monkeypatch, mask_kind, softcap, sinks, cpu_kernel, length):
    """Output, dQ, dK, dV and the scores of the custom Function against autograd, with grouped-query heads,
    left padding (rows with no key), right padding, a float mask's finite minimum and a sliding window.
    "plain" runs the C++ kernel (checked by counting its calls), the others the Python blocks; 300 queries
    are three blocks of `BLOCK_ROWS` = 128 for both (the kernel's own block is 128 rows too)."""
    assert head_scored_attention.BLOCK_ROWS == 128
    if cpu_kernel:
        calls = count_kernel_calls(monkeypatch)
    else:
        monkeypatch.setattr(head_scored_attention, "scored_attention_backward", lambda: None)
    torch.manual_seed(0)
    batch, heads, kv_heads, dim, pad = 3, 4, 2, 8, length // 4
    query = torch.randn(batch, heads, length, dim, requires_grad=True)
    key, value = (torch.randn(batch, kv_heads, length, dim, requires_grad=True) for _ in range(2))
    allowed = torch.ones(batch, 1, length, length, dtype=torch.bool).tril()
    if mask_kind == "sliding":
        allowed &= torch.ones(length, length, dtype=torch.bool).triu(-(length // 3))
    allowed[1, ..., :pad] = False  # left padding
    allowed[2, ..., length - pad:] = False  # right padding
    mask = allowed
    if mask_kind == "float":
        mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    sink_logits = torch.randn(heads) if sinks else None
    grad_output = torch.randn(batch, heads, length, dim)
    grad_output[1, :, :pad] = 0  # padding rows receive no gradient
    grad_output[2, :, length - pad:] = 0
    expected_output, probabilities = reference_attention(query, key, value, mask, 0.3, softcap, sink_logits)
    (expected_output * grad_output).sum().backward(inputs=[probabilities], retain_graph=True)
    expected_scores = (probabilities * probabilities.grad).abs().sum((-1, -2))
    expected_grads = torch.autograd.grad((expected_output * grad_output).sum(), (query, key, value))
    for input_grads in (True, False):
        scores = torch.zeros(batch, heads)
        output = HeadScoredAttention.apply(query, key, value, mask, scores, 0.3, True, softcap, sink_logits,
                                           input_grads)
        grads = torch.autograd.grad((output * grad_output).sum(), (query, key, value), allow_unused=True)
        torch.testing.assert_close(output, expected_output)
        assert_close(scores, expected_scores)
        if input_grads:
            for grad, expected in zip(grads, expected_grads):
                torch.testing.assert_close(grad, expected)
        else:
            assert grads == (None, None, None)
    if cpu_kernel:
        assert calls == ([True, False] if softcap is None and not sinks else [])


def test_blockwise_forward_matches_fused_kernel():
    torch.manual_seed(0)
    query, key, value = torch.randn(2, 4, 11, 8), torch.randn(2, 2, 11, 8), torch.randn(2, 2, 11, 8)
    mask = torch.ones(2, 1, 11, 11, dtype=torch.bool).tril()
    mask[0, ..., :3] = False
    for mask_or_none, causal in ((mask, False), (None, True)):
        fused = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, causal, attn_mask=head_scored_attention._additive(mask_or_none, query.dtype),
            scale=0.5)
        blockwise = head_scored_attention._blockwise_forward(query, key, value, mask_or_none, 0.5, causal, None, None)
        for actual, expected in zip(blockwise, fused):
            torch.testing.assert_close(actual, expected)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def probe_batches() -> list[dict]:
    """Three batches, so that one of two ranks runs a discarded extra pass."""
    examples = random_examples([9, 6, 12, 7, 10], seed=7)
    examples[3]["labels"] = [-100] * 7  # skipped
    return [collate(examples[:2], 0), collate(examples[2:4], 0, "left"), collate(examples[4:], 0)]


def scores_file(scores) -> dict[str, torch.Tensor]:
    return {"per_example": scores.per_example, "losses": scores.losses, "skipped": torch.tensor(scores.skipped)}


def _distributed_worker(rank: int, world: int, port: int, out: str, stage: int | None, bf16: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), DS_ACCELERATOR="cpu")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(tiny_llama_config()).eval()
    if stage is None:
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
        scores = score_heads(model, probe_batches())
    else:
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
        config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": stage},
                  "bf16": {"enabled": bf16}, "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}}
        engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
        batch = probe_batches()[0]
        loss_before = engine(**batch).loss
        # engine.module is the HF model; under ZeRO-3 its hooks gather the partitioned parameters.
        scores = score_heads(engine.module, probe_batches())
        assert torch.equal(engine(**batch).loss, loss_before)
        engine.backward(loss_before)  # training goes on
        engine.step()
    save_file(scores_file(scores), os.path.join(out, f"rank{rank}.safetensors"))
    torch.distributed.destroy_process_group()
    # Skip interpreter teardown, where ZeRO-3's CPU background threads sometimes race static destructors
    # ("terminate called without an active exception", SIGABRT) after the scores are written.
    os._exit(0)


@pytest.mark.slow
@pytest.mark.timeout(300)  # a rank left waiting in a collective would hang
@pytest.mark.parametrize("stage, bf16", [(None, False), (2, True), (3, False)], ids=["gloo", "zero2_bf16", "zero3"])
def test_distributed_ranks_agree_with_one_process(tmp_path, stage, bf16):
    """Every rank returns what one process computes on the whole model, also inside DeepSpeed engines; with
    three batches on two ranks one rank runs a discarded extra pass (ZeRO-3 would hang without it)."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(tiny_llama_config()).eval()
    if bf16:  # as DeepSpeed's bf16 mode: parameters cast, buffers (rotary inv_freq) kept in float32
        for parameter in model.parameters():
            parameter.data = parameter.data.to(torch.bfloat16)
    expected = scores_file(score_heads(model, probe_batches()))
    assert expected["skipped"] == 1
    mp.spawn(_distributed_worker, args=(2, free_port(), str(tmp_path), stage, bf16), nprocs=2)
    for rank in range(2):
        result = load_file(tmp_path / f"rank{rank}.safetensors")
        assert result["skipped"] == expected["skipped"]
        assert_close(result["per_example"], expected["per_example"])
        assert_close(result["losses"], expected["losses"])
