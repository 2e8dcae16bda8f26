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

# 1. Exactness: 3 families x (float32 against the naive computation, bfloat16 against float32), and the Triton
#    kernel's tests (9).
FAMILIES="llama_gqa or gemma2_softcap_sliding or gpt_oss_sinks_moe"
SELECTION="(test_matches_naive_per_family or test_bfloat16_model_is_scored_in_bfloat16) and ($FAMILIES)"
timeout "${LIMITS[0]}" "$PY" -m pytest -q -rA -p no:cacheprovider tests/test_patterns.py tests/test_triton_scores.py \
  --device "$TEST_DEVICE" -k "test_triton_scores or ($SELECTION)" > "$WORK/pytest.log" 2>&1
PYTEST_STATUS=$?
grep -E '^(PASSED|FAILED|ERROR|SKIPPED)' "$WORK/pytest.log" \
  | sed -E 's/^([A-Z]+) tests\/(test_[a-z_]+).py::([^ ]+).*/| exactness | \2::\3 | \1 |/' >> "$ROWS"
SELECTED=$(grep -cE '^(PASSED|FAILED|ERROR|SKIPPED)' "$WORK/pytest.log")
if [[ $PYTEST_STATUS != 0 || $SELECTED != 15 ]]; then
  echo "| exactness | pytest exit status $PYTEST_STATUS, $SELECTED of 15 tests reported | FAILED |" >> "$ROWS"
  tail -n 30 "$WORK/pytest.log" >&2
  STATUS=1
fi

# 2. Cost against an sdpa training step (rows are written as they finish: a run cut short keeps its rows).
timeout "${LIMITS[1]}" "$PY" benchmarks/pattern_cost.py "${COST[@]}" --jsonl "$WORK/cost.jsonl" > "$WORK/cost.log" 2>&1
COST_STATUS=$?
if [[ -s "$WORK/cost.jsonl" ]]; then
  "$PY" - "$WORK/cost.jsonl" >> "$ROWS" <<'EOF'
import json
import sys

def ratio(row, method, key):
    values = row[method], row["train"]
    return f"{values[0][key] / values[1][key]:.2f}x" if all(key in value for value in values) else "n/a"

for line in open(sys.argv[1]):
    row = json.loads(line)
    ours, train = row["ours"], row["train"]
    if "seconds" not in ours or "seconds" not in train:
        print(f"| cost | T={row['length']}, padding {row['padding']} | ours: {ours.get('error')}; train:"
              f" {train.get('error')} |")
        continue
    other = {method: "skipped" if row[method].get("error") == "skipped" else (
        f"{ratio(row, method, 'seconds')} time, {ratio(row, method, 'mib')} memory") for method in ("blocks", "naive")}
    print(f"| cost | T={row['length']}, padding {row['padding']} | ours {ours['seconds']:.3f} s / train"
          f" {train['seconds']:.3f} s = {ratio(row, 'ours', 'seconds')} time, {ratio(row, 'ours', 'mib')} memory"
          f" ({ours['mib']:.0f} / {train['mib']:.0f} MiB); Python blocks: {other['blocks']}; naive: {other['naive']};"
          f" backward: {ours['backward']}; bf16 vs fp32 {ours['deviation']:.1e} |")
EOF
fi
if [[ $COST_STATUS != 0 ]]; then
  echo "| cost | pattern_cost.py ${COST[*]} | FAILED, exit status $COST_STATUS (see below) |" >> "$ROWS"
  tail -n 30 "$WORK/cost.log" >&2
  STATUS=1
fi

# 3. A short demo fit with the callback.
START=$SECONDS
if timeout "${LIMITS[2]}" "$PY" train.py fit --config configs/demo.yaml "${FIT[@]}" --trainer.default_root_dir "$WORK/fit" \
    > "$WORK/fit.log" 2>&1; then
  "$PY" - "$WORK/fit" "$((SECONDS - START))" "${FIT[*]}" >> "$ROWS" <<'EOF'
import sys
from pathlib import Path

from lightning_sft.storage import load_patterns

[index] = Path(sys.argv[1]).glob("**/head_patterns/index.json")
patterns = load_patterns(index.parent)
steps = sorted({step for probe in patterns.values() for step in probe})
print(f"| fit | demo, {sys.argv[3]} | OK in {sys.argv[2]} s; {len(patterns)} probes scored at steps {steps} |")
EOF
else
  echo "| fit | demo, ${FIT[*]} | FAILED (see below) |" >> "$ROWS"
  tail -n 30 "$WORK/fit.log" >&2
  STATUS=1
fi

echo
"$PY" -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available()
else 'CPU ' + torch.backends.cpu.get_cpu_capability())"
echo
echo "| check | case | result |"
echo "|---|---|---|"
cat "$ROWS"
exit $STATUS
