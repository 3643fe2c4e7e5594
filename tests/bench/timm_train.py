"""Images/s of a timm ViT training step (SGD momentum, clip 1.0, fp32) on the CPU.
Usage: timm_train.py MODEL IMAGE_SIZE BATCH STEPS (MODEL: Ti/16, S/16, B/16, B/32, L/16)."""
import os
import sys
import time

import timm
import torch

PRESETS = {"Ti/16": "vit_tiny_patch16_224", "S/16": "vit_small_patch16_224",
           "B/16": "vit_base_patch16_224", "B/32": "vit_base_patch32_224", "L/16": "vit_large_patch16_224"}
name, size, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(os.cpu_count())
model = timm.create_model(PRESETS[name], pretrained=False, img_size=size, num_classes=10).train()
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x = torch.rand(batch, 3, size, size) * 2 - 1
y = torch.randint(0, 10, (batch,))
def step():
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
step()
start = time.perf_counter()
for _ in range(steps):
    step()
elapsed = time.perf_counter() - start
print(f"PyTorch {torch.__version__} ({torch.get_num_threads()} threads) {name} {size}px batch {batch}: "
      f"{batch * steps / elapsed:.2f} images/s over {steps} steps")
