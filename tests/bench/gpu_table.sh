#!/usr/bin/env bash
# The GPU speed table of the training-speed work, for a lent GPU machine (run through the
# device tool; builds nothing there). TRAINER is built here with `--features tch` against the
# machine's torch version (as for tests/bench/gpu.sh) and carried. For each case: ours
# (`trainer bench --json`, tch:cuda:0, fp32 and bf16) with peak GPU memory sampled by nvidia-smi, then
# PyTorch + timm on the same card in fp32 and in bf16 autocast (tests/bench/torch_bench.py);
# then the table (tests/bench/table.py) and the projected time of the reference's
# 2,000-step run (batch 512 at 384 px) for each B/16 line. About 7 minutes on an H200.
#
#   tests/bench/gpu_table.sh TRAINER [ITERATIONS]
set -uo pipefail
cd "$(dirname "$0")/../.."
trainer=$1; iterations=${2:-10}
out=${OUT:-/tmp/gpu-table}; mkdir -p "$out"; results=$out/results.jsonl; : > "$results"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
torch_lib=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$torch_lib:${LD_LIBRARY_PATH:-}"
python3 -c 'import json; c = json.load(open("web/model/config.json")); print(json.dumps(c["vit_config"]))' > "$out/demo.json"

cases=(
  "train B/16 384 64 10"
  "train B/16 224 64 10"
  "train $out/demo.json 32 128 10"
  "train Lite-7/4 32 128 10"
  "infer B/16 224 64 1000"
)
for spec in "${cases[@]}"; do
  read -r case model size batch classes <<<"$spec"
  flag=(); [ "$case" = train ] && flag=(--train)
  for precision in fp32 bf16; do
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$out/memory.txt" &
    sampler=$!
    "$trainer" bench "${flag[@]}" --json --device tch:cuda:0 --precision "$precision" \
      --model "$model" --image-size "$size" --batch "$batch" --num-classes "$classes" \
      --iterations "$iterations" --warmup 2 | tee -a "$results"
    kill $sampler
    echo "  ours $precision: peak GPU memory in use (nvidia-smi) $(sort -n "$out/memory.txt" | tail -1) MiB"
  done
  for precision in fp32 bf16; do
    DEVICE=cuda PRECISION=$precision python3 tests/bench/torch_bench.py "$case" "$model" "$size" \
      "$batch" "$iterations" 2 "$classes" | tee -a "$results"
  done
done
python3 tests/bench/table.py "$results"
python3 - "$results" <<'PY'
import json, sys
for line in map(json.loads, open(sys.argv[1])):
    if line["case"] == "train" and line["model"] == "B/16" and line["resolution"] == 384:
        who = "ours" if not line["device"].startswith("torch") else line["device"]
        hours = 2000 * 512 / line["images_per_sec"] / 3600
        print(f"2,000 steps of 512 images at 384 px, {who} {line['precision']}: {hours:.1f} h")
PY
