"""Logits, target-layer activations and the gradients of every selected logit, from one forward.

Two ways, same result:

- **closed form** for an affine head (``[ReLU →] average pool → Linear → … → Linear``): with
  ``W_eff = W_L ⋯ W_1``, ``∂z_k/∂A[c,i,j] = W_eff[k,c]/(h·w) · 1[A[c,i,j] > 0]`` (the indicator only
  when the head starts with ReLU). No backward at all; returned factored, as the channel weights
  ``W_eff[k]/(h·w)`` (float64).
- **autograd** for anything else: the forward runs with frozen parameters and the target layer's
  output replaced by a leaf, so the graph spans only the target layer → logits slice; all K
  cotangents go through one batched backward (``is_grads_batched``). Returned dense.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from bincam.errors import BincamError
from bincam.nets import cam_module


@dataclass
class LayerGradients:
    logits: torch.Tensor           # [B, K_all] all logits of the net
    activations: torch.Tensor      # [B, C, h, w]
    grads: torch.Tensor | None     # dense ∂z_k/∂A [B, K, C, h, w] for the selected k (autograd)
    channel_weights: torch.Tensor | None = None  # [K, C] W_eff/(h·w) (closed form), float64


def effective_head(model: nn.Module, layer: str) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``(W_eff [K, C], b_eff [K], relu_first)`` of the affine head after ``layer``.

    Cached on the model until one of the head's parameters changes (storage or in-place version),
    so repeated explanations do not redo the product of the Linear weights.
    """
    head = getattr(model, "affine_heads", {}).get(layer)
    if head is None:
        raise BincamError(f"layer {layer!r} has no affine head after it; no closed form "
                          "(use closed_form=False)")
    linears = [model.get_submodule(path) for path in head.linears]
    params = [p for lin in linears for p in (lin.weight, lin.bias) if p is not None]
    key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
    cache = model.__dict__.setdefault("_bincam_head_cache", {})
    if layer in cache and cache[layer][0] == key:
        return cache[layer][1]
    result = _product(linears) + (head.relu,)
    cache[layer] = (key, result)
    return result


def _product(linears: list[nn.Module]) -> tuple[torch.Tensor, torch.Tensor]:
    """``W_L ⋯ W_1`` and the matching bias, in float64."""
    weight, bias = None, None
    for lin in linears:
        w = lin.weight.detach().double()
        b = lin.bias.detach().double() if lin.bias is not None else torch.zeros(
            w.shape[0], dtype=torch.float64, device=w.device)
        weight, bias = (w, b) if weight is None else (w @ weight, w @ bias + b)
    return weight, bias


@contextmanager
def _frozen(model: nn.Module):
    flags = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


def layer_gradients(model: nn.Module, x: torch.Tensor, layer: str, indices: list[int],
                    closed_form: bool | None = None) -> LayerGradients:
    """Logits, activations at ``layer`` and ``∂z_k/∂A`` for ``k in indices`` from one forward."""
    module = cam_module(model, layer)
    has_closed = layer in getattr(model, "affine_heads", {})
    if closed_form and not has_closed:
        raise BincamError(f"layer {layer!r} has no affine head after it, so no closed form; "
                          f"closed-form layers: {', '.join(getattr(model, 'affine_heads', {}))}")
    use_closed = has_closed if closed_form is None else closed_form
    captured: dict[str, torch.Tensor] = {}

    if use_closed:
        def keep(_m, _i, out):
            captured["a"] = out

        handle = module.register_forward_hook(keep)
        try:
            with torch.no_grad():
                logits = model(x)
        finally:
            handle.remove()
        a = captured["a"].detach()
        w_eff, _, _ = effective_head(model, layer)
        h, w = a.shape[-2:]
        weight = w_eff[indices] / (h * w)  # float64, like the CAM arithmetic downstream
        return LayerGradients(logits.detach(), a, None, weight)

    def leaf(_m, _i, out):
        captured["a"] = out.detach().requires_grad_(True)
        return captured["a"]

    handle = module.register_forward_hook(leaf)
    try:
        with _frozen(model), torch.enable_grad():
            logits = model(x)
            a = captured["a"]
            sel = logits[:, indices]
            k = len(indices)
            cotangents = torch.zeros(k, *sel.shape, dtype=sel.dtype, device=sel.device)
            cotangents[torch.arange(k), :, torch.arange(k)] = 1.0
            (grad,) = torch.autograd.grad(sel, a, cotangents, is_grads_batched=True)
    finally:
        handle.remove()
    return LayerGradients(logits.detach(), a.detach(), grad.transpose(0, 1).contiguous())
