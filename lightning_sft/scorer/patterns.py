"""Head-activation patterns: how much the loss depends on each attention head's probabilities.

For a probe example x, L(x) is the mean next-token cross-entropy over its supervised tokens (labels !=
-100, HF's shift: logits[t] predicts labels[t + 1]). For query head h of layer l, with A [query, key] its
post-softmax attention probabilities,

    score[l, h](x) = sum_ij |A_ij * dL(x)/dA_ij|                                          (Eq. 1)

and the pattern is the mean of score(x) over the examples with at least one supervised token.

How: the model runs with our attention function (registered in transformers' `AttentionInterface`, set
only while probing), whose backward adds |A * dL/dA| into per-(example, head) sums without keeping any
[T, T] matrix (`head_scored_attention.py`). Gradients flow only towards activations (`torch.autograd.grad`
to the embedding output), so no weight gradient is computed and no `.grad` is touched. Examples are
independent (their losses are summed), so batching does not change any score.

This module is the library only; `lightning_sft.score` scores a saved model on probe files.
"""

import importlib.util
import inspect
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping

import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.progress import Progress
from torch import Tensor
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from lightning_sft.scorer.head_scored_attention import HeadScoredAttention
from lightning_sft.models import left_as_found
from lightning_sft.labels import IGNORE_INDEX

ATTENTION_NAME = "lightning_sft_head_scores"
# On CUDA with Triton (PyTorch's CUDA wheels bring it) and no soft-capping or sinks, PyTorch's sdpa computes the
# attention and its gradients and a Triton kernel only scores (`triton_scores`); elsewhere `HeadScoredAttention`.
TRITON = importlib.util.find_spec("triton") is not None
BATCH_KEYS = ("input_ids", "attention_mask", "labels")
# Arguments some families pass to their attention function that change the attention computed here.
UNSUPPORTED_ARGUMENTS = ("position_bias", "sinks", "indices", "block_indices", "head_mask")


@dataclass
class HeadScores:
    """Scores of the probe examples that have a supervised token, in input order.

    per_example: float32 [N, num_layers, num_heads], Eq. 1 per example.
    losses: float32 [N], each example's mean supervised-token cross-entropy L(x) (nats).
    skipped: examples left out because they have no supervised token.
    """

    per_example: Tensor
    losses: Tensor
    skipped: int

    @property
    def pattern(self) -> Tensor:
        """float32 [num_layers, num_heads]: the mean of `per_example` over the examples."""
        return self.per_example.mean(0)


class _Probe:
    """What the attention function fills during one forward: layer index -> scores [B, H] float32."""

    def __init__(self, family: str):
        self.family = family
        self.layer_scores: dict[int, Tensor] = {}


_active_probe: _Probe | None = None


