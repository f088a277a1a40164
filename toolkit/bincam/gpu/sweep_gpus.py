"""The fused epilogue's launch geometry on every GPU bincam claims, for every CAM tensor of the
torchvision and timm tables and the channel counts that stress the channel split: all
combinations checked against the geometry's invariants (pure Python), then grouped into
equivalence classes of what the kernels actually see, one representative per class for the CPU
emulator (``gpu.emulation``) under AddressSanitizer + UBSan and ThreadSanitizer.

A combination is (GPU, CAM tensor ``C×h×w`` with its input size ``H×W``, layout, method, batch
``B``, attributes ``K``) at the launcher's block of 256 threads. Its class is the tuple of
everything a block's control flow depends on (``kernel_class``): layout and method; one or many
channel splits; the last split full or short; channel tiles per split and in the last split, and
whether the last tile is partial; the tile's load loop against the block (within one pass, a
multiple of it, ragged); ``h·w`` against the block and the accumulator groups; attribute groups
and their remainder (factored); finish tiles (one, many, the last short or empty); up- or
downsampling, integer or fractional ratio; ``W`` against the block; the energy kernel's maps
against its block. Two combinations of one class run the same branches, loop trip-count kinds
and barrier sequence; the representative is the class's cheapest combination to emulate.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from bincam.core.methods import METHODS
from bincam.core.modes import MODES
from bincam.errors import BincamError
from bincam.gpu.geometry import MAX_THREADS, Geometry, launch_geometry

# multiprocessors of the GPUs bincam claims (vendor specifications)
GPUS = {"A100": 108, "L4": 58, "L40S": 142, "H100 SXM": 132, "H100 PCIe": 114, "H200": 132,
        "B200": 148}
SHARED_LIMIT = 48 * 1024      # dynamic shared memory per block without the opt-in
GRID_LIMITS = (2**31 - 1, 65535, 65535)
BLOCK = 256                   # the launcher's default block
BATCHES = (1, 2, 8, 64)
ATTRIBUTES = (1, 40)          # a binary classifier, AFFACT's 40 attributes
LAYOUTS = (("dense", True), ("factored", True), ("factored", False))  # (layout, mask_positive)

# CAM tensor (C, h, w) at the model's input size (H = W), read off the models at the sites of
# benchmarks/results/conformance_torchvision.md and torch_module_gradcam.md (torchvision 0.29,
# timm 1.0.31; token grids as the reshape gives them: ViT 14×14, LeViT 4×4, CoaT 7×7)
CAM_TENSORS = {
    "torchvision/resnet18": (512, 7, 7, 224), "torchvision/resnet50": (2048, 7, 7, 224),
    "torchvision/vgg11_bn": (512, 14, 14, 224), "torchvision/alexnet": (256, 13, 13, 224),
    "torchvision/squeezenet1_0": (512, 13, 13, 224), "torchvision/densenet121": (1024, 7, 7, 224),
    "torchvision/googlenet": (1024, 7, 7, 224), "torchvision/inception_v3": (2048, 8, 8, 299),
    "torchvision/mobilenet_v2": (1280, 7, 7, 224),
    "torchvision/mobilenet_v3_small": (576, 7, 7, 224),
    "torchvision/efficientnet_b0": (1280, 7, 7, 224),
    "torchvision/efficientnet_v2_s": (1280, 12, 12, 384),
    "torchvision/mnasnet0_5": (1280, 7, 7, 224), "torchvision/regnet_y_400mf": (440, 7, 7, 224),
    "torchvision/regnet_y_3_2gf": (1512, 7, 7, 224),
    "torchvision/shufflenet_v2_x0_5": (1024, 7, 7, 224),
    "torchvision/resnext50_32x4d": (2048, 7, 7, 224),
    "torchvision/wide_resnet50_2": (2048, 7, 7, 224),
    "torchvision/convnext_tiny": (768, 7, 7, 224), "torchvision/maxvit_t": (512, 7, 7, 224),
    "torchvision/vit_b_16": (768, 14, 14, 224), "torchvision/vit_tiny": (192, 14, 14, 224),
    "torchvision/swin_t": (768, 7, 7, 224), "torchvision/swin_v2_t": (768, 8, 8, 256),
    "timm/resnet18d": (512, 7, 7, 224), "timm/seresnext26d_32x4d": (2048, 7, 7, 224),
    "timm/efficientnet_b0": (1280, 7, 7, 224), "timm/mobilenetv3_small_100": (576, 7, 7, 224),
    "timm/convnext_atto": (320, 7, 7, 224), "timm/regnety_002": (368, 7, 7, 224),
    "timm/regnety_032": (1512, 7, 7, 224), "timm/ghostnet_100": (960, 7, 7, 224),
    "timm/rexnet_100": (1280, 7, 7, 224), "timm/repvgg_a0": (1280, 7, 7, 224),
    "timm/dla34": (512, 7, 7, 224), "timm/cspresnet50": (1024, 8, 8, 256),
    "timm/xception41": (2048, 10, 10, 299), "timm/inception_v3": (2048, 8, 8, 299),
    "timm/vit_tiny_patch16_224": (192, 14, 14, 224), "timm/deit_tiny_patch16_224": (192, 14, 14, 224),
    "timm/swin_tiny_patch4_window7_224": (768, 7, 7, 224), "timm/poolformer_s12": (512, 7, 7, 224),
    "timm/edgenext_xx_small": (168, 8, 8, 256), "timm/levit_128s": (384, 4, 4, 224),
    "timm/mobilevit_xxs": (320, 8, 8, 256), "timm/coat_lite_tiny": (320, 7, 7, 224),
    "timm/efficientformer_l1": (224, 14, 14, 224), "timm/resnet50d": (2048, 7, 7, 224),
}
PRIMES = tuple(p for p in range(2, 101) if all(p % d for d in range(2, int(p**0.5) + 1)))
# channel counts that stress the split (at 7×7 → 224): every C up to 33, the primes, and the
# widths that gave an empty last split before the fix (RegNetY-3.2GF 1512, 2520, 3024)
STRESS_CHANNELS = tuple(sorted(set(range(1, 34)) | set(PRIMES) | {1512, 2520, 3024}))


@dataclass(frozen=True)
class Combination:
    gpu: str
    tensor: str                      # a CAM_TENSORS key, or "C=<n>"
    layout: str
    mask_positive: bool
    method: str
    batch: int
    attributes: int
    channels: int
    cells: tuple[int, int]           # (h, w)
    size: tuple[int, int]            # (H, W)

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        return (self.batch, self.attributes, self.channels, *self.cells)

    @property
    def sms(self) -> int:
        return GPUS[self.gpu]


def tensors() -> dict[str, tuple[int, int, int, int]]:
    """The CAM tensors of the tables and the stress channel counts, ``name → (C, h, w, H)``."""
    return {**CAM_TENSORS, **{f"C={c}": (c, 7, 7, 224) for c in STRESS_CHANNELS}}


def combinations() -> list[Combination]:
    """Every GPU × tensor × layout (dense, factored with and without the mask) × method ×
    batch × attribute count."""
    return [Combination(gpu, name, layout, mp, method, b, k, c, (h, w), (px, px))
            for gpu in GPUS for name, (c, h, w, px) in tensors().items()
            for layout, mp in LAYOUTS for method in METHODS for b in BATCHES for k in ATTRIBUTES]


def geometry_of(combo: Combination) -> Geometry:
    """The geometry the launcher picks (``shared_limit`` without the opt-in)."""
    return launch_geometry(combo.layout, combo.shape, combo.size, BLOCK, sms=combo.sms,
                           shared_limit=SHARED_LIMIT)


def split_bounds(c: int, splits: int) -> list[tuple[int, int]]:
    """``[c_lo, c_hi)`` of each split, as the kernels' ``bincam_split`` computes them."""
    per = -(-c // splits)
    return [(min(c, s * per), min(c, min(c, s * per) + per)) for s in range(splits)]


def violations(combo: Combination, g: Geometry) -> list[str]:
    """The geometry's invariants that ``g`` breaks for ``combo`` (empty: none)."""
    b, k, c, h, w = combo.shape
    bad = []
    bounds = split_bounds(c, g.splits)
    if any(lo >= hi for lo, hi in bounds):
        bad.append(f"empty split among {g.splits} splits of {c} channels")
    if bounds[0][0] != 0 or bounds[-1][1] != c or any(
            a[1] != z[0] for a, z in zip(bounds, bounds[1:])):
        bad.append(f"{g.splits} splits do not cover [0, {c}) exactly")
    per = -(-c // g.splits)
    if not 1 <= g.tile <= per:
        bad.append(f"tile {g.tile} outside 1..{per} channels per split")
    if combo.layout == "dense" and g.kc != 1 or not 1 <= g.kc <= k:
        bad.append(f"attribute group {g.kc} outside 1..{k}")
    floor = 32 if combo.layout == "dense" else max(g.kc, 8)
    if g.splits > 1 and c / g.splits < floor:  # partial sums written ≤ activations read
        bad.append(f"{g.splits} splits of {c} channels: fewer than {floor} channels per split")
    if not 1 <= g.tiles <= combo.size[0]:
        bad.append(f"{g.tiles} finish tiles outside 1..{combo.size[0]} rows")
    if max(g.smem_partials, g.smem_finish) > SHARED_LIMIT:
        bad.append(f"{max(g.smem_partials, g.smem_finish)} bytes of shared memory")
    for grid in (g.grid_partials, g.grid_finish, g.grid_energy):
        if any(not 1 <= n <= lim for n, lim in zip(grid, GRID_LIMITS)):
            bad.append(f"grid {grid} outside the CUDA limits {GRID_LIMITS}")
    if not 1 <= g.block <= MAX_THREADS:
        bad.append(f"block {g.block}")
    return bad


def _against(n: int, block: int) -> str:
    """A loop of ``n`` iterations strided by the block: one pass, whole passes, or ragged."""
    return "one pass" if n <= block else ("whole passes" if n % block == 0 else "ragged")


def kernel_classes(combo: Combination, g: Geometry) -> dict[str, tuple]:
    """What each kernel's control flow depends on (see the module docstring), by kernel: the
    partials kernel of the layout, ``finish`` and ``energy``."""
    b, k, c, h, w = combo.shape
    H, W = combo.size
    cells, per = h * w, -(-c // g.splits)
    last = c - (g.splits - 1) * per
    per_tile = -(-H // g.tiles)
    finish_last = H - (g.tiles - 1) * per_tile
    weighted = combo.method in ("gradcam", "xgradcam", "gradcam++")
    variant = combo.layout if combo.layout == "dense" else \
        f"factored, mask {'on' if combo.mask_positive else 'off'}"
    partials = [("weights", "per channel, one more barrier" if weighted and
                 combo.layout == "dense" else "none" if combo.layout == "dense" else "coefficients"),
                ("splits", "one" if g.splits == 1 else "many"),
                ("last split", "full" if last == per else "short"),
                ("tiles per split", "one" if per <= g.tile else "many"),
                ("last tile of a split", "full" if per % g.tile == 0 else "partial"),
                ("tiles in the last split", "one" if last <= g.tile else "many"),
                ("last tile of the last split", "full" if last % g.tile == 0 else "partial"),
                ("tile load", _against(g.tile * cells, g.block)),
                ("h·w", _against(cells, g.block))]
    if combo.layout == "dense":
        groups = max(1, g.block // cells)
        partials += [("accumulator groups", "one" if groups == 1 else "many")]
    else:
        partials += [("attribute groups", "one" if g.kc >= k else "many"),
                     ("last attribute group", "full" if k % g.kc == 0 else "partial"),
                     ("accumulators", _against(g.kc * cells, g.block)),
                     ("coefficients", _against(g.kc * g.tile, g.block))]
    finish = [("finish tiles", "one" if g.tiles == 1 else "many"),
              ("last finish tile", "full" if finish_last == per_tile else
               ("empty" if finish_last <= 0 else "short")),
              ("resize", "same" if H == h else "down" if H < h else
               "up, integer" if H % h == 0 else "up, fractional"),
              ("h·w", _against(cells, g.block)),
              ("W", _against(W, g.block)),
              ("rows per tile", _against(per_tile * W, g.block))]
    energy = [("maps", "one block" if b * k <= g.block else "several blocks")]
    return {f"partials {combo.layout}": tuple(partials), "finish": tuple(finish),
            "energy": tuple(energy),
            "method": (("layout", variant), ("method", combo.method))}


def emulation_cost(combo: Combination, g: Geometry) -> float:
    """Relative cost of emulating ``combo``: threads × barriers (a barrier wakes every
    thread: a finish block has ~20 plus two per 32 run ends, a partials block ~3 per tile)
    plus the elements read and written."""
    b, k, c, h, w = combo.shape
    per = -(-c // g.splits)
    partials = math.prod(g.grid_partials) * (4 + 3 * -(-per // g.tile))
    finish = math.prod(g.grid_finish) * (20 + (combo.size[0] + combo.size[1]) // 16)
    reads = b * c * h * w * (k + 1 if combo.layout == "dense" else 1)
    return (partials + finish) * g.block + reads + b * k * combo.size[0] * combo.size[1]


@dataclass
class Enumeration:
    combinations: int
    broken: list[tuple[Combination, list[str]]]      # combinations that break an invariant
    classes: dict[tuple, list]    # (kernel, class) → [combinations, representative, its cost]


def probe(combo: Combination) -> Combination:
    """``combo`` with no resize (``H×W = h×w``): ``launch_geometry`` picks the partials
    kernel's splits, tile and attribute group from ``(B, K, C, h, w)`` alone, so the probe runs
    the same partials and energy classes at a fraction of the finish kernel's cost."""
    return dataclasses.replace(combo, size=combo.cells)


def enumerate_all(combos: list[Combination] | None = None, probes: bool = True) -> Enumeration:
    """Every combination's geometry, its invariants and its class (one geometry per shape:
    the method does not enter ``launch_geometry``). The classes are those the claimed
    combinations reach; with ``probes`` a class's representative may be the cheaper ``probe``
    of a combination that has the class too."""
    combos = combinations() if combos is None else combos
    broken, classes, cache = [], {}, {}

    def classify(combo):
        shape_key = (combo.gpu, combo.layout, combo.shape, combo.size)
        if shape_key not in cache:
            try:
                g = geometry_of(combo)
                cache[shape_key] = (g, violations(combo, g))
            except BincamError as error:
                cache[shape_key] = (None, [str(error)])
        return cache[shape_key]

    for combo in combos:
        g, bad = classify(combo)
        if bad:
            broken.append((combo, bad))
            continue
        cost = emulation_cost(combo, g)
        for kernel, key in kernel_classes(combo, g).items():
            entry = classes.setdefault((kernel, key), [0, combo, cost])
            entry[0] += 1
            if cost < entry[2]:
                entry[1], entry[2] = combo, cost
    for combo in (probe(c) for c in combos) if probes else ():
        g, bad = classify(combo)
        if bad:
            continue
        cost = emulation_cost(combo, g)
        for kernel, key in kernel_classes(combo, g).items():
            entry = classes.get((kernel, key))
            if entry is not None and cost < entry[2]:
                entry[1], entry[2] = combo, cost
    return Enumeration(len(combos), broken, classes)


def representative_case(combo: Combination, index: int):
    """The emulator's launch of ``combo`` (its GPU's SM count: the same geometry) on fresh
    signed inputs; modes and binary16 inputs rotate with ``index``; zero logits and NaN in some."""
    from bincam.gpu.emulation import Case

    rng = np.random.default_rng(1000 + index)
    b, k, c, h, w = combo.shape
    acts = rng.standard_normal((b, c, h, w)).astype(np.float32)
    grads = (rng.standard_normal((b, k, c, h, w)) if combo.layout == "dense"
             else rng.standard_normal((k, c))).astype(np.float32) / (h * w)
    logits = rng.standard_normal((b, k)).astype(np.float32)
    if index % 7 == 3:
        logits[0, 0] = 0.0
    if index % 11 == 5:
        acts[-1, 0, 0, 0] = np.nan
    masks = (rng.random((k, *combo.size)) > 0.5).astype(np.uint8)
    half = index % 4 == 1
    if half:
        acts = acts.astype(np.float16)
        grads = grads.astype(np.float16) if combo.layout == "dense" else grads
    return Case(acts, grads, logits, combo.size, combo.method, combo.layout,
                list(MODES)[index % len(MODES)], combo.mask_positive, masks, block=BLOCK,
                overrides={"sms": combo.sms}, seed=index, half_inputs=half)


def representatives(enum: Enumeration) -> list[Combination]:
    """Combinations that together cover every class: for each class not yet covered (in a
    fixed order), its cheapest combination, which covers its other kernels' classes too."""
    chosen, covered = [], set()
    for cls, (_, combo, _) in sorted(enum.classes.items(), key=lambda item: item[1][2]):
        if cls in covered:
            continue
        chosen.append(combo)
        g = geometry_of(combo)
        covered |= set(kernel_classes(combo, g).items())
    return chosen


def shrink(reps: list[Combination], enum: Enumeration, start: int = 0) -> list[Combination]:
    """``reps`` with each one from ``start`` on replaced by its cheapest *channel probe*: the
    same combination with fewer channels (and the launcher's own geometry for them) that still
    has every class only this representative covers — a class is what a block's control flow
    depends on, so any launch of it will do (a dense tile class of EfficientNetV2's 1280
    channels is reached with 40)."""
    covers: dict[tuple, set[int]] = {}
    for i, combo in enumerate(reps):
        for kv in kernel_classes(combo, geometry_of(combo)).items():
            covers.setdefault(kv, set()).add(i)
    out = list(reps)
    for i in range(start, len(reps)):
        combo = reps[i]
        g = geometry_of(combo)
        needed = {kv for kv in kernel_classes(combo, g).items()
                  if kv in enum.classes and covers[kv] == {i}}
        best, cost = combo, emulation_cost(combo, g)
        for channels in range(1, combo.channels):
            trial = dataclasses.replace(combo, channels=channels)
            try:
                gt = geometry_of(trial)
            except BincamError:
                continue
            if not violations(trial, gt) and needed <= set(kernel_classes(trial, gt).items()):
                trial_cost = emulation_cost(trial, gt)
                if trial_cost < cost:
                    best, cost = trial, trial_cost
        out[i] = best
    return out


def pick(items: list, n: int) -> list:
    """``n`` items spread evenly over ``items`` (all of them if fewer)."""
    if n >= len(items):
        return list(items)
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)] if n > 1 else items[:1]

