"""Fidelity of the fp16 gradient graph (`bincam export --precision fp16`), run by ONNX Runtime on
this CPU, against the float32 eager torch engine: Pearson of raw maps, PE differences and
prediction flips, per model, over a synthetic test split (and synthetic faces for an
architecture given as arch:NAME with random weights).

    python benchmarks/fp16_fidelity.py --model unbalanced=models/synth-small-unbalanced \
        --model balanced=models/synth-small-balanced --model affact=arch:affact \
        --data synth:data/synth20k --out benchmarks/results/fp16_fidelity
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from bincam.data.batches import synthetic_faces
from bincam.checkpoint import load_checkpoint
from bincam.export.checks import REDUCED_PRECISION_LIMITS, precision_fidelity
from bincam.export.model import export_checkpoint
from bincam.export.precision import op_types_by_precision, reduce_precision
from bincam.machine import machine_info, machine_line
from bincam.nets import build_net
from bincam.runtime.ort_engine import OrtEngine
from bincam.training.data import load_images, open_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, help="NAME=CHECKPOINT or NAME=arch:A")
    ap.add_argument("--data", default="synth:data/synth20k")
    ap.add_argument("--split", default="test")
    ap.add_argument("--faces", type=int, default=64, help="synthetic faces for arch:NAME models")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rows = {}
    for name, spec in (m.split("=", 1) for m in args.model):
        if spec.startswith("arch:"):
            torch.manual_seed(0)
            model = build_net(spec[5:]).eval()
            images, source = synthetic_faces(args.faces, 224, seed=2), f"{args.faces} synthetic faces"
        else:
            model = load_checkpoint(spec)
            card = model.card
            ds = open_split(args.data, args.split, card.image_size, card.attributes)
            images = load_images(ds).numpy().transpose(0, 2, 3, 1)  # NHWC, as to_batch expects
            source = f"{args.split} split of {args.data} ({len(images)} images)"
        graph = reduce_precision(export_checkpoint(model), "fp16")
        engine = OrtEngine(graph.SerializeToString())
        parts = [precision_fidelity(engine, model, images[i:i + args.batch])
                 for i in range(0, len(images), args.batch)]
        sizes = [len(images[i:i + args.batch]) for i in range(0, len(images), args.batch)]
        w = np.array(sizes) / sum(sizes)
        rows[name] = {
            "source": source, "gradient_layout": engine.info.gradient_layout,
            "ops": op_types_by_precision(graph),
            "raw-map Pearson (mean)": float(sum(p["raw-map Pearson (mean)"] * x
                                                for p, x in zip(parts, w))),
            "raw-map Pearson (min)": min(p["raw-map Pearson (min)"] for p in parts),
            "PE max abs": max(p["PE max abs"] for p in parts),
            "PE mean abs": float(sum(p["PE mean abs"] * x for p, x in zip(parts, w))),
            "prediction flip rate": float(sum(p["prediction flip rate"] * x
                                              for p, x in zip(parts, w))),
        }
        print(name, {k: v for k, v in rows[name].items() if k != "ops"})
    record = {"benchmark": "fp16_fidelity", "machine": machine_info(),
              "limits": REDUCED_PRECISION_LIMITS, "models": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    lines = ["# fp16 gradient graph (ONNX Runtime, CPU) vs float32 eager torch", "",
             f"Machine: {machine_line(record['machine'])}. Produced by "
             "`benchmarks/fp16_fidelity.py`; limits: mean raw-map Pearson ≥ 0.999, PE abs diff "
             "≤ 0.01, prediction flips ≤ 0.1 %. Pearson and PE over the maps whose predicted "
             "class agrees (a flipped prediction explains the other class).", "",
             "| model | images | layout | raw Pearson mean | raw Pearson min | PE max abs | "
             "PE mean abs | flip rate |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {n} | {r['source']} | {r['gradient_layout']} | {r['raw-map Pearson (mean)']:.6f} "
              f"| {r['raw-map Pearson (min)']:.6f} | {r['PE max abs']:.2e} | {r['PE mean abs']:.2e}"
              f" | {r['prediction flip rate']:.4%} |" for n, r in rows.items()]
    first = next(iter(rows.values()))["ops"]
    lines += ["", f"float16 ops: {', '.join(first['float16'])}; float32 ops: "
              f"{', '.join(first['float32'])}."]
    text = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
