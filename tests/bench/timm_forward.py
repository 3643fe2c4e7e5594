"""Median forward time of a timm ViT (random weights) on the CPU, printed like `trainer bench`."""
import os
import sys
import time

import timm
import torch

PRESETS = {  # our preset name -> timm model name
    "Ti/16": "vit_tiny_patch16_224", "S/16": "vit_small_patch16_224",
    "B/16": "vit_base_patch16_224", "B/32": "vit_base_patch32_224",
    "L/16": "vit_large_patch16_224",
}

name, size, batch, iterations = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(os.cpu_count())
model = timm.create_model(PRESETS[name], pretrained=False, img_size=size).eval()
images = torch.rand(batch, 3, size, size) * 2 - 1
times_ms = []
with torch.inference_mode():
    for _ in range(2):
        model(images)
    for _ in range(iterations):
        start = time.perf_counter()
        model(images)
        times_ms.append((time.perf_counter() - start) * 1e3)
times_ms.sort()
median = times_ms[len(times_ms) // 2]
print(f"{name} {size}px batch {batch} on torch {torch.__version__} ({torch.get_num_threads()} threads): "
      f"median {median:.1f} ms per forward ({batch * 1e3 / median:.1f} images/s), "
      f"min {times_ms[0]:.1f} ms, {len(times_ms)} runs")
