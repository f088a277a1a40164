"""Is the head after a foreign net's CAM layer affine? Found by looking, confirmed by numbers.

Candidate: the modules that run after the layer hold no parameters except ``nn.Linear`` layers
chaining ``C → … → K``; then the head would be ``z = W_eff·mean_hw(φ(A)) + b_eff`` with
``W_eff = W_L ⋯ W_1`` and ``φ`` the identity or ReLU. Confirmed on two activations through the real
forward: the probe image's own ``A`` and a random ``A'`` with both signs (which also tells ReLU
from identity); each logit must agree within ``1e-4`` of the sum's magnitude
``|W_eff|·mean_hw|φ(A)| + |b_eff|`` (float32 rounding is ~1e-6 of it; any nonlinearity, a
LayerNorm, a scale outside the Linear layers or another pooling misses by far more). Anything
else is "not affine": the exact autograd path, never a wrong closed form.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from bincam.nets.taps import AffineHead

AGREEMENT = 1e-4


def linear_chain(after: list[tuple[str, nn.Module]], channels: int, k: int) -> tuple[str, ...]:
    """Paths of the Linear layers that run after the layer if they are its only parameters and
    chain ``channels → … → k``; ``()`` otherwise."""
    with_params = [(path, m) for path, m in after if any(True for _ in m.parameters(False))]
    if not with_params or not all(type(m) is nn.Linear for _, m in with_params):
        return ()
    sizes = [channels] + [m.out_features for _, m in with_params]
    if [m.in_features for _, m in with_params] != sizes[:-1] or sizes[-1] != k:
        return ()
    return tuple(path for path, _ in with_params)


def _agrees(z: torch.Tensor, a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
            relu: bool) -> bool:
    f = (torch.relu(a) if relu else a).double()
    predicted = f.mean((2, 3)) @ weight.T + bias
    scale = f.abs().mean((2, 3)) @ weight.abs().T + bias.abs()
    return bool(((z.double() - predicted).abs() <= AGREEMENT * scale + 1e-30).all())


def probe_affine_head(model: nn.Module, paths: tuple[str, ...], a: torch.Tensor, z: torch.Tensor,
                      forward_with: Callable[[torch.Tensor], torch.Tensor]) -> AffineHead | None:
    """The affine head over ``paths`` if the numbers confirm it. ``a``, ``z``: the probe's
    activations and logits; ``forward_with(A')``: the logits with the layer's output replaced."""
    from bincam.cam.gradients import _product

    if not paths or not torch.isfinite(z).all():
        return None
    weight, bias = _product([model.get_submodule(p) for p in paths])
    generator = torch.Generator(device="cpu").manual_seed(0)
    spread = float(a.float().std()) if a.numel() > 1 else 1.0
    other = (torch.randn(a.shape, generator=generator, dtype=torch.float64) *
             (spread if spread > 0 else 1.0)).to(a.device, a.dtype)
    with torch.no_grad():
        z_other = forward_with(other)
    for relu in (False, True):
        if _agrees(z, a, weight, bias, relu) and _agrees(z_other, other, weight, bias, relu):
            return AffineHead(relu, paths)
    return None
