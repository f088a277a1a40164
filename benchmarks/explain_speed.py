"""Speed of explaining files on ONNX Runtime (CPU): all 40 attributes, final maps at the input size
and PE, against the same model's forward pass alone and against the gradient file + bincam's
NumPy epilogue on the same images.

Nets: AFFACT @224 (random weights, pre-ReLU res5c, factored) and the shipped
``models/synth-small-balanced`` @112. Scopes, per net, interleaved in a random order each
iteration (so drifts in machine load hit all alike): ``forward`` (the gradient file's
logits-only subgraph, ``OrtEngine.run_forward``), ``explaining f32`` / ``explaining u8`` (one run
of the explaining file: logits, 40 heatmaps, energy) and ``engine + NumPy`` (the gradient file's
``explain``, then ``heatmaps()`` and ``proportional_energy()``). Ratios are paired per iteration;
median and range.

    python benchmarks/explain_speed.py [--iters 15] [--batch 8] [--out benchmarks/results/NAME]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from bincam.checkpoint import load_checkpoint
from bincam.export.explain_graph import ExplainSpec
from bincam.export.explaining import export_explaining
from bincam.files import write_report
from bincam.machine import machine_info, machine_line
from bincam.nets import build_net
from bincam.runtime import open_engine


def nets():
    torch.manual_seed(0)
    yield "AFFACT @224 (random weights, res5c)", build_net("affact").eval()
    yield "synth-small-balanced @112", load_checkpoint("models/synth-small-balanced")


def measure(name: str, net, batch: int, iters: int) -> dict:
    f32 = export_explaining(ExplainSpec(), net)
    u8 = export_explaining(ExplainSpec(map_dtype="uint8"), net)
    size = int(f32.model.graph.input[0].type.tensor_type.shape.dim[2].dim_value)
    gradient = open_engine(f32.gradient.SerializeToString(), "ort")
    explaining = {"explaining f32": open_engine(f32.model.SerializeToString(), "ort"),
                  "explaining u8": open_engine(u8.model.SerializeToString(), "ort")}
    x = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)

    def numpy_path():
        result = gradient.explain(x)
        return result.heatmaps(), result.proportional_energy()

    scopes = {"forward": lambda: gradient.run_forward(x), "engine + NumPy": numpy_path}
    scopes.update({n: (lambda e=e: e.run(x)) for n, e in explaining.items()})
    for fn in scopes.values():
        fn()
        fn()  # warm-up (sessions, the forward-only subgraph, allocator)
    samples = {n: [] for n in scopes}
    order = np.random.default_rng(1)
    for _ in range(iters):
        for n in order.permutation(list(scopes)):
            t0 = time.perf_counter()
            scopes[n]()
            samples[n].append(time.perf_counter() - t0)
    fwd = np.array(samples["forward"])
    ratios = {}
    for n in scopes:
        r = np.array(samples[n]) / fwd
        ratios[f"{n} / forward"] = r
    for n in explaining:
        ratios[f"{n} / engine + NumPy"] = np.array(samples[n]) / np.array(samples["engine + NumPy"])
    return {"net": name, "batch": batch, "size": size, "seconds": samples,
            "median_s": {n: float(np.median(v)) for n, v in samples.items()},
            "ratios": {n: {"median": float(np.median(r)), "min": float(r.min()),
                           "max": float(r.max())} for n, r in ratios.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    records = [measure(name, net, args.batch, args.iters) for name, net in nets()]
    info = machine_info()
    lines = [f"# Explaining files, ONNX Runtime CPU, batch {args.batch}, 40 attributes", "",
             f"Machine: {machine_line(info)}. `python benchmarks/explain_speed.py --iters "
             f"{args.iters} --batch {args.batch}`; {args.iters} interleaved iterations, paired "
             "ratios: median [min–max].", ""]
    for rec in records:
        lines += [f"## {rec['net']}", "", "| scope | median ms |", "|---|---:|"]
        lines += [f"| {n} | {1000 * s:.1f} |" for n, s in rec["median_s"].items()]
        lines += ["", "| ratio | median [min–max] |", "|---|---|"]
        lines += [f"| {n} | {r['median']:.2f} [{r['min']:.2f}–{r['max']:.2f}] |"
                  for n, r in rec["ratios"].items() if n != "forward / forward"]
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        write_report(args.out, text, {"machine": info, "records": records})


if __name__ == "__main__":
    main()
