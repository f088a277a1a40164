"""Network registry: build any bincam net by architecture name and keyword arguments.

Every net exposes ``arch_config`` (what a checkpoint card stores to rebuild it), ``cam_layers``
(CAM target layer name → module path), ``default_cam_layer`` (its final pre-ReLU tap) and
``affine_heads`` (CAM layers after which the head is affine, so gradients have a closed form).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from bincam.errors import BincamError
from bincam.nets.affact import AFFACT
from bincam.nets.resnets import SmallResNet, TorchvisionResNet

ARCHITECTURES = ("small", "resnet18", "resnet34", "resnet50", "affact")


def build_net(arch: str, num_outputs: int = 40, **kwargs: Any) -> nn.Module:
    """A freshly initialised net of architecture ``arch`` with ``num_outputs`` logits."""
    if arch == "small":
        blocks = tuple(kwargs.pop("blocks", (1, 1, 1, 1)))
        return SmallResNet(num_outputs=num_outputs, blocks=blocks, **kwargs)
    if arch.startswith("resnet") and arch[6:].isdigit() and arch in ARCHITECTURES:
        return TorchvisionResNet(int(arch[6:]), num_outputs=num_outputs, **kwargs)
    if arch == "affact":
        return AFFACT(num_outputs=num_outputs, **kwargs)
    raise BincamError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")


def build_from_config(config: dict[str, Any]) -> nn.Module:
    """Rebuild a net from its ``arch_config``."""
    config = dict(config)
    return build_net(config.pop("arch"), **config)


def cam_module(model: nn.Module, layer: str | None = None) -> nn.Module:
    """The module whose output is CAM target ``layer`` (default: the net's final tap)."""
    layer = layer or model.default_cam_layer
    if layer not in model.cam_layers:
        raise BincamError(f"no CAM layer {layer!r} in this {model.arch_config['arch']} net; valid "
                          f"layers: {', '.join(model.cam_layers)}")
    return model.get_submodule(model.cam_layers[layer])


__all__ = ["ARCHITECTURES", "AFFACT", "SmallResNet", "TorchvisionResNet", "build_net",
           "build_from_config", "cam_module"]
