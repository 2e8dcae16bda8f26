"""Score a saved model on probe files: the one home of "load a model, score examples with it".

    python -m lightning_sft.score --model DIR --probe FILE --out FILE.safetensors [--dtype float32]

writes `pattern` [L, H], `per_example` [N, L, H] and `losses` [N] (float32 safetensors, `storage.save_scores`).
`lightning_sft.select` scores its target and pool through the same functions, so both commands load models
the same way (`models.load_model`, `models.load_tokenizer`), pad the same way (`models.pad_token_id`) and
run on the same device in the same dtype (`scoring_device_and_dtype`).

Like the analysis commands it takes a flat list of flags (argparse); only `train.py` uses LightningCLI,
because a fit is configured by nested YAML (model, data, trainer, callbacks).
"""

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightning_sft.command_line import check_output_file, positive_int
from lightning_sft.data import collate_batches, load_examples
from lightning_sft.models import DTYPES, load_model, load_tokenizer, pad_token_id
from lightning_sft.scorer.patterns import HeadScores, score_heads
from lightning_sft.storage import save_scores

# float32 on CPU: CPUs without native bf16 (AVX2) emulate it ~30x slower; GPUs compute bf16 natively.
DEFAULT_DTYPES = {"cpu": "float32", "cuda": "bfloat16"}


def scoring_device_and_dtype(dtype: str | None = None) -> tuple[torch.device, str]:
    """The device scoring runs on (the first CUDA GPU if there is one, else the CPU) and the dtype to load
    the model in: `dtype` (a key of `models.DTYPES`) if given, else `DEFAULT_DTYPES` for that device."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return device, dtype if dtype is not None else DEFAULT_DTYPES[device.type]


def load_scoring_model(source: str | Path, dtype: str | None = None) -> PreTrainedModel:
    """The model `source` (see `models.load_model`) on `scoring_device_and_dtype(dtype)`'s device and dtype."""
    device, dtype = scoring_device_and_dtype(dtype)
    return load_model(source, dtype=dtype).to(device)


def score_examples(
    model: PreTrainedModel, examples: list[dict], tokenizer: PreTrainedTokenizerBase, batch_size: int
) -> HeadScores:
    """Eq. 1 for tokenized `examples` (`input_ids`, `labels` lists) in order, `batch_size` per padded batch
    (padded with `models.pad_token_id(tokenizer)`), with a progress bar."""
    return score_heads(model, collate_batches(examples, pad_token_id(tokenizer), batch_size), progress=True)


@dataclass(frozen=True)
class ScoringOptions:
    """How the scoring commands read rows and run the model: `batch_size` examples per scored batch,
    `max_length` tokens kept per example, `dtype` (None: `scoring_device_and_dtype`'s default), the row
    `format` and benchmark `adapter` of `lightning_sft.data`. `add_model_arguments` exposes them as flags."""

    batch_size: int = 8
    max_length: int = 1024
    dtype: str | None = None
    format: str = "auto"
    adapter: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ScoringOptions":
        return cls(args.batch_size, args.max_length, args.dtype, args.format, args.adapter)


def score_command(
    model_source: str, probe: str, out: Path, options: ScoringOptions = ScoringOptions(),
    max_examples: int | None = None,
) -> str:
    """Score the model `model_source` on the probe file `probe` (its first `max_examples` rows) and write the
    scores to `out`; returns what to print. The tokenizer and probe are read before the model loads, so their
    errors come at once."""
    tokenizer = load_tokenizer(model_source)
    examples = load_examples(probe, tokenizer, format=options.format, adapter=options.adapter,
                             max_length=options.max_length, max_examples=max_examples)
    model = load_scoring_model(model_source, options.dtype)
    scores = score_examples(model, examples, tokenizer, options.batch_size)
    save_scores(out, scores.pattern, scores.per_example, scores.losses, metadata={
        "model": str(model_source), "probe": str(probe), "dtype": str(model.dtype).removeprefix("torch."),
        "skipped": str(scores.skipped)})
    layers, heads = scores.pattern.shape
    return (f"wrote the [{layers}, {heads}] pattern of {len(scores.losses)} examples ({scores.skipped} skipped)"
            f" to {out}")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --batch-size, --max-length, --dtype, --format and --adapter, as score and select read them."""
    parser.add_argument("--model", required=True, help="a save_pretrained folder (with its tokenizer), a .gguf file,"
                                                       " package:NAME or a hub id")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="examples per scored batch")
    parser.add_argument("--max-length", type=int, default=1024, help="tokens kept per example")
    parser.add_argument("--dtype", choices=list(DTYPES),
                        help=f"dtype to score in (default: {DEFAULT_DTYPES['cpu']} on CPU,"
                             f" {DEFAULT_DTYPES['cuda']} on CUDA)")
    parser.add_argument("--format", default="auto", help="prompt_response, chat, text or auto (see lightning_sft.data)")
    parser.add_argument("--adapter", help="benchmark adapter from rows to prompt/response (e.g. gsm8k)")


def run_command(parser: argparse.ArgumentParser, command, args: argparse.Namespace) -> None:
    """Check the output file `args.out`, then print `command(args)`; a user error (ValueError,
    FileNotFoundError) prints one `error:` line and exits 1."""
    try:
        check_output_file(args.out)
        print(command(args))
    except (ValueError, FileNotFoundError) as error:
        parser.exit(1, f"error: {error}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lightning_sft.score",
                                     description="Score a saved model's attention heads on a probe file.")
    add_model_arguments(parser)
    parser.add_argument("--probe", required=True, help="probe file (.jsonl/.json/.parquet/.csv) in a training format")
    parser.add_argument("--out", required=True, type=Path, help="output .safetensors file")
    parser.add_argument("--max-examples", type=int, help="score only the first N rows of the probe file")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    run_command(parser, lambda args: score_command(
        args.model, args.probe, args.out, ScoringOptions.from_args(args), args.max_examples), parser.parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
