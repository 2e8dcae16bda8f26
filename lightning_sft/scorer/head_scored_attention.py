"""Attention whose backward also scores its heads: sum_ij |A_ij * dL/dA_ij| per (example, query head).

Forward is sdpa-like and keeps Q, K, V, the output O and the softmax log-normalisers (logsumexp), never
the [T, T] probabilities. Backward walks blocks of queries as flash-attention's does: it recomputes the
block's probabilities P = exp(S - lse), forms G = dO V^T (= dL/dP), adds |P * G| into the head scores
and returns dQ, dK, dV. Memory is O(block x T) per head. The query heads that share a key/value head
(grouped-query attention) are processed together as extra rows of one block, so keys and values are
never repeated.

On CPU without soft-capping or sinks, PyTorch's fused flash-attention kernel does the forward (it also
returns the logsumexp) and our C++ kernel (`csrc/scored_attention.cpp`, built on first use by
`cpu_kernel`) the backward: the same blocks and products as PyTorch's fused backward, with the score
summed in the pass that forms dS, so scoring costs less than a training step's attention backward.
Elsewhere (soft-capping, sinks; CUDA without Triton) the Python blocks here do everything (on CUDA otherwise,
sdpa and `triton_scores`' kernel do, not this class); on CPU without the C++
kernel PyTorch's fused backward gives dQ, dK, dV and the Python blocks only score, which costs two extra
T x T matmuls per layer (S and G, which the fused backward computes but does not expose).

Shapes: query [B, Hq, Tq, D], key [B, Hkv, Tk, D], value [B, Hkv, Tk, Dv], Hq a multiple of Hkv
(query head h reads key/value head h // (Hq / Hkv), as `transformers`' `repeat_kv`); mask None, or
broadcastable to [B, Hq, Tq, Tk], bool (True attends) or additive float.
"""

import torch
from torch import Tensor

from lightning_sft.scorer.cpu_kernel import scored_attention_backward

# Queries per block. A block's float32 buffers are [B * Hq, BLOCK_ROWS, Tk]: 16 MiB each at B * Hq = 16 and
# Tk = 2048 (backward holds two, three with gradients), i.e. linear in T like the activations. Measured best
# on CPU (benchmarks/pattern_cost.py): smaller blocks pay per-call overhead, larger ones miss the caches.
BLOCK_ROWS = 128


class HeadScoredAttention(torch.autograd.Function):
    """softmax(softcap(scale Q K^T) + mask [+ sink column]) V, scoring heads into `scores` in backward."""

    @staticmethod
    def forward(ctx, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scores: Tensor,
                scale: float, is_causal: bool, softcap: float | None, sinks: Tensor | None,
                input_grads: bool) -> Tensor:
        """Returns the attention output [B, Hq, Tq, Dv] in the query's dtype; `scores` [B, Hq] float32
        (zeros) is filled by backward. With `input_grads` False backward only scores and returns no
        dQ, dK, dV (for the first attention layer, whose inputs lead to no other attention)."""
        ctx.fused = (query.device.type == "cpu" and softcap is None and sinks is None
                     and query.shape[-1] == value.shape[-1])
        if ctx.fused:
            # PyTorch's CPU flash-attention kernel: it also returns the logsumexp [B, Hq, Tq] float32 (0 for
            # rows with no key, whose output is 0). Grouped key/value heads are repeated first: torch 2.6's
            # kernel reads past the key tensor when it has fewer heads than the query (garbage, no error;
            # 2.13's reads them grouped), so this private op gets only the shapes every version handles.
            group = query.shape[1] // key.shape[1]
            keys, values = (key, value) if group == 1 else (key.repeat_interleave(group, 1),
                                                            value.repeat_interleave(group, 1))
            output, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                query, keys, values, 0.0, is_causal and mask is None, attn_mask=_additive(mask, query.dtype),
                scale=scale)
        else:
            output, lse = _blockwise_forward(query, key, value, mask, scale, is_causal, softcap, sinks)
        ctx.save_for_backward(query, key, value, output, lse, mask)
        ctx.scores, ctx.scale, ctx.is_causal, ctx.softcap = scores, scale, is_causal, softcap
        ctx.input_grads = input_grads
        return output

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        query, key, value, output, lse, mask = ctx.saved_tensors
        kernel = scored_attention_backward() if ctx.fused else None
        if kernel is not None:
            grads = _kernel_backward(kernel, query, key, value, output, lse, mask, grad_output, ctx.scores, ctx.scale,
                                     ctx.is_causal and mask is None, ctx.input_grads)
            return *grads, *(None,) * 7
        arguments = (query, key, value, output, lse, mask, grad_output, ctx.scores, ctx.scale, ctx.is_causal,
                     ctx.softcap)
        if not ctx.input_grads:
            _blockwise_backward(*arguments, with_grads=False)
            return (None,) * 10
        if not ctx.fused:
            return *_blockwise_backward(*arguments, with_grads=True), *(None,) * 7
        # Gradients from PyTorch's fused kernel; the blocks then only score (P and G, no dS).
        _blockwise_backward(*arguments, with_grads=False)
        grads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad_output, query, key, value, output, lse, 0.0, ctx.is_causal and mask is None,
            attn_mask=_additive(mask, query.dtype), scale=ctx.scale)
        return *grads, *(None,) * 7


