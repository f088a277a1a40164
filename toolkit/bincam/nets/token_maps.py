"""A CAM layer's output as maps ``[B, C, h, w]`` and back, inside the forward (torch).

``TokenMaps`` splits the layer's tensor ``T`` into the maps a ``Tap`` sees and restores ``T`` from
them, so the maps lie on the path to the logits and ``∂z/∂maps`` is exactly the gradient of the
map positions (what pytorch-grad-cam's ``reshape_transform`` applies to activations and gradients):

- ``None``: ``T`` is already ``[B, C, h, w]``;
- ``"vit"``: ``T [B, P + h·w, C]``, ``P`` prefix tokens first (class token, timm's distillation or
  register tokens: the model's ``num_prefix_tokens``, else 1 where ``N − 1`` is square, else 0);
- ``"swin"``: ``T [B, h, w, C]`` (channels last, timm and torchvision Swin);
- a callable (a ``reshape_transform``): any map that only moves or selects elements of ``T``;
  its index map is read once by applying it to ``T``'s element numbers.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from bincam.errors import BincamError

TOKEN_LAYOUTS = ("vit", "swin")


def vit_prefix(model: torch.nn.Module, tokens: int) -> int:
    """How many tokens precede the ``h·w`` patch tokens."""
    declared = getattr(model, "num_prefix_tokens", None)
    if isinstance(declared, int):
        return declared
    for prefix in (1, 0):
        if tokens > prefix and math.isqrt(tokens - prefix) ** 2 == tokens - prefix:
            return prefix
    raise BincamError(f"tokens='vit' needs [B, P + h·w, C] with a square h·w; {tokens} tokens is "
                      "not 1 + a square nor a square: pass a reshape callable as tokens=")


class TokenMaps:
    """``maps(T) → [B, C, h, w]`` and ``restore(T, maps) → T'`` (``T`` with the maps put back)."""

    def __init__(self, layout: str | Callable | None, model: torch.nn.Module, layer: str):
        if layout is not None and not callable(layout) and layout not in TOKEN_LAYOUTS:
            raise BincamError(f"tokens must be one of {', '.join(TOKEN_LAYOUTS)} or a reshape "
                              f"callable, got {layout!r}")
        self.layout, self.model, self.layer = layout, model, layer
        self.prefix = 0
        self.index: torch.Tensor | None = None  # callable: T's flat index of each map element
        self.prepared: tuple | None = None      # the shape of T checked last

    @property
    def name(self) -> str:
        """``none``, ``vit``, ``swin`` or ``custom`` (a callable)."""
        return "none" if self.layout is None else "custom" if callable(self.layout) \
            else self.layout

    def prepare(self, t: torch.Tensor) -> None:
        """Check the layer's output against the layout (once per shape); clear errors."""
        if self.prepared == tuple(t.shape[1:]):
            return
        shape = ["B", *t.shape[1:]]
        if self.layout is None and t.dim() != 4:
            hint = ("tokens='vit' ([B, 1 + h·w, C]) or a reshape callable" if t.dim() == 3 else
                    "tokens='swin' ([B, h, w, C]) if it is channels last" if t.dim() == 4 else
                    "a reshape callable as tokens=")
            raise BincamError(f"layer {self.layer!r} outputs {shape}, not maps [B, C, h, w]; "
                              f"pass {hint}")
        if self.layout == "vit":
            if t.dim() != 3:
                raise BincamError(f"tokens='vit' needs layer {self.layer!r} to output "
                                  f"[B, N, C]; it outputs {shape}")
            self.prefix = vit_prefix(self.model, t.shape[1])
            side = math.isqrt(max(t.shape[1] - self.prefix, 0))
            if side * side != t.shape[1] - self.prefix or side == 0:
                raise BincamError(f"tokens='vit': {t.shape[1]} tokens minus {self.prefix} "
                                  "prefix tokens is not a square grid")
        elif self.layout == "swin" and t.dim() != 4:
            raise BincamError(f"tokens='swin' needs layer {self.layer!r} to output "
                              f"[B, h, w, C]; it outputs {shape}")
        elif callable(self.layout):
            self.index = self._callable_index(t)
        self.prepared = tuple(t.shape[1:])

    def _callable_index(self, t: torch.Tensor) -> torch.Tensor:
        numbers = torch.arange(t[:1].numel(), dtype=torch.float64, device=t.device)
        mapped = self.layout(numbers.reshape(t[:1].shape))
        if not isinstance(mapped, torch.Tensor) or mapped.dim() != 4 or len(mapped) != 1:
            raise BincamError("the tokens reshape callable must return [B, C, h, w] maps")
        index = mapped.reshape(-1)
        if not torch.equal(index, index.round()) or len(index.unique()) != len(index):
            raise BincamError("the tokens reshape callable must only move or select elements "
                              "(each map element one distinct element of the layer's output)")
        self.shape = tuple(mapped.shape[1:])
        return index.long()

    def maps(self, t: torch.Tensor) -> torch.Tensor:
        if self.layout is None:
            return t
        if self.layout == "swin":
            return t.permute(0, 3, 1, 2)
        if self.layout == "vit":
            side = math.isqrt(t.shape[1] - self.prefix)
            return t[:, self.prefix:].transpose(1, 2).reshape(t.shape[0], t.shape[2], side, side)
        return t.flatten(1)[:, self.index].reshape(t.shape[0], *self.shape)

    def restore(self, t: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        if self.layout is None:
            return maps
        if self.layout == "swin":
            return maps.permute(0, 2, 3, 1)
        if self.layout == "vit":
            patches = maps.flatten(2).transpose(1, 2)
            return torch.cat([t[:, :self.prefix], patches], 1) if self.prefix else patches
        flat = t.flatten(1).index_copy(1, self.index, maps.flatten(1))
        return flat.reshape(t.shape)
