"""Tile shapes of the Triton scoring kernel on a CUDA GPU: score_heads time over an sdpa training step's, per
(BLOCK_M, BLOCK_N, warps), on pattern_cost.py's models and batches, in one process (same GPU, same weights).

    python benchmarks/triton_tiles.py                      # the 1b model, T = 1024 and 4096, unpadded and padded
    python benchmarks/triton_tiles.py --model small --lengths 64 --repeats 1   # plumbing (TRITON_INTERPRET=1 on CPU)

Time is the fastest of `--repeats` runs after one warm-up (the warm-up compiles the kernel).
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pattern_cost import MODELS, build, fastest, training_step  # noqa: E402

from lightning_sft.scorer import triton_scores  # noqa: E402
from lightning_sft.scorer.patterns import score_heads  # noqa: E402

TILES = [(64, 64, 4), (128, 64, 4), (128, 64, 8), (64, 128, 4), (128, 128, 8), (64, 32, 4)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(MODELS), default="1b")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        import lightning_sft.scorer.patterns as patterns

        patterns._uses_triton = lambda *arguments: True  # the interpreter (TRITON_INTERPRET=1), for plumbing only
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'};"
          f" model {args.model}\n")
    print("| T | padding | train s | " + " | ".join(f"{m}x{n}, {w} warps" for m, n, w in TILES) + " |")
    print("|---" * (3 + len(TILES)) + "|")
    for length in args.lengths:
        for padding in ("none", "right"):
            model, batch = build(args.model, length, padding, device)
            model.train().set_attn_implementation("sdpa")
            train_seconds = fastest(lambda: training_step(model, batch), args.repeats, device)
            model.eval()
            cells = []
            for triton_scores.BLOCK_M, triton_scores.BLOCK_N, triton_scores.NUM_WARPS in TILES:
                seconds = fastest(lambda: score_heads(model, [batch]), args.repeats, device)
                cells.append(f"{seconds:.3f} s = {seconds / train_seconds:.2f}x")
            print(f"| {length} | {padding} | {train_seconds:.3f} | " + " | ".join(cells) + " |", flush=True)
            del model, batch
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
