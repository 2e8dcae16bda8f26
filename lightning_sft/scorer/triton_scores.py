"""Head scores on CUDA: PyTorch's fused attention does the work, a Triton kernel only scores.

The forward is transformers' own sdpa attention (flash or memory-efficient kernels), so the output and
dQ, dK, dV in backward are exactly what an sdpa model computes. An identity on the output catches dO in
backward and the kernel adds, per (example, query head),

    sum_ij |P_ij G_ij|,   P = softmax(scale Q K^T + mask) (the attention probabilities), G = dO V^T (= dL/dP)

recomputing P one [BLOCK_M, BLOCK_N] tile at a time as flash-attention does: a first pass over the keys
gives each row's log-normaliser, a second forms P and G and sums |P G|. No [T, T] matrix is kept; each
block of queries visits only the keys from the first to the last one that some row of it attends to.
Products run on the inputs' dtype (bfloat16 tensor cores, float32 accumulation; float32 inputs in IEEE
float32) and the softmax in float32.

Shapes: query [B, Hq, Tq, D], key/value [B, Hkv, Tk, D] (query head h reads key/value head h // (Hq / Hkv)),
grad_output [B, Hq, Tq, D] (any strides), mask None or broadcastable to [B, Hq, Tq, Tk], bool (True
attends) or additive float, is_causal (top-left aligned, as sdpa's) only where the mask is None.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor
from transformers.integrations.sdpa_attention import sdpa_attention_forward

# Tile shape and warps per program (benchmarks/triton_tiles.py compares others on a GPU).
BLOCK_M = 64  # query rows per program
BLOCK_N = 64  # keys per tile
NUM_WARPS = 4


@triton.jit
def _masked_logits(q, k_ptrs, mask_ptrs, rows, cols, dims, q_len, k_len, scale, head_dim,
                   MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """scale q k^T with the mask applied: float32 [BLOCK_M, BLOCK_N], -inf where a key is hidden."""
    k = tl.load(k_ptrs, mask=(cols[:, None] < k_len) & (dims[None, :] < head_dim), other=0.0)
    logits = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale
    allowed = (cols[None, :] < k_len) & (rows[:, None] < q_len)
    if CAUSAL:
        allowed = allowed & (cols[None, :] <= rows[:, None])
    if MASK_KIND == 1:  # bool, stored as uint8
        allowed = allowed & (tl.load(mask_ptrs, mask=allowed, other=0) != 0)
    if MASK_KIND == 2:  # additive float
        logits += tl.load(mask_ptrs, mask=allowed, other=0.0).to(tl.float32)
    return tl.where(allowed, logits, float("-inf"))


@triton.jit
def _score_kernel(q_base, k_base, v_base, do_base, mask_base, partial_base,
                  sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d,
                  so_b, so_h, so_t, so_d, sm_b, sm_h, sm_q, sm_k, range_base, sr_b, sr_h,
                  heads, group, q_len, k_len, head_dim, scale,
                  MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program (query block m, example b x head h): partial[b * heads + h, m] = sum over the block's rows
    of sum_j |P_ij G_ij|."""
    block, flat = tl.program_id(0), tl.program_id(1)
    b, h = flat // heads, flat % heads
    kv = h // group
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    in_rows = (rows[:, None] < q_len) & (dims[None, :] < head_dim)
    q = tl.load(q_base + b * sq_b + h * sq_h + rows[:, None] * sq_t + dims[None, :] * sq_d, mask=in_rows, other=0.0)
    do = tl.load(do_base + b * so_b + h * so_h + rows[:, None] * so_t + dims[None, :] * so_d, mask=in_rows,
                 other=0.0)
    k_base += b * sk_b + kv * sk_h
    v_base += b * sv_b + kv * sv_h
    mask_base += b * sm_b + h * sm_h + rows[:, None] * sm_q
    first, stop = 0, tl.minimum(k_len, (block + 1) * BLOCK_M) if CAUSAL else k_len
    if MASK_KIND != 0:
        range_base += b * sr_b + h * sr_h + 2 * block
        first, stop = tl.load(range_base), tl.load(range_base + 1)

    # Pass 1: running row maximum and sum of exponentials -> log-normaliser (online softmax).
    peak = tl.full([BLOCK_M], float("-inf"), tl.float32)
    total = tl.zeros([BLOCK_M], tl.float32)
    for start in range(first, stop, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        logits = _masked_logits(q, k_base + cols[:, None] * sk_t + dims[None, :] * sk_d,
                                mask_base + cols[None, :] * sm_k, rows, cols, dims, q_len, k_len, scale, head_dim,
                                MASK_KIND, CAUSAL, DOT_PRECISION)
        new_peak = tl.maximum(peak, tl.max(logits, 1))
        shift = tl.where(new_peak == float("-inf"), 0.0, new_peak)  # rows with no key so far
        total = total * tl.exp(peak - shift) + tl.sum(tl.exp(logits - shift[:, None]), 1)
        peak = new_peak
    # Rows with no key at all: P = 0 (exp(-inf - inf)).
    lse = tl.where(total > 0, peak + tl.log(tl.where(total > 0, total, 1.0)), float("inf"))

    # Pass 2: P = exp(logits - lse), G = dO V^T, sum |P G|.
    row_sums = tl.zeros([BLOCK_M], tl.float32)
    for start in range(first, stop, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        logits = _masked_logits(q, k_base + cols[:, None] * sk_t + dims[None, :] * sk_d,
                                mask_base + cols[None, :] * sm_k, rows, cols, dims, q_len, k_len, scale, head_dim,
                                MASK_KIND, CAUSAL, DOT_PRECISION)
        probs = tl.exp(logits - lse[:, None])
        v = tl.load(v_base + cols[:, None] * sv_t + dims[None, :] * sv_d,
                    mask=(cols[:, None] < k_len) & (dims[None, :] < head_dim), other=0.0)
        grads = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        row_sums += tl.sum(tl.abs(probs * grads), 1)
    tl.store(partial_base + flat * tl.num_programs(0) + block, tl.sum(row_sums, 0))


def add_head_scores(query: Tensor, key: Tensor, value: Tensor, grad_output: Tensor, mask: Tensor | None,
                    scores: Tensor, scale: float, is_causal: bool) -> None:
    """Adds sum_ij |P_ij G_ij| into `scores` float32 [B, Hq] (CUDA tensors; see the module docstring)."""
    batch, heads, length, dim = query.shape
    keys = key.shape[2]
    blocks = triton.cdiv(length, BLOCK_M)
    mask_kind, mask_strides, ranges = 0, (0, 0, 0, 0), None
    if mask is not None:
        mask = mask[(None,) * (4 - mask.dim())]
        ranges = _key_ranges(mask, blocks).expand(batch, heads, blocks, 2)
        mask = mask.expand(batch, heads, length, keys)
        mask_kind = 1 if mask.dtype == torch.bool else 2
        mask = mask.view(torch.uint8) if mask.dtype == torch.bool else mask
        mask_strides = mask.stride()
    partial = torch.empty(batch * heads, blocks, dtype=torch.float32, device=query.device)
    _score_kernel[(blocks, batch * heads)](
        query, key, value, grad_output, query if mask is None else mask, partial,
        *query.stride(), *key.stride(), *value.stride(), *grad_output.stride(), *mask_strides,
        partial if ranges is None else ranges, *(0, 0) if ranges is None else ranges.stride()[:2],
        heads, heads // key.shape[1], length, keys, dim, scale,
        MASK_KIND=mask_kind, CAUSAL=is_causal and mask is None,
        DOT_PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=max(16, triton.next_power_of_2(dim)), num_warps=NUM_WARPS)
    scores += partial.sum(1).view(batch, heads)


def _key_ranges(mask: Tensor, blocks: int) -> Tensor:
    """int32 [B', H', blocks, 2]: per block of BLOCK_M queries of `mask` [B', H', Tq, Tk], the first key
    any of its rows attends to and one past the last (0, 0 where none does)."""
    allowed = mask if mask.dtype == torch.bool else mask != float("-inf")
    allowed = torch.nn.functional.pad(allowed, (0, 0, 0, blocks * BLOCK_M - mask.shape[-2]))
    seen = allowed.unflatten(-2, (blocks, BLOCK_M)).any(-2)  # [B', H', blocks, Tk]
    keys = seen.shape[-1]
    first = seen.int().argmax(-1)
    stop = keys - seen.flip(-1).int().argmax(-1)
    return torch.stack([first, stop], -1).masked_fill_(~seen.any(-1, keepdim=True), 0).int()


class _ScoredOutput(torch.autograd.Function):
    """Identity on the attention output [B, T, Hq, D]; its backward scores the heads from dO."""

    @staticmethod
    def forward(ctx, output: Tensor, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None,
                scores: Tensor, scale: float, is_causal: bool) -> Tensor:
        ctx.save_for_backward(query, key, value, mask)
        ctx.scores, ctx.scale, ctx.is_causal = scores, scale, is_causal
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        query, key, value, mask = ctx.saved_tensors
        add_head_scores(query, key, value, grad_output.transpose(1, 2), mask, ctx.scores, ctx.scale, ctx.is_causal)
        return grad_output, *(None,) * 7


def scored_sdpa_attention(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None,
                          scores: Tensor, scale: float, is_causal: bool, input_grads: bool) -> Tensor:
    """transformers' sdpa attention output [B, T, Hq, D], whose backward also adds the head scores into
    `scores` [B, Hq]. Without `input_grads` (the first attention layer) no dQ, dK, dV are computed."""
    inputs = (query, key, value) if input_grads else (query.detach(), key.detach(), value.detach())
    output, _ = sdpa_attention_forward(module, *inputs, mask, scaling=scale, is_causal=is_causal)
    return _ScoredOutput.apply(output, query, key, value, mask, scores, scale, is_causal)
