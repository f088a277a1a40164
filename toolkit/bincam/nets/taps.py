"""Named taps: identity modules that expose intermediate tensors (e.g. a pre-ReLU residual sum).

A tap has no parameters, so it never changes a state dict; a forward hook on it sees the tensor.
Every bincam net lists its CAM target layers as ``cam_layers`` (name → module path) and names a
``default_cam_layer`` (its final tap, before the last ReLU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck


class Tap(nn.Identity):
    """Marks a tensor as a CAM target; behaves as identity."""


class _PreReluTap:
    """Adds a ``pre_relu`` tap to a torchvision residual block (forward defined by the subclass)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pre_relu = Tap()

    def _finish(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(self.pre_relu(out + identity))  # not in place: keep the tapped tensor


class TappedBasicBlock(_PreReluTap, BasicBlock):
    """torchvision's BasicBlock with a ``pre_relu`` tap on the residual sum."""

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self._finish(self.bn2(self.conv2(out)), x)


class TappedBottleneck(_PreReluTap, Bottleneck):
    """torchvision's Bottleneck with a ``pre_relu`` tap on the residual sum."""

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self._finish(self.bn3(self.conv3(out)), x)


@dataclass(frozen=True)
class AffineHead:
    """What follows a CAM layer when it is ``[ReLU →] global average pool → Linear → … → Linear``.

    ``linears`` are module paths, applied in order with nothing between them, so the logits are
    ``z = W_eff · mean_hw(ReLU?(A)) + b_eff`` with ``W_eff = W_L ⋯ W_1``.
    """

    relu: bool
    linears: tuple[str, ...]


def stage_layers(model: nn.Module, stages=("layer1", "layer2", "layer3", "layer4")) -> dict[str, str]:
    """CAM layers of a ResNet-like net: each stage's output and its last block's pre-ReLU sum."""
    layers = {}
    for stage in stages:
        last = len(getattr(model, stage)) - 1
        layers[stage] = stage
        layers[f"{stage}.pre_relu"] = f"{stage}.{last}.pre_relu"
    return layers
