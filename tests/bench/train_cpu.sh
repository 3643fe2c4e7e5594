#!/usr/bin/env bash
# Images/s of a ViT training step on the CPU: our trainer (burn-flex) and PyTorch/timm,
# one after the other in one run on the same machine, and the ratio.
# Usage: tests/bench/train_cpu.sh [MODEL] [IMAGE_SIZE] [BATCH] [STEPS]
# Needs tests/fixtures/.venv (made by tests/fixtures/generate.py) for the PyTorch side,
# and ../shared/data/cifar10-jpeg.tar.gz for a few real images to train on.
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${1:-B/16}; size=${2:-224}; batch=${3:-16}; steps=${4:-4}
python=tests/fixtures/.venv/bin/python
[ -x "$python" ] || { echo "error: run python3 tests/fixtures/generate.py first (it makes $python)" >&2; exit 1; }

work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p "$work/data"
tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C "$work/data" --wildcards \
  'train/cat/00[0-1]?.jpg' 'train/ship/00[0-1]?.jpg' 'test/cat/0000.jpg' 'test/ship/0000.jpg'
cargo build --release -q -p trainer
# Steps after the first (which pays for allocation) are averaged; evaluation is kept out.
# (--warmup: the default 500 is longer than the run, which the trainer refuses.)
./target/release/trainer --pretrained none --model "$model" --resolution "$size" \
  --batch "$batch" --accum-steps 1 --steps $((steps + 1)) --warmup 1 --eval-every 100000 --log-every 1 \
  --dataset "$work/data" --workdir "$work/run" 2>/dev/null >/dev/null || true
ours=$(tail -n +2 "$work/run/metrics.jsonl" | head -n "$steps" |
  "$python" -c 'import sys, json; v=[json.loads(l)["images_per_sec"] for l in sys.stdin]; print(f"{len(v)/sum(1/x for x in v):.2f}")')
echo "ours (burn-flex) $model ${size}px batch $batch: $ours images/s over $steps steps"
torch=$("$python" tests/bench/timm_train.py "$model" "$size" "$batch" "$steps")
echo "$torch"
awk -v ours="$ours" -v torch="$(sed -E 's/.*: ([0-9.]+) images\/s.*/\1/' <<<"$torch")" \
  'BEGIN { printf "ours / PyTorch: %.2fx the throughput\n", ours / torch }'
