"""A foreign classifier explained at the cost of its forward pass: torchvision's ResNet-50
(random weights, 40 logits), exported by torch.onnx, then `export_onnx_classifier` at its usual
Grad-CAM layer (layer4's output), which recognises the affine head and emits the factored channel
weights. ONNX Runtime on the CPU, batch 8: paired per-iteration ratios of CAM (logits and raw
Grad-CAM maps of all 40 logits) and end to end (+ final maps and PE-free epilogue) over the
forward pass alone, median and range.

    python benchmarks/foreign_resnet50_speed.py [--iters 12] [--out benchmarks/results/NAME.md]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

from bincam.export.forward import export_module
from bincam.export.model import export_onnx_classifier
from bincam.files import write_atomic
from bincam.machine import machine_info, machine_line
from bincam.runtime import open_engine


def exported(folder: Path, size: int) -> Path:
    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None, num_classes=40).eval()
    return Path(export_module(net, folder / "resnet50.onnx", size))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = exported(Path(tmp), args.size)
        model = export_onnx_classifier(path, "/layer4/layer4.2/relu_2/Relu_output_0", "logits")
        engine = open_engine(model.SerializeToString(), "ort")
        x = np.random.default_rng(0).random((args.batch, 3, args.size, args.size),
                                            dtype=np.float32)
        scopes = {"forward": lambda: engine.run_forward(x),
                  "CAM": lambda: engine.explain(x, "gradcam"),
                  "e2e": lambda: engine.explain(x, "gradcam").heatmaps()}
        for fn in scopes.values():
            fn()  # warm-up (the forward-only session is built on first use)
        samples = {name: [] for name in scopes}
        rng = np.random.default_rng(1)
        for _ in range(args.iters):
            for name in rng.permutation(list(scopes)):
                t0 = time.perf_counter()
                scopes[name]()
                samples[name].append(time.perf_counter() - t0)
    fwd = np.array(samples["forward"])
    record = {"layout": engine.info.gradient_layout, "batch": args.batch, "size": args.size,
              "machine": machine_info(), "seconds": samples,
              "ratios": {n: {"median": float(np.median(np.array(samples[n]) / fwd)),
                             "min": float(np.min(np.array(samples[n]) / fwd)),
                             "max": float(np.max(np.array(samples[n]) / fwd))}
                         for n in ("CAM", "e2e")}}
    lines = [f"# Foreign ResNet-50 (torchvision, 40 logits, {engine.info.gradient_layout} "
             f"gradients), ONNX Runtime CPU, batch {args.batch} @{args.size}", "",
             f"Machine: {machine_line(record['machine'])}. Produced by "
             "`benchmarks/foreign_resnet50_speed.py`.", "",
             "| scope | median s | ratio to forward, median [min–max] |", "|---|---:|---|"]
    lines.append(f"| forward | {np.median(fwd):.3f} | 1 |")
    for n in ("CAM", "e2e"):
        r = record["ratios"][n]
        lines.append(f"| {n} | {np.median(samples[n]):.3f} | {r['median']:.2f} "
                     f"[{r['min']:.2f}–{r['max']:.2f}] |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        write_atomic(args.out, text.encode())
        write_atomic(args.out.with_suffix(".json"), json.dumps(record, indent=1).encode())


if __name__ == "__main__":
    main()