def _scored_attention(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    softcap: float | None = None,
    s_aux: Tensor | None = None,
    **kwargs,
) -> tuple[Tensor, None]:
    """transformers' attention-function signature: query [B, Hq, T, D], key/value [B, Hkv, T, D] ->
    (output [B, T, Hq, D], no weights). Registers this layer's head-score buffer with the active probe."""
    probe = _active_probe
    if probe is None:
        raise RuntimeError(
            f"attn_implementation={ATTENTION_NAME!r} only works inside lightning_sft.scorer.patterns.score_heads;"
            " set the model back to 'sdpa' or 'eager'"
        )
    layer = getattr(module, "layer_idx", None)
    where = f"{probe.family} ({type(module).__name__}, layer {layer})"
    for name in UNSUPPORTED_ARGUMENTS:
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"{where} passes `{name}` to its attention function; scoring does not support it")
    if attention_mask is not None and not isinstance(attention_mask, Tensor):
        raise NotImplementedError(f"{where} passes a {type(attention_mask).__name__} mask; scoring needs a tensor mask")
    if dropout:
        raise ValueError(f"{where} applies attention dropout {dropout}; head scoring runs the model in eval mode")
    if query.shape[1] % key.shape[1]:
        raise NotImplementedError(f"{where}: {query.shape[1]} query heads do not group over {key.shape[1]} key heads")
    if not isinstance(layer, int):
        raise NotImplementedError(f"{where}: its attention module has no integer `layer_idx` to place its heads by")
    if layer in probe.layer_scores:
        raise NotImplementedError(f"{where} runs attention twice in one forward; head scores need one call per layer")
    if attention_mask is not None:
        attention_mask = attention_mask[..., : key.shape[-2]]
    # As transformers' sdpa path: the call's flag, else the module's (it matters only where there is no mask).
    causal = (is_causal if is_causal is not None else getattr(module, "is_causal", True)) and query.shape[2] > 1
    # The first attention of the forward: gradients towards its inputs reach no other attention, only the
    # embedding output, so its backward skips dQ, dK, dV.
    input_grads = bool(probe.layer_scores)
    scores = torch.zeros(query.shape[:2], dtype=torch.float32, device=query.device)
    probe.layer_scores[layer] = scores
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if _uses_triton(query, value, softcap, s_aux):
        from lightning_sft.scorer.triton_scores import scored_sdpa_attention

        return scored_sdpa_attention(module, query, key, value, attention_mask, scores, scale, causal,
                                     input_grads), None
    sinks = None if s_aux is None else s_aux.detach()
    output = HeadScoredAttention.apply(query, key, value, attention_mask, scores, scale, causal, softcap, sinks,
                                       input_grads)
    return output.transpose(1, 2).contiguous(), None


def _uses_triton(query: Tensor, value: Tensor, softcap: float | None, sinks: Tensor | None) -> bool:
    """Whether sdpa + the Triton scoring kernel compute this attention (see TRITON)."""
    return (TRITON and query.is_cuda and softcap is None and sinks is None
            and query.shape[-1] == value.shape[-1])


AttentionInterface.register(ATTENTION_NAME, _scored_attention)
# Same masks as sdpa: boolean [B, 1, T, T] (True attends, sliding windows included), or None for plain causal.
AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


def _family(model: PreTrainedModel) -> str:
    return f"{type(model).__name__} (model_type={model.config.model_type!r})"


def _text_request(model: PreTrainedModel, implementation: str) -> dict:
    """The `set_attn_implementation` argument that sets `implementation` on the text decoder only (not on
    vision/audio towers): keyed by its sub-config name, or "" when the model is the text decoder."""
    text_config = model.config.get_text_config(decoder=True)
    if text_config is model.config:
        return {"": implementation}
    for key in model.config.sub_configs:
        if getattr(model.config, key) is text_config:
            return {key: implementation}
    raise NotImplementedError(f"{_family(model)}: its text decoder config is nested too deep to switch its attention")


@contextmanager
def _probing(model: PreTrainedModel) -> Iterator[_Probe]:
    """Eval mode with our attention function on the text decoder; afterwards (also on error) the model is as it
    was: every module's training flag, the decoder's attention implementation, the CPU and CUDA RNG states.

    Only `set_attn_implementation` switches the attention (documented; it warns and changes nothing for a
    family that computes attention in its own code, which `_score_batch` then refuses: no layer calls ours).
    """
    global _active_probe
    if not getattr(model, "_supports_attention_backend", False):
        # The class flag by which transformers' own docs ("transformers as a modeling backend") have a model
        # declare that its attention goes through AttentionInterface.
        raise NotImplementedError(
            f"{_family(model)} sets _supports_attention_backend=False: its attention does not go through"
            " transformers' AttentionInterface, so its heads cannot be scored")
    if _active_probe is not None:
        raise RuntimeError("score_heads is already running (nested or concurrent calls are not supported)")
    text_config = model.config.get_text_config(decoder=True)
    previous = text_config._attn_implementation
    with left_as_found(model):
        try:
            model.set_attn_implementation(_text_request(model, ATTENTION_NAME))
            model.eval()
            _active_probe = _Probe(_family(model))
            yield _active_probe
        finally:
            _active_probe = None
            if previous is not None:
                model.set_attn_implementation(_text_request(model, previous))


