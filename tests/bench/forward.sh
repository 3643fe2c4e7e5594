#!/usr/bin/env bash
# Times a ViT forward pass with our CPU backends and with PyTorch/timm, in one run
# on the same machine, and prints each median and the ratio to PyTorch.
# Usage: tests/bench/forward.sh [MODEL] [IMAGE_SIZE] [BATCH] [ITERATIONS]
# Needs tests/fixtures/.venv (made by tests/fixtures/generate.py) for the PyTorch side.
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${1:-B/16}; size=${2:-224}; batch=${3:-1}; iterations=${4:-10}
python=tests/fixtures/.venv/bin/python
[ -x "$python" ] || { echo "error: run python3 tests/fixtures/generate.py first (it makes $python)" >&2; exit 1; }

cargo build --release -q -p trainer --features ndarray
args=(--model "$model" --image-size "$size" --batch "$batch" --iterations "$iterations")
flex=$(./target/release/trainer bench "${args[@]}" --device cpu)
ndarray=$(./target/release/trainer bench "${args[@]}" --device ndarray)
torch=$("$python" tests/bench/timm_forward.py "$model" "$size" "$batch" "$iterations")
echo "$flex"; echo "$ndarray"; echo "$torch"
median() { sed -E 's/.*median ([0-9.]+) ms.*/\1/' <<<"$1"; }
t=$(median "$torch")
for line in "$flex" "$ndarray"; do
  awk -v ours="$(median "$line")" -v torch="$t" -v name="${line%%:*}" \
    'BEGIN { printf "%s: %.2fx the time of PyTorch/timm\n", name, ours / torch }'
done
