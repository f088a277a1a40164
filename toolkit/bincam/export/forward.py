"""Forward export: a bincam net as an ONNX graph with outputs ``logits`` and ``activations``.

``activations`` is the CAM layer's tensor (any named tap, pre-ReLU ones included); the batch axis
is dynamic. The graph is what the VJP pass (``vjp.py``) extends with gradients.
"""

from __future__ import annotations

import io
import warnings

import onnx
import torch
from torch import nn

from bincam.nets import cam_module

OPSET = 18
INPUT, LOGITS, ACTIVATIONS = "images", "logits", "activations"


class _WithActivations(nn.Module):
    """Returns ``(logits, activations at layer)`` so the exporter keeps the tapped tensor."""

    def __init__(self, model: nn.Module, layer: str):
        super().__init__()
        self.model = model
        self._captured: list[torch.Tensor] = []
        self.handle = cam_module(model, layer).register_forward_hook(
            lambda m, i, o: self._captured.append(o))

    def forward(self, x: torch.Tensor):
        self._captured.clear()
        logits = self.model(x)
        return logits, self._captured[-1]


def export_forward(model: nn.Module, layer: str | None = None, image_size: int | None = None,
                   opset: int = OPSET) -> onnx.ModelProto:
    """The ONNX forward graph of ``model`` (eval mode, float32) with dynamic batch."""
    layer = layer or model.default_cam_layer
    size = image_size or getattr(getattr(model, "card", None), "image_size", 224)
    param = next(model.parameters())
    was_training, dtype = model.training, param.dtype
    wrapper = _WithActivations(model.float(), layer).eval()
    x = torch.rand(2, 3, size, size, device=param.device)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, (x,), buf, dynamo=False, opset_version=opset,
                              input_names=[INPUT], output_names=[LOGITS, ACTIVATIONS],
                              dynamic_axes={INPUT: {0: "batch"}, LOGITS: {0: "batch"},
                                            ACTIVATIONS: {0: "batch"}},
                              do_constant_folding=True)
    finally:
        wrapper.handle.remove()
        model.train(was_training).to(dtype)
    return fold_constants(onnx.load_from_string(buf.getvalue()))


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold shape computations (e.g. the pads of ``F.pad``) into constants, so every tensor has a
    static shape apart from the batch axis."""
    import onnxscript.optimizer

    return onnxscript.optimizer.optimize(model)
