"""lightning_sft.scorer.cpu_kernel: the C++ backward builds here, runs where it should, matches float64 autograd
across its query blocks and key tiles (causal, padded and sliding-window masks), and a failed build falls
back with a warning."""

import pytest
import torch
import torch.utils.cpp_extension

from lightning_sft.scorer import cpu_kernel, head_scored_attention
from lightning_sft.scorer.head_scored_attention import HeadScoredAttention


def count_kernel_calls(monkeypatch) -> list[bool]:
    """Route `HeadScoredAttention`'s kernel through a wrapper that records each call's `input_grads` flag;
    returns the (growing) list of those flags. Tests assert on it, so a path that silently stops using the
    kernel fails even though its scores would still be right."""
    kernel = cpu_kernel.scored_attention_backward()
    assert kernel is not None, "the C++ kernel did not build on this machine"
    calls = []

    def counted(*arguments):
        calls.append(arguments[-1])
        return kernel(*arguments)

    monkeypatch.setattr(head_scored_attention, "scored_attention_backward", lambda: counted)
    return calls


def test_kernel_builds_on_this_machine():
    """CI has g++: scoring must not silently take the slower Python path there."""
    assert cpu_kernel.scored_attention_backward() is torch.ops.lightning_sft.scored_attention_backward


def test_failed_build_warns_and_returns_none(monkeypatch):
    def fail(**kwargs):
        raise RuntimeError("Error building extension: g++ not found")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", fail)
    with pytest.warns(RuntimeWarning, match="g\\+\\+ not found.*slower Python path"):
        assert cpu_kernel.scored_attention_backward.__wrapped__() is None


def float64_reference(query, key, value, mask, grad_output, scale):
    """Output, scores sum_ij |P dL/dP| [B, Hq] and dQ, dK, dV by autograd in float64 through explicit P;
    `mask` bool (True attends) or additive float."""
    query, key, value = (tensor.detach().double().requires_grad_() for tensor in (query, key, value))
    group = query.shape[1] // key.shape[1]
    logits = query @ key.repeat_interleave(group, 1).transpose(-1, -2) * scale
    logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask.double()
    probabilities = torch.nan_to_num(torch.softmax(logits, -1))
    probabilities.retain_grad()
    output = probabilities @ value.repeat_interleave(group, 1)
    (output * grad_output.double()).sum().backward()
    scores = (probabilities * probabilities.grad).abs().sum((-1, -2))
    return output, scores, (query.grad, key.grad, value.grad)


@pytest.mark.parametrize("mask_kind", ["causal", "bool", "float", "sliding"])
def test_matches_float64_across_blocks_and_tiles(monkeypatch, mask_kind):
    """300 queries and keys: three query blocks of 128 (the last partial) and two key tiles of 256; grouped
    heads; left padding (rows with no key) and right padding in the masked cases; a 100-key sliding window
    (blocks whose first visible key is not 0) in the last."""
    calls = count_kernel_calls(monkeypatch)
    torch.manual_seed(0)
    batch, heads, kv_heads, length, dim, scale = 2, 4, 2, 300, 8, 0.35
    query = torch.randn(batch, length, heads, dim).transpose(1, 2).requires_grad_()  # strided, as in models
    key, value = (torch.randn(batch, kv_heads, length, dim, requires_grad=True) for _ in range(2))
    allowed = torch.ones(batch, 1, length, length, dtype=torch.bool).tril()
    mask = None
    if mask_kind != "causal":
        allowed[0, ..., :37] = False  # left padding
        allowed[1, ..., 270:] = False  # right padding
        if mask_kind == "sliding":
            allowed &= torch.ones(length, length, dtype=torch.bool).triu(-99)  # each query sees its last 100 keys
        mask = allowed if mask_kind != "float" else torch.zeros(allowed.shape).masked_fill(
            ~allowed, torch.finfo(torch.float32).min)
    grad_output = torch.randn(batch, heads, length, dim)
    grad_output[0, :, :37] = 0  # padding rows (no key) receive no gradient in a model
    expected_output, expected_scores, expected_grads = float64_reference(
        query, key, value, allowed if mask is None else mask, grad_output, scale)
    scores = torch.zeros(batch, heads)
    output = HeadScoredAttention.apply(query, key, value, mask, scores, scale, True, None, None, True)
    grads = torch.autograd.grad(output, (query, key, value), grad_output)
    assert calls == [True]
    torch.testing.assert_close(output.double(), expected_output, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scores.double(), expected_scores, rtol=1e-5, atol=0)
    for grad, expected in zip(grads, expected_grads):
        torch.testing.assert_close(grad.double(), expected, rtol=1e-4, atol=1e-5)
