"""ResNets with a K-logit head: torchvision's ResNet-18/50 and a small ResNet for CPU work.

All take RGB images in [0, 1] (no mean/std normalisation; BatchNorm after the stem absorbs it) and
return K raw logits, one binary classifier per attribute (decision ``z ≥ 0``). The head after the
last stage is ReLU → global average pool → Linear, an affine head.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import ResNet

from bincam.nets.taps import AffineHead, TappedBasicBlock, TappedBottleneck, stage_layers

_DEPTHS = {18: (TappedBasicBlock, [2, 2, 2, 2]), 34: (TappedBasicBlock, [3, 4, 6, 3]),
           50: (TappedBottleneck, [3, 4, 6, 3])}


class TorchvisionResNet(ResNet):
    """torchvision's ResNet (same module names and weights layout) with ``num_outputs`` logits."""

    def __init__(self, depth: int = 18, num_outputs: int = 40):
        if depth not in _DEPTHS:
            raise ValueError(f"depth must be one of {sorted(_DEPTHS)}")
        block, layers = _DEPTHS[depth]
        super().__init__(block, layers, num_classes=num_outputs)
        self.arch_config = {"arch": f"resnet{depth}", "num_outputs": num_outputs}
        self.cam_layers = stage_layers(self)
        self.default_cam_layer = "layer4.pre_relu"
        self.affine_heads = {"layer4.pre_relu": AffineHead(True, ("fc",)),
                             "layer4": AffineHead(False, ("fc",))}


class SmallResNet(nn.Module):
    """A narrow ResNet of BasicBlocks that trains on a 2-core CPU.

    Stem: 3×3 conv, stride 2; four stages of widths ``w, 2w, 4w, 8w`` with strides 1, 2, 2, 2, so a
    112-px input gives a 7×7 final map like ResNet-50 at 224; head: global average pool → Linear.
    """

    def __init__(self, width: int = 16, blocks: tuple[int, ...] = (1, 1, 1, 1),
                 num_outputs: int = 40):
        super().__init__()
        self.arch_config = {"arch": "small", "width": width, "blocks": list(blocks),
                            "num_outputs": num_outputs}
        self.conv1 = nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        channels = width
        for i, n in enumerate(blocks):
            out, stride = width * 2 ** i, 1 if i == 0 else 2
            stage = []
            for j in range(n):
                down = None
                if j == 0 and (stride != 1 or channels != out):
                    down = nn.Sequential(nn.Conv2d(channels, out, 1, stride=stride, bias=False),
                                         nn.BatchNorm2d(out))
                stage.append(TappedBasicBlock(channels, out, stride if j == 0 else 1, down))
                channels = out
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_outputs)
        self.cam_layers = stage_layers(self, tuple(f"layer{i + 1}" for i in range(len(blocks))))
        self.default_cam_layer = f"layer{len(blocks)}.pre_relu"
        self.affine_heads = {f"layer{len(blocks)}.pre_relu": AffineHead(True, ("fc",)),
                             f"layer{len(blocks)}": AffineHead(False, ("fc",))}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(len(self.arch_config["blocks"])):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))
