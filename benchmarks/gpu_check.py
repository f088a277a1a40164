"""One-call GPU check of the fused epilogue kernels: compile (NVRTC, cubin for this card), check
against the float64 NumPy reference and the torch CUDA path on fresh random inputs (signed
activations), time the launches alone (CUDA events around a captured graph) at batch 1 and
--batch, report the achieved bandwidth against the roofline (bincam.gpu.roofline; measured copy
bandwidth and the card's peak), time bincam's torch CUDA epilogue, and write JSON + Markdown
named after the card. Exits 1 if any check is over its limit.

    python benchmarks/gpu_check.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

from bincam.core.methods import METHODS
from bincam.gpu.check import LIMITS, PERFORMANCE_BATCHES, copy_bandwidth, performance_verdict, \
    run_fused_case, time_case
from bincam.gpu.launcher import FusedEpilogue
from bincam.machine import machine_info, machine_line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: run this on a GPU machine")
    card = torch.cuda.get_device_name(0)
    t0 = time.perf_counter()
    kernel = FusedEpilogue()
    compile_s = time.perf_counter() - t0
    checks, timings = [], []
    for layout in ("dense", "factored"):
        for method in METHODS:
            for seed in (0, 1):
                err = run_fused_case(layout, method, seed, b=args.batch, kernel=kernel)
                ok = all(err[n] <= lim for n, lim in LIMITS.items())
                checks.append({"layout": layout, "method": method, "seed": seed, "ok": ok, **err})
    # float16 activations and gradients (an fp16 export with half outputs)
    for layout in ("dense", "factored"):
        err = run_fused_case(layout, "xgradcam", 3, b=args.batch, kernel=kernel, half_inputs=True)
        checks.append({"layout": layout, "method": "xgradcam", "seed": 3, "inputs": "f16",
                       "ok": all(err[n] <= lim for n, lim in LIMITS.items()), **err})
    # smaller feature maps and shapes that are not multiples of the block (tiling paths)
    for c, h, size in ((512, 14, 112), (64, 40, 160)):
        err = run_fused_case("dense", "gradcam", 2, b=2, k=3, c=c, h=h, size=size, kernel=kernel)
        checks.append({"layout": "dense", "method": "gradcam", "seed": 2, "channels": c, "cells": h,
                       "ok": all(err[n] <= lim for n, lim in LIMITS.items()), **err})
    bandwidth = copy_bandwidth()
    for layout in ("dense", "factored"):
        for batch in sorted({1, args.batch, *PERFORMANCE_BATCHES}):
            timings.append(time_case(layout, "gradcam", bandwidth, b=batch, kernel=kernel))
    record = {"benchmark": "gpu_check", "card": card, "machine": machine_info(),
              "arch": kernel.arch, "compile_or_cache_s": compile_s, "limits": LIMITS,
              "copy_bandwidth_bytes_per_s": bandwidth, "checks": checks, "timings": timings,
              "all_ok": all(c["ok"] for c in checks),
              "performance": performance_verdict(timings)}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"gpu_check_{re.sub(r'[^A-Za-z0-9]+', '_', card).strip('_').lower()}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1))
    lines = [f"# Fused epilogue kernel on {card} ({kernel.arch})", "",
             f"Machine: {machine_line(record['machine'])}. Produced by `benchmarks/gpu_check.py`; "
             f"copy bandwidth {bandwidth / 1e9:.0f} GB/s.", "",
             "| layout | method | seed | raw rel | maps max abs | PE max abs | fp16 max abs | "
             "u8 max diff | ok |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {c['layout']} | {c['method']} | {c['seed']} | {c['raw rel']:.1e} | "
              f"{c['maps max abs']:.1e} | {c['PE max abs']:.1e} | {c['fp16 maps max abs']:.1e} | "
              f"{c['uint8 maps max diff']} | {'yes' if c['ok'] else 'NO'} |" for c in checks]
    lines += ["", f"Timing: {timings[0]['timing']}; roofline = bytes / copy bandwidth.", "",
              "| layout | batch × K | fused f32 µs | floor f32 µs | achieved f32 GB/s | fused u8 µs "
              "| floor u8 µs | achieved u8 GB/s | torch ms | torch / fused |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {t['layout']} | {t['batch']}×{t['attributes']} | {t['fused_f32_s'] * 1e6:.1f} | "
              f"{t['floor_f32_s'] * 1e6:.1f} | {t['achieved_f32_bytes_per_s'] / 1e9:.0f} | "
              f"{t['fused_u8_s'] * 1e6:.1f} | {t['floor_u8_s'] * 1e6:.1f} | "
              f"{t['achieved_u8_bytes_per_s'] / 1e9:.0f} | {t['torch_s'] * 1e3:.2f} | "
              f"{t['torch_over_fused_f32']:.1f} |" for t in timings]
    text = "\n".join(lines) + "\n"
    stem.with_suffix(".md").write_text(text)
    print(text)
    perf = record["performance"]
    print(f"correctness: {'ok' if record['all_ok'] else 'FAILED'}")
    print(f"performance (achieved/copy bandwidth ≥ {perf['floor']} at batch "
          f"{'/'.join(map(str, PERFORMANCE_BATCHES))}): {'ok' if perf['ok'] else 'FAILED'}"
          + "".join(f"; {s['layout']} b{s['batch']} {s['fraction']:.2f}" for s in perf["slow"]))
    if not record["all_ok"]:
        sys.exit(1)
    if not perf["ok"]:
        sys.exit(3)


if __name__ == "__main__":
    main()
