"""The CAM epilogue in torch (same algorithm as ``bincam.core.epilogue``, on any device).

``ReLU → min-max → bilinear resize (half-pixel centres, clamped edges) → ReLU → min-max``; the
resize uses the same interpolation matrices as the NumPy version.
"""

from __future__ import annotations

import torch

from bincam.core.epilogue import EPS, resize_matrix


def min_max(x: torch.Tensor) -> torch.Tensor:
    """``(x − min) / (max(x − min) + 1e-7)`` over the last two axes."""
    x = x - x.amin(dim=(-2, -1), keepdim=True)
    return x / (x.amax(dim=(-2, -1), keepdim=True) + EPS)


def upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``[..., h, w]`` to ``[..., H, W]`` (OpenCV ``INTER_LINEAR`` geometry)."""
    ry = torch.as_tensor(resize_matrix(size[0], x.shape[-2]), dtype=x.dtype, device=x.device)
    rx = torch.as_tensor(resize_matrix(size[1], x.shape[-1]), dtype=x.dtype, device=x.device)
    return torch.matmul(torch.matmul(ry, x), rx.T)


def epilogue(raw: torch.Tensor, size: int | tuple[int, int],
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Final heatmaps ``[..., H, W]`` in [0, 1] from weighted sums ``[..., h, w]``.

    The first min-max runs in ``raw``'s precision (it is where rounding would be magnified); the
    maps, then in [0, 1], are upsampled and normalised again in ``dtype``.
    """
    size = (size, size) if isinstance(size, int) else tuple(size)
    x = min_max(raw.clamp(min=0)).to(dtype)
    return min_max(upsample(x, size).clamp(min=0))
