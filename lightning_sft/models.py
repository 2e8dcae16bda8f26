"""Loading causal LMs and their tokenizers: one home for "a model named by the user" (folder or hub id).

Every place that takes a model by name (SFTModule, the scoring, selection and evaluation commands) loads it
through `load_tokenizer` and `load_model`, so they accept the same sources and fail with the same messages.
"""

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


def load_tokenizer(source: str | Path, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer saved with the model `source` (a directory written by `save_pretrained`, or a hub id)."""
    try:
        return AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"tokenizer {str(source)!r}: no tokenizer found there ({_first_line(error)})") from None


def load_model(
    source: str | Path, *, dtype: str = "float32", trust_remote_code: bool = False, **kwargs
) -> PreTrainedModel:
    """`AutoModelForCausalLM.from_pretrained(source)` in `dtype` (a key of `DTYPES`), on the CPU."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}; pass one of {list(DTYPES)}")
    try:
        return AutoModelForCausalLM.from_pretrained(
            str(source), dtype=DTYPES[dtype], trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(
            f"model {str(source)!r}: cannot load it ({_first_line(error)}); pass a directory written by"
            " save_pretrained, or a hub id when online") from None


def tokenizer_for(name: str | None, module: Any, who: str) -> PreTrainedTokenizerBase:
    """The tokenizer named by `name` (`load_tokenizer`), else `module.tokenizer` (a LightningModule's).

    `who` names the component asking (e.g. "SFTDataModule"), for the error when neither is there.
    """
    if name is not None:
        return load_tokenizer(name)
    tokenizer = getattr(module, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(
            f"{who} takes the tokenizer from the LightningModule's `tokenizer` attribute, but"
            f" {type(module).__name__} has none; pass tokenizer: <directory or hub id>")
    return tokenizer


def model_of(module: Any, attribute: str | None, who: str) -> PreTrainedModel:
    """The transformers model inside a LightningModule: `module.<attribute>`, else its one child that is a
    `PreTrainedModel`. `who` names the component asking, for the error."""
    if attribute is not None:
        model = getattr(module, attribute, None)
        if not isinstance(model, PreTrainedModel):
            raise ValueError(f"{who}: {type(module).__name__}.{attribute} is {type(model).__name__}, not a"
                             " transformers PreTrainedModel; name the attribute that holds it")
        return model
    found = {name: child for name, child in module.named_children() if isinstance(child, PreTrainedModel)}
    if len(found) != 1:
        raise ValueError(f"{who} found {len(found)} transformers models on {type(module).__name__} ({sorted(found)});"
                         " pass model_attribute= the one to use")
    return next(iter(found.values()))


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its eos, else 0 (padding is masked
    everywhere, so the choice never changes a result)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    return 0


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
