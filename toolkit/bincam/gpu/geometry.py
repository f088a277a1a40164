"""Launch geometry and arguments of the fused epilogue's four kernels (pure Python: the GPU
launcher and the CPU emulator use the same numbers).

For ``shape = (B, K, C, h, w)``, maps ``H×W``, block size ``t`` and ``sms`` multiprocessors,
aiming at ``2·sms`` blocks:

- dense partials: grid ``(B·K, S)``, ``S = clamp(⌈2·sms/(B·K)⌉, 1, ⌊C/32⌋)`` channel splits,
  then ``S ← ⌈C/⌈C/S⌉⌉`` so that no split is empty (both layouts);
- factored partials: grid ``(B, S, ⌈K/kc⌉)``, ``kc`` attributes per block (their ``kc·h·w``
  accumulators fit in shared memory), ``S ≤ C/max(kc, 8)`` so that the partial sums written
  (``kc·h·w`` per block) stay below the activations read (``C/S·h·w``);
- channel tile: as many channels as fit in ``TILE_BUDGET`` bytes of shared memory;
- finish: grid ``(B·K, T)``, ``T = clamp(⌈2·sms/(B·K)⌉, 1, H)`` row tiles; energy: ``⌈B·K/t⌉``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bincam.core.methods import METHODS
from bincam.core.modes import MODES
from bincam.errors import BincamError

LAYOUT_IDS = {"dense": 0, "factored": 1}
TILE_BUDGET = 24 * 1024   # bytes of shared memory a channel tile may take
MAX_THREADS = 512         # the kernels' __launch_bounds__ (BINCAM_MAX_THREADS)


@dataclass(frozen=True)
class Geometry:
    """Grids, channel tile, attribute group and shared-memory bytes of one launch."""

    splits: int
    tile: int
    kc: int
    tiles: int
    block: int
    grid_partials: tuple[int, int, int]
    grid_finish: tuple[int, int, int]
    grid_energy: tuple[int, int, int]
    smem_partials: int
    smem_finish: int

    def workspace_floats(self, maps: int, cells: int) -> tuple[int, int]:
        """Floats of the partial sums ``[B·K, S, h·w]`` and tile energies ``[B·K, T, 2]``."""
        return maps * self.splits * cells, maps * self.tiles * 2


def _stride(cells: int) -> int:
    return cells | 1  # odd: a thread per channel reads distinct banks


def partials_shared_bytes(layout: str, cells: int, block: int, tile: int, kc: int) -> int:
    """Dense: ``g, a [tile·stride]``, ``alpha [tile]``, ``acc [groups·h·w]``; factored: three
    double statistics ``[tile]``, ``a [tile·stride]``, ``coef, coef2 [kc·tile]``, ``sign [kc]``,
    ``acc [kc·h·w]``."""
    stride = _stride(cells)
    if layout == "dense":
        groups = max(1, block // cells)
        return 4 * (2 * tile * stride + tile + groups * cells)
    return 8 * 3 * tile + 4 * (tile * stride + 2 * kc * tile + kc + kc * cells)


def finish_shared_bytes(cells: int, size: tuple[int, int]) -> int:
    """``map [h·w]``, ``scratch [64]``, run-end ``rows [H]``, ``cols [W]``, ``counts [2]``."""
    return 4 * (cells + 64 + size[0] + size[1] + 2)


def launch_geometry(layout: str, shape: tuple[int, int, int, int, int], size: tuple[int, int],
                    block: int = 256, sms: int = 132, shared_limit: int = 48 * 1024,
                    splits: int | None = None, tile: int | None = None, kc: int | None = None,
                    tiles: int | None = None) -> Geometry:
    """The geometry of ``shape = (B, K, C, h, w)`` → ``size = (H, W)``; ``splits``, ``tile``,
    ``kc`` and ``tiles`` override the choice (the emulator's sweeps use that; an overridden
    ``splits`` may leave the last splits empty, which the kernels handle)."""
    b, k, c, h, w = shape
    cells, target = h * w, 2 * max(1, sms)
    if layout not in LAYOUT_IDS:
        raise BincamError(f"layout must be dense or factored, got {layout!r}")
    if min(shape) < 1 or min(size) < 1 or not 1 <= block <= MAX_THREADS:
        raise BincamError(f"shape {shape}, size {size} and block {block} must be positive "
                          f"(block at most {MAX_THREADS})")
    if layout == "dense":
        kc = 1
        auto_splits = min(math.ceil(target / (b * k)), max(1, c // 32))
        fixed, per_channel = 4 * max(1, block // cells) * cells, 4 * (2 * _stride(cells) + 1)
    else:
        kc = kc or max(1, min(k, (TILE_BUDGET // 2) // (4 * (cells + 1))))
        groups_k = math.ceil(k / kc)
        auto_splits = min(math.ceil(target / (b * groups_k)), max(1, c // max(kc, 8)))
        fixed, per_channel = 4 * (kc + kc * cells), 24 + 4 * (_stride(cells) + 2 * kc)
    if splits is None:  # ⌈C/⌈C/S⌉⌉ splits: every split holds ≥ 1 channel
        splits = math.ceil(c / math.ceil(c / min(c, max(1, auto_splits))))
    splits = min(c, splits)
    per_split = math.ceil(c / splits)
    tile = tile or max(1, min(per_split, (TILE_BUDGET - fixed) // per_channel))
    tiles = min(size[0], tiles or max(1, min(math.ceil(target / (b * k)), size[0])))
    geometry = Geometry(
        splits=splits, tile=tile, kc=kc, tiles=tiles, block=block,
        grid_partials=(b * k, splits, 1) if layout == "dense" else (b, splits, groups_k),
        grid_finish=(b * k, tiles, 1), grid_energy=(math.ceil(b * k / block), 1, 1),
        smem_partials=partials_shared_bytes(layout, cells, block, tile, kc),
        smem_finish=finish_shared_bytes(cells, size))
    if layout == "dense" and tile * cells >= 1 << 16:  # the kernel's bincam_divider
        raise BincamError(f"a dense channel tile of {tile}×{cells} elements exceeds 65535")
    need = max(geometry.smem_partials, geometry.smem_finish)
    if need > shared_limit:
        raise BincamError(f"{c} channels × {h}×{w} cells → {size[0]}×{size[1]} need {need} bytes "
                          f"of shared memory per block; this GPU allows {shared_limit}")
    return geometry


def check_choices(method: str, layout: str, mode: str) -> None:
    if method not in METHODS or layout not in LAYOUT_IDS or mode not in MODES:
        raise BincamError(f"the fused kernel takes method {'/'.join(METHODS)}, layout "
                          f"{'/'.join(LAYOUT_IDS)}, mode {'/'.join(MODES)}")


def kernel_arguments(geometry: Geometry, *, acts: int, grads: int, logits: int, shape, size,
                     method: str, layout: str, mode: str, mask_positive: bool, partial: int,
                     tile_energy: int, half_inputs: bool = False, masks: int = 0, raw: int = 0, maps_f32: int = 0,
                     maps_f16: int = 0, maps_u8: int = 0, energy: int = 0) -> dict[str, list]:
    """Each kernel's parameters in signature order (pointers ``uint64``, ints ``int32``), by
    kernel name; the energy kernel only with ``energy``. ``half_inputs``: activations (and dense
    gradients) are binary16."""
    check_choices(method, layout, mode)
    b, k, c, h, w = shape
    p, i = np.uint64, np.int32
    cells, ids = h * w, (METHODS[method].id, MODES[mode])
    g = geometry
    if layout == "dense":
        partials = ("bincam_partials_dense",
                    [p(acts), p(grads), p(logits),
                     *map(i, (k, c, cells, *ids, int(half_inputs), g.splits, g.tile)),
                     p(partial)])
    else:
        partials = ("bincam_partials_factored",
                    [p(acts), p(grads), p(logits),
                     *map(i, (k, c, cells, *ids, int(mask_positive), int(half_inputs), g.splits,
                               g.tile, g.kc)),
                     p(partial)])
    args = {partials[0]: partials[1],
            "bincam_finish": [p(partial), p(masks), *map(i, (k, h, w, *size, g.splits, g.tiles)),
                              p(raw), p(maps_f32), p(maps_f16), p(maps_u8),
                              p(tile_energy if energy else 0)]}
    if energy:
        args["bincam_energy"] = [p(tile_energy), i(b * k), i(g.tiles), p(energy)]
    return args
