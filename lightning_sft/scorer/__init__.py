"""The scorer: Eq. 1, sum_ij |A_ij * dL/dA_ij| per example and attention head, through transformers'
AttentionInterface.

`patterns` runs the model (`score_heads`, `activation_pattern`); `head_scored_attention` is the attention
whose backward scores (on CPU with the C++ kernel of `cpu_kernel` + `csrc/`); `triton_scores` is the CUDA route
(PyTorch's fused attention, a Triton kernel that only scores).
"""

from lightning_sft.scorer.patterns import HeadScores, activation_pattern, score_heads

__all__ = ["HeadScores", "activation_pattern", "score_heads"]
