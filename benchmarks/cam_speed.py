"""Speed of all-attribute binary CAMs in eager PyTorch vs a forward pass and vs the reference approach.

In one run, on the same inputs and machine:
- forward: ``model(x)`` under ``no_grad`` (eager), batch B;
- bincam explain: logits + raw maps for all K attributes (``explain``) and PE, batch B;
- bincam explain + final maps: the same plus the 224×224 epilogue of all B·K maps;
- reference approach (what the paper's code does): pytorch-grad-cam ``GradCAM`` with a ``|z|``
  target, one call per attribute, batch 1, final 224×224 maps.
Medians of per-iteration wall times after warm-up; ratios are computed from those medians.

    python benchmarks/cam_speed.py --arch resnet50 --batch 8 --out benchmarks/results/cam_speed_cpu
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from bincam import explain
from bincam.cam.targets import BinaryLogitTarget
from bincam.machine import machine_info, machine_line
from bincam.timing import timed
from bincam.nets import build_net, cam_module


def reference_per_image(model, x, k, images):
    from pytorch_grad_cam import GradCAM

    def one(img):
        with GradCAM(model=model, target_layers=[cam_module(model)]) as cam:
            return np.stack([cam(img, targets=[BinaryLogitTarget(a)]) for a in range(k)])

    return timed(lambda: one(x[:1]), iters=images, warmup=0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reference-images", type=int, default=2,
                    help="images timed for the reference approach (40 calls each)")
    ap.add_argument("--out", required=True, help="path prefix for .json and .md")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = build_net(args.arch).eval()
    x = torch.rand(args.batch, 3, args.size, args.size)
    k = model.arch_config["num_outputs"]

    def forward():
        with torch.no_grad():
            model(x)

    def cams():
        e = explain(model, x)
        e.proportional_energy()
        return e

    def cams_and_maps():
        cams().heatmaps(args.size)

    results = {"forward": timed(forward, args.iters, args.warmup),
               "explain": timed(cams, args.iters, args.warmup),
               "explain_and_maps": timed(cams_and_maps, args.iters, args.warmup)}
    if args.reference_images:
        results["reference_per_image"] = reference_per_image(model, x, k, args.reference_images)
    fwd = results["forward"]["median_s"]
    ratios = {"explain_vs_forward": results["explain"]["median_s"] / fwd,
              "explain_and_maps_vs_forward": results["explain_and_maps"]["median_s"] / fwd}
    if "reference_per_image" in results:
        ref = results["reference_per_image"]["median_s"]
        ratios["reference_vs_explain_and_maps_per_image"] = ref / (
            results["explain_and_maps"]["median_s"] / args.batch)
        ratios["reference_vs_forward_per_image"] = ref / (fwd / args.batch)
    record = {"benchmark": "cam_speed", "arch": args.arch, "size": args.size, "batch": args.batch,
              "attributes": k, "iters": args.iters, "threads": torch.get_num_threads(),
              "machine": machine_info(), "results": results, "ratios": ratios}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    text = markdown(record)
    out.with_suffix(".md").write_text(text)
    print(text)


def markdown(r: dict) -> str:
    res, b = r["results"], r["batch"]
    lines = [f"# All-{r['attributes']} binary CAM speed, {r['arch']} @{r['size']}, eager PyTorch",
             "", f"Machine: {machine_line(r['machine'])}; torch threads {r['threads']}. "
             f"Medians of {r['iters']} iterations; produced by `benchmarks/cam_speed.py`.", "",
             "| what | batch | median s/batch | s/image |", "|---|---|---|---|"]
    for key, label in (("forward", "forward only"), ("explain", "bincam explain (raw maps + PE)"),
                       ("explain_and_maps", "bincam explain + 224² final maps")):
        lines.append(f"| {label} | {b} | {res[key]['median_s']:.3f} | "
                     f"{res[key]['median_s'] / b:.4f} |")
    if "reference_per_image" in res:
        lines.append(f"| reference: pytorch-grad-cam, |z| target, 1 call per attribute | 1 | "
                     f"{res['reference_per_image']['median_s']:.2f} | "
                     f"{res['reference_per_image']['median_s']:.2f} |")
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in r["ratios"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
