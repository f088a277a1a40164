"""Training throughput (images/s) of a bincam net on this machine.

Measures full training steps (forward, weighted BCE, backward, AdamW) on real decoded images of a
dataset, after warm-up, for each thread count; reports the median of per-step rates.

    python benchmarks/train_throughput.py --data synth:data/synth20k --arch small --width 16 \
        --image-size 112 --batch-size 64 --threads 1,2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from bincam.machine import machine_info, machine_line
from bincam.nets import build_net
from bincam.training.data import load_images, open_split, to_input
from bincam.training.loop import weighted_bce


def measure(images, labels, arch, width, threads, batch, steps, warmup):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_net(arch, num_outputs=labels.shape[1], **({"width": width} if arch == "small"
                                                             else {})).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ones = torch.ones(labels.shape[1])
    rates = []
    for s in range(warmup + steps):
        idx = torch.arange(s * batch, (s + 1) * batch) % len(images)
        t0 = time.perf_counter()
        loss = weighted_bce(model(to_input(images[idx])), labels[idx], ones, ones)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if s >= warmup:
            rates.append(batch / (time.perf_counter() - t0))
    return {"threads": threads, "median_images_per_s": statistics.median(rates),
            "min": min(rates), "max": max(rates), "steps": steps, "samples": rates}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--arch", default="small")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = ap.parse_args()
    ds = open_split(args.data, "train", args.image_size, limit=args.batch_size * 8)
    images, labels = load_images(ds), torch.from_numpy(ds.labels).float()
    results = [measure(images, labels, args.arch, args.width, int(t), args.batch_size, args.steps,
                       args.warmup) for t in args.threads.split(",")]
    record = {"benchmark": "train_throughput", "arch": args.arch, "width": args.width,
              "image_size": args.image_size, "batch_size": args.batch_size,
              "machine": machine_info(), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2))
    print(f"machine: {machine_line(record['machine'])}")
    for r in results:
        print(f"{args.arch} w{args.width} @{args.image_size}px batch {args.batch_size}, "
              f"{r['threads']} thread(s): {r['median_images_per_s']:.1f} images/s (median of "
              f"{r['steps']} steps, range {r['min']:.1f}–{r['max']:.1f})")


if __name__ == "__main__":
    main()