def _kernel_backward(kernel, query, key, value, output, lse, mask, grad_output, scores, scale, is_causal,
                     input_grads: bool) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Scores and, with `input_grads`, dQ, dK, dV (input dtypes) from the C++ kernel, which reads float32
    with a contiguous last dimension (bfloat16 inputs are copied to float32: float32 accumulation)."""
    inputs = [tensor.float() for tensor in (query, key, value, output, grad_output)]
    inputs = [tensor if tensor.stride(-1) == 1 else tensor.contiguous() for tensor in inputs]
    if mask is not None:
        mask = mask if mask.dtype in (torch.bool, torch.float32) else mask.float()
        mask = mask[(None,) * (4 - mask.dim())]
        mask = mask if mask.stride(-1) == 1 else mask.contiguous()
    grads = kernel(*inputs[:4], lse, inputs[4], mask, scores, scale, is_causal, input_grads)
    if not input_grads:
        return None, None, None
    return tuple(grad.to(tensor.dtype) for grad, tensor in zip(grads, (query, key, value)))


def _additive(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """The mask as PyTorch's CPU flash-attention kernel takes it: additive, of the query's dtype."""
    if mask is None or mask.dtype == dtype:
        return mask
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
    return mask.to(dtype)


def _grouped(tensor: Tensor, kv_heads: int, factor: float = 1.0, extra: int = 0) -> Tensor:
    """[B, Hq, T, X] -> float32 [B * Hkv, T * group, X + extra] (contiguous, times `factor`; the `extra`
    columns uninitialised): row t * group + g holds query head g of the key/value head's group, so one
    block of queries, for every head that shares a key/value head, is one contiguous matrix."""
    batch, heads, length, last = tensor.shape
    grouped = torch.empty(batch, kv_heads, length, heads // kv_heads, last + extra, dtype=torch.float32,
                          device=tensor.device)
    source = tensor.unflatten(1, (kv_heads, -1)).transpose(2, 3)
    torch.mul(source, factor, out=grouped[..., :last])
    return grouped.view(batch * kv_heads, -1, last + extra)


def _flat(tensor: Tensor, extra: int = 0) -> Tensor:
    """[B, Hkv, T, X] -> float32 [B * Hkv, T, X + extra] (contiguous, the `extra` columns uninitialised)."""
    flat = torch.empty(*tensor.shape[:-1], tensor.shape[-1] + extra, dtype=torch.float32, device=tensor.device)
    flat[..., : tensor.shape[-1]] = tensor
    return flat.flatten(0, 1)


def _key_range(mask: Tensor | None, is_causal: bool, start: int, stop: int, keys: int) -> tuple[int, int]:
    """Keys [first, last) that some query in rows [start, stop) may attend to."""
    if mask is None:
        return 0, (min(stop, keys) if is_causal else keys)
    rows = mask[..., start:stop, :]
    # A float mask's finite "minus infinity" still counts (rows of only such keys attend uniformly).
    allowed = rows if rows.dtype == torch.bool else rows != float("-inf")
    columns = allowed.flatten(0, -2).any(0).nonzero()
    if len(columns) == 0:
        return 0, 0
    return int(columns[0]), int(columns[-1]) + 1


def _block_logits(rows: Tensor, keys: Tensor, shift: Tensor | None, softcap: float | None, mask: Tensor | None,
                  batch: int, is_causal: bool, above: Tensor, start: int, stop: int, first: int, last: int,
                  buffer: Tensor) -> tuple[Tensor, Tensor | None]:
    """Logits of query rows [start, stop) against keys [first, last): float32 [B * Hkv, rows * group, keys].

    rows @ keys^T (`rows` [B * Hkv, rows * group, X] come pre-scaled: by scale, or by scale / softcap),
    soft-capped (softcap * tanh), minus `shift` [B * Hkv, rows * group, 1] if given, masked. Also returns
    the tanh of the soft-capping (for its derivative) or None. `above`: bool [n, n], True above the diagonal.
    The logits are written into `buffer` (see `_view`).
    """
    logits = torch.bmm(rows, keys[:, first:last].transpose(1, 2), out=_view(buffer, rows.shape[:2], last - first))
    tanh = None
    if softcap is not None:
        tanh = logits.tanh_()
        logits = tanh * softcap
    if shift is not None:
        logits = logits.sub_(shift)
    kv_heads, count = logits.shape[0] // batch, stop - start
    logits5 = logits.view(batch, kv_heads, count, -1, last - first)  # [B, Hkv, rows, group, keys]
    if mask is not None:
        block = mask[:, :, start:stop, first:last]  # [B or 1, Hq or 1, rows, keys]
        block = block.unsqueeze(3) if block.shape[1] == 1 else block.unflatten(1, (kv_heads, -1)).transpose(2, 3)
        if block.dtype == torch.bool:
            logits5.masked_fill_(~block, float("-inf"))
        else:
            logits5.add_(block.float())
    elif is_causal and last > start:
        # Only the keys [start, last) can lie above the diagonal of this block.
        logits5[..., start - first:].masked_fill_(above[:count, : last - start].unsqueeze(1), float("-inf"))
    return logits, tanh


def _above_diagonal(size: int, device: torch.device) -> Tensor:
    return torch.ones(size, size, dtype=torch.bool, device=device).triu_(1)


def _view(buffer: Tensor, leading: torch.Size, keys: int) -> Tensor:
    """A [*leading, keys] tensor on the front of a flat preallocated buffer. Blocks reuse two such
    buffers: a fresh multi-MiB tensor per block costs page faults comparable to the block's arithmetic."""
    return buffer[: leading.numel() * keys].view(*leading, keys)


