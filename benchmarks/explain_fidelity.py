"""Fidelity of explaining files against bincam's core (NumPy, float64): every CAM method × mode on
ResNet-18 ``layer3`` (dense gradients) and ``layer4`` (factored), AFFACT pre-ReLU ``res5c``
(factored with the ReLU mask), and a foreign classifier through ``--onnx`` (torchvision's
MobileNetV3-small, dense, 5 of its 40 logits, masks from an .npz); random weights, fresh random
inputs at batches 1 and 5. Each explaining file also outputs its activations and gradients, so
the core recomputes the method, the epilogue and PE from exactly the tensors the graph used
(``bincam.export.explain_checks.epilogue_parity``). uint8 and float16 maps for every method in
mode ``predicted``; every cell again with ``cam_precision="float64"`` (the CAM method in float64,
ONNX Runtime only).

Also, per cell, the same core pipeline run in float32 NumPy against float64 ("float32 floor"):
how far plain float32 arithmetic is from the float64 reference on the same tensors.

    python benchmarks/explain_fidelity.py [--out benchmarks/results/explain_fidelity]
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

from bincam.attributes import ATTRIBUTES
from bincam.core.methods import METHODS
from bincam.core.modes import MODES
from bincam.export.explain_checks import epilogue_parity
from bincam.export.explain_graph import ExplainSpec, append_explanation
from bincam.export.explain_masks import region_masks
from bincam.export.explaining import export_explaining
from bincam.export.forward import export_module
from bincam.export.model import export_checkpoint
from bincam.files import write_atomic
from bincam.machine import machine_info, machine_line
from bincam.nets import build_net

TARGETS = {"maps max abs": 1e-5, "PE max abs": 1e-6, "uint8 levels": 1}


def nets():
    torch.manual_seed(0)
    resnet = build_net("resnet18").eval()
    affact = build_net("affact").eval()
    yield "ResNet-18 layer3 (dense)", resnet, "layer3"
    yield "ResNet-18 layer4 (factored)", resnet, "layer4"
    yield "AFFACT res5c pre-ReLU (factored)", affact, "res5c"


def cells(name, graph, masks, rows, seed):
    variants = [("float32", "float32"), ("float32", "uint8"), ("float32", "float16"),
                ("float64", "float32")]
    for method in METHODS:
        for mode in MODES:
            for precision, dtype in variants:
                if dtype != "float32" and mode != "predicted":
                    continue
                model = append_explanation(graph, ExplainSpec(
                    method, mode, map_dtype=dtype, raw_maps=True, cam_precision=precision), masks)
                t0 = time.perf_counter()
                figures = epilogue_parity(model, masks, batches=(1, 5), seed=seed, floor=True)
                rows.append({"net": name, "method": method, "mode": mode, "maps": dtype,
                             "cam_precision": precision, **figures,
                             "seconds": round(time.perf_counter() - t0, 2)})
                seed += 1
                print(rows[-1], flush=True)
    return seed


def foreign(folder: Path):
    torch.manual_seed(1)
    net = torchvision.models.mobilenet_v3_small(weights=None, num_classes=40)
    path = export_module(net, folder / "mobilenet.onnx", 224)
    names = [f"label{i}" for i in range(40)]
    rng = np.random.default_rng(7)
    masks = {}
    for n in names[:5]:
        m = np.zeros((224, 224), bool)
        y, x = rng.integers(0, 150, 2)
        m[y:y + 60, x:x + 70] = True
        masks[n] = m
    np.savez(folder / "masks.npz", **masks)
    activation = "/features/features.12/features.12.2/HardSwish_output_0"
    return path, activation, names, folder / "masks.npz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/explain_fidelity")
    args = ap.parse_args()
    rows, seed = [], 100
    for name, net, layer in nets():
        graph = export_checkpoint(net, layer)
        seed = cells(name, graph, region_masks(list(ATTRIBUTES), 224), rows, seed)
    with tempfile.TemporaryDirectory() as tmp:
        path, activation, names, mask_file = foreign(Path(tmp))
        made = export_explaining(ExplainSpec(raw_maps=True), onnx_path=path, logits="logits",
                                 activation=activation, attributes=names,
                                 select=",".join(names[:5]), masks=mask_file)
        seed = cells("torchvision MobileNetV3-small via --onnx (dense, 5 of 40)", made.gradient,
                     made.masks, rows, seed)
    worst = {}
    for row in rows:
        for key in list(TARGETS) + ["float16 max abs", "float32 floor: maps max abs",
                                    "float32 floor: PE max abs"]:
            if key in row:
                cell = worst.setdefault(f"{row['net']} | {row['cam_precision']}", {})
                cell[key] = max(cell.get(key, 0.0), row[key])
    result = {"machine": machine_info(), "targets": TARGETS, "worst": worst, "rows": rows}
    out = Path(args.out)
    write_atomic(out.with_suffix(".json"), json.dumps(result, indent=2).encode())
    lines = [f"### Explaining files vs the core (float64): {len(rows)} cells", "",
             f"Machine: {machine_line(result['machine'])}. `python benchmarks/explain_fidelity.py`."
             " Random weights, fresh random inputs, batches 1 and 5; worst over both.", "",
             "| net | CAM precision | maps max abs (f32 maps) | PE max abs | uint8 levels | "
             "float16 max abs | float32 floor: maps | float32 floor: PE |",
             "|---|---|---|---|---|---|---|---|"]
    for key, w in worst.items():
        net, precision = key.split(" | ")
        lines.append(f"| {net} | {precision} | {w.get('maps max abs', 0):.2e} | "
                     f"{w.get('PE max abs', 0):.2e} | "
                     + (f"{w['uint8 levels']:.0f} | {w['float16 max abs']:.2e}"
                        if "uint8 levels" in w else "– | –")
                     + f" | {w['float32 floor: maps max abs']:.2e} | "
                       f"{w['float32 floor: PE max abs']:.2e} |")
    lines += ["", "float32 floor: the core's own method and epilogue run in float32 NumPy on the "
              "same tensors, against float64 — what float32 arithmetic alone costs."]
    for precision in ("float32", "float64"):
        mine = [r for r in rows if r["cam_precision"] == precision]
        over = [r for r in mine if any(r.get(k, 0) > t for k, t in TARGETS.items())]
        lines += ["", f"CAM precision {precision}: cells over the targets "
                  f"({', '.join(f'{k} ≤ {v:g}' for k, v in TARGETS.items())}): "
                  f"{len(over)} of {len(mine)}."]
        lines += [f"- {r['net']} {r['method']} {r['mode']} {r['maps']}: " + ", ".join(
            f"{k} {r[k]:.2e} (float32 floor {r.get('float32 floor: ' + k, 0):.2e})"
            for k in TARGETS if k in r and k != "uint8 levels") for r in over]
    write_atomic(out.with_suffix(".md"), ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
