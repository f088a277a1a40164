"""The CAM method registry: each method once, with its formula, a dense and a factored form.

Inputs: activations ``A [B,C,h,w]`` and signed gradients ``G = s·∂z/∂A`` of K targets, either dense
``[B,K,C,h,w]`` or ``Factored`` — the closed form of an affine head,
``G[b,k,c,i,j] = s[b,k]·W[k,c]·M[b,c,i,j]`` (``M = 1[A > 0]`` after a pre-ReLU tap, else all ones),
for which every method has an exact shortcut that never builds the K-fold tensor. Output: the
weighted sums ``[B,K,h,w]`` (the epilogue applies ReLU). Formulas and eps values follow
pytorch-grad-cam; ``id`` is the method's number in the fused CUDA kernel. The formulas are written
against the array API (``array_api_compat``), so the same code runs on NumPy arrays (every engine,
in float64) and on torch tensors (the GPU check's torch CUDA baseline) without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from array_api_compat import array_namespace

from bincam.errors import BincamError

XGRAD_EPS = 1e-7      # XGrad-CAM: Σ_hw A_c + eps
PLUSPLUS_EPS = 1e-6   # Grad-CAM++: denominator of α


@dataclass
class Factored:
    """``G[b,k,c,i,j] = sign[b,k] · weight[k,c] · mask[b,c,i,j]`` (``mask=None``: all ones)."""

    sign: np.ndarray              # [B, K]
    weight: np.ndarray            # [K, C], already divided by h·w
    mask: np.ndarray | None       # [B, C, h, w] in {0, 1}

    def dense(self, hw: tuple[int, int]) -> np.ndarray:
        """The K-fold tensor ``[B,K,C,h,w]`` (for references and tests)."""
        xp = array_namespace(self.weight)
        b, c = self.sign.shape[0], self.weight.shape[1]
        m = self.mask if self.mask is not None else xp.ones((b, c, *hw), dtype=self.weight.dtype)
        return self.sign[:, :, None, None, None] * self.weight[None, :, :, None, None] * m[:, None]

    def masked(self, a: np.ndarray) -> np.ndarray:
        return a if self.mask is None else a * self.mask


def factored_gradients(a: np.ndarray, sign: np.ndarray, channel_weights: np.ndarray,
                       mask_positive: bool) -> Factored:
    """The factored gradient of an affine head from an engine's ``channel_weights [K,C]``
    (float64 NumPy)."""
    mask = (np.asarray(a) > 0).astype(np.float64) if mask_positive else None
    return Factored(np.asarray(sign, dtype=np.float64),
                    np.asarray(channel_weights, dtype=np.float64), mask)


def project(weight: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``Σ_c weight[..., k, c]·x[b, c, i, j]`` → ``[B,K,h,w]`` (one batched GEMM)."""
    xp = array_namespace(x)
    b, c, h, w = x.shape
    return xp.reshape(weight @ xp.reshape(x, (b, c, h * w)), (b, weight.shape[-2], h, w))


def _sum(x, axis, keepdims: bool = False):
    return array_namespace(x).sum(x, axis=axis, keepdims=keepdims)


def _mean(x, axis, keepdims: bool = False):
    return array_namespace(x).mean(x, axis=axis, keepdims=keepdims)


def _pos(x):
    """``x⁺ = max(x, 0)``."""
    return array_namespace(x).maximum(x, 0)


def _neg(x):
    """``x⁻ = min(x, 0)``."""
    return array_namespace(x).minimum(x, 0)