def _blockwise_forward(query, key, value, mask, scale, is_causal, softcap, sinks) -> tuple[Tensor, Tensor]:
    """Attention output [B, Hq, Tq, Dv] (query dtype) and logsumexp [B, Hq, Tq] float32, one block of
    queries at a time; for rows with no key the logsumexp is 0 and the output 0 (as the fused kernel)."""
    batch, heads, length, _ = query.shape
    kv_heads, keys = key.shape[1], key.shape[2]
    group, flat = heads // kv_heads, batch * kv_heads
    scaled_query = _grouped(query, kv_heads, scale / (softcap or 1.0))
    key, value = _flat(key), _flat(value)
    # Laid out [B, Tq, Hq, Dv] so that transformers' transpose(1, 2).contiguous() is free.
    output = query.new_zeros(batch, length, kv_heads, group, value.shape[-1])
    lse = torch.zeros(batch, length, kv_heads, group, dtype=torch.float32, device=query.device)
    sink = None
    if sinks is not None:  # [Hq] -> [B * Hkv, 1, group, 1], beside the logits viewed [B * Hkv, rows, group, keys]
        sink = sinks.float().view(1, kv_heads, 1, group, 1).expand(batch, -1, -1, -1, -1).reshape(flat, 1, group, 1)
    step = min(BLOCK_ROWS, length)
    above = _above_diagonal(step, query.device)
    buffer = scaled_query.new_empty(flat * step * group * keys)
    for start in range(0, length, step):
        stop = min(start + step, length)
        first, last = _key_range(mask, is_causal, start, stop, keys)
        if first == last:
            continue
        rows = scaled_query[:, start * group:stop * group]
        logits, _ = _block_logits(rows, key, None, softcap, mask, batch, is_causal, above, start, stop, first, last,
                                  buffer)
        logits = logits.view(flat, stop - start, group, last - first)
        # softmax(x) = exp(x - max) / sum: exact also where every logit is a huge negative float mask value.
        peak = logits.amax(-1, keepdim=True)
        if sink is not None:
            peak = torch.maximum(peak, sink)
        peak = peak.masked_fill_(peak == float("-inf"), 0.0)  # rows with no key
        probs = torch.exp_(logits.sub_(peak))
        total = probs.sum(-1, keepdim=True)
        if sink is not None:
            total += torch.exp(sink - peak)
        empty = total == 0
        probs = probs.div_(total.masked_fill_(empty, 1.0))
        block_output = torch.bmm(probs.view(flat, -1, last - first), value[:, first:last])
        output[:, start:stop] = block_output.view(batch, kv_heads, stop - start, group, -1).transpose(1, 2)
        block_lse = peak.add_(total.log_()).masked_fill_(empty, 0.0)
        lse[:, start:stop] = block_lse.view(batch, kv_heads, stop - start, group).transpose(1, 2)
    return output.view(batch, length, heads, -1).transpose(1, 2), lse.view(batch, length, heads).transpose(1, 2)


