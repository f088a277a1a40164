"""CAM methods in NumPy, for the torch-free runtime (same formulas as ``bincam.cam.methods``).

Inputs: activations ``A [B,C,h,w]``, signs ``s [B,K]`` and either dense gradients ``G [B,K,C,h,w]``
(∂z/∂A, unsigned) or the factored form of an affine head — channel weights ``W [K,C]`` (already
divided by h·w) with ``G = W[k,c]·1[A > 0]`` when ``mask_positive`` — giving raw maps ``[B,K,h,w]``.
"""

from __future__ import annotations

import numpy as np

from bincam.errors import BincamError

MODES = ("predicted", "positive", "negative")
METHODS = ("gradcam", "hirescam", "gradcam-elementwise", "xgradcam", "gradcam++", "layercam")


def signs(logits: np.ndarray, mode: str) -> np.ndarray:
    if mode == "predicted":
        return np.sign(logits)
    if mode in ("positive", "negative"):
        return np.full(logits.shape, 1.0 if mode == "positive" else -1.0)
    raise BincamError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")


def dense_from_factored(a: np.ndarray, weight: np.ndarray, mask_positive: bool) -> np.ndarray:
    mask = (a > 0).astype(a.dtype) if mask_positive else np.ones_like(a)
    return weight[None, :, :, None, None] * mask[:, None]


def raw_maps(method: str, a: np.ndarray, s: np.ndarray, grads: np.ndarray | None = None,
             weight: np.ndarray | None = None, mask_positive: bool = True) -> np.ndarray:
    """Weighted sums ``[B,K,h,w]`` (float64) of ``method`` for signed gradients ``s·G``."""
    a = a.astype(np.float64)
    if grads is None and method in ("gradcam", "hirescam"):  # factored shortcuts, no K-fold tensor
        w, m = weight.astype(np.float64), (a > 0) if mask_positive else np.ones(a.shape, bool)
        x = a * m.mean(axis=(2, 3), keepdims=True) if method == "gradcam" else a * m
        b, c, h, wd = x.shape
        return s.astype(np.float64)[:, :, None, None] * (w @ x.reshape(b, c, h * wd)).reshape(
            b, len(w), h, wd)
    if grads is None:
        grads = dense_from_factored(a, weight.astype(np.float64), mask_positive)
    g = s.astype(np.float64)[:, :, None, None, None] * grads.astype(np.float64)
    if method == "gradcam":
        return np.einsum("bkc,bchw->bkhw", g.mean(axis=(3, 4)), a)
    if method == "hirescam":
        return (g * a[:, None]).sum(2)
    if method == "gradcam-elementwise":
        return np.maximum(g * a[:, None], 0).sum(2)
    if method == "xgradcam":
        w = (g * a[:, None]).sum(axis=(3, 4)) / (a.sum(axis=(2, 3)) + 1e-7)[:, None]
        return np.einsum("bkc,bchw->bkhw", w, a)
    if method == "gradcam++":
        g2 = g ** 2
        alpha = g2 / (2 * g2 + a.sum(axis=(2, 3))[:, None, :, None, None] * g2 * g + 1e-6)
        alpha = np.where(g != 0, alpha, 0.0)
        return np.einsum("bkc,bchw->bkhw", (np.maximum(g, 0) * alpha).sum(axis=(3, 4)), a)
    if method == "layercam":
        return (np.maximum(g, 0) * a[:, None]).sum(2)
    raise BincamError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
