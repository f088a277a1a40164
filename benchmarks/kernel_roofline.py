"""Roofline of the fused epilogue for AFFACT @224 (C = 2048 at 7×7, 40 attributes): DRAM bytes
per image that a launch must move (bincam.gpu.roofline) and the time that implies at the H100
and H200 HBM bandwidths — the floor a GPU run of benchmarks/gpu_check.py is judged against.

    python benchmarks/kernel_roofline.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bincam.gpu.geometry import launch_geometry
from bincam.gpu.roofline import PEAK_BANDWIDTH, kernel_bytes, kernel_divisions, roofline_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    rows = roofline_table()
    geometry = {f"{layout} batch {b}": launch_geometry(layout, (b, 40, 2048, 7, 7), (224, 224)
                                                       ).__dict__
                for layout in ("dense", "factored") for b in (1, 8)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernel_roofline.json").write_text(json.dumps(
        {"benchmark": "kernel_roofline", "model": "AFFACT @224: C=2048, 7x7, K=40",
         "peak_bandwidth_bytes_per_s": PEAK_BANDWIDTH, "rows": rows,
         "geometry_132_sms_block_256": geometry}, indent=1))
    cards = list(PEAK_BANDWIDTH)
    lines = ["# Fused epilogue roofline: AFFACT @224 (C = 2048, 7×7, K = 40, maps 224×224)", "",
             "Computed by `benchmarks/kernel_roofline.py` from `bincam.gpu.roofline` (no GPU "
             "involved): bytes a launch must move per image — activations, gradients (dense) or "
             "channel weights (factored, once per batch), logits, masks (once per batch, "
             "L2-resident), maps, energies, partial-sum workspace — and the floor at peak HBM "
             "bandwidth. A correct kernel reaches ~80–90 % of it at best.", "",
             "| layout | inputs | maps | batch | MB per image | " + " | ".join(f"µs/image {c}" for c in cards)
             + " |", "|---|---|---|---|---|" + "---|" * len(cards)]
    for r in rows:
        lines.append(f"| {r['layout']} | {r['inputs']} | {r['maps']} | {r['batch']} | "
                     f"{r['bytes_per_image'] / 1e6:.2f} | "
                     + " | ".join(f"{r[f'floor_us_per_image {c}']:.2f}" for c in cards) + " |")
    lines += ["", "Per image at batch 8, float32 maps: dense = 0.40 MB activations + 16.06 MB "
              "gradients + 8.03 MB maps (+ 0.25 MB masks, 0.02 MB workspace); factored = 0.40 MB "
              "activations + 8.03 MB maps + 0.04 MB channel weights + 0.25 MB masks + 0.5 MB "
              "workspace (33 splits × 40 × 49 partial sums). Inputs f16: activations and dense gradients "
              "as an fp16 export with half outputs gives them (`reduce_precision(..., "
              "half_outputs=True)`), read as binary16 by the kernels.", ""]
    lines += ["## Per kernel", "",
              "Bytes each kernel must move (`gpu.roofline.kernel_bytes`, float32 maps, energies, "
              "132 SMs, block 256) and the floor at peak bandwidth; integer divisions by a "
              "launch value (`gpu.roofline.kernel_divisions`, ~20 instructions each) in the "
              "kernel before and after the per-element divisions were removed (finish: row and "
              "column of every output pixel; dense partials: channel and cell of every element "
              "loaded). An estimate, not a measurement: no GPU was used.", "",
              "| layout | batch | kernel | MB | " + " | ".join(f"floor µs {c}" for c in cards)
              + " | divisions before | after |", "|---|---|---|---|" + "---|" * len(cards)
              + "---|---|"]
    for layout in ("dense", "factored"):
        for b in (1, 8, 64):
            shape = (b, 40, 2048, 7, 7)
            per, div = kernel_bytes(layout, shape, (224, 224)), kernel_divisions(layout, shape,
                                                                                  (224, 224))
            for name, row in per.items():
                d = div.get(name, {"before": 0, "after": 0})
                lines.append(f"| {layout} | {b} | {name} | {row['bytes'] / 1e6:.2f} | "
                             + " | ".join(f"{row[f'floor_us {c}']:.1f}" for c in cards)
                             + f" | {d['before'] / 1e6:.2f} M | {d['after'] / 1e6:.2f} M |")
    (args.out / "kernel_roofline.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
