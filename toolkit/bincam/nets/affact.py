"""AFFACT: the paper's ResNet-50 with Caffe layer names, Caffe padding and a 2048→1000→K head.

Layer names follow the Caffe model converted by MMdnn (``conv1``, ``bn_conv1``,
``res2a_branch2a`` … ``res5c_branch2c``, ``fc1000_1``, ``attributes_1``), so converted weights load
by name. Caffe details kept: symmetric zero padding of the 7×7 and 3×3 convolutions (as the
convolutions' own padding, which equals MMdnn's explicit ``F.pad``), the stem max-pool in ceil mode
(equal to padding right/bottom by one with −inf: 112 → 56), stride 2 on the 1×1 ``branch2a`` of the
first block of stages 3–5, BatchNorm eps 1e-5. Input: RGB in [0, 1], no normalisation. Both forms
give static shapes in ONNX and only ops that TensorRT supports.
Head: ``res5c`` (residual sum, pre-ReLU) → ReLU → average pool → Linear 2048→1000 → Linear 1000→K.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bincam.nets.taps import AffineHead, Tap

STAGES = ((2, "abc", 64), (3, "abcd", 128), (4, "abcdef", 256), (5, "abc", 512))
BN_EPS = 1e-5


def block_names() -> list[tuple[int, str, int]]:
    """(stage, block name such as ``res4b``, bottleneck width) of the 16 bottlenecks in order."""
    return [(s, f"res{s}{letter}", w) for s, letters, w in STAGES for letter in letters]


class AFFACT(nn.Module):
    """ResNet-50 in the AFFACT / Caffe layout with ``num_outputs`` attribute logits."""

    def __init__(self, num_outputs: int = 40):
        super().__init__()
        self.arch_config = {"arch": "affact", "num_outputs": num_outputs}
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=True)
        self.bn_conv1 = nn.BatchNorm2d(64, eps=BN_EPS)
        in_ch = 64
        for stage, name, width in block_names():
            first = name.endswith("a")
            stride = 2 if first and stage > 2 else 1
            tag = name[3:]  # e.g. "4b"
            if first:
                self._conv_bn(f"{tag}_branch1", in_ch, 4 * width, 1, stride)
            self._conv_bn(f"{tag}_branch2a", in_ch, width, 1, stride)
            self._conv_bn(f"{tag}_branch2b", width, width, 3, 1)
            self._conv_bn(f"{tag}_branch2c", width, 4 * width, 1, 1)
            self.add_module(name, Tap())
            in_ch = 4 * width
        for stage, letters, _ in STAGES:
            self.add_module(f"res{stage}{letters[-1]}_relu", Tap())
        self.fc1000_1 = nn.Linear(2048, 1000)
        self.attributes_1 = nn.Linear(1000, num_outputs)
        self.cam_layers = {}
        for stage, letters, _ in STAGES:
            last = f"res{stage}{letters[-1]}"
            self.cam_layers[last] = last
            self.cam_layers[f"{last}_relu"] = f"{last}_relu"
        self.default_cam_layer = "res5c"
        head = ("fc1000_1", "attributes_1")
        self.affine_heads = {"res5c": AffineHead(True, head), "res5c_relu": AffineHead(False, head)}

    def _conv_bn(self, tag: str, cin: int, cout: int, k: int, stride: int) -> None:
        self.add_module(f"res{tag}", nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2,
                                               bias=False))
        self.add_module(f"bn{tag}", nn.BatchNorm2d(cout, eps=BN_EPS))

    def _branch(self, tag: str, x: torch.Tensor, relu: bool) -> torch.Tensor:
        x = getattr(self, f"bn{tag}")(getattr(self, f"res{tag}")(x))
        return F.relu(x) if relu else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn_conv1(self.conv1(x)))
        x = F.max_pool2d(x, 3, stride=2, ceil_mode=True)
        for stage, name, _ in block_names():
            tag = name[3:]
            shortcut = self._branch(f"{tag}_branch1", x, False) if name.endswith("a") else x
            y = self._branch(f"{tag}_branch2a", x, True)
            y = self._branch(f"{tag}_branch2b", y, True)
            y = self._branch(f"{tag}_branch2c", y, False)
            x = F.relu(getattr(self, name)(y + shortcut))
            if hasattr(self, f"{name}_relu"):
                x = getattr(self, f"{name}_relu")(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.attributes_1(self.fc1000_1(x))
