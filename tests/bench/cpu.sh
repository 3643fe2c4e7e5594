#!/usr/bin/env bash
# Ours against PyTorch on this machine's CPU, in one run, case by case: `trainer bench`
# (burn-flex) and tests/bench/torch_bench.py (timm's VisionTransformer, same architecture,
# same update, same timing), each printing a JSON line; then a table with the ratios
# (above 1: we are faster).
#
#   tests/bench/cpu.sh            # the cases below; PYTHON (default tests/fixtures/.venv/bin/python,
#                                 # made by tests/fixtures/generate.py) must have torch and timm
# Cases: training of ViT-B/16 at 224 px batch 16 and of the demo model (web/model's config,
# 32 px) batch 128; forward of B/16 at 224 px batch 1. ITERATIONS (default 3) timed runs after
# one untimed. ROUNDS (default 1) times each case in turns, ours then PyTorch's, that many
# times: this machine's speed drifts by tens of percent from minute to minute, so a ratio
# from one pair can mislead; the table ends with the median ratio of each case.
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${PYTHON:-tests/fixtures/.venv/bin/python}
iterations=${ITERATIONS:-3}
rounds=${ROUNDS:-1}
"$python" -c 'import timm, torch' 2>/dev/null ||
  { echo "error: $python lacks torch or timm; run python3 tests/fixtures/generate.py (or set PYTHON)" >&2; exit 1; }
cargo build --release -q -p trainer
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
# The shipped model's architecture, from its config.json.
"$python" -c 'import json, sys; c = json.load(open("web/model/config.json")); print(json.dumps(c.get("vit_config", c)))' > "$work/demo.json"

cases=(
  "train B/16 224 16 1000"
  "train $work/demo.json 32 128 10"
  "infer B/16 224 1 1000"
)
results=$work/results.jsonl
for spec in "${cases[@]}"; do
  read -r case model size batch classes <<<"$spec"
  flag=(); [ "$case" = train ] && flag=(--train)
  for _ in $(seq "$rounds"); do
    ./target/release/trainer bench "${flag[@]}" --json --model "$model" --image-size "$size" \
      --batch "$batch" --num-classes "$classes" --iterations "$iterations" --warmup 1 | tee -a "$results"
    "$python" tests/bench/torch_bench.py "$case" "$model" "$size" "$batch" "$iterations" 1 "$classes" | tee -a "$results"
  done
done
"$python" tests/bench/table.py "$results"