def _blockwise_backward(query, key, value, output, lse, mask, grad_output, scores, scale, is_causal, softcap,
                        with_grads: bool) -> tuple[Tensor, Tensor, Tensor] | None:
    """Adds sum_ij |P_ij G_ij| (G = dO V^T) into `scores` [B, Hq]; `with_grads`: returns dQ, dK, dV
    (input dtypes) as flash-attention's backward, with Delta = rowsum(dO * O): dS = P * (G - Delta),
    dQ = dS K scale, dK = dS^T Q scale, dV = P^T dO; soft-capping multiplies dS by 1 - tanh^2.
    """
    batch, heads, length, dim = query.shape
    kv_heads, keys = key.shape[1], key.shape[2]
    group, flat = heads // kv_heads, batch * kv_heads
    row_lse = _grouped(lse.unsqueeze(-1), kv_heads)  # [B * Hkv, Tq * group, 1]
    if softcap is None:
        # [scale Q, -lse] @ [K, 1]^T = scale Q K^T - lse in one matmul.
        logit_rows, logit_keys, shift = _grouped(query, kv_heads, scale, extra=1), _flat(key, extra=1), None
        logit_rows[..., dim:] = row_lse.neg_()
        logit_keys[..., dim:] = 1.0
        query_factor = 1.0
    else:
        logit_rows, logit_keys, shift = _grouped(query, kv_heads, scale / softcap), _flat(key), row_lse
        query_factor = softcap
    grouped_grad, flat_value = _grouped(grad_output, kv_heads), _flat(value)
    head_scores = scores.view(flat, group)
    if with_grads:
        delta = _grouped((grad_output.float() * output.float()).sum(-1, keepdim=True), kv_heads)
        grad_query = torch.zeros(flat, length * group, dim, dtype=torch.float32, device=query.device)
        grad_key, grad_value = torch.zeros(flat, keys, dim, device=key.device), torch.zeros_like(flat_value)
    step = min(BLOCK_ROWS, length)
    above = _above_diagonal(step, query.device)
    logit_buffer, grad_buffer = (flat_value.new_empty(flat * step * group * keys) for _ in range(2))
    for start in range(0, length, step):
        stop = min(start + step, length)
        first, last = _key_range(mask, is_causal, start, stop, keys)
        if first == last:
            continue
        rows = slice(start * group, stop * group)
        logits, tanh = _block_logits(logit_rows[:, rows], logit_keys, None if shift is None else shift[:, rows],
                                     softcap, mask, batch, is_causal, above, start, stop, first, last, logit_buffer)
        probs = logits.exp_()
        block_grad = grouped_grad[:, rows]
        weighted = torch.bmm(block_grad, flat_value[:, first:last].transpose(1, 2),
                             out=_view(grad_buffer, block_grad.shape[:2], last - first)).mul_(probs)  # P * G
        if not with_grads:
            head_scores += weighted.abs_().sum(-1).view(flat, -1, group).sum(1)
            continue
        head_scores += torch.linalg.vector_norm(weighted, ord=1, dim=-1).view(flat, -1, group).sum(1)
        # bmm into fresh tensors: baddbmm_ into a strided slice falls back to one matmul per batch entry.
        grad_value[:, first:last] += torch.bmm(probs.transpose(1, 2), block_grad)
        grad_logits = weighted.addcmul_(probs, delta[:, rows], value=-1)
        if tanh is not None:
            grad_logits = grad_logits.mul_(1 - tanh.square_())
        # logit_rows hold scale Q (divided by the soft cap, if any), so dK = dS^T Q scale is:
        block_grad_key = torch.bmm(grad_logits.transpose(1, 2), logit_rows[:, rows, :dim])
        grad_key[:, first:last] += block_grad_key.mul_(query_factor)
        grad_query[:, rows] = torch.bmm(grad_logits, logit_keys[:, first:last, :dim]).mul_(scale)
    if not with_grads:
        return None
    grad_query = grad_query.view(batch, kv_heads, length, group, dim).transpose(2, 3).reshape(query.shape)
    return (grad_query.to(query.dtype), grad_key.view(key.shape).to(key.dtype),
            grad_value.view(value.shape).to(value.dtype))