def _check_batch(index: int, batch: Mapping) -> dict[str, Tensor]:
    """input_ids, attention_mask, labels [B, T] of batch `index`, or a ValueError naming what is wrong."""
    missing = [name for name in BATCH_KEYS if not isinstance(batch.get(name), Tensor)]
    if missing:
        raise ValueError(f"batch {index} lacks tensor(s) {missing}; pass dicts from lightning_sft.data.collate")
    tensors = {name: batch[name] for name in BATCH_KEYS}
    shapes = {name: tuple(tensor.shape) for name, tensor in tensors.items()}
    if len(set(shapes.values())) > 1 or len(shapes["input_ids"]) != 2:
        raise ValueError(f"batch {index}: shapes disagree or are not [batch, length]: {shapes}")
    targets = tensors["labels"][:, 1:].masked_fill(tensors["attention_mask"][:, 1:] == 0, IGNORE_INDEX)
    if not (targets != IGNORE_INDEX).any():
        raise ValueError(
            f"batch {index}: no example has a supervised token (labels != {IGNORE_INDEX} after position 0);"
            " label the responses, or drop these examples"
        )
    return tensors


def _score_batch(
    model: PreTrainedModel, probe: _Probe, batch: dict[str, Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """One forward + backward: scores [B, L, H] float32, losses [B] float32, kept [B] bool (has a
    supervised token; the others' losses are NaN-free zeros and do not enter the backward)."""
    device = model.device
    # Clones: tensors made under inference mode cannot be saved for backward.
    input_ids, attention_mask, labels = (batch[name].to(device).clone() for name in BATCH_KEYS)
    targets = labels[:, 1:].masked_fill(attention_mask[:, 1:] == 0, IGNORE_INDEX)
    counts = (targets != IGNORE_INDEX).sum(1)
    kept = counts > 0

    embeddings = []

    def as_leaf(module, args, output):
        # The graph starts at the embedding output: gradients reach activations, never the weights.
        embeddings.append(output.detach().requires_grad_())
        return embeddings[-1]

    # Logits only where a supervised token is predicted (the prompt's are never needed): the output head sees
    # the hidden states of those positions only, [tokens, hidden], through a forward pre-hook on
    # `get_output_embeddings()`; the family's own code after the head (soft-capping, scaling) still runs.
    predicts = F.pad(targets != IGNORE_INDEX, (0, 1), value=False)  # [B, T]: position t predicts t + 1
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    if "position_ids" in inspect.signature(model.forward).parameters:
        # Positions count real tokens only, so a left-padded example sees the positions it has alone.
        inputs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    head = model.get_output_embeddings()
    if head is None:
        raise NotImplementedError(f"{probe.family} has no output embeddings (get_output_embeddings() is None)")
    heads_seen = []

    def supervised_positions(module, args):
        hidden = args[0] if len(args) == 1 and isinstance(args[0], Tensor) else None
        if hidden is None or hidden.dim() != 3 or hidden.shape[:2] != predicts.shape:
            raise NotImplementedError(
                f"{probe.family} calls its output head with {[getattr(a, 'shape', a) for a in args]}, not the"
                f" hidden states of every position [{predicts.shape[0]}, {predicts.shape[1]}, hidden]")
        heads_seen.append(True)
        return (hidden[predicts],)

    probe.layer_scores.clear()
    handles = [model.get_input_embeddings().register_forward_hook(as_leaf),
               head.register_forward_pre_hook(supervised_positions)]
    try:
        logits = model(**inputs).logits
    finally:
        for handle in handles:
            handle.remove()
    if len(heads_seen) != 1 or logits.shape[:-1] != (int(predicts.sum()),):
        raise NotImplementedError(
            f"{probe.family}: expected one output-head call giving logits [supervised tokens, vocab], got"
            f" {len(heads_seen)} call(s) and logits {tuple(logits.shape)}")
    num_layers = model.config.get_text_config(decoder=True).num_hidden_layers
    missing = sorted(set(range(num_layers)) - set(probe.layer_scores))
    if missing:
        raise NotImplementedError(
            f"{probe.family}: layers {missing} of {num_layers} never called the attention interface (not softmax"
            " attention, or computed outside transformers' AttentionInterface), so their heads cannot be scored"
        )
    if len(embeddings) != 1:
        raise NotImplementedError(
            f"{probe.family} called its input embedding {len(embeddings)} times in one forward; expected once")
    # logits[t] predicts labels[t + 1]; the last position predicts nothing (target -100).
    shifted = F.pad(targets, (0, 1), value=IGNORE_INDEX)
    token_losses = F.cross_entropy(logits.float(), shifted[predicts], reduction="none")
    example = predicts.nonzero()[:, 0]  # the example each supervised token belongs to
    losses = token_losses.new_zeros(targets.shape[0]).index_add_(0, example, token_losses) / counts.clamp(min=1)
    torch.autograd.grad(losses[kept].sum(), embeddings, allow_unused=True)
    scores = torch.stack([probe.layer_scores[layer] for layer in range(num_layers)], dim=1)
    return scores, losses.detach(), kept


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def score_heads(
    model: PreTrainedModel, batches: Iterable[Mapping[str, Tensor]], *, progress: bool = False
) -> HeadScores:
    """Eq. 1 for every example of `batches` (dicts with `input_ids`, `attention_mask`, `labels` [B, T]).

    `model` is a transformers causal LM (any dtype, mode and attention implementation; left as found).
    Under torch.distributed, batch i is scored on rank i % world and every rank returns the full result
    (every rank must pass the same batches); every rank runs the same number of forward/backward passes
    (extra ones discarded), as DeepSpeed ZeRO-3's parameter gathering needs. `progress` shows a progress
    bar (rank 0). Raises NotImplementedError for families whose attention bypasses AttentionInterface.
    """
    batches = [_check_batch(index, batch) for index, batch in enumerate(batches)]
    if not batches:
        raise ValueError("score_heads got no batches; pass at least one batch of probe examples")
    rank, world = _rank_and_world()
    mine = list(range(rank, len(batches), world))
    passes = math.ceil(len(batches) / world)
    offsets = [0]
    for batch in batches:
        offsets.append(offsets[-1] + batch["input_ids"].shape[0])
    per_example = losses = kept = None
    device_type = model.device.type
    with (_probing(model) as probe, torch.inference_mode(False), torch.enable_grad(),
          torch.autocast(device_type, enabled=False), Progress(disable=not progress or rank != 0) as bar):
        task = bar.add_task("Scoring heads", total=passes)
        for step in range(passes):
            index = mine[step] if step < len(mine) else None
            # A rank out of batches repeats batch 0 and discards it, so all ranks run equally many passes.
            scores, batch_losses, batch_kept = _score_batch(model, probe, batches[0 if index is None else index])
            if per_example is None:
                per_example = scores.new_zeros(offsets[-1], *scores.shape[1:])
                losses = scores.new_zeros(offsets[-1])
                kept = scores.new_zeros(offsets[-1])
            if index is not None:
                rows = slice(offsets[index], offsets[index + 1])
                per_example[rows], losses[rows], kept[rows] = scores, batch_losses, batch_kept.float()
            bar.advance(task)
    if world > 1:
        for tensor in (per_example, losses, kept):
            dist.all_reduce(tensor)
    kept = kept.bool().cpu()
    return HeadScores(per_example.cpu()[kept], losses.cpu()[kept], skipped=int((~kept).sum()))


def activation_pattern(
    model: PreTrainedModel, batches: Iterable[Mapping[str, Tensor]], *, per_example: bool = False
) -> Tensor:
    """Head-activation pattern, float32 [num_layers, num_heads] (mean of Eq. 1 over the examples with a
    supervised token), or with `per_example` the scores [N, num_layers, num_heads] of those examples in
    input order. See `score_heads`."""
    scores = score_heads(model, batches)
    return scores.per_example if per_example else scores.pattern
