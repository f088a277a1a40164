"""CAM methods as functions of activations ``A [B,C,h,w]`` and signed gradients ``G [B,K,C,h,w]``.

Each returns the weighted sums ``[B,K,h,w]`` for all K targets at once (the epilogue applies ReLU).
``G`` is either a dense tensor or a ``FactoredGrad`` — the closed form of an affine head,
``G[b,k,c,i,j] = s[b,k]·W[k,c]·M[b,c,i,j]`` — for which every method has an exact shortcut that
never builds the K-fold tensor. Formulas follow pytorch-grad-cam (eps included).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bincam.errors import BincamError


@dataclass
class FactoredGrad:
    """``G[b,k,c,i,j] = sign[b,k] · weight[k,c] · mask[b,c,i,j]`` (``mask=None`` means all ones)."""

    sign: torch.Tensor            # [B, K]
    weight: torch.Tensor          # [K, C], already divided by h·w
    mask: torch.Tensor | None     # [B, C, h, w] in {0, 1}

    def dense(self, shape_hw: tuple[int, int]) -> torch.Tensor:
        b, c = self.sign.shape[0], self.weight.shape[1]
        m = self.mask if self.mask is not None else self.weight.new_ones(b, c, *shape_hw)
        return self.sign[:, :, None, None, None] * self.weight[None, :, :, None, None] * m[:, None]

    def masked(self, a: torch.Tensor) -> torch.Tensor:
        return a if self.mask is None else a * self.mask


def _s(sign: torch.Tensor) -> torch.Tensor:
    return sign[:, :, None, None]


def _project(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``Σ_c weight[k,c]·x[b,c,i,j]`` → ``[B,K,h,w]`` (one GEMM)."""
    return torch.einsum("kc,bchw->bkhw", weight, x)


def gradcam(a: torch.Tensor, g) -> torch.Tensor:
    """Grad-CAM: ``w_c = mean_hw G_c``; map ``= Σ_c w_c A_c``."""
    if isinstance(g, FactoredGrad):
        mbar = 1.0 if g.mask is None else g.mask.mean(dim=(2, 3), keepdim=True)
        return _s(g.sign) * _project(g.weight, a * mbar)
    return torch.einsum("bkc,bchw->bkhw", g.mean(dim=(3, 4)), a)


def hirescam(a: torch.Tensor, g) -> torch.Tensor:
    """HiResCAM: map ``= Σ_c G_c ⊙ A_c``."""
    if isinstance(g, FactoredGrad):
        return _s(g.sign) * _project(g.weight, g.masked(a))
    return (g * a[:, None]).sum(2)


def gradcam_elementwise(a: torch.Tensor, g) -> torch.Tensor:
    """Grad-CAM element-wise: map ``= Σ_c ReLU(G_c ⊙ A_c)``.

    Factored: ``ReLU(s·w·x) = (s·w)⁺x⁺ + (s·w)⁻x⁻``, so two GEMMs per sign.
    """
    if isinstance(g, FactoredGrad):
        x = g.masked(a)
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        wp, wn = g.weight.clamp(min=0), g.weight.clamp(max=0)
        pos = _project(wp, xp) + _project(wn, xn)
        neg = -_project(wn, xp) - _project(wp, xn)
        s = _s(g.sign)
        return torch.where(s > 0, pos, torch.where(s < 0, neg, torch.zeros_like(pos)))
    return (g * a[:, None]).clamp(min=0).sum(2)


def xgradcam(a: torch.Tensor, g) -> torch.Tensor:
    """XGrad-CAM: ``w_c = Σ_hw G_c A_c / (Σ_hw A_c + 1e-7)``; map ``= Σ_c w_c A_c``."""
    denom = a.sum(dim=(2, 3)) + 1e-7                                             # [B, C]
    if isinstance(g, FactoredGrad):
        ratio = g.masked(a).sum(dim=(2, 3)) / denom
        return _s(g.sign) * _project(g.weight, a * ratio[:, :, None, None])
    w = (g * a[:, None]).sum(dim=(3, 4)) / denom[:, None]
    return torch.einsum("bkc,bchw->bkhw", w, a)


def gradcam_plusplus(a: torch.Tensor, g) -> torch.Tensor:
    """Grad-CAM++: ``α = G² / (2G² + Σ_hw A · G³ + 1e-6)`` (0 where ``G = 0``);
    ``w_c = Σ_hw ReLU(G_c) α_c``; map ``= Σ_c w_c A_c``.

    Factored: on the mask ``G`` is the constant ``g = s·W[k,c]``, so ``w = ReLU(g)·α(g)·|mask|``.
    """
    sum_a = a.sum(dim=(2, 3))                                                    # [B, C]
    if isinstance(g, FactoredGrad):
        gv = g.sign[:, :, None] * g.weight[None]                                 # [B, K, C]
        alpha = gv ** 2 / (2 * gv ** 2 + sum_a[:, None] * gv ** 3 + 1e-6)
        alpha = torch.where(gv != 0, alpha, torch.zeros_like(alpha))
        count = (g.mask.sum(dim=(2, 3)) if g.mask is not None
                 else a.new_full(sum_a.shape, float(a.shape[2] * a.shape[3])))
        w = gv.clamp(min=0) * alpha * count[:, None]
        return torch.einsum("bkc,bchw->bkhw", w, a)
    g2 = g ** 2
    alpha = g2 / (2 * g2 + sum_a[:, None, :, None, None] * g2 * g + 1e-6)
    alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    w = (g.clamp(min=0) * alpha).sum(dim=(3, 4))
    return torch.einsum("bkc,bchw->bkhw", w, a)


def layercam(a: torch.Tensor, g) -> torch.Tensor:
    """LayerCAM: map ``= Σ_c ReLU(G_c) ⊙ A_c``."""
    if isinstance(g, FactoredGrad):
        x = g.masked(a)
        pos, neg = _project(g.weight.clamp(min=0), x), _project(-g.weight.clamp(max=0), x)
        s = _s(g.sign)
        return torch.where(s > 0, pos, torch.where(s < 0, neg, torch.zeros_like(pos)))
    return (g.clamp(min=0) * a[:, None]).sum(2)


METHODS = {"gradcam": gradcam, "hirescam": hirescam, "gradcam-elementwise": gradcam_elementwise,
           "xgradcam": xgradcam, "gradcam++": gradcam_plusplus, "layercam": layercam}


def method(name: str):
    """The CAM method called ``name``."""
    try:
        return METHODS[name]
    except KeyError:
        raise BincamError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None
