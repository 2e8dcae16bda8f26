"""Cost of head scoring against an sdpa training step, on CPU.

    python benchmarks/pattern_cost.py                     # T = 512, 1024, 2048, 4096
    python benchmarks/pattern_cost.py --lengths 512 1024  # a quick run
    python benchmarks/pattern_cost.py --threads 1         # steadier timings on a shared machine

Model: Llama, 4 layers, hidden 256, 8 heads (head dim 32), vocab 1024, float32; batch 2, no padding,
the first quarter of each sequence unsupervised. Each measurement runs in its own subprocess so its peak
memory is its own: peak RSS (`ru_maxrss`) minus the peak before the measured work (after building the
model and the batch). Time is the fastest of `--repeats` runs after one warm-up run.

    ours   lightning_sft.patterns.score_heads
    naive  eager attention, output_attentions=True, retain_grad() on every layer's probabilities,
           loss.backward(), sum |A * A.grad|  (what one would write first)
    train  one training step's forward + backward (weight gradients) with sdpa attention

The last column compares the scorer on the model cast to bfloat16 with float32:
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

METHODS = ("ours", "naive", "train")
BATCH = 2


def build(length: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1024, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=length,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    input_ids = torch.randint(3, config.vocab_size, (BATCH, length))
    labels = input_ids.clone()
    labels[:, : length // 4] = -100
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    return model, batch


def naive_scores(model, batch) -> torch.Tensor:
    """[B, L, H] by keeping every layer's probabilities and their gradients."""
    output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   output_attentions=True, use_cache=False)
    for probabilities in output.attentions:
        probabilities.retain_grad()
    targets = batch["labels"][:, 1:]
    token_losses = torch.nn.functional.cross_entropy(output.logits[:, :-1].transpose(1, 2), targets, reduction="none")
    losses = token_losses.sum(1) / (targets != -100).sum(1)
    losses.sum().backward()
    return torch.stack([(a * a.grad).abs().sum((2, 3)) for a in output.attentions], dim=1)


def measure(method: str, length: int, repeats: int) -> dict:
    from lightning_sft.patterns import score_heads

    model, batch = build(length)
    if method == "ours":
        model.eval()
        run = lambda: score_heads(model, [batch])  # noqa: E731
    elif method == "naive":
        model.eval().set_attn_implementation("eager")
        run = lambda: naive_scores(model, batch)  # noqa: E731
    else:
        model.train().set_attn_implementation("sdpa")

        def run():
            model.zero_grad(set_to_none=True)
            model(**batch, use_cache=False).loss.backward()

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KiB on Linux
    return {"seconds": min(times[1:]), "mib": peak / 1024}


def bf16_deviation(length: int) -> dict:
    from lightning_sft.patterns import activation_pattern

    model, batch = build(length)
    full = activation_pattern(model.eval(), [batch])
    half = activation_pattern(model.to(torch.bfloat16), [batch])
    return {"deviation": float((half - full).norm() / full.norm())}


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
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--naive-max-length", type=int, default=2048,
                        help="skip the naive way above this length (it keeps 2 x L x T^2 floats per head: ~12 GiB"
                             " at T=4096)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per measurement (default: torch's)")
    parser.add_argument("--measure", choices=(*METHODS, "bf16"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.measure:
        (length,) = args.lengths
        result = bf16_deviation(length) if args.measure == "bf16" else measure(args.measure, length, args.repeats)
        print(json.dumps(result))
        return
    threads = ("--threads", str(args.threads)) if args.threads else ()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {BATCH}, float32 unless noted\n")
    print("| T | ours s | ours MiB | naive s | naive MiB | train s | train MiB | ours/train time | ours/train mem"
          " | naive/train time | naive/train mem | bf16 vs fp32 |")
    print("|---" * 12 + "|")
    for length in args.lengths:
        results = {}
        for method in METHODS:
            if method == "naive" and length > args.naive_max_length:
                results[method] = {"error": "skipped"}
                continue
            results[method] = in_subprocess(*threads, "--measure", method, "--lengths", str(length),
                                            "--repeats", str(args.repeats))
        deviation = in_subprocess(*threads, "--measure", "bf16", "--lengths", str(length))
        ours, naive, train = (results[method] for method in METHODS)
        cells = [str(length)]
        for result in (ours, naive, train):
            cells += [cell(result, "seconds", ".2f"), cell(result, "mib", ".0f")]
        for result in (ours, naive):
            cells += [ratio(result, train, "seconds"), ratio(result, train, "mib")]
        print("| " + " | ".join(cells + [cell(deviation, "deviation", ".1e")]) + " |", flush=True)
        for method, result in {**results, "bf16": deviation}.items():
            if "error" in result and result["error"] != "skipped":
                print(f"  T={length} {method}: {result['error']}", file=sys.stderr)


if __name__ == "__main__":
    main()
