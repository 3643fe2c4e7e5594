#!/usr/bin/env bash
# Browser (headless chromium, wasm SIMD, 1 thread, and on threads where the page is
# cross-origin isolated) against native `trainer predict`
# on the same model files and image, for the shipped model and a random ViT-B/16
# at 224 px, and against onnxruntime-web's wasm backend (what transformers.js runs on)
# on timm's ViT-B/16 exported to ONNX; plus download sizes. Needs the tools of
# .ci/setup-web; for onnxruntime-web, PYTHON (default tests/fixtures/.venv/bin/python,
# made by tests/fixtures/generate.py) with torch, timm, onnx and onnxscript, and npm.
#   tests/web/bench.sh [RUNS]        (results in target/web-bench/)
# ROUNDS (default 3): B/16 in our page and in onnxruntime-web, in turns, each on one
# thread and on THREADS (default: the machine's cores).
# CHROMIUM_FLAGS adds flags to chromium, e.g. CHROMIUM_FLAGS=--js-flags=--no-liftoff.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-5}
rounds=${ROUNDS:-3}
threads=${THREADS:-$(nproc)}
out=target/web-bench
image=web/assets/samples/cat.jpg   # a real CIFAR-10 test JPEG
mkdir -p "$out"

echo "== build"
TRUNK_OFFLINE=true trunk build --release --public-url /vit-demo/ --dist "$out/dist" >"$out/trunk.log" 2>&1
cargo build --release -p trainer -q
[[ -f "$out/b16/model.safetensors" ]] ||
  cargo run --release -q -p web --example make_demo_model -- "$out/b16" --preset B/16

echo "== sizes (bytes)"
for file in "$out"/dist/*.wasm "$out"/dist/model/*; do
  printf '%12d  %s\n' "$(stat -c %s "$file")" "${file#"$out"/dist/}"
done
printf '%12d  %s\n' "$(stat -c %s "$out/b16/model.safetensors")" "B/16 model.safetensors (f16)"
for file in "$out"/dist/*.wasm; do
  printf '%12d  %s (gzip -9)\n' "$(gzip -9c "$file" | wc -c)" "$(basename "$file")"
done

# Median wall time of a whole `trainer predict` process (load + decode + forward).
native_ms() {
  local times=()
  for _ in $(seq "$runs"); do
    local t0 t1
    t0=$(date +%s%N)
    target/release/trainer predict --checkpoint "$1" --top-k 5 "$image" >/dev/null
    t1=$(date +%s%N)
    times+=($(((t1 - t0) / 1000000)))
  done
  printf '%s\n' "${times[@]}" | sort -n | sed -n "$(((runs + 1) / 2))p"
}

for model in web/model "$out/b16"; do
  echo "== $model"
  echo "native trainer predict, whole process, median of $runs: $(native_ms "$model") ms"
  node tests/web/bench.mjs "$(realpath "$out/dist")" "$(realpath "$model")" "$(realpath "$image")" "$runs"
done
echo "== onnxruntime-web, wasm, one thread: timm ViT-B/16 224 px, forward only"
python=${PYTHON:-tests/fixtures/.venv/bin/python}
if "$python" -c 'import torch, timm, onnx, onnxscript' 2>/dev/null; then
  [[ -f "$out/vit-b16.onnx" ]] || "$python" tests/web/export_onnx.py "$out/vit-b16.onnx"
  [[ -d tests/web/node_modules/onnxruntime-web ]] ||
    (cd tests/web && npm install --no-save --no-audit --no-fund onnxruntime-web@1.30.0 >/dev/null)
  node tests/web/ort_bench.mjs "$(realpath "$out/vit-b16.onnx")" "$runs"
  # This machine's speed drifts from minute to minute: ours and onnxruntime-web in turns.
  echo "== B/16 in turns, $rounds rounds: our page (worker median), onnxruntime-web (median);" \
    "one thread, then $threads (ours: cross-origin isolated, a thread per core)"
  page_ms() {
    ISOLATED=$1 node tests/web/bench.mjs "$(realpath "$out/dist")" "$(realpath "$out/b16")" \
      "$(realpath "$image")" "$runs" | grep -o '"worker_median_ms":[0-9.]*' | cut -d: -f2
  }
  ort_ms() {
    THREADS=$1 node tests/web/ort_bench.mjs "$(realpath "$out/vit-b16.onnx")" "$runs" |
      grep -o '"median_ms":[0-9.]*' | cut -d: -f2
  }
  for round in $(seq "$rounds"); do
    echo "round $round: one thread: ours $(page_ms 0) ms, onnxruntime-web $(ort_ms 1) ms;" \
      "$threads threads: ours $(page_ms 1) ms, onnxruntime-web $(ort_ms "$threads") ms"
  done
else
  echo "skipped: $python lacks torch, timm, onnx or onnxscript (set PYTHON)"
fi
echo "== native forward only (trainer bench, B/16 224 px, batch 1)"
target/release/trainer bench --model B/16 --image-size 224 --batch 1 --iterations "$runs"
