#!/usr/bin/env bash
# One prepared GPU check (run on a lent GPU machine through the device tool), carrying
# a trainer binary built with `--features tch` against PyPI's torch (see the README) and
# the CIFAR-10 JPEG archive. Prints: the card, our forward and training throughput on
# libtorch CUDA, peak GPU memory, and PyTorch's training throughput on the same card.
# Usage: tests/bench/gpu.sh TRAINER_BINARY CIFAR10_JPEG_TAR_GZ [STEPS]
set -uo pipefail
trainer=$1; data=$2; steps=${3:-100}
out=${OUT:-/tmp/gpu-out}; mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
torch_lib=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
export LD_LIBRARY_PATH="$torch_lib:${LD_LIBRARY_PATH:-}"
ldd "$trainer" | grep -E "torch|c10|not found" | head

echo "== our forward, B/16 224 px, batch 64, tch:cuda:0"
"$trainer" bench --model B/16 --image-size 224 --batch 64 --iterations 10 --device tch:cuda:0

echo "== our training, B/16 384 px, batch 64, $steps steps, tch:cuda:0"
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$out/memory.txt" &
sampler=$!
"$trainer" train --pretrained none --model B/16 --resolution 384 --batch 64 --accum-steps 1 \
  --steps "$steps" --warmup 10 --lr 0.01 --eval-every 100000 --log-every 10 \
  --dataset "$data" --workdir "$out/run" --device tch:cuda:0 2>&1 | grep -v "^| "
kill $sampler
echo "peak GPU memory used (MiB): $(sort -n "$out/memory.txt" | tail -1)"
tail -3 "$out/run/metrics.jsonl"

echo "== PyTorch training, B/16 384 px, batch 64, same card"
python3 - <<'PY'
import time, torch
try:
    import timm
    model = timm.create_model("vit_base_patch16_384", pretrained=False, num_classes=10)
    name = "timm"
except ImportError:
    import torchvision
    model = torchvision.models.vit_b_16(image_size=384, num_classes=10)
    name = "torchvision"
model = model.cuda().train()
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x = torch.rand(64, 3, 384, 384, device="cuda") * 2 - 1
y = torch.randint(0, 10, (64,), device="cuda")
torch.cuda.reset_peak_memory_stats()
def step():
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
for _ in range(5): step()
torch.cuda.synchronize(); start = time.perf_counter(); n = 30
for _ in range(n): step()
torch.cuda.synchronize(); elapsed = time.perf_counter() - start
print(f"PyTorch {torch.__version__} ({name}) fp32: {64 * n / elapsed:.1f} images/s, "
      f"peak allocated {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
PY
