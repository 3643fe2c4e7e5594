"""Exports timm's ViT-B/16 (224 px, random weights, 10 classes: the architecture of the
B/16 model that tests/web/bench.sh times in our page) to ONNX, for onnxruntime-web.

    python tests/web/export_onnx.py OUT.onnx

Needs torch, timm, onnx and onnxscript (the PYTHON of bench.sh; measured with torch 2.9.0,
timm 1.0.31, onnx 1.23.2, onnxscript 0.7.2). Weights do not change the speed; the graph is
timm's, as transformers.js users would run it.
"""

import sys

import timm
import torch


def main() -> None:
    out = sys.argv[1]
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10).eval()
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (images,),
            out,
            input_names=["images"],
            output_names=["logits"],
            dynamo=True,
            external_data=False,
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
