"""Cost of head scoring against an sdpa training step, on unpadded and padded batches.

    python benchmarks/pattern_cost.py                       # CPU, T = 512, 1024, 2048, 4096
    python benchmarks/pattern_cost.py --lengths 512 1024    # a quick run
    python benchmarks/pattern_cost.py --threads 1           # steadier timings on a shared machine
    python benchmarks/pattern_cost.py --device cuda --model 1b --lengths 1024 2048 4096   # benchmarks/gpu_check.sh

Models (random weights): `small` is a Llama with 4 layers, hidden 256, 8 heads (head dim 32), vocab 1024;
`1b` a Llama of 1.1B parameters (TinyLlama's shape: 22 layers, hidden 2048, 32 query heads over 4
key/value heads, vocab 32000). Scored and trained in `lightning_sft.score.DEFAULT_DTYPES`' dtype for the
device (float32 on CPU, bfloat16 on CUDA). Batch 2; the first quarter of each example unsupervised.
Padding (`--paddings`): `none` (both examples T tokens), `right` or `left` (the second example has 3T/4
tokens, padded on that side, with an attention mask), as the callback's probe batches are.

Each measurement runs in its own subprocess, so its peak memory is its own: on CPU peak RSS (`ru_maxrss`)
minus the peak before the measured work (after building the model and the batch), on CUDA peak allocated
minus allocated before. Time is the fastest of `--repeats` runs after one warm-up run.

    ours   lightning_sft.scorer.patterns.score_heads; `backward` says which backward ran: on CPU the C++ kernel
           (counted calls, one per layer) or the Python path, on CUDA sdpa + the Triton scoring kernel
           (counted calls)
    blocks (CUDA only) the same with the Python blocks of `head_scored_attention` instead of sdpa + Triton,
           the path CUDA takes for soft-capping and sinks
    naive  eager attention, output_attentions=True, retain_grad() on every layer's probabilities,
           loss.backward(), sum |A * A.grad|  (what one would write first; it keeps every layer's
           T x T probabilities and their gradients, so it is skipped above --naive-max-length)
    train  one training step's forward + backward (weight gradients) with sdpa attention

The last column compares the scorer in bfloat16 with float32 on the same weights:
||pattern_bf16 - pattern_fp32|| / ||pattern_fp32||.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_sft.storage import atomic_write_text  # noqa: E402

METHODS = ("ours", "blocks", "naive", "train")
PADDINGS = ("none", "right", "left")
BATCH = 2
MODELS = {
    "small": dict(vocab_size=1024, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=8),
    "1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
               num_attention_heads=32, num_key_value_heads=4),
}


def build(model_name: str, length: int, padding: str, device: torch.device):
    """(model in the device's scoring dtype, batch of `input_ids`, `attention_mask`, `labels` [2, T])."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lightning_sft.labels import IGNORE_INDEX
    from lightning_sft.score import DEFAULT_DTYPES

    torch.manual_seed(0)
    config = LlamaConfig(**MODELS[model_name], max_position_embeddings=length, tie_word_embeddings=False)
    with device:  # initialised where it runs: a 1B model's random init on a CPU takes minutes
        model = LlamaForCausalLM(config).to(getattr(torch, DEFAULT_DTYPES[device.type]))
    input_ids = torch.randint(3, config.vocab_size, (BATCH, length))
    attention_mask = torch.ones_like(input_ids)
    labels = input_ids.clone()
    labels[:, : length // 4] = IGNORE_INDEX
    if padding != "none":
        real = 3 * length // 4
        padded = slice(real, None) if padding == "right" else slice(0, length - real)
        attention_mask[1, padded] = 0
        input_ids[1, padded] = 0
        labels[1] = IGNORE_INDEX
        kept = slice(0, real) if padding == "right" else slice(length - real, None)
        labels[1, kept] = input_ids[1, kept]
        labels[1, kept.start: kept.start + real // 4] = IGNORE_INDEX
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    return model, {name: tensor.to(device) for name, tensor in batch.items()}


def naive_scores(model, batch) -> torch.Tensor:
    """[B, L, H] by keeping every layer's probabilities and their gradients."""
    output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   output_attentions=True, use_cache=False)
    for probabilities in output.attentions:
        probabilities.retain_grad()
    targets = batch["labels"][:, 1:]
    token_losses = torch.nn.functional.cross_entropy(output.logits[:, :-1].transpose(1, 2).float(), targets,
                                                     reduction="none")
    losses = token_losses.sum(1) / (targets != -100).sum(1)
    losses.sum().backward()
    return torch.stack([(a * a.grad).abs().float().sum((2, 3)) for a in output.attentions], dim=1)


def counted_kernel_calls(device: torch.device) -> list:
    """Route the scorer's kernel (CPU: the C++ kernel if it builds; CUDA: the Triton one) through a counter;
    returns the list each call appends to."""
    from lightning_sft.scorer import cpu_kernel, head_scored_attention

    calls = []

    def counting(function):
        def counted(*arguments):
            calls.append(1)
            return function(*arguments)

        return counted

    if device.type == "cuda":
        from lightning_sft.scorer import triton_scores

        triton_scores.add_head_scores = counting(triton_scores.add_head_scores)
        return calls
    kernel = cpu_kernel.scored_attention_backward()
    if kernel is not None:
        counted = counting(kernel)
        head_scored_attention.scored_attention_backward = lambda: counted
    return calls


class Memory:
    """Peak memory of the measured work above what was held when it started: RSS on CPU, allocated on CUDA."""

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
        else:
            self.before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            return (torch.cuda.max_memory_allocated() - self.before) / 2**20
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.before) / 2**20


def fastest(run, repeats: int, device: torch.device) -> float:
    """Seconds of the fastest of `repeats` calls of `run` after one warm-up call (CUDA synchronised)."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times[1:])


def training_step(model, batch) -> None:
    """The baseline: one sdpa training step's forward and backward (fresh weight gradients each call)."""
    model.zero_grad(set_to_none=True)
    model(**batch, use_cache=False).loss.backward()


def measure(method: str, model_name: str, length: int, padding: str, device: torch.device, repeats: int) -> dict:
    from lightning_sft.scorer import patterns
    from lightning_sft.scorer.patterns import activation_pattern, score_heads

    model, batch = build(model_name, length, padding, device)
    calls = counted_kernel_calls(device) if method == "ours" else []
    if method == "blocks":
        patterns._uses_triton = lambda *arguments: False
    if method in ("ours", "blocks"):
        model.eval()
        run = lambda: score_heads(model, [batch])  # noqa: E731
    elif method == "naive":
        model.eval().set_attn_implementation("eager")

        def run():
            model.zero_grad(set_to_none=True)
            naive_scores(model, batch)
    else:
        model.train().set_attn_implementation("sdpa")
        run = lambda: training_step(model, batch)  # noqa: E731

    memory = Memory(device)
    result = {"seconds": fastest(run, repeats, device), "mib": memory.peak_mib()}
    if method == "blocks":
        result["backward"] = "Python blocks"
    if method == "ours":
        kernel = "sdpa + Triton" if device.type == "cuda" else "C++ kernel"
        result["backward"] = f"{kernel} ({len(calls) // (repeats + 1)} calls)" if calls else "Python"
        # The same weights in the other of float32 and bfloat16.
        in_bfloat16 = model.dtype == torch.bfloat16
        pattern = activation_pattern(model, [batch])
        other = activation_pattern(model.to(torch.float32 if in_bfloat16 else torch.bfloat16), [batch])
        half, full = (pattern, other) if in_bfloat16 else (other, pattern)
        result["deviation"] = float((half - full).norm() / full.norm())
    return result


def in_subprocess(*args: str) -> dict:
    result = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit code {result.returncode}"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def cell(result: dict, key: str, fmt: str) -> str:
    if key in result:
        return format(result[key], fmt)
    return "skipped" if result.get("error") == "skipped" else "failed"


def ratio(result: dict, base: dict, key: str) -> str:
    return f"{result[key] / base[key]:.2f}x" if key in result and key in base else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--paddings", nargs="+", choices=PADDINGS, default=list(PADDINGS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", choices=list(MODELS), default="small")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--naive-max-length", type=int, default=2048,
                        help="skip the naive way above this length (its memory grows as T^2)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per measurement (default: torch's)")
    parser.add_argument("--jsonl", type=Path, help="also write each row's numbers to this file, one JSON a line")
    parser.add_argument("--measure", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA GPU")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.measure:
        (length,), (padding,) = args.lengths, args.paddings
        print(json.dumps(measure(args.measure, args.model, length, padding, torch.device(args.device),
                                 args.repeats)))
        return
    common = ("--model", args.model, "--device", args.device, "--repeats", str(args.repeats),
              *(("--threads", str(args.threads)) if args.threads else ()))
    where = torch.cuda.get_device_name() if args.device == "cuda" else torch.backends.cpu.get_cpu_capability()
    print(f"torch {torch.__version__}, {args.device} ({where}), {torch.get_num_threads()} threads; model {args.model},"
          f" batch {BATCH}\n")
    print("| T | padding | backward | ours s | ours MiB | blocks s | blocks MiB | naive s | naive MiB | train s"
          " | train MiB | ours/train time | ours/train mem | blocks/train time | blocks/train mem | naive/train time"
          " | naive/train mem | bf16 vs fp32 |")
    print("|---" * 18 + "|")
    rows = []
    for length in args.lengths:
        for padding in args.paddings:
            results = {}
            for method in METHODS:
                if (method == "naive" and length > args.naive_max_length
                        or method == "blocks" and args.device != "cuda"):
                    results[method] = {"error": "skipped"}
                    continue
                results[method] = in_subprocess(*common, "--measure", method, "--lengths", str(length),
                                                "--paddings", padding)
            ours, blocks, naive, train = (results[method] for method in METHODS)
            cells = [str(length), padding, ours.get("backward", "failed")]
            for result in (ours, blocks, naive, train):
                cells += [cell(result, "seconds", ".2f"), cell(result, "mib", ".0f")]
            for result in (ours, blocks, naive):
                cells += [ratio(result, train, "seconds"), ratio(result, train, "mib")]
            print("| " + " | ".join(cells + [cell(ours, "deviation", ".1e")]) + " |", flush=True)
            rows.append({"length": length, "padding": padding, **results})
            if args.jsonl:  # row by row, so a run stopped at a time limit keeps the rows it finished
                atomic_write_text(args.jsonl, "".join(json.dumps(row) + "\n" for row in rows))
            for method, result in results.items():
                if "error" in result and result["error"] != "skipped":
                    print(f"  T={length} {padding} {method}: {result['error']}", file=sys.stderr)


if __name__ == "__main__":
    main()
