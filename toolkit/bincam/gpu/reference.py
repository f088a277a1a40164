"""NumPy reference of the fused CUDA epilogue (``kernels/binary_cam_epilogue.cu``), step for step,
in float64: what the kernel must compute, and the CPU side of its tests. No torch.

Per (image b, attribute k) map, with sign ``s`` from the mode (``core.modes.signs``):

- gradients: dense ``G = s·grads[b,k]``, or factored ``G[c,p] = s·W[k,c]·1[A[b,c,p] > 0]``
  (``core.methods.factored_gradients``);
- ``raw`` = the method's weighted sum, from ``core.methods.raw_maps`` (all six methods; the
  kernel's header lists the same formulas);
- ``x = ReLU(raw)``, ``x = (x − lo)/((hi − lo) + 1e-7)`` over ``h×w``;
- ``U`` = bilinear ``x`` at ``H×W`` (half-pixel centres, clamped), gathered per output pixel
  from its four source cells as the kernel does; ``U = ReLU(U)``;
- ``F = (U − min U)/((max U − min U) + 1e-7)``; ``u8 = round(255·F)`` (half to even);
- energies ``(Σ_mask F, Σ F)`` and ``PE = Σ_mask F / Σ F`` (0 for an empty map).
"""

from __future__ import annotations

import numpy as np

from bincam.core.epilogue import EPS
from bincam.core.methods import cam_method, factored_gradients, raw_maps
from bincam.core.modes import signs
from bincam.errors import BincamError


def source_cells(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(i0, i1, frac)`` of each output index: half-pixel centres, clamped to the edge cells."""
    src = np.clip((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0, in_size - 1)
    i0 = np.floor(src).astype(np.int64)
    return i0, np.minimum(i0 + 1, in_size - 1), src - i0


def fused_epilogue_reference(acts, grads, logits, size: tuple[int, int], method: str = "gradcam",
                             layout: str = "dense", mode: str = "predicted",
                             mask_positive: bool = True, masks=None) -> dict[str, np.ndarray]:
    """``raw [B,K,h,w]``, ``maps [B,K,H,W]``, ``maps_u8``, ``energy [B,K,2]`` and ``pe [B,K]``
    (``energy`` and ``pe`` only with ``masks [K,H,W]``) for the kernel's inputs: ``acts``,
    ``grads`` (dense ``[B,K,C,h,w]`` or factored ``[K,C]``) and ``logits [B,K]``."""
    cam_method(method)
    a = np.asarray(acts, dtype=np.float64)
    s = signs(np.asarray(logits, dtype=np.float64), mode)
    if layout == "dense":
        g = s[:, :, None, None, None] * np.asarray(grads, dtype=np.float64)
    elif layout == "factored":
        g = factored_gradients(a, s, grads, mask_positive)
    else:
        raise BincamError(f"layout must be dense or factored, got {layout!r}")
    raw = raw_maps(method, a, g)
    x = np.maximum(raw, 0)
    lo, hi = x.min(axis=(2, 3), keepdims=True), x.max(axis=(2, 3), keepdims=True)
    x = (x - lo) / ((hi - lo) + EPS)
    (y0, y1, fy), (x0, x1, fx) = source_cells(size[0], a.shape[2]), source_cells(size[1], a.shape[3])
    top = x[:, :, y0][..., x0] * (1 - fx) + x[:, :, y0][..., x1] * fx
    bottom = x[:, :, y1][..., x0] * (1 - fx) + x[:, :, y1][..., x1] * fx
    u = np.maximum(top * (1 - fy)[:, None] + bottom * fy[:, None], 0)
    ulo, uhi = u.min(axis=(2, 3), keepdims=True), u.max(axis=(2, 3), keepdims=True)
    f = (u - ulo) / ((uhi - ulo) + EPS)
    with np.errstate(invalid="ignore"):  # a NaN map's bytes are unspecified, as the kernel's
        u8 = np.rint(f * 255).astype(np.uint8)
    out = {"raw": raw, "maps": f, "maps_u8": u8}
    if masks is not None:
        m = np.asarray(masks, dtype=bool)[None]
        inside, total = (f * m).sum(axis=(2, 3)), f.sum(axis=(2, 3))
        out["energy"] = np.stack([inside, total], axis=-1)
        out["pe"] = np.where(total > 0, inside / np.where(total > 0, total, 1), 0.0)
    return out
