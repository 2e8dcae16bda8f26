"""lightning_sft.scorer.triton_scores: the Triton scoring kernel against a float64 softmax computation (causal,
bool and additive masks, padding, rows with no key, grouped-query heads, head dims that are no power of two,
lengths across several tiles), and whole models scored through sdpa + the kernel against the naive way.

With `--device cuda` the kernel is compiled and run on the GPU (benchmarks/gpu_check.sh); on a machine without
CUDA it runs in Triton's interpreter on the CPU, the same code (conftest sets TRITON_INTERPRET=1)."""

import pytest
import torch

from lightning_sft.scorer import patterns, triton_scores
from tests.test_patterns import build, check_against_naive


def reference_scores(query, key, value, grad_output, mask, scale, is_causal) -> torch.Tensor:
    """float64 [B, Hq]: sum_ij |P_ij (dO V^T)_ij| with P = softmax(scale Q K^T + mask), keys repeated per group;
    rows with no key have P = 0."""
    group = query.shape[1] // key.shape[1]
    key, value = key.double().repeat_interleave(group, 1), value.double().repeat_interleave(group, 1)
    logits = query.double() @ key.transpose(-1, -2) * scale
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask.double()
    elif is_causal:
        logits = logits.masked_fill(torch.ones(logits.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
    probabilities = logits.softmax(-1).nan_to_num(0.0)
    return (probabilities * (grad_output.double() @ value.transpose(-1, -2))).abs().sum((-1, -2))


def padded_causal(batch: int, length: int) -> torch.Tensor:
    """bool [B, 1, T, T]: causal; example 1 right-padded after 80 tokens, example 2 left-padded by 20 (its first
    20 rows attend to nothing)."""
    mask = torch.ones(length, length, dtype=torch.bool).tril()[None, None].repeat(batch, 1, 1, 1)
    mask[1, :, :, 80:] = False
    mask[2, :, :, :20] = False
    mask[2, :, :20] = False
    return mask


CASES = {  # batch, query heads, key/value heads, length, head dim, mask
    "causal_gqa_dim8": (2, 4, 2, 70, 8, "causal"),
    "random_bool_dim24": (2, 4, 4, 130, 24, "bool"),
    "additive_per_head_mqa": (1, 6, 1, 65, 16, "float"),
    "no_mask_dim64": (2, 2, 1, 30, 64, "none"),
    "padded_causal_three_tiles": (3, 4, 2, 150, 32, "padded"),
}


@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_float64_softmax(case, device):
    batch, heads, kv_heads, length, dim, kind = CASES[case]
    generator = torch.Generator().manual_seed(len(case))
    query, grad_output = (torch.randn(batch, heads, length, dim, generator=generator) for _ in range(2))
    key, value = (torch.randn(batch, kv_heads, length, dim, generator=generator) for _ in range(2))
    mask = None
    if kind == "bool":
        mask = torch.rand(batch, 1, length, length, generator=generator) > 0.3
    if kind == "padded":
        mask = padded_causal(batch, length)
    if kind == "float":
        mask = torch.randn(1, heads, length, length, generator=generator)
        mask[..., 5:9] = float("-inf")
    scale = dim ** -0.5
    expected = reference_scores(query, key, value, grad_output, mask, scale, kind == "causal")
    # grad_output laid out as the backward receives it: [B, T, Hq, D] seen through a transpose.
    grad_output = grad_output.transpose(1, 2).contiguous().transpose(1, 2)
    on_device = [tensor.to(device) for tensor in (query, key, value, grad_output)]
    scores = torch.full((batch, heads), 0.5, device=device)  # scores are added, not written
    triton_scores.add_head_scores(*on_device, None if mask is None else mask.to(device), scores, scale,
                                  kind == "causal")
    torch.testing.assert_close(scores.cpu().double() - 0.5, expected, rtol=1e-5, atol=1e-6)


def test_key_ranges_cover_exactly_the_attended_keys():
    mask = padded_causal(3, 150)
    ranges = triton_scores._key_ranges(mask, blocks=3)  # blocks of 64 rows: [0, 64), [64, 128), [128, 150)
    assert ranges.dtype == torch.int32 and ranges.shape == (3, 1, 3, 2)
    assert ranges[0, 0].tolist() == [[0, 64], [0, 128], [0, 150]]
    assert ranges[1, 0].tolist() == [[0, 64], [0, 80], [0, 80]]
    assert ranges[2, 0].tolist() == [[20, 64], [20, 128], [20, 150]]
    assert triton_scores._key_ranges(torch.zeros(1, 1, 4, 4, dtype=torch.bool), 1).tolist() == [[[[0, 0]]]]
    additive = torch.zeros(1, 1, 4, 6).index_fill_(-1, torch.tensor([0, 5]), float("-inf"))
    assert triton_scores._key_ranges(additive, 1).tolist() == [[[[1, 5]]]]


@pytest.mark.parametrize("family", ["llama_gqa", "qwen3"])
def test_models_scored_through_sdpa_and_the_kernel_match_naive(monkeypatch, family, device):
    """Right- and left-padded batches, float32: every layer goes through the Triton route exactly once per
    batch (on CPU the route, CUDA-only in use, is switched on here to run in the interpreter)."""
    calls = []
    add_head_scores = triton_scores.add_head_scores

    def counted(*arguments):
        calls.append(arguments[0].shape)
        return add_head_scores(*arguments)

    monkeypatch.setattr(triton_scores, "add_head_scores", counted)
    if device.type == "cpu":
        monkeypatch.setattr(patterns, "_uses_triton", lambda query, value, softcap, sinks: True)
    model = build(family)
    check_against_naive(model, device=device)
    assert len(calls) == 2 * model.config.num_hidden_layers


def test_the_route_is_cuda_only_and_leaves_soft_capping_and_sinks_to_the_blocks():
    cpu = torch.zeros(1, 2, 3, 8)
    assert not patterns._uses_triton(cpu, cpu, None, None)
    if torch.cuda.is_available():
        cuda = cpu.cuda()
        assert patterns._uses_triton(cuda, cuda, None, None)
        assert not patterns._uses_triton(cuda, cuda, 30.0, None)
        assert not patterns._uses_triton(cuda, cuda, None, torch.zeros(2, device="cuda"))
        assert not patterns._uses_triton(cuda, cuda[..., :4], None, None)
