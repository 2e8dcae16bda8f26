#!/usr/bin/env bash
# One CUDA GPU, at most 8 minutes (each step has its own time limit), one table at the end:
#   1. the scorer's exactness tests on CUDA, float32 (against the naive computation) and bfloat16 (against
#      float32), on 3 families: Llama (grouped-query: sdpa + the Triton scoring kernel), Gemma 2 (soft-capping,
#      sliding window) and GPT-OSS (sinks), both through the Python blocks; and the Triton kernel's own tests
#      (tests/test_triton_scores.py) compiled for the GPU;
#   2. the cost benchmark against an sdpa training step at T = 1024, 2048, 4096 on a randomly initialised
#      1.1B-parameter Llama in bfloat16, unpadded and right-padded (benchmarks/pattern_cost.py): sdpa + Triton
#      and the Python blocks;
#   3. a 20-step demo fit with HeadActivationCallback under bf16-true.
#
#   bash benchmarks/gpu_check.sh             # on a machine with a CUDA GPU, from any directory
#   bash benchmarks/gpu_check.sh --dry-run   # anywhere: the same steps on the CPU, cut short (tiny model,
#                                            # T = 64, 2 fit steps in float32): checks the plumbing only
# PYTHON picks the interpreter (default: python). Exit status 0 when every step passed.
set -uo pipefail

case "${1:-}" in
  "") DRY=0 ;;
  --dry-run) DRY=1 ;;
  *) echo "usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
ROWS="$WORK/rows.md"
: > "$ROWS"
STATUS=0

if [[ $DRY == 0 ]]; then
  if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "error: torch sees no CUDA GPU; run with --dry-run to check the plumbing on a CPU" >&2
    exit 2
  fi
  TEST_DEVICE=cuda
  COST=(--device cuda --model 1b --lengths 1024 2048 4096 --paddings none right --repeats 2 --naive-max-length 1024)
  FIT=(--trainer.accelerator gpu --trainer.devices 1 --trainer.precision bf16-true --trainer.max_steps 20
       --model.warmup_steps 5)
  LIMITS=(100 330 50)  # seconds for the tests (with the first build of the CPU kernel, for the CPU
                       # references), the benchmark and the fit: 480 s in all
else
  TEST_DEVICE=cpu
  COST=(--device cpu --model small --lengths 64 --paddings none right --repeats 1)
  FIT=(--trainer.accelerator cpu --trainer.devices 1 --trainer.precision 32-true --trainer.max_steps 2
       --model.warmup_steps 1)
  LIMITS=(600 600 600)  # the plumbing check may run on a slow, shared CPU
fi

