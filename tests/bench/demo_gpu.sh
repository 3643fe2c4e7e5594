#!/usr/bin/env bash
# Trains the browser demo's model (`trainer --preset cifar10-scratch`: ViT-Lite-7/4 from
# scratch on CIFAR-10) on a lent GPU machine within a time budget, then evaluates it and
# exports it in float16 for the page. Builds nothing there: TRAINER is built here with
# `--features tch` against the machine's torch version (as for tests/bench/gpu.sh) and
# carried with the CIFAR-10 JPEG archive.
#
#   tests/bench/demo_gpu.sh TRAINER CIFAR10_JPEG_TAR_GZ [MINUTES]
#
# 1. A short timing run measures images/s. 2. The preset's 100 epochs are cut to what fits
#    MINUTES of training (default 8), keeping its 5% warm-up and an EMA horizon of a tenth
#    of the run. 3. The run (metrics.jsonl, curves.svg, export/), `trainer eval` (per-class
#    accuracy, confusion.svg) and an f16 export, all under $OUT. 4. The figures of the model
#    card (models/cifar10-demo/card.json): the f16 export's accuracy on the test set and on
#    the committed sample. Shipping: model-f16/ to web/model/, card.json, eval-f16/eval.json,
#    confusion.svg, metrics.jsonl and curves.svg to models/cifar10-demo/, then its README.
# Run from the repository root.
# DEVICE (default tch:cuda:0) and TIMING_STEPS (default 100) exist to try it on a CPU.
set -euo pipefail
trainer=$1; data=$2; minutes=${3:-8}
device=${DEVICE:-tch:cuda:0}; timing_steps=${TIMING_STEPS:-100}
out=${OUT:-/tmp/demo-out}; mkdir -p "$out"
if [[ $device == tch* ]]; then
  nvidia-smi --query-gpu=name,memory.total --format=csv || true
  torch_lib=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
  export LD_LIBRARY_PATH="$torch_lib:${LD_LIBRARY_PATH:-}"
fi
preset=(--preset cifar10-scratch --dataset "$data" --device "$device")

echo "== timing: $timing_steps steps"
"$trainer" "${preset[@]}" --steps "$timing_steps" --warmup 1 --eval-every 1000000 \
  --checkpoint-every 1000000 --log-every 1 --workdir "$out/timing" 2>&1 | tail -2
read -r steps warmup ema eval_every < <(python3 - "$out/timing/metrics.jsonl" "$minutes" <<'PY'
import json, statistics, sys
lines = [json.loads(line) for line in open(sys.argv[1])]
rate = statistics.median(line["images_per_sec"] for line in lines[len(lines) // 5:])
steps = max(10, min(38_300, int(rate * float(sys.argv[2]) * 60 / 128)))
print(steps, max(1, steps // 20), f"{1 - 10 / steps:.6f}" if steps > 20 else "0.5", max(1, steps // 10))
print(f"{rate:.0f} images/s: {steps} steps ({steps * 128 / 50_000:.1f} epochs of the JPEG folder)", file=sys.stderr)
PY
)

echo "== training: $steps steps, warm-up $warmup, EMA $ema"
start=$(date +%s)
"$trainer" "${preset[@]}" --steps "$steps" --warmup "$warmup" --ema "$ema" \
  --eval-every "$eval_every" --checkpoint-every "$eval_every" --workdir "$out/run" 2>&1 \
  | grep -E "^(step|data|model|exported)|accuracy|error" || true
echo "training took $(( $(date +%s) - start )) s"

echo "== evaluation and the f16 export"
"$trainer" eval --checkpoint "$out/run/export" --dataset "$data" --device "$device" --out "$out/eval"
"$trainer" export --checkpoint "$out/run/export" --out "$out/model-f16" --f16

echo "== the model card's figures: the f16 export on the test set and on the committed sample"
"$trainer" eval --checkpoint "$out/model-f16" --dataset "$data" --device "$device" --out "$out/eval-f16" | head -1
"$trainer" eval --checkpoint "$out/model-f16" --dataset tests/data/cifar10-sample/test --device "$device" --out "$out/eval-sample" | head -1
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
test = json.load(open(f"{out}/eval-f16/eval.json")); sample = json.load(open(f"{out}/eval-sample/eval.json"))
card = {"model": "web/model", "test_accuracy": test["accuracy"], "test_images": test["images"],
        "sample": "tests/data/cifar10-sample/test", "sample_accuracy": sample["accuracy"],
        "sample_images": sample["images"]}
open(f"{out}/card.json", "w").write(json.dumps(card, indent=2) + "\n")
print(card)
PY
cp "$out/run/metrics.jsonl" "$out/run/curves.svg" "$out/eval-f16/confusion.svg" "$out/"
rm -rf "$out/timing" "$out/run/checkpoint"
ls -la "$out" "$out/model-f16"
