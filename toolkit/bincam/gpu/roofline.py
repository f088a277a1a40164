"""Memory roofline of the fused epilogue: the DRAM bytes a launch must move at least, and the
time that implies at a given bandwidth (the kernels do O(1) flops per byte: bandwidth-bound).

Per launch of ``B`` images, ``K`` attributes, ``C`` channels of ``h×w`` cells, maps ``H×W``:

- read once: activations ``4·B·C·h·w``, gradients ``4·B·K·C·h·w`` (dense) or channel weights
  ``4·K·C`` (factored, shared by the batch), logits ``4·B·K``, masks ``K·H·W`` (shared by the
  batch; L2-resident after the first image);
- written: maps ``B·K·H·W·bytes`` (4 float32, 2 float16, 1 uint8), energies ``8·B·K``, raw maps
  ``4·B·K·h·w`` if asked;
- workspace: partial sums ``[B·K, S, h·w]`` and tile energies ``[B·K, T, 2]``, written and read.
"""

from __future__ import annotations

from bincam.gpu.geometry import launch_geometry

# HBM bandwidth of the cards this project may be lent (vendor figures, bytes/s)
PEAK_BANDWIDTH = {"H100 SXM (HBM3)": 3.35e12, "H200 (HBM3e)": 4.8e12}
MAP_BYTES = {"f32": 4, "f16": 2, "u8": 1}


def launch_bytes(layout: str, shape: tuple[int, int, int, int, int], size: tuple[int, int],
                 maps: str = "f32", raw: bool = False, energy: bool = True, block: int = 256,
                 sms: int = 132, half_inputs: bool = False) -> dict[str, int]:
    """Bytes by item and their ``total`` for one launch (see the module docstring);
    ``half_inputs``: activations and dense gradients are float16 (2 bytes)."""
    b, k, c, h, w = shape
    cells, pixels = h * w, size[0] * size[1]
    g = launch_geometry(layout, shape, size, block, sms, shared_limit=1 << 30)
    partial, tile_energy = g.workspace_floats(b * k, cells)
    x = 2 if half_inputs else 4
    items = {"activations": x * b * c * cells,
             "gradients" if layout == "dense" else "channel weights":
                 x * b * k * c * cells if layout == "dense" else 4 * k * c,
             "logits": 4 * b * k, "masks": k * pixels if energy else 0,
             "maps": b * k * pixels * MAP_BYTES[maps] if maps else 0,
             "energies": 8 * b * k if energy else 0, "raw": 4 * b * k * cells if raw else 0,
             "workspace": 2 * 4 * (partial + (tile_energy if energy else 0))}
    items["total"] = sum(items.values())
    return items


def roofline_table(shape=(1, 40, 2048, 7, 7), size=(224, 224), batches=(1, 8)) -> list[dict]:
    """AFFACT @224 (ResNet-50 ``res5c``: C = 2048 at 7×7, 40 attributes): bytes per image and
    the floor in µs per image at each card's peak bandwidth, dense and factored, per map type."""
    _, k, c, h, w = shape
    rows = []
    for layout, half in (("dense", False), ("dense", True), ("factored", False),
                         ("factored", True)):
        for maps in ("f32", "f16", "u8"):
            for b in batches:
                items = launch_bytes(layout, (b, k, c, h, w), size, maps, half_inputs=half)
                per_image = items["total"] / b
                rows.append({"layout": layout, "inputs": "f16" if half else "f32",
                             "maps": maps, "batch": b,
                             "bytes_per_image": per_image,
                             **{f"floor_us_per_image {card}": per_image / bw * 1e6
                                for card, bw in PEAK_BANDWIDTH.items()},
                             "items": items})
    return rows


def kernel_bytes(layout: str, shape: tuple[int, int, int, int, int], size: tuple[int, int],
                 maps: str = "f32", block: int = 256, sms: int = 132) -> dict[str, dict]:
    """Bytes per kernel of one launch (energies on, no raw maps) and its floor in µs at each
    card's peak bandwidth: partials read the inputs and write ``[B·K, S, h·w]``; finish reads
    those and the masks, writes the maps and tile energies; energy reads and reduces those."""
    it = launch_bytes(layout, shape, size, maps, block=block, sms=sms)
    b, k, c, h, w = shape
    g = launch_geometry(layout, shape, size, block, sms, shared_limit=1 << 30)
    partial, tile_energy = (4 * n for n in g.workspace_floats(b * k, h * w))
    inputs = it["activations"] + it.get("gradients", 0) + it.get("channel weights", 0)
    per_kernel = {"partials": inputs + it["logits"] + partial,
                  "finish": partial + it["masks"] + it["maps"] + tile_energy,
                  "energy": tile_energy + it["energies"]}
    return {name: {"bytes": n, **{f"floor_us {card}": n / bw * 1e6
                                  for card, bw in PEAK_BANDWIDTH.items()}}
            for name, n in per_kernel.items()}


def kernel_divisions(layout: str, shape: tuple[int, int, int, int, int], size: tuple[int, int],
                     block: int = 256, sms: int = 132) -> dict[str, dict]:
    """About how many integer divisions by a launch value (``h·w``, ``W``, ``nt``: ~20
    instructions each, GPUs have no integer divider) each kernel of one launch executes, before
    and after the per-element divisions were removed. Before: the dense tile load divided every
    element by ``h·w`` (``B·K·C·h·w``); the factored load, coefficient and accumulator loops
    every element, ``(k, c)`` pair and output once per attribute group; finish split every
    output pixel into row and column (``2·B·K·H·W``). After: ``bincam_walk`` steps rows and
    columns with two divisions per thread and loop, the dense load multiplies by a reciprocal
    (``bincam_divider``, one division per thread); what stays per tile is one per thread."""
    b, k, c, h, w = shape
    g = launch_geometry(layout, shape, size, block, sms, shared_limit=1 << 30)
    cells, pixels, maps = h * w, size[0] * size[1], b * k
    threads = g.grid_partials[0] * g.grid_partials[1] * g.grid_partials[2] * block
    tiles = -(-(-(-c // g.splits)) // g.tile)  # channel tiles per block
    finish_threads = g.grid_finish[0] * g.grid_finish[1] * block
    if layout == "dense":
        partials = {"before": maps * c * cells + threads * tiles,
                    "after": threads * (1 + tiles)}
    else:
        nk = min(k, g.kc)
        partials = {"before": b * g.grid_partials[2] * (c * cells + nk * c + nk * cells * tiles),
                    "after": threads * 3 * 2 * tiles}
    return {"partials": partials,
            "finish": {"before": 2 * maps * pixels + 2 * finish_threads,
                       "after": 2 * 2 * finish_threads}}
