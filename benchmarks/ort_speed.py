"""ONNX Runtime CAM speed: ORT all-K CAMs vs ORT forward-only, vs the eager torch CAM path, and vs
the reference approach, measured in one run on the same machine.

- ORT forward: the exported forward graph (logits only requested), batch B;
- ORT CAM: the exported gradient graph (factored for an affine head unless --dense), all K
  attributes, raw maps + PE in NumPy;
- torch CAM: ``bincam.explain`` (closed form) + PE, same batch;
- reference: pytorch-grad-cam GradCAM with a ``|z|`` target, one call per attribute, batch 1.

    python benchmarks/ort_speed.py --arch affact --batches 1,8 --out benchmarks/results/ort_speed_affact_cpu
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from bincam import explain
from bincam.cam.targets import BinaryLogitTarget
from bincam.export.forward import export_forward
from bincam.export.model import export_checkpoint
from bincam.machine import machine_info, machine_line
from bincam.timing import timed
from bincam.nets import build_net, cam_module
from bincam.runtime.ort_engine import OrtEngine


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="affact")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--dense", action="store_true", help="dense gradients instead of factored")
    ap.add_argument("--reference-images", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = build_net(args.arch).eval()
    fwd_session = ort.InferenceSession(export_forward(model, None, args.size).SerializeToString(),
                                       providers=["CPUExecutionProvider"])
    cam_engine = OrtEngine(export_checkpoint(model, None, "dense" if args.dense else "auto")
                           .SerializeToString())
    k = len(cam_engine.attributes)
    results = {}
    for b in (int(v) for v in args.batches.split(",")):
        x = np.random.default_rng(b).random((b, 3, args.size, args.size), dtype=np.float32)
        xt = torch.from_numpy(x)

        def ort_cam():
            cam_engine.explain(x).proportional_energy()

        def torch_cam():
            explain(model, xt).proportional_energy()

        results[b] = {
            "ort_forward": timed(lambda: fwd_session.run(["logits"], {"images": x}), args.iters),
            "ort_cam": timed(ort_cam, args.iters),
            "torch_cam": timed(torch_cam, args.iters),
        }
    if args.reference_images:
        from pytorch_grad_cam import GradCAM

        x1 = torch.rand(1, 3, args.size, args.size)

        def reference():
            with GradCAM(model=model, target_layers=[cam_module(model)]) as cam:
                for a in range(k):
                    cam(x1, targets=[BinaryLogitTarget(a)])

        results["reference_per_image"] = timed(reference, args.reference_images, warmup=0)
    ratios = {}
    for b, r in results.items():
        if b == "reference_per_image":
            continue
        ratios[f"batch {b}: ORT CAM / ORT forward"] = r["ort_cam"]["median_s"] / r["ort_forward"]["median_s"]
        ratios[f"batch {b}: torch CAM / ORT CAM"] = r["torch_cam"]["median_s"] / r["ort_cam"]["median_s"]
        if "reference_per_image" in results:
            ratios[f"batch {b}: reference / ORT CAM per image"] = \
                results["reference_per_image"]["median_s"] / (r["ort_cam"]["median_s"] / b)
    record = {"benchmark": "ort_speed", "arch": args.arch, "size": args.size, "attributes": k,
              "gradient_layout": cam_engine.info.gradient_layout,
              "optimization_level": cam_engine.optimization_level, "machine": machine_info(),
              "results": {str(b): r for b, r in results.items()}, "ratios": ratios}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    lines = [f"# ONNX Runtime all-{k} CAM speed, {args.arch} @{args.size} "
             f"({record['gradient_layout']} gradients)", "",
             f"Machine: {machine_line(record['machine'])}. Medians of {args.iters} iterations; "
             "produced by `benchmarks/ort_speed.py`.", "",
             "| batch | ORT forward s | ORT CAM s | torch CAM s |", "|---|---|---|---|"]
    for b, r in results.items():
        if b != "reference_per_image":
            lines.append(f"| {b} | {r['ort_forward']['median_s']:.3f} | {r['ort_cam']['median_s']:.3f}"
                         f" | {r['torch_cam']['median_s']:.3f} |")
    if "reference_per_image" in results:
        lines += ["", f"Reference approach: {results['reference_per_image']['median_s']:.2f} s per image."]
    lines += ["", "| ratio | value |", "|---|---|"] + [f"| {n} | {v:.2f} |" for n, v in ratios.items()]
    text = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
