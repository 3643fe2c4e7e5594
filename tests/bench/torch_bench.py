"""PyTorch's side of `trainer bench`: the same case, timed the same way, printed as the same
JSON line (case, model, resolution, batch, device, precision, median_ms, min_ms, runs,
images_per_sec, peak_memory_bytes).

Usage: torch_bench.py infer|train MODEL RESOLUTION BATCH ITERATIONS WARMUP [NUM_CLASSES]
MODEL is one of our presets (Ti/16 ... H/14, Lite-7/4) or one of our JSON config files; the
model is timm's VisionTransformer with that architecture (tanh GELU where the config says so).
`train` times forward, cross-entropy, backward, clipping at global norm 1 and an SGD update
with momentum 0.9, as `trainer bench --train`; `infer` a forward pass in inference mode.
Threads: all cores, or THREADS. DEVICE=cuda runs on the GPU (synchronised before each clock
reading; peak memory is then `torch.cuda.max_memory_allocated`), and PRECISION=bf16 runs the
forward pass and loss under bfloat16 autocast (float32 weights and optimizer), as PyTorch users
train with mixed precision; scaled_dot_product_attention is timm's default (fused attention).
"""
import functools
import json
import os
import resource
import sys
import time

import timm.models.vision_transformer as vit
import torch

# (width, mlp, heads, layers, patch): shared/src/config.rs.
PRESETS = {"ti16": (192, 768, 3, 12, 16), "s16": (384, 1536, 6, 12, 16), "b16": (768, 3072, 12, 12, 16),
           "b32": (768, 3072, 12, 12, 32), "b8": (768, 3072, 12, 12, 8), "l16": (1024, 4096, 16, 24, 16),
           "l32": (1024, 4096, 16, 24, 32), "h14": (1280, 5120, 16, 32, 14), "lite74": (256, 512, 4, 7, 4)}


def build(name: str, resolution: int, classes: int) -> torch.nn.Module:
    gelu = torch.nn.GELU
    if name.endswith(".json"):
        c = json.load(open(name))
        width, mlp, heads, layers, patch = (c["hidden_size"], c["mlp_dim"], c["num_heads"],
                                            c["num_layers"], c["patch_size"])
        if c.get("activation") == "gelu_tanh":
            gelu = functools.partial(torch.nn.GELU, approximate="tanh")
    else:
        key = "".join(ch for ch in name.lower().replace("vit", "") if ch.isalnum())
        width, mlp, heads, layers, patch = PRESETS[key]
    return vit.VisionTransformer(img_size=resolution, patch_size=patch, embed_dim=width, depth=layers,
                                 num_heads=heads, mlp_ratio=mlp / width, num_classes=classes,
                                 act_layer=gelu)


def main() -> None:
    case, name = sys.argv[1], sys.argv[2]
    resolution, batch, iterations, warmup = map(int, sys.argv[3:7])
    classes = int(sys.argv[7]) if len(sys.argv) > 7 else 1000
    torch.set_num_threads(int(os.environ.get("THREADS", os.cpu_count())))
    device = os.environ.get("DEVICE", "cpu")
    precision = os.environ.get("PRECISION", "fp32")
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = build(name, resolution, classes).to(device)
    x = torch.rand(batch, 3, resolution, resolution, device=device) * 2 - 1
    y = torch.arange(batch, device=device) % classes
    if case == "train":
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def work():
            opt.zero_grad(set_to_none=True)
            with autocast:
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    else:
        model.eval()

        def work():
            with torch.inference_mode(), autocast:
                model(x)
    for _ in range(warmup):
        work()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iterations):
        sync()
        start = time.perf_counter()
        work()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    median = times[len(times) // 2]
    if device == "cuda":
        where = f"torch {torch.__version__} {torch.cuda.get_device_name()}"
        peak = torch.cuda.max_memory_allocated()
    else:
        where = f"torch {torch.__version__} cpu ({torch.get_num_threads()} threads)"
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"case": case, "model": name, "resolution": resolution, "batch": batch,
                      "device": where, "precision": precision, "median_ms": median, "min_ms": times[0],
                      "runs": len(times), "images_per_sec": batch * 1e3 / median,
                      "peak_memory_bytes": peak}))


if __name__ == "__main__":
    main()
