"""The model calls behind evaluation: log-likelihoods of continuations, and greedy generation. torch and
transformers only.

Both take batches that the caller has already cut; `run_sharded` spreads them over torch.distributed ranks
(batch i on rank i % world) so that every rank runs the same number of forward passes, as DeepSpeed ZeRO-3's
parameter gathering needs: a rank out of batches repeats its first one and discards the result.
"""

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from transformers import (GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria,
                          StoppingCriteriaList)

from lightning_sft.data import PromptResponse


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) under torch.distributed, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(num_batches: int) -> Iterator[int | None]:
    """The batch indices this rank runs, then None (a pass to run and discard) until every rank has run
    ceil(num_batches / world) passes."""
    rank, world = rank_and_world()
    mine = list(range(rank, num_batches, world))
    for step in range(math.ceil(num_batches / world)):
        yield mine[step] if step < len(mine) else None


def encode_pair(tokenizer: PreTrainedTokenizerBase, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's `_encode_pair`: trailing spaces of the context move to the continuation; context and
    context + continuation are encoded with the tokenizer's defaults, and the continuation is the tokens after
    the context's (so a token merging across the boundary counts as continuation)."""
    if not context:
        raise ValueError(f"empty context for the continuation {continuation!r}; a task must give a context")
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids):]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, training_format: bool) -> list[int]:
    """Prompt tokens: as SFT training renders a prompt (`data.PromptResponse`: bos + prompt), or with the
    tokenizer's defaults (lm-eval's `tok_encode`)."""
    if not training_format:
        return tokenizer.encode(prompt)
    input_ids, labels = PromptResponse()({"prompt": prompt, "response": ""}, tokenizer)
    return [token for token, label in zip(input_ids, labels) if label < 0]


def continuation_loglikelihoods(model: PreTrainedModel, pairs: list[tuple[list[int], list[int]]],
                                pad_token_id: int) -> Tensor:
    """float64 [len(pairs)]: sum over the continuation's tokens of log p(token | everything before it), for
    each (context_ids, continuation_ids) pair, in one right-padded forward pass (log-softmax in float32,
    summed in float64)."""
    sequences = [(context + continuation)[:-1] for context, continuation in pairs]
    longest = max(len(sequence) for sequence in sequences)
    device = model.device
    input_ids = torch.full((len(pairs), longest), pad_token_id, dtype=torch.long, device=device)
    attention_mask = torch.zeros_like(input_ids)
    for row, sequence in enumerate(sequences):
        input_ids[row, :len(sequence)] = torch.tensor(sequence, device=device)
        attention_mask[row, :len(sequence)] = 1
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    totals = []
    for row, (context, continuation) in enumerate(pairs):
        # position t predicts token t + 1: the continuation's tokens are predicted from len(context) - 1 on
        positions = torch.arange(len(context) - 1, len(context) - 1 + len(continuation), device=device)
        log_probs = F.log_softmax(logits[row, positions].float(), dim=-1)
        targets = torch.tensor(continuation, device=device)
        totals.append(log_probs.gather(1, targets[:, None]).double().sum())
    return torch.stack(totals).cpu()


@dataclass
class Generation:
    """Greedy output: `tokens` generated (eos excluded), `stopped` before `max_new_tokens` (eos or a stop string)."""

    tokens: list[int]
    stopped: bool


class _StopWhen(StoppingCriteria):
    """Stops each sequence as soon as `stopped(its generated tokens)` says so ([batch] bool)."""

    def __init__(self, prompt_length: int, stopped: Callable[[list[int]], bool]) -> None:
        self.prompt_length, self.stopped = prompt_length, stopped

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs) -> Tensor:
        rows = input_ids[:, self.prompt_length:].tolist()
        return torch.tensor([self.stopped(row) for row in rows], dtype=torch.bool, device=input_ids.device)


def greedy_generate(model: PreTrainedModel, prompts: list[list[int]], *, max_new_tokens: int, pad_token_id: int,
                    eos_token_id: int | None, stopped: Callable[[list[int]], bool]) -> list[Generation]:
    """Greedy decoding of each prompt (left-padded into one batch) with transformers' `generate`, for at most
    `max_new_tokens` tokens. A sequence stops at eos or when `stopped(tokens)` says so.

    The generation settings are exactly these (a model's own generation config, e.g. a repetition penalty, is
    not applied). Under torch.distributed, `generate` runs with `synced_gpus`: every rank runs forward passes
    until no rank has an unfinished sequence, as DeepSpeed ZeRO-3 needs.
    """
    longest = max(len(prompt) for prompt in prompts)
    device = model.device
    input_ids = torch.full((len(prompts), longest), pad_token_id, dtype=torch.long, device=device)
    attention_mask = torch.zeros_like(input_ids)
    for row, prompt in enumerate(prompts):
        input_ids[row, longest - len(prompt):] = torch.tensor(prompt, device=device)
        attention_mask[row, longest - len(prompt):] = 1
    settings = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_token_id,
                                eos_token_id=eos_token_id)
    _, world = rank_and_world()
    sequences = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=settings,
                               stopping_criteria=StoppingCriteriaList([_StopWhen(longest, stopped)]),
                               synced_gpus=world > 1)
    outputs = []
    for row in sequences[:, longest:].tolist():  # a finished sequence is padded after its last token
        generation = Generation([], False)
        for token in row:
            if token == eos_token_id:
                generation.stopped = True
                break
            generation.tokens.append(token)
            if stopped(generation.tokens):
                generation.stopped = True
                break
        outputs.append(generation)
    return outputs
