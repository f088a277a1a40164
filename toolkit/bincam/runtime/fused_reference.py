"""NumPy reference of the fused CUDA epilogue (``kernels/binary_cam_epilogue.cu``), step for step,
in float64: what the kernel must compute, and the CPU side of its tests. No torch.

Per (image b, attribute k) map, with sign ``s`` from the mode:

- gradients: dense ``G = grads[b,k]``, or factored ``G[c,p] = W[k,c]·1[A[b,c,p] > 0]``;
- Grad-CAM ``raw = Σ_c (s·mean_p G[c]) A[c]``; HiResCAM ``raw = Σ_c s·G[c]·A[c]``; the other
  four methods with ``bincam.runtime.cam_np``'s formulas (the kernel's header lists them);
- ``x = ReLU(raw)``, ``x = (x − lo)/((hi − lo) + 1e-7)`` over ``h×w``;
- ``U`` = bilinear ``x`` at ``H×W`` (half-pixel centres, clamped), gathered per output pixel
  from its four source cells as the kernel does; ``U = ReLU(U)``;
- ``F = (U − min U)/((max U − min U) + 1e-7)``; ``u8 = round(255·F)`` (half to even);
- energies ``(Σ_mask F, Σ F)`` and ``PE = Σ_mask F / Σ F`` (0 for an empty map).
"""

from __future__ import annotations

import numpy as np

from bincam.runtime.cam_np import raw_maps, signs

EPS = 1e-7
METHODS = ("gradcam", "hirescam", "gradcam-elementwise", "xgradcam", "gradcam++", "layercam")


def source_cells(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(i0, i1, frac)`` of each output index: half-pixel centres, clamped to the edge cells."""
    src = np.clip((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0, in_size - 1)
    i0 = np.floor(src).astype(np.int64)
    return i0, np.minimum(i0 + 1, in_size - 1), src - i0


def _gradients(a, grads, layout, mask_positive):
    if layout == "dense":
        return grads.astype(np.float64)
    weight = grads.astype(np.float64)[None, :, :, None, None]
    return weight * ((a > 0) if mask_positive else np.ones(a.shape, bool))[:, None]


def fused_epilogue_reference(acts, grads, logits, size: tuple[int, int], method: str = "gradcam",
                             layout: str = "dense", mode: str = "predicted",
                             mask_positive: bool = True, masks=None) -> dict[str, np.ndarray]:
    """``raw [B,K,h,w]``, ``maps [B,K,H,W]``, ``maps_u8``, ``energy [B,K,2]`` and ``pe [B,K]``
    (``energy`` and ``pe`` only with ``masks [K,H,W]``)."""
    if method not in METHODS:
        raise ValueError(f"the fused kernel implements {', '.join(METHODS)}, not {method!r}")
    a = np.asarray(acts, dtype=np.float64)
    s = signs(np.asarray(logits, dtype=np.float64), mode)
    unsigned = _gradients(a, np.asarray(grads), layout, mask_positive)
    g = s[:, :, None, None, None] * unsigned
    if method == "gradcam":
        raw = np.einsum("bkc,bchw->bkhw", g.mean(axis=(3, 4)), a)
    elif method == "hirescam":
        raw = (g * a[:, None]).sum(axis=2)
    else:
        raw = raw_maps(method, a, s, grads=unsigned)
    x = np.maximum(raw, 0)
    lo, hi = x.min(axis=(2, 3), keepdims=True), x.max(axis=(2, 3), keepdims=True)
    x = (x - lo) / ((hi - lo) + EPS)
    (y0, y1, fy), (x0, x1, fx) = source_cells(size[0], a.shape[2]), source_cells(size[1], a.shape[3])
    top = x[:, :, y0][..., x0] * (1 - fx) + x[:, :, y0][..., x1] * fx
    bottom = x[:, :, y1][..., x0] * (1 - fx) + x[:, :, y1][..., x1] * fx
    u = np.maximum(top * (1 - fy)[:, None] + bottom * fy[:, None], 0)
    ulo, uhi = u.min(axis=(2, 3), keepdims=True), u.max(axis=(2, 3), keepdims=True)
    f = (u - ulo) / ((uhi - ulo) + EPS)
    out = {"raw": raw, "maps": f, "maps_u8": np.rint(f * 255).astype(np.uint8)}
    if masks is not None:
        m = np.asarray(masks, dtype=bool)[None]
        inside, total = (f * m).sum(axis=(2, 3)), f.sum(axis=(2, 3))
        out["energy"] = np.stack([inside, total], axis=-1)
        out["pe"] = np.where(total > 0, inside / np.where(total > 0, total, 1), 0.0)
    return out