def _signed(s: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """``pos`` where ``s > 0``, ``neg`` where ``s < 0``, ``0·pos`` where ``s = 0`` (0, but NaN
    where a NaN or infinite activation reached the pixel, as ``0·NaN`` in the dense form), NaN
    where ``s`` is NaN (a NaN logit, as the dense form gives) — per map."""
    xp = array_namespace(pos)
    s = s[:, :, None, None]
    return xp.where(s > 0, pos, xp.where(s < 0, neg, 0 * pos + 0 * s))


METHODS: dict[str, type[CamMethod]] = {}


class CamMethod:
    """A CAM method: subclasses set ``name`` and ``id`` and define ``dense`` and ``factored``."""

    name: str
    id: int

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name in METHODS or cls.id in {m.id for m in METHODS.values()}:
            raise ValueError(f"CAM method {cls.name!r} (id {cls.id}) is registered twice")
        METHODS[cls.name] = cls

    @staticmethod
    def dense(a: np.ndarray, g: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @staticmethod
    def factored(a: np.ndarray, g: Factored) -> np.ndarray:
        raise NotImplementedError


class GradCAM(CamMethod):
    """Grad-CAM: ``w_c = mean_hw G_c``; map ``= Σ_c w_c A_c``. Factored: ``s·W·(A·mean_hw M)``."""

    name, id = "gradcam", 0

    @staticmethod
    def dense(a, g):
        return project(_mean(g, (3, 4)), a)

    @staticmethod
    def factored(a, g):
        mbar = 1.0 if g.mask is None else _mean(g.mask, (2, 3), keepdims=True)
        return g.sign[:, :, None, None] * project(g.weight, a * mbar)


class HiResCAM(CamMethod):
    """HiResCAM: map ``= Σ_c G_c ⊙ A_c``. Factored: ``s·W·(M ⊙ A)``."""

    name, id = "hirescam", 1

    @staticmethod
    def dense(a, g):
        return _sum(g * a[:, None], 2)

    @staticmethod
    def factored(a, g):
        return g.sign[:, :, None, None] * project(g.weight, g.masked(a))


class GradCAMElementWise(CamMethod):
    """Grad-CAM element-wise: map ``= Σ_c ReLU(G_c ⊙ A_c)``.

    Factored: ``ReLU(s·w·x) = (s·w)⁺x⁺ + (s·w)⁻x⁻`` with ``x = M ⊙ A``, so two GEMMs per sign."""

    name, id = "gradcam-elementwise", 2

    @staticmethod
    def dense(a, g):
        return _sum(_pos(g * a[:, None]), 2)

    @staticmethod
    def factored(a, g):
        x = g.masked(a)
        x_pos, x_neg, w_pos, w_neg = _pos(x), _neg(x), _pos(g.weight), _neg(g.weight)
        return _signed(g.sign, project(w_pos, x_pos) + project(w_neg, x_neg),
                       -project(w_neg, x_pos) - project(w_pos, x_neg))


class XGradCAM(CamMethod):
    """XGrad-CAM: ``w_c = Σ_hw G_c A_c / (Σ_hw A_c + 1e-7)``; map ``= Σ_c w_c A_c``."""

    name, id = "xgradcam", 3

    @staticmethod
    def dense(a, g):
        w = _sum(g * a[:, None], (3, 4)) / (_sum(a, (2, 3)) + XGRAD_EPS)[:, None]
        return project(w, a)

    @staticmethod
    def factored(a, g):
        ratio = _sum(g.masked(a), (2, 3)) / (_sum(a, (2, 3)) + XGRAD_EPS)
        return g.sign[:, :, None, None] * project(g.weight, a * ratio[:, :, None, None])


class GradCAMPlusPlus(CamMethod):
    """Grad-CAM++: ``α = G² / (2G² + Σ_hw A · G³ + 1e-6)`` (0 where ``G = 0``);
    ``w_c = Σ_hw ReLU(G_c) α_c``; map ``= Σ_c w_c A_c``.

    Factored: on the mask ``G`` is the constant ``g = s·W[k,c]``, so ``w = ReLU(g)·α(g)·Σ_hw M``."""

    name, id = "gradcam++", 4

    @staticmethod
    def _alpha(g, sum_a):
        g2 = g ** 2
        alpha = g2 / (2 * g2 + sum_a * g2 * g + PLUSPLUS_EPS)
        xp = array_namespace(g)
        return xp.where(g != 0, alpha, xp.zeros_like(alpha))

    @staticmethod
    def dense(a, g):
        alpha = GradCAMPlusPlus._alpha(g, _sum(a, (2, 3))[:, None, :, None, None])
        return project(_sum(_pos(g) * alpha, (3, 4)), a)

    @staticmethod
    def factored(a, g):
        sum_a = _sum(a, (2, 3))                                                      # [B, C]
        gv = g.sign[:, :, None] * g.weight[None]                                     # [B, K, C]
        count = _sum(g.mask, (2, 3)) if g.mask is not None else float(a.shape[2] * a.shape[3])
        count = count[:, None] if g.mask is not None else count
        w = _pos(gv) * GradCAMPlusPlus._alpha(gv, sum_a[:, None]) * count
        return project(w, a)


class LayerCAM(CamMethod):
    """LayerCAM: map ``= Σ_c ReLU(G_c) ⊙ A_c``. Factored: ``W⁺·(M ⊙ A)`` or ``(−W⁻)·(M ⊙ A)``
    by the sign."""

    name, id = "layercam", 5

    @staticmethod
    def dense(a, g):
        return _sum(_pos(g) * a[:, None], 2)

    @staticmethod
    def factored(a, g):
        x = g.masked(a)
        return _signed(g.sign, project(_pos(g.weight), x), project(-_neg(g.weight), x))


def cam_method(name: str) -> type[CamMethod]:
    """The CAM method called ``name`` (a clear error naming the choices otherwise)."""
    try:
        return METHODS[name]
    except KeyError:
        raise BincamError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None


def raw_maps(method: str, a: np.ndarray, g: np.ndarray | Factored) -> np.ndarray:
    """Weighted sums ``[B,K,h,w]`` of ``method`` for signed gradients ``g``, in the inputs'
    precision (the engines pass float64)."""
    fn = cam_method(method)
    return fn.factored(a, g) if isinstance(g, Factored) else fn.dense(a, g)
