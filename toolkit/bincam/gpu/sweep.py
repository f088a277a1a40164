"""Sweeps of the fused epilogue's kernels in the CPU emulator (``gpu.emulation``) against the
float64 NumPy reference (``gpu.reference``): the case lists and the comparison. ``sweep_cases
(full=False)`` is CI's subset — every method × layout × mode × mask choice once, with block sizes,
shapes and geometries varied across them so each rule below is hit — and ``full=True`` the
cross product of choices and shapes (270 cases) ``benchmarks/kernel_emulation_sweep.py`` runs.

Rules covered: block sizes 1..512 incl. partial warps (1, 7, 40, 100); ``h·w`` below, above and
not dividing the block; ``C`` below and above the block, not dividing the split or tile; ``H≠W``;
downsampling (``H < h``); zero logits (empty maps in predicted mode); all-zero maps; ties (flat
maps); NaN in logits and activations; one and many splits, tiles and attribute groups.
"""

from __future__ import annotations

import itertools

import numpy as np

from bincam.core.methods import METHODS
from bincam.core.modes import MODES
from bincam.gpu.emulation import Case
from bincam.gpu.reference import fused_epilogue_reference

# (B, K, C, h, w, H, W): small shapes that still exercise every branch
SHAPES = [(2, 3, 40, 5, 6, 24, 30),     # h·w = 30 below the block, H ≠ W
          (1, 2, 70, 9, 9, 20, 16),     # h·w = 81 not dividing 64, C above 64
          (2, 2, 12, 12, 11, 9, 7),     # downsampling, h·w = 132 above 64 / 128
          (1, 5, 9, 3, 3, 31, 29),      # C below every block, odd sizes
          (3, 1, 33, 7, 7, 14, 14)]     # AFFACT-like 7×7 at 2×
BLOCKS = [64, 32, 40, 128, 100, 7, 256, 1]
GEOMETRIES = [{"sms": 2}, {}, {"splits": 3, "tile": 5, "tiles": 4}, {"sms": 1, "tile": 1},
              {"splits": 2, "kc": 2, "tiles": 3}]


def _inputs(rng, layout, shape, special: str):
    b, k, c, h, w, _, _ = shape
    acts = rng.normal(size=(b, c, h, w)).astype(np.float32)
    grads = (rng.normal(size=(b, k, c, h, w)) if layout == "dense"
             else rng.normal(size=(k, c))).astype(np.float32) / (h * w)
    logits = rng.normal(size=(b, k)).astype(np.float32)
    logits[0, 0] = 0.0                     # z = 0: an empty map in predicted mode
    if special == "zero-acts":
        acts[-1] = 0.0                     # an all-zero image: flat (tied) maps
    elif special == "nan":
        acts[0, 0, 0, 0] = np.nan
        logits[-1, -1] = np.nan
    return acts, grads, logits


def sweep_cases(full: bool = False, seed: int = 0) -> list[Case]:
    """CI's subset (``full=False``) or the whole cross product of the rules."""
    rng = np.random.default_rng(seed)
    combos = [(m, layout, mode, mp) for m in METHODS for mode in MODES
              for layout, mp in (("dense", True), ("factored", True), ("factored", False))]
    cases = []
    if full:  # every choice on every shape, block sizes and geometries rotating
        picks = [(c, s, i % len(BLOCKS), (i // 3) % len(GEOMETRIES))
                 for i, (c, s) in enumerate(itertools.product(combos, range(len(SHAPES))))]
    else:
        picks = [(c, i % len(SHAPES), (i * 3) % len(BLOCKS), (i // 2) % len(GEOMETRIES))
                 for i, c in enumerate(combos)]
    for n, ((method, layout, mode, mp), s, blk, geo) in enumerate(picks):
        shape = SHAPES[s]
        special = ("zero-acts", "nan", "")[n % 3] if n % 5 == 0 else ""
        acts, grads, logits = _inputs(rng, layout, shape, special)
        k, size = shape[1], shape[5:]
        masks = (rng.random((k, *size)) > 0.6).astype(np.uint8)
        half = n % 4 == 3  # an fp16 engine's outputs, read as binary16
        if half:
            acts = acts.astype(np.float16)
            grads = grads.astype(np.float16) if layout == "dense" else grads
        cases.append(Case(acts, grads, logits, size, method, layout, mode, mp, masks,
                          block=BLOCKS[blk], overrides=dict(GEOMETRIES[geo]), seed=n,
                          half_inputs=half))
    return cases


def half_bits(maps: np.ndarray) -> np.ndarray:
    """IEEE binary16 bits of float32 values, round to nearest even (NumPy's conversion; beyond
    65504 that is ±inf, as the kernel's conversion gives, so the overflow is not a warning)."""
    with np.errstate(over="ignore"):
        return np.asarray(maps, dtype=np.float32).astype(np.float16).view(np.uint16)


def compare(case: Case, out: dict[str, np.ndarray]) -> dict[str, float]:
    """Errors of one emulated launch against the float64 reference; NaN must be where the
    reference has NaN and nowhere else (outputs start as NaN: unwritten shows)."""
    ref = fused_epilogue_reference(case.acts, case.grads, case.logits, case.size, case.method,
                                   case.layout, case.mode, case.mask_positive, case.masks)
    errors = {}
    for name, ref_name, scale in (("raw", "raw", np.nanmax(np.abs(ref["raw"]), initial=1.0)),
                                  ("maps", "maps", 1.0)):
        got, want = out[name].astype(np.float64), ref[ref_name]
        errors[f"{name} NaN mismatches"] = int((np.isnan(got) != np.isnan(want)).sum())
        finite = ~np.isnan(want) & ~np.isnan(got)
        diff = np.abs(got - want)[finite]
        errors[f"{name} max abs"] = float(diff.max(initial=0.0) / max(scale, 1.0))
    maps = out["maps"]
    f16, expect16 = out["maps_f16"], half_bits(maps)
    same = (f16 == expect16) | (np.isnan(maps) & ((f16 & 0x7c00) == 0x7c00) & ((f16 & 0x3ff) != 0))
    errors["f16 bits differing"] = int((~same).sum())
    finite = np.isfinite(maps)
    expect8 = np.rint(maps[finite] * np.float32(255)).astype(np.int64)
    errors["u8 differing"] = int((out["maps_u8"][finite].astype(np.int64) != expect8).sum())
    energy, want = out["energy"].astype(np.float64), ref["energy"]
    errors["energy NaN mismatches"] = int((np.isnan(energy) != np.isnan(want)).sum())
    ok = ~np.isnan(want) & ~np.isnan(energy)
    rel = np.abs(energy - want)[ok] / np.maximum(1.0, np.abs(want)[ok])
    errors["energy rel"] = float(rel.max(initial=0.0))
    return errors


LIMITS = {"raw max abs": 1e-5, "maps max abs": 2e-5, "energy rel": 1e-5,
          "raw NaN mismatches": 0, "maps NaN mismatches": 0, "energy NaN mismatches": 0,
          "f16 bits differing": 0, "u8 differing": 0}


def failures(errors: dict[str, float]) -> dict[str, float]:
    """The errors over their limits (empty: the case passes)."""
    return {n: v for n, v in errors.items() if v > LIMITS[n]}
