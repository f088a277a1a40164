"""Throughput of ``bincam analyze`` against forward-only inference, measured in one run.

For each model, on the same images, engine (ONNX Runtime, CPU) and batch size, in rounds with
alternating order:

- **forward-only inference**: the same image stream (decoding threads, prefetch) feeding the
  logits-only subgraph of the same ONNX file — what predicting the dataset costs;
- **analyze**: ``bincam.analyze`` (all attributes, Grad-CAM, PE, evidence, average-map sums,
  shard writes), images/s of its shard loop; and the same with synthetic cue PE where the data
  has cues;
- **engine forward only** on decoded images in memory (no decoding), for reference.

Ratios are per round (analyze / forward of the same round); medians and ranges are reported.
An AFFACT-size model (ResNet-50 at 224, random weights: speed does not depend on them) gives the
projection of the paper's audit: 10,458 frontal test images × 40 attributes.

    python benchmarks/analyze_throughput.py --data synth:data/synth_test10k \\
        --out benchmarks/results/analyze_throughput_cpu
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bincam.analysis import AnalyzeOptions, analyze
from bincam.analysis.stream import ImageStream
from bincam.runtime import open_engine
from bincam.runtime.engine import Engine
from bincam.machine import machine_info, machine_line
from bincam.data.spec import open_split

PAPER_IMAGES = 10_458


def affact_onnx(folder: Path) -> Path:
    """A random-weight AFFACT checkpoint, exported (what the paper's audit runs)."""
    import torch

    from bincam.attributes import ATTRIBUTES, TRAIN_POSITIVE_SHARE
    from bincam.checkpoint import card_for, save_checkpoint
    from bincam.export.model import export_checkpoint, save_onnx
    from bincam.nets import build_net

    torch.manual_seed(0)
    model = build_net("affact").eval()
    pos = [int(round(1000 * TRAIN_POSITIVE_SHARE[a])) for a in ATTRIBUTES]
    save_checkpoint(model, card_for(model, list(ATTRIBUTES), 224, positive_counts=pos,
                                    negative_counts=[1000 - p for p in pos]), folder / "affact")
    return save_onnx(export_checkpoint(model), folder / "affact.onnx")


def small_onnx(checkpoint: str, folder: Path) -> Path:
    from bincam.checkpoint import load_checkpoint
    from bincam.export.model import export_checkpoint, save_onnx

    return save_onnx(export_checkpoint(load_checkpoint(checkpoint)), folder / "small.onnx")


def forward_pass(engine: Engine, ds, size: int, n: int, batch: int, workers: int) -> float:
    """Images/s of streaming ``n`` images through the logits-only graph."""
    stream = ImageStream(ds, size, workers)
    batches = [np.arange(s, min(s + batch, n)) for s in range(0, n, batch)]
    t0 = time.perf_counter()
    for _, pixels, _ in stream.batches(batches):
        engine.run_forward(pixels.astype(np.float32) / 255.0)
    return n / (time.perf_counter() - t0)


def engine_only(engine: Engine, ds, size: int, n: int, batch: int) -> float:
    """Images/s of the logits-only graph on images already decoded."""
    from bincam.data.celeba import load_aligned

    x = np.stack([load_aligned(ds.image_path(i), size).transpose(2, 0, 1)
                  for i in range(min(n, 2 * batch))]).astype(np.float32) / 255.0
    t0, done = time.perf_counter(), 0
    while done < n:
        engine.run_forward(x[done % len(x):][:batch])
        done += batch
    return done / (time.perf_counter() - t0)


def analyze_pass(onnx: Path, data: str, n: int, batch: int, workers: int, cues: str,
                 tmp: Path) -> float:
    out = Path(tempfile.mkdtemp(dir=tmp))
    analyze(AnalyzeOptions([f"m={onnx}"], data, out / "run", limit=n, engine="ort",
                           batch_size=batch, shard_size=batch * max(1, n // batch // 4),
                           cues=cues, workers=workers))
    timing = json.loads((out / "run" / "timing.json").read_text())
    return timing["models"]["m"]["images_per_second_this_run"]


def measure(name: str, onnx: Path, args, size: int, n: int, batch: int, cues: bool,
            tmp: Path) -> dict:
    ds = open_split(args.data, args.split, size)
    engine = open_engine(onnx, "ort")
    kinds = ["forward", "analyze"] + (["analyze_cues"] if cues else [])
    runs = {k: [] for k in kinds + ["engine_forward"]}
    analyze_pass(onnx, args.data, min(n, batch * 2), batch, args.workers, "off", tmp)  # warm-up
    for r in range(args.rounds):
        for kind in (kinds if r % 2 == 0 else kinds[::-1]):
            if kind == "forward":
                runs[kind].append(forward_pass(engine, ds, size, n, batch, args.workers))
            else:
                runs[kind].append(analyze_pass(onnx, args.data, n, batch, args.workers,
                                               "on" if kind == "analyze_cues" else "off", tmp))
            print(f"{name} round {r} {kind}: {runs[kind][-1]:.1f} images/s", flush=True)
        runs["engine_forward"].append(engine_only(engine, ds, size, n, batch))
    ratio = [a / f for a, f in zip(runs["analyze"], runs["forward"])]
    result = {"images": n, "batch": batch, "image_size": size,
              "images_per_second": {k: statistics.median(v) for k, v in runs.items()},
              "rounds": runs, "analyze_over_forward": statistics.median(ratio),
              "analyze_over_forward_range": [min(ratio), max(ratio)]}
    if cues:
        rc = [a / f for a, f in zip(runs["analyze_cues"], runs["forward"])]
        result["analyze_cues_over_forward"] = statistics.median(rc)
        result["analyze_cues_over_forward_range"] = [min(rc), max(rc)]
    ips = result["images_per_second"]["analyze"]
    result["paper_audit_minutes"] = PAPER_IMAGES / ips / 60
    return result


def markdown(record: dict) -> str:
    lines = ["# `bincam analyze` throughput vs forward-only inference", "",
             f"Machine: {machine_line(record['machine'])}. ONNX Runtime (CPU), Grad-CAM, all 40 "
             f"attributes, {record['rounds']} rounds; medians, with the range of per-round "
             "ratios. Produced by `benchmarks/analyze_throughput.py`.", "",
             "| model | input | batch | images | forward-only inference (img/s) | analyze "
             "(img/s) | analyze / forward | analyze with cue PE / forward | engine forward on "
             "decoded images (img/s) | paper audit (10,458 images) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in record["models"].items():
        ips = m["images_per_second"]
        lo, hi = m["analyze_over_forward_range"]
        cue = (f"{m['analyze_cues_over_forward']:.2f} [{m['analyze_cues_over_forward_range'][0]:.2f}"
               f"–{m['analyze_cues_over_forward_range'][1]:.2f}]"
               if "analyze_cues_over_forward" in m else "—")
        lines.append(f"| {name} | {m['image_size']} | {m['batch']} | {m['images']} | "
                     f"{ips['forward']:.1f} | {ips['analyze']:.1f} | "
                     f"{m['analyze_over_forward']:.2f} [{lo:.2f}–{hi:.2f}] | {cue} | "
                     f"{ips['engine_forward']:.1f} | {m['paper_audit_minutes']:.1f} min |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="synth:data/synth_test10k")
    ap.add_argument("--split", default="test")
    ap.add_argument("--small", default="models/synth-small-unbalanced")
    ap.add_argument("--small-images", type=int, default=2048)
    ap.add_argument("--affact-images", type=int, default=128)
    ap.add_argument("--small-batch", type=int, default=64)
    ap.add_argument("--affact-batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", required=True, help="path prefix for .json and .md")
    args = ap.parse_args()
    record = {"benchmark": "analyze_throughput", "data": args.data, "split": args.split,
              "rounds": args.rounds, "machine": machine_info(), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        record["models"]["synth-small (0.31 M params)"] = measure(
            "small", small_onnx(args.small, tmp), args, 112, args.small_images, args.small_batch,
            True, tmp)
        record["models"]["AFFACT / ResNet-50"] = measure(
            "affact", affact_onnx(tmp), args, 224, args.affact_images, args.affact_batch, False,
            tmp)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    out.with_suffix(".md").write_text(markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    main()
