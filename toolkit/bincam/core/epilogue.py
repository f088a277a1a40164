"""The CAM epilogue in NumPy: final heatmaps from the weighted sums of a CAM method.

Epilogue, per map, exactly as pytorch-grad-cam does it for one target layer:

1. ``x = ReLU(raw)`` at feature resolution ``h×w``;
2. min-max: ``x = (x − min x) / (max(x − min x) + 1e-7)``;
3. bilinear resize to ``H×W`` with half-pixel centres and edge clamping (OpenCV ``INTER_LINEAR``),
   written as ``U = R_y · x · R_xᵀ`` with interpolation matrices ``R``;
4. ``ReLU`` and min-max again on the ``H×W`` map.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-7


def resize_matrix(out_size: int, in_size: int) -> np.ndarray:
    """``R [out, in]``: bilinear weights with half-pixel centres and clamped edges (float64)."""
    src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    src = np.clip(src, 0, in_size - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, in_size - 1)
    frac = src - i0
    r = np.zeros((out_size, in_size))
    np.add.at(r, (np.arange(out_size), i0), 1 - frac)
    np.add.at(r, (np.arange(out_size), i1), frac)
    return r


def min_max(x: np.ndarray, inplace: bool = False) -> np.ndarray:
    """``(x − min) / (max(x − min) + 1e-7)`` over the last two axes (reductions run over one
    contiguous axis; ``inplace`` reuses ``x``'s memory)."""
    own = inplace and x.flags.c_contiguous and x.flags.writeable
    flat = (x if own else np.array(x, order="C")).reshape(-1, x.shape[-2] * x.shape[-1])
    flat -= flat.min(axis=1, keepdims=True)
    flat /= flat.max(axis=1, keepdims=True) + EPS
    return flat.reshape(x.shape)


def upsample(x: np.ndarray, size: tuple[int, int], dtype=np.float64) -> np.ndarray:
    """Bilinear resize of ``[..., h, w]`` maps to ``[..., H, W]`` (``size = (H, W)``)."""
    ry = resize_matrix(size[0], x.shape[-2]).astype(dtype)
    rx = resize_matrix(size[1], x.shape[-1]).astype(dtype)
    return ry @ x @ rx.T


def epilogue(raw: np.ndarray, size: int | tuple[int, int], dtype=np.float64) -> np.ndarray:
    """Final heatmaps ``[..., H, W]`` in [0, 1] from weighted sums ``[..., h, w]`` (steps 1–4).

    Step 2 runs in ``raw``'s precision (where rounding would be magnified); the maps, then in
    [0, 1], are upsampled and normalised in ``dtype`` (float32 halves the memory traffic of the
    large maps, as the torch epilogue does)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    x = min_max(np.maximum(raw, 0), inplace=True).astype(dtype, copy=False)
    up = upsample(x, size, dtype)
    return min_max(np.maximum(up, 0, out=up), inplace=True)
